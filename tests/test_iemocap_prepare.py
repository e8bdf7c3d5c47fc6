"""Tests of the IEMOCAP preparation against the real ``IEMOCAP_full_release`` layout.

Two kinds of corpora are used: small hand-written copies in the exact release
format (annotation text with evaluator lines, AppleDouble files, ...) for the
parser's edge cases and error messages, and a generated five-session corpus
(:func:`speechbrain_ptapt.testing.synthetic.make_iemocap`) for counts and folds.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechbrain_ptapt.data.iemocap import (
    IEMOCAP_4CLASS_TOTAL,
    IEMOCAP_ALL_CODES,
    IEMOCAP_CLASSES,
    IEMOCAP_LABELS,
    parse_annotation_file,
    parse_iemocap,
    prepare_iemocap,
)
from speechbrain_ptapt.data.preparation import (
    DataPreparationError,
    audio_info,
    is_prepared,
    mark_prepared,
    preparation_fingerprint,
    write_json_atomic,
)

SAMPLE_RATE = 16000  # samples per second
HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
RECIPE_PREPARE = Path(__file__).resolve().parents[1] / "recipes" / "IEMOCAP" / "iemocap_prepare.py"

# The hand-written corpus: per session two dialogs, codes chosen to cover
# every rule. (turn suffix, code, duration in seconds)
_DIALOGS = {
    "F_impro01": [
        ("F000", "neu", 0.50),
        ("M001", "exc", 0.40),
        ("F002", "hap", 0.30),
        ("M003", "sad", 0.60),
        ("F004", "ang", 0.25),
        ("M005", "fru", 0.30),
        ("F006", "xxx", 0.30),
    ],
    "M_script01_1": [
        ("M000", "neu", 0.35),
        ("F001", "exc", 0.45),
        ("M002", "oth", 0.20),
        ("F003", "sur", 0.20),
        ("M013", "ang", 0.55),
    ],
}
_SMALL_4CLASS_PER_SESSION = sum(
    code in IEMOCAP_LABELS for turns in _DIALOGS.values() for _, code, _ in turns
)


def _write_wav(path: Path, seconds: float) -> None:
    """Write a 16 kHz mono PCM-16 wav of ``seconds`` seconds of low noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    samples = 0.01 * rng.standard_normal(int(round(seconds * SAMPLE_RATE)))
    sf.write(str(path), samples, SAMPLE_RATE, subtype="PCM_16")


def _turn_block(turn: str, code: str, start: float, end: float) -> str:
    """One consensus block as in the release: turn line, evaluator lines, blank line."""
    return (
        f"[{start:.4f} - {end:.4f}]\t{turn}\t{code}\t[2.5000, 3.0000, 2.5000]\n"
        "C-E2:\tNeutral;\t()\n"
        "C-E3:\tFrustration; Anger;\t(annoyed)\n"
        "C-F1:\tNeutral;\t()\n"
        "A-E3:\tval 3; act 2; dom  2;\t()\n"
        "A-F1:\tval 2; act 3; dom  3;\t(threatening, belligerent)\n"
        "\n"
    )


def _write_session(root: Path, session: int, junk: bool = True) -> None:
    """Write one session of the hand-written corpus in the release layout."""
    session_dir = root / f"Session{session}"
    emo_dir = session_dir / "dialog" / "EmoEvaluation"
    emo_dir.mkdir(parents=True, exist_ok=True)
    for suffix, turns in _DIALOGS.items():
        dialog = f"Ses{session:02d}{suffix}"
        text = HEADER
        clock = 1.0
        for turn_suffix, code, seconds in turns:
            turn = f"{dialog}_{turn_suffix}"
            # Annotation times deliberately disagree with the wav length.
            text += _turn_block(turn, code, clock, clock + 10 * seconds)
            clock += 20.0
            _write_wav(session_dir / "sentences" / "wav" / dialog / f"{turn}.wav", seconds)
        (emo_dir / f"{dialog}.txt").write_text(text, encoding="utf-8")
        if junk:
            appledouble = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02" + bytes(40)
            (emo_dir / f"._{dialog}.txt").write_bytes(appledouble)
            wav_dir = session_dir / "sentences" / "wav" / dialog
            (wav_dir / f"._{dialog}_{turns[0][0]}.wav").write_bytes(appledouble)
            (wav_dir / f"{dialog}.pk").write_bytes(b"\x80\x04stray")
            # Per-evaluator files look like turn lines but are not labels.
            for sub in ("Categorical", "Attribute", "Self-evaluation"):
                (emo_dir / sub).mkdir(exist_ok=True)
                (emo_dir / sub / f"{dialog}_e1_cat.txt").write_text(
                    f"[1.0 - 2.0]\t{dialog}_F000\tFrustration\t[1, 2, 3]\n"
                    f"{dialog}_F000 :Neutral state; ()\n",
                    encoding="utf-8",
                )
    if junk:
        (emo_dir / "README.doc").write_bytes(b"\xd0\xcf\x11\xe0 not an annotation")
        (session_dir / "._dialog").write_bytes(b"\x00\x05\x16\x07")


