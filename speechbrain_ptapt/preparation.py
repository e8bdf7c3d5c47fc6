"""Corpus-independent helpers for data preparation.

Reading wav headers, writing JSON manifests atomically, and the skip-if-done
record (``preparation.json``) that lets a preparation run once per data folder
and set of options. The IEMOCAP and SAVEE preparations share these.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import soundfile as sf

#: Name of the record, inside a save folder, of the finished preparation.
PREPARATION_RECORD = "preparation.json"

#: Bumped whenever the manifests' content or layout changes, so that outputs
#: written by an older version of the code are prepared again.
PREPARATION_FORMAT_VERSION = 1


class DataPreparationError(Exception):
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


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success it is flushed to
    disk and renamed over ``path`` with :func:`os.replace` (atomic on POSIX and
    Windows), on failure deleted. ``path`` is thus either absent, old, or complete.

    Arguments
    ---------
    path : str or os.PathLike
        Destination file; its parent folders are created if needed.
    mode : str
        ``"w"`` (text, UTF-8) or ``"wb"`` (binary).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique sibling name, created with the process umask (unlike mkstemp's 0600).
    tmp_name = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    binary = "b" in mode
    encoding = None if binary else "utf-8"
    try:
        with open(tmp_name, "xb" if binary else "x", encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON (indented) with :func:`atomic_write`, so that a
    half-written manifest is never taken as finished.

    Arguments
    ---------
    path : str or os.PathLike
        Destination file; its parent folders are created if needed.
    obj : Any
        A JSON-serialisable object.
    """
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")


def _jsonable(value: Any) -> Any:
    """Convert an option value to a plain JSON value (paths to strings, tuples to lists)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(item) for item in value)
    return value


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
        (``PREPARATION_FORMAT_VERSION``).
    """
    fingerprint = {key: _jsonable(value) for key, value in sorted(options.items())}
    fingerprint["format_version"] = PREPARATION_FORMAT_VERSION
    # Round-trip through JSON so the in-memory dict compares equal to the
    # one read back from disk (e.g. tuples become lists).
    return json.loads(json.dumps(fingerprint))


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
        and every output exists; False otherwise (then prepare again).
    """
    record = Path(save_folder) / PREPARATION_RECORD
    if not record.is_file():
        return False
    try:
        with open(record, encoding="utf-8") as handle:
            stored = json.load(handle)
    except (OSError, ValueError):
        return False
    if stored != fingerprint:
        return False
    return all(Path(output).is_file() for output in outputs)


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
    record = Path(save_folder) / PREPARATION_RECORD
    write_json_atomic(record, fingerprint)
    return record


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
    except DataPreparationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for fold, fold_paths in paths.items():
        print(f"fold {fold}: train {fold_paths['train']}  test {fold_paths['test']}")
    return 0
