"""IEMOCAP data preparation: consensus labels, 4-class mapping, leave-one-session-out manifests.

Reads the released ``IEMOCAP_full_release`` folder as distributed (with the
junk real copies carry: AppleDouble ``._*`` files, EmoEvaluation sub-folders,
stray files) and writes one SpeechBrain JSON train/test manifest pair per
leave-one-session-out fold.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from speechbrain_ptapt.data.preparation import (
    DataPreparationError,
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

#: Raw consensus code -> 4-class label (excited is merged into happy).
IEMOCAP_LABELS: dict[str, str] = {
    "neu": "neu",
    "hap": "hap",
    "exc": "hap",
    "sad": "sad",
    "ang": "ang",
}

#: The four classes of the protocol, in a fixed order.
IEMOCAP_CLASSES: tuple[str, ...] = ("neu", "hap", "sad", "ang")

#: Every consensus code that appears in IEMOCAP annotation files.
IEMOCAP_ALL_CODES: frozenset[str] = frozenset(
    {"neu", "hap", "exc", "sad", "ang", "fru", "sur", "fea", "dis", "oth", "xxx"}
)

#: Number of 4-class utterances in the complete corpus (all five sessions).
IEMOCAP_4CLASS_TOTAL = 5531

#: Number of 4-class utterances per session in the complete corpus.
IEMOCAP_4CLASS_PER_SESSION: dict[int, int] = {1: 1085, 2: 1023, 3: 1151, 4: 1031, 5: 1241}

#: Session numbers of the complete corpus.
IEMOCAP_SESSIONS: tuple[int, ...] = (1, 2, 3, 4, 5)

#: Sampling rate of the released sentence wavs, in samples per second.
IEMOCAP_SAMPLE_RATE = 16000

_SESSION_DIR = re.compile(r"^Session(?P<session>\d+)$")

# A consensus turn line, e.g.
# "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]".
# Fields are TAB-separated in the release; any run of whitespace is accepted.
_TURN_LINE = re.compile(
    r"^\[\s*(?P<start>\d+(?:\.\d*)?)\s*-\s*(?P<end>\d+(?:\.\d*)?)\s*\]"
    r"\s+(?P<turn>\S+)\s+(?P<code>\S+)\s+\[[^\]]*\]\s*$"
)

# A turn id: "<dialog>_<F|M><3 digits>", the dialog starting "Ses<NN><F|M>_".
_TURN_ID = re.compile(
    r"^(?P<dialog>Ses(?P<session>\d{2})[FM]_\w+?)_(?P<speaker>[FM])(?P<number>\d{3})$"
)

_FOLDER_HINT = (
    "expected the IEMOCAP_full_release folder, the one holding Session1 ... Session5 "
    "(each with dialog/EmoEvaluation/ and sentences/wav/)"
)


def parse_annotation_file(path: str | os.PathLike[str]) -> list[tuple[str, str, float, float]]:
    """Read the consensus turn lines of one ``EmoEvaluation/<dialog>.txt`` file.

    Only lines starting with ``[`` are turn lines (``[START - END]<TAB>turn
    id<TAB>code<TAB>[V, A, D]``); the ``%`` header, evaluator lines
    (``C-E1:``, ``A-F2:`` ...) and blank lines are ignored.

    Arguments
    ---------
    path : str or os.PathLike
        The annotation text file.

    Returns
    -------
    list of (turn_id, code, start, end)
        One tuple per turn, in file order; ``code`` is the raw consensus code
        (one of ``IEMOCAP_ALL_CODES``); ``start`` and ``end`` are the turn's
        times within the dialog, in seconds.

    Raises
    ------
    DataPreparationError
        When the file cannot be read, when a line starting with ``[`` is not a
        well-formed turn line (message names the file, line number and line),
        or when a code is not an IEMOCAP code.
    """
    path = Path(path)
    try:
        # Evaluator comments are free text; the turn lines are plain ASCII.
        # utf-8-sig: a byte-order mark must not hide a turn line on the first line.
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as error:
        raise DataPreparationError(
            f"Cannot read annotation file {path} ({error}); expected a readable text file."
        ) from error
    turns: list[tuple[str, str, float, float]] = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line.startswith("["):
            continue
        match = _TURN_LINE.match(line)
        if match is None or _TURN_ID.match(match["turn"]) is None:
            raise DataPreparationError(
                f"Malformed turn line in annotation file {path}, line {number}: {raw_line!r}; "
                "expected '[START - END]<TAB><dialog>_<F|M><3 digits><TAB><code><TAB>[V, A, D]', "
                "e.g. '[6.2901 - 8.2357]\\tSes01F_impro01_F000\\tneu\\t[2.5000, 2.5000, 2.5000]'."
            )
        code = match["code"]
        if code not in IEMOCAP_ALL_CODES:
            raise DataPreparationError(
                f"Unknown emotion code {code!r} in annotation file {path}, line {number}: "
                f"{raw_line!r}; expected one of {', '.join(sorted(IEMOCAP_ALL_CODES))}."
            )
        turns.append((match["turn"], code, float(match["start"]), float(match["end"])))
    return turns


def find_sessions(data_folder: str | os.PathLike[str]) -> dict[int, Path]:
    """Locate the ``Session<N>`` folders of an IEMOCAP copy.

    Arguments
    ---------
    data_folder : str or os.PathLike
        The ``IEMOCAP_full_release`` folder.

    Returns
    -------
    dict of int -> Path
        Session number (1 to 5) -> absolute, resolved session folder, sorted.

    Raises
    ------
    DataPreparationError
        When the folder does not exist or holds no ``Session1`` ... ``Session5``.
    """
    folder = Path(data_folder).expanduser()
    if not folder.is_dir():
        raise DataPreparationError(
            f"IEMOCAP data folder {folder} does not exist or is not a folder; {_FOLDER_HINT}."
        )
    folder = folder.resolve()
    sessions: dict[int, Path] = {}
    for child in folder.iterdir():
        match = _SESSION_DIR.match(child.name)
        if match is None or not child.is_dir():
            continue
        number = int(match["session"])
        if number in IEMOCAP_SESSIONS:
            sessions[number] = child
        else:
            logger.warning("Ignoring %s: IEMOCAP has only Session1 ... Session5.", child)
    if not sessions:
        hint = ""
        nested = folder / "IEMOCAP_full_release"
        if nested.is_dir():
            hint = f" (did you mean {nested}?)"
        raise DataPreparationError(
            f"No Session1 ... Session5 sub-folders in {folder}{hint}; {_FOLDER_HINT}. "
            "Is this the IEMOCAP corpus?"
        )
    return dict(sorted(sessions.items()))


def _annotation_files(session_folder: Path) -> list[Path]:
    """List the consensus annotation files of one session folder.

    Only the ``*.txt`` files at the top level of ``dialog/EmoEvaluation`` are
    consensus labels; its sub-folders (``Categorical/``, ``Attribute/``,
    ``Self-evaluation/``), AppleDouble ``._*`` files and other files are not.

    Raises
    ------
    DataPreparationError
        When ``dialog/EmoEvaluation`` is missing or holds no annotation file.
    """
    emo_folder = session_folder / "dialog" / "EmoEvaluation"
    if not emo_folder.is_dir():
        raise DataPreparationError(
            f"Session folder {session_folder} has no dialog/EmoEvaluation folder "
            f"(looked for {emo_folder}); expected the consensus label files "
            "dialog/EmoEvaluation/<dialog>.txt of the IEMOCAP_full_release layout."
        )
    files = sorted(
        entry
        for entry in emo_folder.iterdir()
        if entry.is_file() and entry.suffix == ".txt" and not is_macos_junk(entry.name)
    )
    if not files:
        raise DataPreparationError(
            f"Folder {emo_folder} holds no annotation files; expected one "
            "<dialog>.txt per dialog (e.g. Ses01F_impro01.txt) with the consensus labels."
        )
    return files


def _collect(
    sessions: dict[int, Path],
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Read every session's labels and wav headers.

    Arguments
    ---------
    sessions : dict of int -> Path
        From :func:`find_sessions`.

    Returns
    -------
    entries : list of dict
        One dict per 4-class turn, sorted by session then id, with ``id``,
        ``wav`` (absolute path string), ``duration`` (seconds), ``emo``,
        ``spk_id`` and ``session``.
    dropped : Counter
        Raw code -> number of turns dropped by the 4-class rule.
    """
    entries: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    seen: dict[str, Path] = {}
    for session, session_folder in sessions.items():
        wav_root = session_folder / "sentences" / "wav"
        for annotation in _annotation_files(session_folder):
            turns = parse_annotation_file(annotation)
            if not turns:
                logger.warning(
                    "Annotation file %s holds no turn line (truncated or emptied copy?); "
                    "its dialog is left out. Restore it from the release to use it.",
                    annotation,
                )
            for turn_id, code, _start, _end in turns:
                turn = _TURN_ID.match(turn_id)
                assert turn is not None  # checked by parse_annotation_file
                if int(turn["session"]) != session:
                    raise DataPreparationError(
                        f"Turn {turn_id} in annotation file {annotation} belongs to session "
                        f"{int(turn['session'])}, but the file is in {session_folder}; "
                        f"expected only Ses{session:02d}* turns there."
                    )
                if turn_id in seen:
                    raise DataPreparationError(
                        f"Turn {turn_id} is labelled twice: in {seen[turn_id]} and in "
                        f"{annotation}; expected one consensus line per turn."
                    )
                seen[turn_id] = annotation
                label = IEMOCAP_LABELS.get(code)
                if label is None:
                    dropped[code] += 1
                    continue
                wav = wav_root / turn["dialog"] / f"{turn_id}.wav"
                try:
                    num_samples, sample_rate, channels = audio_info(wav)
                except DataPreparationError as error:
                    raise DataPreparationError(
                        f"{error} (turn {turn_id}, labelled in {annotation})"
                    ) from error
                if sample_rate != IEMOCAP_SAMPLE_RATE or channels != 1:
                    raise DataPreparationError(
                        f"Audio file {wav} (labelled in {annotation}) is {sample_rate} Hz with "
                        f"{channels} channel(s); expected {IEMOCAP_SAMPLE_RATE} Hz mono as "
                        "released in IEMOCAP_full_release: restore the file from the release "
                        "or convert it (e.g. sox in.wav -r 16000 -c 1 out.wav)."
                    )
                entries.append(
                    {
                        "id": turn_id,
                        "wav": str(wav),
                        "duration": num_samples / sample_rate,
                        "emo": label,
                        "spk_id": f"Ses{session:02d}_{turn['speaker']}",
                        "session": session,
                    }
                )
    entries.sort(key=lambda entry: (entry["session"], entry["id"]))
    return entries, dropped


def parse_iemocap(data_folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read every 4-class turn of every session present in an IEMOCAP copy.

    Labels come only from the consensus lines of
    ``Session<N>/dialog/EmoEvaluation/*.txt``; ``exc`` is merged into ``hap``
    and every other code outside the four classes is dropped (counts logged
    per code). Durations come from the wav headers.

    Arguments
    ---------
    data_folder : str or os.PathLike
        The ``IEMOCAP_full_release`` folder (all five sessions, or some).

    Returns
    -------
    list of dict
        One dict per turn, sorted by session then id: ``id`` (turn id, e.g.
        ``Ses01F_impro01_M013``), ``wav`` (absolute path string to
        ``Session<N>/sentences/wav/<dialog>/<id>.wav``), ``duration`` (seconds,
        float), ``emo`` (one of ``IEMOCAP_CLASSES``), ``spk_id`` (speaking
        actor, e.g. ``Ses01_M``) and ``session`` (int).

    Raises
    ------
    DataPreparationError
        For a missing folder, a folder without sessions, a session without
        ``dialog/EmoEvaluation``, a malformed annotation, or a labelled turn
        whose wav is missing, unreadable, empty or not 16 kHz mono.
    """
    entries, dropped = _collect(find_sessions(data_folder))
    _log_dropped(dropped)
    return entries


def _log_dropped(dropped: Counter[str]) -> None:
    """Log how many turns each code outside the four classes removed."""
    if dropped:
        detail = ", ".join(f"{code}={count}" for code, count in sorted(dropped.items()))
        logger.info(
            "IEMOCAP: dropped %d turns outside the 4 classes (%s).", sum(dropped.values()), detail
        )


def _normalize_folds(folds: Iterable[int | str] | int | str | None) -> list[int] | None:
    """Turn a fold selection (ints or strings of session numbers) into sorted ints."""
    if folds is None:
        return None
    if isinstance(folds, (int, str)):
        folds = [folds]
    normalized: set[int] = set()
    for fold in folds:
        try:
            number = int(str(fold).strip())
        except ValueError:
            number = -1
        if number not in IEMOCAP_SESSIONS:
            raise DataPreparationError(
                f"Invalid IEMOCAP fold {fold!r}; expected a session number 1 ... 5 (int or string)."
            )
        normalized.add(number)
    if not normalized:
        raise DataPreparationError("Empty IEMOCAP fold list; expected session numbers 1 ... 5.")
    return sorted(normalized)


def _fold_paths(save_folder: Path, folds: Iterable[int]) -> dict[str, dict[str, Path]]:
    """Manifest paths ``<save_folder>/fold_<k>/{train,test}.json`` for each fold."""
    return {
        str(fold): {
            "train": save_folder / f"fold_{fold}" / "train.json",
            "test": save_folder / f"fold_{fold}" / "test.json",
        }
        for fold in folds
    }


def _check_counts(entries: list[dict[str, Any]], sessions: dict[int, Path], root: Path) -> None:
    """Log class and session counts; warn on a partial copy or an unexpected total."""
    per_class = Counter(entry["emo"] for entry in entries)
    per_session = Counter(entry["session"] for entry in entries)
    logger.info(
        "IEMOCAP 4-class counts: %s (total %d).",
        ", ".join(f"{label}={per_class.get(label, 0)}" for label in IEMOCAP_CLASSES),
        len(entries),
    )
    logger.info(
        "IEMOCAP 4-class counts per session: %s.",
        ", ".join(f"Session{s}={per_session.get(s, 0)}" for s in sessions),
    )
    missing = [s for s in IEMOCAP_SESSIONS if s not in sessions]
    if missing:
        logger.warning(
            "IEMOCAP copy at %s is partial: %s missing. Going on with %s only; "
            "the leave-one-session-out folds cover only these sessions.",
            root,
            ", ".join(f"Session{s}" for s in missing),
            ", ".join(f"Session{s}" for s in sessions),
        )
    elif len(entries) != IEMOCAP_4CLASS_TOTAL:
        found = "\n".join(
            f"    Session{s}: {per_session.get(s, 0)} (full corpus: "
            f"{IEMOCAP_4CLASS_PER_SESSION[s]})"
            for s in IEMOCAP_SESSIONS
        )
        logger.warning(
            "\n"
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            "IEMOCAP: found %d 4-class utterances in %s, expected %d.\n"
            "All five sessions are present, so either this copy is incomplete or\n"
            "modified, or the annotation parser is wrong. Results will not be\n"
            "comparable with published IEMOCAP numbers.\n"
            "Per session:\n%s\n"
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
            len(entries),
            root,
            IEMOCAP_4CLASS_TOTAL,
            found,
        )


def _manifest(entries: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """SpeechBrain JSON manifest: utterance id -> wav, duration, emo, spk_id, session."""
    return {
        entry["id"]: {key: value for key, value in entry.items() if key != "id"}
        for entry in entries
    }


def prepare_iemocap(
    data_folder: str | os.PathLike[str],
    save_folder: str | os.PathLike[str],
    folds: Iterable[int | str] | int | str | None = None,
    skip_prep: bool = False,
) -> dict[str, dict[str, Path]]:
    """Write leave-one-session-out 4-class manifests for IEMOCAP.

    For each fold ``k`` writes ``<save_folder>/fold_<k>/test.json`` (session
    ``k``, both speakers) and ``<save_folder>/fold_<k>/train.json`` (every
    other session present), then ``<save_folder>/preparation.json``. Each
    manifest maps an utterance id to ``{"wav": absolute path, "duration":
    seconds, "emo": one of IEMOCAP_CLASSES, "spk_id": "Ses01_F", "session": 1}``.

    The preparation is skipped when ``preparation.json`` records the same
    resolved data folder, folds and sessions and every manifest exists.

    Arguments
    ---------
    data_folder : str or os.PathLike
        The ``IEMOCAP_full_release`` folder (``Session1`` ... ``Session5``).
        A copy with fewer sessions is accepted with a warning.
    save_folder : str or os.PathLike
        Where the manifests go.
    folds : iterable of int or str, int, str, or None
        Sessions to hold out, e.g. ``[1, 5]`` or ``["1"]``; None means every
        session present.
    skip_prep : bool
        If True, only return the paths (nothing is read or written).

    Returns
    -------
    dict
        ``{"1": {"train": Path, "test": Path}, ...}``, keyed by the held-out
        session number as a string.

    Raises
    ------
    DataPreparationError
        For bad input (see :func:`parse_iemocap`) or a requested fold whose
        session folder is missing.
    """
    save_folder = Path(save_folder)
    requested = _normalize_folds(folds)

    if skip_prep:
        if requested is None:
            record = read_preparation_record(save_folder) or {}
            requested = record.get("folds") or list(IEMOCAP_SESSIONS)
        return _fold_paths(save_folder, requested)

    sessions = find_sessions(data_folder)
    root = next(iter(sessions.values())).parent
    if requested is None:
        requested = list(sessions)
    missing = [fold for fold in requested if fold not in sessions]
    if missing:
        raise DataPreparationError(
            f"Fold(s) {', '.join(map(str, missing))} requested, but "
            f"{', '.join(str(root / f'Session{fold}') for fold in missing)} does not exist; "
            f"sessions present: {', '.join(f'Session{s}' for s in sessions)}."
        )

    paths = _fold_paths(save_folder, requested)
    outputs = [path for fold in paths.values() for path in fold.values()]
    fingerprint = preparation_fingerprint(
        corpus="IEMOCAP",
        data_folder=str(root),
        sessions=list(sessions),
        folds=requested,
        labels=IEMOCAP_LABELS,
    )
    if is_prepared(save_folder, fingerprint, outputs):
        logger.info("IEMOCAP manifests in %s already prepared, skipping.", save_folder)
        return paths

    logger.info("Preparing IEMOCAP from %s into %s.", root, save_folder)
    clear_prepared(save_folder)
    entries = parse_iemocap(root)
    _check_counts(entries, sessions, root)

    for fold, fold_paths in paths.items():
        held_out = int(fold)
        train = [entry for entry in entries if entry["session"] != held_out]
        test = [entry for entry in entries if entry["session"] == held_out]
        if not train or not test:
            empty = f"Session{held_out}" if not test else "every other session"
            raise DataPreparationError(
                f"IEMOCAP fold {fold} has no {'test' if not test else 'training'} utterance: "
                f"{empty} of {root} holds no neu/hap/exc/sad/ang turn (are its "
                "dialog/EmoEvaluation/*.txt files empty or truncated?); restore the "
                "annotation files from the release or leave the fold out of --folds."
            )
        write_json_atomic(fold_paths["train"], _manifest(train))
        write_json_atomic(fold_paths["test"], _manifest(test))
        logger.info("IEMOCAP fold %s: %d train, %d test utterances.", fold, len(train), len(test))
    mark_prepared(save_folder, fingerprint)
    return paths