def _make_small_corpus(root: Path, sessions: tuple[int, ...] = (1, 2, 3, 4, 5)) -> Path:
    """Write the hand-written corpus and return its ``IEMOCAP_full_release`` folder."""
    corpus = root / "IEMOCAP_full_release"
    for session in sessions:
        _write_session(corpus, session)
    (corpus / "Documentation").mkdir(parents=True, exist_ok=True)
    (corpus / "README.txt").write_text("IEMOCAP\n", encoding="utf-8")
    return corpus


def _load(path: Path) -> dict[str, dict]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A five-session hand-written corpus (read-only: tests copy it to modify it)."""
    return _make_small_corpus(tmp_path_factory.mktemp("small"))


# --------------------------------------------------------------------------
# Annotation parsing, on hand-written text in the release format
# --------------------------------------------------------------------------


def test_parse_annotation_reads_only_consensus_turn_lines(tmp_path: Path) -> None:
    text = (
        HEADER
        + _turn_block("Ses01F_impro01_F000", "neu", 6.2901, 8.2357)
        # Odd whitespace: spaces instead of tabs, trailing blanks, CRLF.
        + "[10.0100 - 11.3925]   Ses01F_impro01_M001  exc [3.5000, 3.5000, 3.0000]   \r\n"
        + "C-E2:\tExcited;\t()\r\n"
        + "\r\n"
        + "  [12.5 - 13.0]\tSes01F_impro01_F002\txxx\t[2.0000, 2.0000, 2.0000]\n"
    )
    path = tmp_path / "Ses01F_impro01.txt"
    path.write_text(text, encoding="utf-8")
    assert parse_annotation_file(path) == [
        ("Ses01F_impro01_F000", "neu", 6.2901, 8.2357),
        ("Ses01F_impro01_M001", "exc", 10.01, 11.3925),
        ("Ses01F_impro01_F002", "xxx", 12.5, 13.0),
    ]


@pytest.mark.parametrize(
    "bad_line",
    [
        "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu",  # no V, A, D
        "[6.2901 8.2357]\tSes01F_impro01_F000\tneu\t[2.5, 2.5, 2.5]",  # no dash
        "[6.2901 - 8.2357]\tSes01F_impro01\tneu\t[2.5, 2.5, 2.5]",  # no turn suffix
        "[6.2901 - 8.2357]\tSes01F_impro01_X000\tneu\t[2.5, 2.5, 2.5]",  # X not F/M
    ],
)
def test_malformed_turn_line_names_file_and_line(tmp_path: Path, bad_line: str) -> None:
    path = tmp_path / "Ses01F_impro01.txt"
    path.write_text(
        HEADER + _turn_block("Ses01F_impro01_F001", "neu", 1, 2) + bad_line + "\n",
        encoding="utf-8",
    )
    with pytest.raises(DataPreparationError) as info:
        parse_annotation_file(path)
    message = str(info.value)
    assert str(path) in message
    assert "line 10" in message  # 2 header lines, one 7-line block, then the bad line
    assert repr(bad_line) in message


def test_unknown_code_names_file_line_and_code(tmp_path: Path) -> None:
    path = tmp_path / "Ses01F_impro01.txt"
    path.write_text(
        HEADER + _turn_block("Ses01F_impro01_F000", "Anger", 1.0, 2.0), encoding="utf-8"
    )
    with pytest.raises(DataPreparationError) as info:
        parse_annotation_file(path)
    message = str(info.value)
    assert str(path) in message
    assert "line 3" in message
    assert "'Anger'" in message
    assert all(code in message for code in IEMOCAP_ALL_CODES)


# --------------------------------------------------------------------------
# Corpus reading and manifests, on the hand-written corpus
# --------------------------------------------------------------------------


def test_speaker_is_the_letter_before_the_turn_digits(small_corpus: Path) -> None:
    entries = {entry["id"]: entry for entry in parse_iemocap(small_corpus)}
    # The dialog's F/M (who wore the markers) is not the speaker.
    assert entries["Ses01F_impro01_M001"]["spk_id"] == "Ses01_M"
    assert entries["Ses01M_script01_1_M013"]["spk_id"] == "Ses01_M"
    assert entries["Ses01M_script01_1_F001"]["spk_id"] == "Ses01_F"
    assert entries["Ses03F_impro01_F000"]["spk_id"] == "Ses03_F"
    assert {entry["spk_id"] for entry in entries.values()} == {
        f"Ses{s:02d}_{g}" for s in range(1, 6) for g in "FM"
    }


def test_durations_come_from_the_wav_header(small_corpus: Path) -> None:
    entries = {entry["id"]: entry for entry in parse_iemocap(small_corpus)}
    entry = entries["Ses02F_impro01_M003"]
    assert entry["duration"] == pytest.approx(0.60, abs=1 / SAMPLE_RATE)
    assert Path(entry["wav"]).is_absolute()
    assert Path(entry["wav"]) == (
        small_corpus.resolve() / "Session2/sentences/wav/Ses02F_impro01/Ses02F_impro01_M003.wav"
    )
    assert entry["session"] == 2


def test_excited_is_merged_into_happy_in_small_corpus(small_corpus: Path) -> None:
    entries = {entry["id"]: entry for entry in parse_iemocap(small_corpus)}
    assert entries["Ses01F_impro01_M001"]["emo"] == "hap"  # exc
    assert entries["Ses01F_impro01_F002"]["emo"] == "hap"  # hap
    assert len(entries) == 5 * _SMALL_4CLASS_PER_SESSION


def test_junk_and_evaluator_files_are_ignored(small_corpus: Path) -> None:
    entries = parse_iemocap(small_corpus)
    assert not any(Path(entry["wav"]).name.startswith("._") for entry in entries)
    assert all(entry["wav"].endswith(".wav") for entry in entries)
    assert {entry["emo"] for entry in entries} <= set(IEMOCAP_CLASSES)


def test_manifests_load_with_dynamic_item_dataset(small_corpus: Path, tmp_path: Path) -> None:
    from speechbrain.dataio.dataset import DynamicItemDataset

    paths = prepare_iemocap(small_corpus, tmp_path / "save", folds=[1])
    dataset = DynamicItemDataset.from_json(paths["1"]["test"])
    dataset.set_output_keys(["id", "wav", "duration", "emo", "spk_id", "session"])
    items = list(dataset)
    assert len(items) == _SMALL_4CLASS_PER_SESSION
    assert {item["spk_id"] for item in items} == {"Ses01_F", "Ses01_M"}
    assert all(isinstance(item["duration"], float) for item in items)
    train = DynamicItemDataset.from_json(paths["1"]["train"])
    assert len(train) == 4 * _SMALL_4CLASS_PER_SESSION


def test_folds_accept_strings_and_ints(small_corpus: Path, tmp_path: Path) -> None:
    paths = prepare_iemocap(small_corpus, tmp_path / "save", folds=["2", 4])
    assert list(paths) == ["2", "4"]
    assert paths["4"]["test"] == tmp_path / "save" / "fold_4" / "test.json"
    assert all(path.is_file() for fold in paths.values() for path in fold.values())


def test_full_copy_with_wrong_total_warns_loudly(
    small_corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="speechbrain_ptapt.data.iemocap"):
        prepare_iemocap(small_corpus, tmp_path / "save", folds=[1])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(IEMOCAP_4CLASS_TOTAL) in warnings[0]
    assert "incomplete" in warnings[0] and "parser" in warnings[0]
    assert warnings[0].count("\n") > 3
    assert f"Session5: {_SMALL_4CLASS_PER_SESSION}" in warnings[0]


# --------------------------------------------------------------------------
# Bad input: every case raises DataPreparationError naming the path
# --------------------------------------------------------------------------


def test_missing_data_folder_raises(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "IEMOCAP_full_release"
    with pytest.raises(DataPreparationError) as info:
        prepare_iemocap(missing, tmp_path / "save")
    message = str(info.value)
    assert str(missing) in message
    assert "does not exist" in message
    assert "IEMOCAP_full_release" in message and "Session1" in message


def test_wrong_corpus_raises(tmp_path: Path) -> None:
    savee = tmp_path / "SAVEE"
    _write_wav(savee / "AudioData" / "DC" / "a01.wav", 0.2)
    with pytest.raises(DataPreparationError) as info:
        prepare_iemocap(savee, tmp_path / "save")
    message = str(info.value)
    assert str(savee) in message
    assert "Session1" in message and "IEMOCAP_full_release" in message


def test_parent_of_the_release_folder_gets_a_hint(small_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(DataPreparationError, match="did you mean"):
        parse_iemocap(small_corpus.parent)


def test_session_without_emoevaluation_raises(tmp_path: Path) -> None:
    corpus = _make_small_corpus(tmp_path, sessions=(1, 2))
    shutil.rmtree(corpus / "Session2" / "dialog" / "EmoEvaluation")
    with pytest.raises(DataPreparationError) as info:
        parse_iemocap(corpus)
    assert str(corpus.resolve() / "Session2") in str(info.value)
    assert "EmoEvaluation" in str(info.value)


def test_malformed_line_in_corpus_raises(tmp_path: Path) -> None:
    corpus = _make_small_corpus(tmp_path, sessions=(1,))
    annotation = corpus / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    with open(annotation, "a", encoding="utf-8") as handle:
        handle.write("[99.0 - 100.0]\tSes01F_impro01_F099\n")
    with pytest.raises(DataPreparationError) as info:
        prepare_iemocap(corpus, tmp_path / "save")
    assert "Ses01F_impro01.txt" in str(info.value)
    assert "Malformed" in str(info.value)
    assert not (tmp_path / "save" / "preparation.json").exists()


def _labelled_wav(corpus: Path) -> Path:
    return corpus / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M003.wav"


def test_missing_wav_raises_naming_wav_and_annotation(tmp_path: Path) -> None:
    corpus = _make_small_corpus(tmp_path, sessions=(1,))
    _labelled_wav(corpus).unlink()
    with pytest.raises(DataPreparationError) as info:
        parse_iemocap(corpus)
    message = str(info.value)
    assert "Ses01F_impro01_M003.wav" in message
    assert "does not exist" in message
    assert "Ses01F_impro01.txt" in message


def test_dropped_turn_without_wav_is_fine(tmp_path: Path) -> None:
    corpus = _make_small_corpus(tmp_path, sessions=(1,))
    (corpus / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M005.wav").unlink()  # fru
    assert len(parse_iemocap(corpus)) == _SMALL_4CLASS_PER_SESSION


def test_empty_wav_raises_naming_wav(tmp_path: Path) -> None:
    corpus = _make_small_corpus(tmp_path, sessions=(1,))
    sf.write(str(_labelled_wav(corpus)), np.zeros(0), SAMPLE_RATE, subtype="PCM_16")
    with pytest.raises(DataPreparationError) as info:
        parse_iemocap(corpus)
    message = str(info.value)
    assert "Ses01F_impro01_M003.wav" in message and "0 samples" in message
    assert "Ses01F_impro01.txt" in message


@pytest.mark.parametrize("content", [b"", b"RIFF\x10\x00\x00\x00WAVEjunkjunk", bytes(100)])
def test_corrupt_wav_raises_naming_wav(tmp_path: Path, content: bytes) -> None:
    corpus = _make_small_corpus(tmp_path, sessions=(1,))
    _labelled_wav(corpus).write_bytes(content)
    with pytest.raises(DataPreparationError) as info:
        parse_iemocap(corpus)
    assert str(_labelled_wav(corpus).resolve()) in str(info.value)


def test_wrong_sample_rate_raises_naming_wav(tmp_path: Path) -> None:
    corpus = _make_small_corpus(tmp_path, sessions=(1,))
    sf.write(str(_labelled_wav(corpus)), np.zeros(4410), 44100, subtype="PCM_16")
    with pytest.raises(DataPreparationError) as info:
        parse_iemocap(corpus)
    assert "Ses01F_impro01_M003.wav" in str(info.value) and "16000" in str(info.value)


def test_turn_of_another_session_raises(tmp_path: Path) -> None:
    corpus = _make_small_corpus(tmp_path, sessions=(1,))
    annotation = corpus / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    with open(annotation, "a", encoding="utf-8") as handle:
        handle.write(_turn_block("Ses02F_impro01_F000", "neu", 1.0, 2.0))
    with pytest.raises(DataPreparationError, match="Ses02F_impro01_F000"):
        parse_iemocap(corpus)


def test_audio_info_reports_samples_rate_channels(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    _write_wav(path, 0.25)
    assert audio_info(path) == (4000, SAMPLE_RATE, 1)


# --------------------------------------------------------------------------
# Partial copies and fold selection
# --------------------------------------------------------------------------


def test_partial_copy_warns_and_makes_one_fold_per_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = _make_small_corpus(tmp_path, sessions=(1, 2, 3))
    with caplog.at_level(logging.WARNING, logger="speechbrain_ptapt.data.iemocap"):
        paths = prepare_iemocap(corpus, tmp_path / "save")
    assert list(paths) == ["1", "2", "3"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Session4" in w and "Session5" in w and "partial" in w for w in warnings)
    assert not any(str(IEMOCAP_4CLASS_TOTAL) in w for w in warnings)
    for fold, fold_paths in paths.items():
        train, test = _load(fold_paths["train"]), _load(fold_paths["test"])
        assert {e["session"] for e in test.values()} == {int(fold)}
        assert {e["session"] for e in train.values()} == {1, 2, 3} - {int(fold)}


def test_requesting_a_missing_fold_raises(tmp_path: Path) -> None:
    corpus = _make_small_corpus(tmp_path, sessions=(1, 2, 3))
    with pytest.raises(DataPreparationError) as info:
        prepare_iemocap(corpus, tmp_path / "save", folds=[1, 5])
    assert str(corpus.resolve() / "Session5") in str(info.value)


@pytest.mark.parametrize("fold", [0, 6, "six", "fold_1"])
def test_invalid_fold_raises(small_corpus: Path, tmp_path: Path, fold: object) -> None:
    with pytest.raises(DataPreparationError, match="session number 1 ... 5"):
        prepare_iemocap(small_corpus, tmp_path / "save", folds=[fold])


# --------------------------------------------------------------------------
# Skip-if-done
# --------------------------------------------------------------------------


def _mtimes(save: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in save.rglob("*.json")}


def test_second_call_skips(
    small_corpus: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    save = tmp_path / "save"
    first = prepare_iemocap(small_corpus, save, folds=[1, 2])
    before = _mtimes(save)
    assert (save / "preparation.json") in before

    import speechbrain_ptapt.data.iemocap as iemocap

    def _fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a prepared folder was written again")

    monkeypatch.setattr(iemocap, "write_json_atomic", _fail)
    with caplog.at_level(logging.INFO, logger="speechbrain_ptapt.data.iemocap"):
        second = prepare_iemocap(small_corpus, save, folds=["2", "1"])
    assert second == first
    assert _mtimes(save) == before
    assert any("already prepared, skipping" in r.getMessage() for r in caplog.records)


def test_option_change_prepares_again(small_corpus: Path, tmp_path: Path) -> None:
    save = tmp_path / "save"
    prepare_iemocap(small_corpus, save, folds=[1])
    stamp = (save / "preparation.json").stat().st_mtime_ns
    paths = prepare_iemocap(small_corpus, save, folds=[1, 3])
    assert paths["3"]["test"].is_file()
    assert json.loads((save / "preparation.json").read_text())["folds"] == [1, 3]
    assert (save / "preparation.json").stat().st_mtime_ns >= stamp


def test_folder_change_prepares_again(small_corpus: Path, tmp_path: Path) -> None:
    save = tmp_path / "save"
    prepare_iemocap(small_corpus, save, folds=[1])
    moved = tmp_path / "copy" / "IEMOCAP_full_release"
    shutil.copytree(small_corpus, moved)
    paths = prepare_iemocap(moved, save, folds=[1])
    test = _load(paths["1"]["test"])
    assert all(entry["wav"].startswith(str(moved.resolve())) for entry in test.values())


def test_missing_output_prepares_again(small_corpus: Path, tmp_path: Path) -> None:
    save = tmp_path / "save"
    paths = prepare_iemocap(small_corpus, save, folds=[1])
    paths["1"]["train"].unlink()
    prepare_iemocap(small_corpus, save, folds=[1])
    assert paths["1"]["train"].is_file()


def test_skip_prep_only_returns_paths(tmp_path: Path) -> None:
    save = tmp_path / "save"
    paths = prepare_iemocap(tmp_path / "absent", save, folds=[2], skip_prep=True)
    assert paths == {"2": {"train": save / "fold_2/train.json", "test": save / "fold_2/test.json"}}
    assert not save.exists()
    assert list(prepare_iemocap(tmp_path / "absent", save, skip_prep=True)) == list("12345")


def test_fingerprint_and_record_helpers(tmp_path: Path) -> None:
    output = tmp_path / "out.json"
    write_json_atomic(output, {"a": 1})
    fingerprint = preparation_fingerprint(data_folder=tmp_path, folds=(1, 2))
    assert fingerprint["folds"] == [1, 2] and fingerprint["data_folder"] == str(tmp_path)
    assert not is_prepared(tmp_path, fingerprint, [output])
    mark_prepared(tmp_path, fingerprint)
    assert is_prepared(tmp_path, fingerprint, [output])
    assert not is_prepared(tmp_path, preparation_fingerprint(data_folder=tmp_path), [output])
    assert not is_prepared(tmp_path, fingerprint, [output, tmp_path / "other.json"])
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_interrupted_json_write_leaves_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "train.json"
    write_json_atomic(target, {"old": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"new": object()})  # fails half-way through the dump
    assert _load(target) == {"old": 1}
    assert sorted(os.listdir(tmp_path)) == ["train.json"]


def test_preparation_record_is_written_last(small_corpus: Path, tmp_path: Path) -> None:
    save = tmp_path / "save"
    prepare_iemocap(small_corpus, save, folds=[1, 2])
    times = _mtimes(save)
    record = times.pop(save / "preparation.json")
    assert len(times) == 4 and record >= max(times.values())


def test_recipe_script_runs_from_the_command_line(small_corpus: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("iemocap_prepare", RECIPE_PREPARE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.prepare_iemocap is prepare_iemocap
    assert module.main([str(small_corpus), str(tmp_path / "save"), "--folds", "4"]) == 0
    assert (tmp_path / "save" / "fold_4" / "train.json").is_file()
    assert module.main([str(tmp_path / "absent"), str(tmp_path / "save")]) == 1


# --------------------------------------------------------------------------
# The generated five-session corpus: counts and leave-one-session-out folds
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory):
    """A generated five-session corpus and its prepared manifests."""
    from speechbrain_ptapt.testing.synthetic import make_iemocap

    base = tmp_path_factory.mktemp("generated")
    corpus = make_iemocap(base / "corpus", seed=0, junk=True)
    paths = prepare_iemocap(corpus.root, base / "save")
    return corpus, paths


def _expected_labels(corpus) -> dict[str, str]:
    """Ground truth of the generator mapped through the 4-class rule."""
    return {u.id: IEMOCAP_LABELS[u.code] for u in corpus.utterances if u.code in IEMOCAP_LABELS}


def test_counts_per_class_match_the_generator(generated) -> None:
    corpus, paths = generated
    expected = _expected_labels(corpus)
    test_all: dict[str, dict] = {}
    for fold_paths in paths.values():
        test_all.update(_load(fold_paths["test"]))
    assert Counter(e["emo"] for e in test_all.values()) == Counter(expected.values())
    assert {uid: e["emo"] for uid, e in test_all.items()} == expected


def test_excited_is_merged_into_happy(generated) -> None:
    corpus, paths = generated
    excited = {u.id for u in corpus.utterances if u.code == "exc"}
    assert excited, "the generated corpus should hold excited turns"
    entries = {uid: e for fold in paths.values() for uid, e in _load(fold["test"]).items()}
    assert {entries[uid]["emo"] for uid in excited} == {"hap"}


def test_dropped_codes_never_appear(generated) -> None:
    corpus, paths = generated
    dropped = {u.id for u in corpus.utterances if u.code not in IEMOCAP_LABELS}
    assert dropped, "the generated corpus should hold turns outside the 4 classes"
    for fold_paths in paths.values():
        for path in fold_paths.values():
            manifest = _load(path)
            assert not dropped & manifest.keys()
            assert {e["emo"] for e in manifest.values()} <= set(IEMOCAP_CLASSES)


def test_speakers_and_durations_match_the_generator(generated) -> None:
    corpus, paths = generated
    truth = {u.id: u for u in corpus.utterances}
    for fold_paths in paths.values():
        for uid, entry in _load(fold_paths["test"]).items():
            assert entry["spk_id"] == truth[uid].speaker
            assert entry["duration"] == pytest.approx(truth[uid].duration, abs=1e-3)
            assert Path(entry["wav"]).resolve() == Path(truth[uid].path).resolve()


def test_test_session_never_in_training_manifest(generated) -> None:
    corpus, paths = generated
    expected = _expected_labels(corpus)
    assert list(paths) == ["1", "2", "3", "4", "5"]
    for fold, fold_paths in paths.items():
        train, test = _load(fold_paths["train"]), _load(fold_paths["test"])
        held_out = int(fold)
        assert {e["session"] for e in test.values()} == {held_out}
        assert {e["spk_id"] for e in test.values()} == {
            f"Ses{held_out:02d}_F",
            f"Ses{held_out:02d}_M",
        }
        assert held_out not in {e["session"] for e in train.values()}
        assert not {e["spk_id"] for e in train.values()} & {e["spk_id"] for e in test.values()}
        assert not train.keys() & test.keys()
        assert train.keys() | test.keys() == expected.keys()


def test_generated_junk_is_present_and_ignored(generated) -> None:
    corpus, paths = generated
    junk = list(corpus.root.rglob("._*")) + list(
        corpus.root.glob("Session1/dialog/EmoEvaluation/*/")
    )
    assert junk, "the generated corpus should carry AppleDouble files and evaluator folders"
    for fold_paths in paths.values():
        for entry in _load(fold_paths["train"]).values():
            assert not Path(entry["wav"]).name.startswith("._")
            assert "/sentences/wav/" in entry["wav"]


def test_partial_generated_copy_warns_and_makes_three_folds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from speechbrain_ptapt.testing.synthetic import make_iemocap

    corpus = make_iemocap(
        tmp_path / "corpus", sessions=(1, 2, 3), dialogs_per_session=1, turns_per_dialog=8,
        min_seconds=0.3, max_seconds=0.5,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="speechbrain_ptapt.data.iemocap"):
        paths = prepare_iemocap(corpus.root, tmp_path / "save")
    assert list(paths) == ["1", "2", "3"]
    assert any("Session4, Session5 missing" in r.getMessage() for r in caplog.records)
    test_ids = set().union(*(_load(p["test"]).keys() for p in paths.values()))
    assert test_ids == _expected_labels(corpus).keys()
    with pytest.raises(DataPreparationError, match="Session4"):
        prepare_iemocap(corpus.root, tmp_path / "save", folds=[4])
