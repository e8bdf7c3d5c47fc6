"""SAVEE data preparation: file-name labels, 16 kHz copies, leave-one-speaker-out manifests.

Reads either layout in circulation: the original release
(``AudioData/<SPK>/<code><NN>.wav``) or a flat re-pack
(``<SPK>_<code><NN>.wav``, e.g. ``ALL/``), ignoring the junk real copies
carry (AppleDouble ``._*`` files, ``.DS_Store``, stray non-wav files). The
44.1 kHz wavs are converted once to 16 kHz mono copies under
``<save_folder>/wav16k/`` and one SpeechBrain JSON train/test manifest pair is
written per held-out speaker.

The labels in the manifests are IEMOCAP's three-letter codes, so the four
emotions both corpora share have the same names: ``a`` -> ``ang``, ``d`` ->
``dis``, ``f`` -> ``fea``, ``h`` -> ``hap``, ``n`` -> ``neu``, ``sa`` ->
``sad``, ``su`` -> ``sur``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio.transforms as T

from speechbrain_ptapt.data.preparation import (
    DataPreparationError,
    atomic_write,
    audio_info,
    clear_prepared,
    is_macos_junk,
    is_prepared,
    mark_prepared,
    preparation_fingerprint,
    read_preparation_record,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

#: The four speakers of SAVEE (all male), in the corpus' order.
SAVEE_SPEAKERS: tuple[str, ...] = ("DC", "JE", "JK", "KL")

#: File-name emotion code -> manifest label (IEMOCAP's three-letter codes).
SAVEE_LABELS: dict[str, str] = {
    "a": "ang",
    "d": "dis",
    "f": "fea",
    "h": "hap",
    "n": "neu",
    "sa": "sad",
    "su": "sur",
}

#: The seven classes of the protocol, in the order of their file-name codes.
SAVEE_CLASSES: tuple[str, ...] = tuple(SAVEE_LABELS.values())

#: Utterances per speaker of each code in the complete corpus.
SAVEE_PER_SPEAKER: dict[str, int] = {code: 30 if code == "n" else 15 for code in SAVEE_LABELS}

#: Utterances per speaker in the complete corpus (15 per emotion, 30 neutral).
SAVEE_UTTERANCES_PER_SPEAKER = sum(SAVEE_PER_SPEAKER.values())

#: Utterances in the complete corpus (four speakers).
SAVEE_TOTAL = SAVEE_UTTERANCES_PER_SPEAKER * len(SAVEE_SPEAKERS)

#: Sampling rate of the released wavs, in samples per second.
SAVEE_SOURCE_SAMPLE_RATE = 44100

#: Sampling rate of the prepared copies the manifests point to, in samples per second.
SAVEE_SAMPLE_RATE = 16000

#: Sub-folder of the save folder holding the 16 kHz copies, ``<SPK>/<code><NN>.wav``.
AUDIO_FOLDER = "wav16k"

#: Record, inside :data:`AUDIO_FOLDER`, of which source file each copy was made from.
CONVERSION_INDEX = "conversions.json"

#: Bumped whenever the content of the 16 kHz copies changes, so old copies are redone.
CONVERSION_VERSION = 1

_CODE = r"(?P<code>a|d|f|h|n|sa|su)"
_SPEAKER = r"(?P<speaker>DC|JE|JK|KL)"
# The release: "<code><NN>.wav" inside a speaker folder, e.g. "sa03.wav" (codes
# and speakers are case-sensitive, the extension is not).
_ORIGINAL_NAME = re.compile(rf"^{_CODE}(?P<number>\d{{2}})(?i:\.wav)$")
# Flat re-packs: "<SPK>_<code><NN>.wav", e.g. "DC_sa03.wav".
_FLAT_NAME = re.compile(rf"^{_SPEAKER}_{_CODE}(?P<number>\d{{2}})(?i:\.wav)$")
# Anything shaped like a SAVEE name (letters then digits, optionally a speaker
# prefix): a wav of this shape that the strict patterns reject is an error, not junk.
_SAVEE_SHAPED_ORIGINAL = re.compile(r"^(?P<code>[A-Za-z]+)(?P<number>\d+)\.wav$", re.IGNORECASE)
_SAVEE_SHAPED_FLAT = re.compile(
    r"^(?P<speaker>[A-Za-z]+)_(?P<code>[A-Za-z]+)(?P<number>\d+)\.wav$", re.IGNORECASE
)

_FOLDER_HINT = (
    "expected the SAVEE folder holding AudioData/ (with DC/, JE/, JK/, KL/ of "
    "<code><NN>.wav files), AudioData/ itself, or a flat folder of "
    "<SPK>_<code><NN>.wav files such as ALL/"
)
_CODES_HINT = "codes a, d, f, h, n, sa, su"


@dataclass(frozen=True)
class SaveeFile:
    """One utterance of a SAVEE copy, as named on disk.

    Attributes
    ----------
    id : str
        Utterance id ``<SPK>_<code><NN>``, e.g. ``DC_sa03`` (the same in both layouts).
    speaker : str
        One of :data:`SAVEE_SPEAKERS`.
    code : str
        File-name emotion code, one of the keys of :data:`SAVEE_LABELS`.
    number : int
        The utterance's number within its speaker and code (1 ... 15, or 30 for ``n``).
    source : Path
        Absolute path of the original wav.
    """

    id: str
    speaker: str
    code: str
    number: int
    source: Path

    @property
    def emo(self) -> str:
        """The manifest label, one of :data:`SAVEE_CLASSES`."""
        return SAVEE_LABELS[self.code]

    @property
    def copy_name(self) -> str:
        """Path of the 16 kHz copy relative to the audio folder: ``<SPK>/<code><NN>.wav``."""
        return f"{self.speaker}/{self.code}{self.number:02d}.wav"


@dataclass(frozen=True)
class SaveeCopy:
    """A SAVEE copy on disk, located and listed by file name (no audio read).

    Attributes
    ----------
    root : Path
        Absolute, resolved folder the wavs are in: ``AudioData`` (original
        layout) or the flat folder.
    layout : str
        ``"original"`` or ``"flat"``.
    files : list of SaveeFile
        Every utterance, sorted by speaker, code (order of
        :data:`SAVEE_LABELS`) and number.
    """

    root: Path
    layout: str
    files: list[SaveeFile]

    @property
    def speakers(self) -> list[str]:
        """Speakers with at least one utterance, in the order of :data:`SAVEE_SPEAKERS`."""
        present = {f.speaker for f in self.files}
        return [speaker for speaker in SAVEE_SPEAKERS if speaker in present]


def _is_wav(path: Path) -> bool:
    """Tell whether ``path`` is a regular ``*.wav`` file that is not macOS metadata."""
    return path.suffix.lower() == ".wav" and not is_macos_junk(path.name) and path.is_file()


def _has_flat_files(folder: Path) -> bool:
    """Tell whether ``folder`` directly holds a ``<SPK>_*.wav`` file of a SAVEE speaker."""
    return any(
        _is_wav(child) and child.name.split("_", 1)[0] in SAVEE_SPEAKERS
        for child in folder.iterdir()
    )


def _has_speaker_folders(folder: Path) -> bool:
    """Tell whether ``folder`` holds a ``DC``/``JE``/``JK``/``KL`` sub-folder."""
    return any((folder / speaker).is_dir() for speaker in SAVEE_SPEAKERS)


def locate_savee(data_folder: str | os.PathLike[str]) -> tuple[Path, str]:
    """Find the folder of a SAVEE copy's wavs and tell its layout.

    Accepted, in this order: a folder holding ``AudioData/`` (original
    layout), ``AudioData/`` itself (it holds speaker folders), a flat folder of
    ``<SPK>_<code><NN>.wav`` files, or a folder holding such a flat ``ALL/``.

    Arguments
    ---------
    data_folder : str or os.PathLike
        The folder the user points at.

    Returns
    -------
    root : Path
        Absolute, resolved folder of the wavs (``AudioData`` or the flat folder).
    layout : str
        ``"original"`` or ``"flat"``.

    Raises
    ------
    DataPreparationError
        When the folder does not exist or holds neither layout.
    """
    folder = Path(data_folder).expanduser()
    if not folder.is_dir():
        raise DataPreparationError(
            f"SAVEE data folder {folder} does not exist or is not a folder; {_FOLDER_HINT}."
        )
    folder = folder.resolve()
    audio_data = folder / "AudioData"
    if audio_data.is_dir() and _has_speaker_folders(audio_data):
        return audio_data, "original"
    if _has_speaker_folders(folder):
        return folder, "original"
    if _has_flat_files(folder):
        return folder, "flat"
    flat = folder / "ALL"
    if flat.is_dir() and _has_flat_files(flat):
        return flat, "flat"
    raise DataPreparationError(
        f"No SAVEE audio in {folder}: it holds no AudioData/ with speaker folders, no "
        f"DC/, JE/, JK/ or KL/ folder and no DC_*.wav ... KL_*.wav files; {_FOLDER_HINT}. "
        "Is this the SAVEE corpus?"
    )


def _parse_name(path: Path, speaker: str | None) -> SaveeFile | None:
    """Parse one wav name of either layout.

    Arguments
    ---------
    path : Path
        The wav (absolute).
    speaker : str or None
        The speaker folder it is in (original layout), or None (flat layout:
        the speaker is the name's prefix).

    Returns
    -------
    SaveeFile or None
        None for a wav whose name is not shaped like a SAVEE name at all
        (a stray file).

    Raises
    ------
    DataPreparationError
        For a SAVEE-shaped name with an unknown emotion code or speaker, or a
        number that is not two digits.
    """
    name = path.name
    if speaker is None:
        match = _FLAT_NAME.match(name)
        shaped = _SAVEE_SHAPED_FLAT.match(name)
        expected = "<SPK>_<code><NN>.wav with SPK one of DC, JE, JK, KL, e.g. DC_sa03.wav"
    else:
        match = _ORIGINAL_NAME.match(name)
        shaped = _SAVEE_SHAPED_ORIGINAL.match(name)
        expected = "<code><NN>.wav, e.g. sa03.wav"
    if match is not None:
        spk = match["speaker"] if speaker is None else speaker
        code, number = match["code"], int(match["number"])
        return SaveeFile(f"{spk}_{code}{number:02d}", spk, code, number, path)
    if shaped is None:
        return None
    problems = []
    if speaker is None and shaped["speaker"] not in SAVEE_SPEAKERS:
        problems.append(f"unknown speaker {shaped['speaker']!r}")
    if shaped["code"] not in SAVEE_LABELS:
        problems.append(f"unknown emotion code {shaped['code']!r}")
    if len(shaped["number"]) != 2:
        problems.append(f"number {shaped['number']!r} is not two digits")
    raise DataPreparationError(
        f"Cannot parse SAVEE file name {path}: {'; '.join(problems) or 'malformed name'}; "
        f"expected {expected} ({_CODES_HINT})."
    )


def _list_wavs(folder: Path, speaker: str | None) -> tuple[list[SaveeFile], list[Path]]:
    """Parse the wavs directly inside ``folder``; return them and the stray wavs ignored."""
    files: list[SaveeFile] = []
    stray: list[Path] = []
    for child in sorted(folder.iterdir()):
        if not _is_wav(child):
            continue  # sub-folders, AppleDouble files, non-wav files
        parsed = _parse_name(child, speaker)
        if parsed is None:
            stray.append(child)
        else:
            files.append(parsed)
    return files, stray


def scan_savee(data_folder: str | os.PathLike[str]) -> SaveeCopy:
    """List every utterance of a SAVEE copy from its file names (no audio is read).

    Arguments
    ---------
    data_folder : str or os.PathLike
        See :func:`locate_savee`: the folder holding ``AudioData``,
        ``AudioData`` itself, or a flat folder such as ``ALL``.

    Returns
    -------
    SaveeCopy
        The wav folder, its layout and the utterances found (all speakers, or
        the ones present in a partial copy).

    Raises
    ------
    DataPreparationError
        For a missing or wrong folder, a SAVEE-shaped wav name with an unknown
        code or speaker, an utterance present twice (``a01.wav`` and
        ``a01.WAV``), or a copy holding no utterance.
    """
    root, layout = locate_savee(data_folder)
    files: list[SaveeFile] = []
    stray: list[Path] = []
    if layout == "original":
        for child in sorted(root.iterdir()):
            if not child.is_dir() or is_macos_junk(child.name):
                continue
            if child.name not in SAVEE_SPEAKERS:
                if child.name != "__MACOSX":
                    logger.warning(
                        "Ignoring folder %s: SAVEE's speakers are %s.",
                        child,
                        ", ".join(SAVEE_SPEAKERS),
                    )
                continue
            found, ignored = _list_wavs(child, child.name)
            files += found
            stray += ignored
    else:
        files, stray = _list_wavs(root, None)
    for path in stray:
        logger.warning("Ignoring %s: not a SAVEE file name (%s).", path, _CODES_HINT)
    if not files:
        raise DataPreparationError(f"No SAVEE wav files in {root}; {_FOLDER_HINT} ({_CODES_HINT}).")
    seen: dict[str, Path] = {}
    for savee_file in files:
        if savee_file.id in seen:
            raise DataPreparationError(
                f"SAVEE utterance {savee_file.id} appears twice: {seen[savee_file.id]} and "
                f"{savee_file.source}; expected one wav per utterance."
            )
        seen[savee_file.id] = savee_file.source
    code_order = {code: index for index, code in enumerate(SAVEE_LABELS)}
    files.sort(key=lambda f: (SAVEE_SPEAKERS.index(f.speaker), code_order[f.code], f.number))
    return SaveeCopy(root=root, layout=layout, files=files)


# ----------------------------------------------------------------------------
# 16 kHz copies
# ----------------------------------------------------------------------------


def _source_signature(path: Path) -> dict[str, Any]:
    """What identifies a source file's content cheaply: absolute path, size (bytes), mtime (ns)."""
    stat = path.stat()
    return {"source": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _sources_digest(files: Iterable[SaveeFile]) -> str:
    """SHA-1 of every source's path, size and mtime: changes when any source file does."""
    digest = hashlib.sha1()
    for savee_file in files:
        digest.update(json.dumps(_source_signature(savee_file.source)).encode("utf-8"))
    return digest.hexdigest()


def _conversion_format(sample_rate: int) -> dict[str, Any]:
    """The settings every copy in an audio folder was made with."""
    return {"version": CONVERSION_VERSION, "sample_rate": sample_rate, "subtype": "PCM_16"}


def _read_index(audio_folder: Path, sample_rate: int) -> dict[str, dict[str, Any]]:
    """The recorded source of each copy; empty when absent, unreadable or of other settings."""
    try:
        with open(audio_folder / CONVERSION_INDEX, encoding="utf-8") as handle:
            index = json.load(handle)
    except (OSError, ValueError):
        return {}
    if not isinstance(index, dict) or index.get("format") != _conversion_format(sample_rate):
        return {}
    files = index.get("files")
    return files if isinstance(files, dict) else {}


def _write_index(audio_folder: Path, sample_rate: int, files: dict[str, dict[str, Any]]) -> None:
    """Record the source of each copy (atomically)."""
    write_json_atomic(
        audio_folder / CONVERSION_INDEX,
        {"format": _conversion_format(sample_rate), "files": dict(sorted(files.items()))},
    )


def _read_source(path: Path) -> tuple[np.ndarray, int]:
    """Read a source wav as float32 ``(samples, channels)``; errors name the file."""
    try:
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises several types for bad files
        raise DataPreparationError(
            f"Audio file {path} is unreadable or corrupt ({error}); expected a valid wav."
        ) from error
    if data.shape[0] == 0:
        raise DataPreparationError(
            f"Audio file {path} is empty (0 samples); expected at least one sample of audio."
        )
    if not np.isfinite(data).all():
        raise DataPreparationError(f"Audio file {path} contains NaN or infinite samples.")
    return data, int(sample_rate)


def _write_wav_atomic(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write mono float audio as 16-bit PCM so that ``path`` is either absent or complete.

    Samples are clipped to [-1, 1] first (resampling may overshoot slightly).
    """
    with atomic_write(path, "wb") as handle:
        sf.write(handle, np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")


class _Resampler:
    """Down-mix to mono and resample, reusing one sinc kernel per source rate.

    The kernel is torchaudio's default (``sinc_interp_hann``, 6 zero crossings,
    roll-off 0.99), the one :func:`speechbrain_ptapt.deploy.inference.to_mono_16k` uses.
    """

    def __init__(self, target_sample_rate: int) -> None:
        self.target_sample_rate = target_sample_rate
        self._transforms: dict[int, T.Resample] = {}

    def __call__(self, data: np.ndarray, sample_rate: int) -> np.ndarray:
        """Convert ``(samples, channels)`` float32 audio at ``sample_rate`` Hz.

        Returns the mono ``(samples at the target rate,)`` float32 waveform.
        """
        mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1, dtype=np.float32)))
        if sample_rate == self.target_sample_rate:
            return mono.numpy()
        if sample_rate not in self._transforms:
            self._transforms[sample_rate] = T.Resample(sample_rate, self.target_sample_rate)
        with torch.no_grad():
            return self._transforms[sample_rate](mono).numpy()


def convert_savee_audio(
    files: Iterable[SaveeFile],
    audio_folder: str | os.PathLike[str],
    sample_rate: int = SAVEE_SAMPLE_RATE,
) -> dict[str, tuple[Path, int]]:
    """Make (or reuse) a mono ``sample_rate`` copy of every source wav.

    Each copy is ``<audio_folder>/<SPK>/<code><NN>.wav`` (16-bit PCM), written
    atomically. ``<audio_folder>/conversions.json`` records the source (path,
    size, mtime) of every copy; a copy whose record matches its source and
    whose header is ``sample_rate`` mono is reused without reading the
    source again. Every source header is checked first, so a corrupt or
    empty file fails before any conversion.

    Arguments
    ---------
    files : iterable of SaveeFile
        The utterances (:attr:`SaveeCopy.files`).
    audio_folder : str or os.PathLike
        Where the copies go.
    sample_rate : int
        Sampling rate of the copies, in samples per second.

    Returns
    -------
    dict of str -> (Path, int)
        Utterance id -> (absolute path of the copy, its length in samples at
        ``sample_rate``).

    Raises
    ------
    DataPreparationError
        When a source wav is missing, unreadable, corrupt, empty or holds
        non-finite samples (the message names the file).
    """
    files = list(files)
    audio_folder = Path(audio_folder).resolve()
    rates: Counter[tuple[int, int]] = Counter()
    for savee_file in files:
        _, source_rate, channels = audio_info(savee_file.source)
        rates[(source_rate, channels)] += 1
    for (source_rate, channels), count in sorted(rates.items()):
        level = logging.INFO
        if source_rate != SAVEE_SOURCE_SAMPLE_RATE or channels != 1:
            level = logging.WARNING
        logger.log(
            level,
            "SAVEE: %d source file(s) at %d Hz with %d channel(s) (released: %d Hz mono); "
            "converted to %d Hz mono.",
            count,
            source_rate,
            channels,
            SAVEE_SOURCE_SAMPLE_RATE,
            sample_rate,
        )

    index = _read_index(audio_folder, sample_rate)
    resample = _Resampler(sample_rate)
    copies: dict[str, tuple[Path, int]] = {}
    with _one_thread():
        converted = _convert(files, audio_folder, sample_rate, index, resample, copies)
    if converted or not (audio_folder / CONVERSION_INDEX).is_file():
        _write_index(audio_folder, sample_rate, index)
    logger.info(
        "SAVEE: %d file(s) converted to %d Hz, %d reused from %s.",
        converted,
        sample_rate,
        len(files) - converted,
        audio_folder,
    )
    return copies


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (restored after).

    Resampling one file is a small strided convolution; with several threads
    it runs several times slower on a busy CPU than with one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _convert(
    files: list[SaveeFile],
    audio_folder: Path,
    sample_rate: int,
    index: dict[str, dict[str, Any]],
    resample: _Resampler,
    copies: dict[str, tuple[Path, int]],
) -> int:
    """Fill ``copies``, reusing recorded copies and converting the rest.

    Returns how many files were converted. ``index`` is updated in place and
    saved every 50 conversions.
    """
    converted = 0
    for savee_file in files:
        target = audio_folder / savee_file.copy_name
        signature = _source_signature(savee_file.source)
        if index.get(savee_file.copy_name) == signature and target.is_file():
            try:
                num_samples, copy_rate, copy_channels = audio_info(target)
            except DataPreparationError:
                copy_rate = copy_channels = num_samples = 0
            if copy_rate == sample_rate and copy_channels == 1:
                copies[savee_file.id] = (target, num_samples)
                continue
        data, source_rate = _read_source(savee_file.source)
        audio = resample(data, source_rate)
        _write_wav_atomic(target, audio, sample_rate)
        copies[savee_file.id] = (target, int(audio.shape[0]))
        index[savee_file.copy_name] = signature
        converted += 1
        if converted % 50 == 0:  # an interrupted conversion keeps what it finished
            _write_index(audio_folder, sample_rate, index)
    return converted


# ----------------------------------------------------------------------------
# Manifests
# ----------------------------------------------------------------------------


def _normalize_folds(folds: Iterable[str] | str | None) -> list[str] | None:
    """Check a fold selection (speaker names) and put it in the corpus' speaker order."""
    if folds is None:
        return None
    if isinstance(folds, str):
        folds = [folds]
    selected: set[str] = set()
    for fold in folds:
        name = str(fold).strip()
        if name not in SAVEE_SPEAKERS:
            raise DataPreparationError(
                f"Invalid SAVEE fold {fold!r}; expected a held-out speaker: "
                f"{', '.join(SAVEE_SPEAKERS)} (upper case)."
            )
        selected.add(name)
    if not selected:
        raise DataPreparationError(
            f"Empty SAVEE fold list; expected speakers among {', '.join(SAVEE_SPEAKERS)}."
        )
    return [speaker for speaker in SAVEE_SPEAKERS if speaker in selected]


def _fold_paths(save_folder: Path, folds: Iterable[str]) -> dict[str, dict[str, Path]]:
    """Manifest paths ``<save_folder>/fold_<SPK>/{train,test}.json`` for each fold."""
    return {
        fold: {
            "train": save_folder / f"fold_{fold}" / "train.json",
            "test": save_folder / f"fold_{fold}" / "test.json",
        }
        for fold in folds
    }


def check_savee_counts(copy: SaveeCopy) -> bool:
    """Log class and speaker counts; warn on a partial copy or an unexpected total.

    A copy missing speakers gets a warning and is accepted (a deliberately
    partial copy); a copy with all four speakers but not exactly 15 utterances
    of each emotion and 30 neutral per speaker (480 in all) gets a loud one.

    Arguments
    ---------
    copy : SaveeCopy
        From :func:`scan_savee`.

    Returns
    -------
    bool
        True when the copy has exactly the complete corpus' counts.
    """
    per_class = Counter(f.emo for f in copy.files)
    per_speaker = Counter(f.speaker for f in copy.files)
    logger.info(
        "SAVEE counts: %s (total %d).",
        ", ".join(f"{label}={per_class.get(label, 0)}" for label in SAVEE_CLASSES),
        len(copy.files),
    )
    logger.info(
        "SAVEE counts per speaker: %s.",
        ", ".join(f"{s}={per_speaker.get(s, 0)}" for s in copy.speakers),
    )
    missing = [s for s in SAVEE_SPEAKERS if s not in copy.speakers]
    if missing:
        logger.warning(
            "SAVEE copy at %s is partial: speaker(s) %s missing. Going on with %s only; "
            "the leave-one-speaker-out folds cover only these speakers.",
            copy.root,
            ", ".join(missing),
            ", ".join(copy.speakers),
        )
        return False
    per_cell = Counter((f.speaker, f.code) for f in copy.files)
    wrong = [
        f"    {speaker}: {per_speaker[speaker]} (full corpus: {SAVEE_UTTERANCES_PER_SPEAKER}); "
        + ", ".join(
            f"{code} {per_cell.get((speaker, code), 0)}/{expected}"
            for code, expected in SAVEE_PER_SPEAKER.items()
        )
        for speaker in SAVEE_SPEAKERS
        if any(
            per_cell.get((speaker, code), 0) != expected
            for code, expected in SAVEE_PER_SPEAKER.items()
        )
    ]
    if len(copy.files) != SAVEE_TOTAL or wrong:
        logger.warning(
            "\n"
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            "SAVEE: found %d utterances in %s, expected %d\n"
            "(%d per speaker: 15 per emotion, 30 neutral).\n"
            "All four speakers are present, so either this copy is incomplete or\n"
            "modified, or the file-name parser is wrong. Results will not be\n"
            "comparable with published SAVEE numbers.\n"
            "Speakers whose counts differ (found/expected per code):\n%s\n"
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
            len(copy.files),
            copy.root,
            SAVEE_TOTAL,
            SAVEE_UTTERANCES_PER_SPEAKER,
            "\n".join(wrong),
        )
        return False
    return True


def prepare_savee(
    data_folder: str | os.PathLike[str],
    save_folder: str | os.PathLike[str],
    folds: Iterable[str] | str | None = None,
    skip_prep: bool = False,
) -> dict[str, dict[str, Path]]:
    """Write leave-one-speaker-out 7-class manifests for SAVEE, with 16 kHz copies.

    Converts every wav once to 16 kHz mono under ``<save_folder>/wav16k/``
    (see :func:`convert_savee_audio`), then for each held-out speaker ``SPK``
    writes ``<save_folder>/fold_<SPK>/test.json`` (that speaker) and
    ``<save_folder>/fold_<SPK>/train.json`` (every other speaker present), then
    ``<save_folder>/preparation.json``. Each manifest maps an utterance id
    (``DC_sa03``) to ``{"wav": absolute path of the 16 kHz copy, "duration":
    seconds, "emo": one of SAVEE_CLASSES, "spk_id": "DC"}``.

    The preparation is skipped when ``preparation.json`` records the same
    resolved wav folder, layout, speakers, folds and source files (paths,
    sizes, modification times) and every manifest and copy exists; when only
    some sources changed, only their copies are made again.

    Arguments
    ---------
    data_folder : str or os.PathLike
        The folder holding ``AudioData``, ``AudioData`` itself, or a flat
        folder of ``<SPK>_<code><NN>.wav`` (e.g. ``ALL``). A copy with fewer
        speakers is accepted with a warning.
    save_folder : str or os.PathLike
        Where the copies and manifests go.
    folds : iterable of str, str, or None
        Speakers to hold out, e.g. ``["DC", "KL"]``; None means every speaker
        present.
    skip_prep : bool
        If True, only return the paths (nothing is read or written).

    Returns
    -------
    dict
        ``{"DC": {"train": Path, "test": Path}, ...}``, keyed by the held-out speaker.

    Raises
    ------
    DataPreparationError
        For bad input (see :func:`scan_savee` and :func:`convert_savee_audio`),
        an unknown fold, a requested speaker missing from the copy, or a fold
        left without training data.
    """
    save_folder = Path(save_folder)
    requested = _normalize_folds(folds)

    if skip_prep:
        if requested is None:
            record = read_preparation_record(save_folder) or {}
            requested = record.get("folds") or list(SAVEE_SPEAKERS)
        return _fold_paths(save_folder, requested)

    copy = scan_savee(data_folder)
    if requested is None:
        requested = copy.speakers
    missing = [fold for fold in requested if fold not in copy.speakers]
    if missing:
        raise DataPreparationError(
            f"Fold(s) {', '.join(missing)} requested, but the SAVEE copy at {copy.root} has no "
            f"utterance of {'that speaker' if len(missing) == 1 else 'these speakers'}; "
            f"speakers present: {', '.join(copy.speakers)}."
        )
    if len(copy.speakers) < 2:
        raise DataPreparationError(
            f"The SAVEE copy at {copy.root} holds only speaker {copy.speakers[0]}; "
            "leave-one-speaker-out needs at least two speakers (one to test, one to train)."
        )

    paths = _fold_paths(save_folder, requested)
    audio_folder = save_folder.resolve() / AUDIO_FOLDER
    outputs = [path for fold in paths.values() for path in fold.values()]
    outputs += [audio_folder / f.copy_name for f in copy.files]
    fingerprint = preparation_fingerprint(
        corpus="SAVEE",
        data_folder=str(copy.root),
        layout=copy.layout,
        speakers=copy.speakers,
        utterances=len(copy.files),
        sources=_sources_digest(copy.files),
        folds=requested,
        labels=SAVEE_LABELS,
        sample_rate=SAVEE_SAMPLE_RATE,
    )
    if is_prepared(save_folder, fingerprint, outputs):
        logger.info("SAVEE manifests in %s already prepared, skipping.", save_folder)
        return paths

    logger.info("Preparing SAVEE (%s layout) from %s into %s.", copy.layout, copy.root, save_folder)
    clear_prepared(save_folder)
    check_savee_counts(copy)
    copies = convert_savee_audio(copy.files, audio_folder, SAVEE_SAMPLE_RATE)
    entries = {
        f.id: {
            "wav": str(copies[f.id][0]),
            "duration": copies[f.id][1] / SAVEE_SAMPLE_RATE,
            "emo": f.emo,
            "spk_id": f.speaker,
        }
        for f in copy.files
    }
    for fold, fold_paths in paths.items():
        train = {utt: entry for utt, entry in entries.items() if entry["spk_id"] != fold}
        test = {utt: entry for utt, entry in entries.items() if entry["spk_id"] == fold}
        write_json_atomic(fold_paths["train"], train)
        write_json_atomic(fold_paths["test"], test)
        logger.info("SAVEE fold %s: %d train, %d test utterances.", fold, len(train), len(test))
    mark_prepared(save_folder, fingerprint)
    return paths
