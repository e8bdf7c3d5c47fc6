"""Corpus-independent helpers for data preparation.

Reading wav headers, writing JSON manifests atomically, and the skip-if-done
record (``preparation.json``) that lets a preparation run once per data folder
and set of options (a :class:`~speechbrain_ptapt.protocol.stage_cache.StageCache` of
derived data: other options prepare the manifests again). The IEMOCAP and SAVEE
preparations share these.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import soundfile as sf

from speechbrain_ptapt.protocol.errors import PtaptError
from speechbrain_ptapt.protocol.stage_cache import StageCache, canonical
from speechbrain_ptapt.protocol.stage_cache import atomic_write as atomic_write  # re-exported
from speechbrain_ptapt.protocol.stage_cache import (
    write_json_atomic as write_json_atomic,  # re-exported
)

#: Name of the record, inside a save folder, of the finished preparation.
PREPARATION_RECORD = "preparation.json"

#: Bumped whenever the manifests' content or layout changes, so that outputs
#: written by an older version of the code are prepared again.
PREPARATION_FORMAT_VERSION = 1


class DataPreparationError(PtaptError):
    """Raised when a corpus on disk is missing, incomplete or malformed.

    The message names the file or folder at fault, says what is wrong with it
    and what was expected instead.
    """


def audio_info(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """Read the header of an audio file.

    Arguments
    ---------
    path : str or os.PathLike
        The audio file (any format soundfile reads, e.g. wav).

    Returns
    -------
    num_samples : int
        Length of the file in samples (per channel, i.e. frames).
    sample_rate : int
        Sampling rate in samples per second (Hz).
    channels : int
        Number of channels.

    Raises
    ------
    DataPreparationError
        When the file is missing, unreadable, corrupt or holds 0 samples.
    """
    path = Path(path)
    if not path.is_file():
        raise DataPreparationError(f"Audio file {path} does not exist (expected a readable file).")
    try:
        info = sf.info(str(path))
    except Exception as error:  # soundfile raises several types for bad files
        raise DataPreparationError(
            f"Audio file {path} is unreadable or corrupt ({error}); "
            "expected a valid audio file such as a RIFF/WAVE wav."
        ) from error
    if info.frames <= 0:
        raise DataPreparationError(
            f"Audio file {path} is empty (0 samples); expected at least one sample of audio."
        )
    return int(info.frames), int(info.samplerate), int(info.channels)


def preparation_fingerprint(**options: Any) -> dict[str, Any]:
    """Describe a preparation by every input that changes its outputs.

    Pass the resolved absolute data folder and every option that changes the
    manifests (folds, label mapping, target sample rate, ...). Two
    preparations with equal fingerprints produce the same outputs.

    Arguments
    ---------
    **options : Any
        JSON-representable values (``os.PathLike`` become strings, tuples and
        sets become lists).

    Returns
    -------
    dict
        A JSON-serialisable dict holding the options and the format version
        (``PREPARATION_FORMAT_VERSION``), as it reads back from the record.
    """
    return canonical(
        {**dict(sorted(options.items())), "format_version": PREPARATION_FORMAT_VERSION}
    )


def preparation_cache(
    save_folder: str | os.PathLike[str], fingerprint: dict[str, Any]
) -> StageCache:
    """The manifests of a save folder as a cached stage
    (:mod:`~speechbrain_ptapt.protocol.stage_cache`): derived data, prepared again when
    its record holds another fingerprint."""
    return StageCache(
        "data preparation",
        fingerprint,
        Path(save_folder) / PREPARATION_RECORD,
        expensive=False,
        field=None,
    )


def is_prepared(
    save_folder: str | os.PathLike[str],
    fingerprint: dict[str, Any],
    outputs: Iterable[str | os.PathLike[str]],
) -> bool:
    """Tell whether a finished preparation with this fingerprint is on disk.

    Arguments
    ---------
    save_folder : str or os.PathLike
        Folder holding ``preparation.json`` and the outputs.
    fingerprint : dict
        From :func:`preparation_fingerprint`.
    outputs : iterable of paths
        Every file the preparation writes.

    Returns
    -------
    bool
        True when ``preparation.json`` exists, holds exactly ``fingerprint``
        and every output exists; False otherwise (then prepare again; what differs
        is logged).
    """
    return preparation_cache(save_folder, fingerprint).is_done(outputs)


def mark_prepared(save_folder: str | os.PathLike[str], fingerprint: dict[str, Any]) -> Path:
    """Record a finished preparation; call it after every output is written.

    Arguments
    ---------
    save_folder : str or os.PathLike
        Folder holding the outputs.
    fingerprint : dict
        From :func:`preparation_fingerprint`.

    Returns
    -------
    Path
        The written ``<save_folder>/preparation.json``.
    """
    return preparation_cache(save_folder, fingerprint).publish()


def clear_prepared(save_folder: str | os.PathLike[str]) -> None:
    """Remove the record of a finished preparation; call it before writing outputs.

    A preparation interrupted while overwriting outputs then leaves no record,
    so mixed old and new outputs are never taken as finished.

    Arguments
    ---------
    save_folder : str or os.PathLike
        Folder holding ``preparation.json``.
    """
    record = Path(save_folder) / PREPARATION_RECORD
    try:
        record.unlink()
    except FileNotFoundError:
        pass


def read_preparation_record(save_folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Read ``<save_folder>/preparation.json``.

    Arguments
    ---------
    save_folder : str or os.PathLike
        Folder holding the record.

    Returns
    -------
    dict or None
        The stored fingerprint, or None when the record is absent or unreadable.
    """
    record = Path(save_folder) / PREPARATION_RECORD
    try:
        with open(record, encoding="utf-8") as handle:
            stored = json.load(handle)
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) else None


def is_macos_junk(name: str) -> bool:
    """Tell whether a file name is macOS metadata (AppleDouble ``._*``, ``.DS_Store``)
    that real corpus copies often carry beside the data."""
    return name.startswith("._") or name == ".DS_Store"


def preparation_command(
    prepare: Callable[..., dict],
    argv: list[str] | None,
    description: str,
    data_help: str,
    save_help: str,
    folds_help: str,
) -> int:
    """The command line of a corpus preparation script: ``DATA_FOLDER SAVE_FOLDER
    [--folds ...]``; prints the manifests of each fold and returns the exit status
    (1 with one ``error:`` line on bad input)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("data_folder", help=data_help)
    parser.add_argument("save_folder", help=save_help)
    parser.add_argument("--folds", nargs="+", default=None, help=folds_help)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        paths = prepare(args.data_folder, args.save_folder, folds=args.folds)
    except PtaptError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for fold, fold_paths in paths.items():
        print(f"fold {fold}: train {fold_paths['train']}  test {fold_paths['test']}")
    return 0
