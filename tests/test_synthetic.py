"""Tests of the synthetic IEMOCAP and SAVEE corpora: real layouts, labels, prosody."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechbrain_ptapt.testing import synthetic
from speechbrain_ptapt.testing.synthetic import (
    IEMOCAP_HEADER,
    SyntheticCorpus,
    make_iemocap,
    make_savee,
    make_voice,
    synthesize_utterance,
)

# Names as the real IEMOCAP release spells them.
DIALOG_RE = re.compile(
    r"^Ses0(?P<session>[1-5])(?P<marker>[FM])_(impro\d{2}[ab]?|script\d{2}_\d[ab]?)$"
)
UTTERANCE_RE = re.compile(r"^(?P<dialog>Ses0[1-5][FM]_\w+)_(?P<speaker>[FM])\d{3}$")
TURN_LINE_RE = re.compile(
    r"^\[(?P<start>\d+\.\d{4}) - (?P<end>\d+\.\d{4})\]\t(?P<name>Ses\w+)\t(?P<code>[a-z]{3})\t"
    r"\[(\d+\.\d{4}), (\d+\.\d{4}), (\d+\.\d{4})\]$"
)
CATEGORY_LINE_RE = re.compile(r"^C-[EFM]\d:\t[A-Z][A-Za-z ;]+;\t\(.*\)$")
ATTRIBUTE_LINE_RE = re.compile(r"^A-[EFM]\d:\tval \d; act \d; dom  \d;\t\(.*\)$")
SAVEE_ORIGINAL_RE = re.compile(r"^AudioData/(DC|JE|JK|KL)/(a|d|f|h|n|sa|su)(\d{2})\.wav$")
SAVEE_FLAT_RE = re.compile(r"^(DC|JE|JK|KL)_(a|d|f|h|n|sa|su)(\d{2})\.wav$")
FOUR_CLASS = {"neu", "hap", "exc", "sad", "ang"}


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCorpus:
    """The default synthetic IEMOCAP (5 sessions x 2 dialogs x 24 turns), with junk."""
    return make_iemocap(tmp_path_factory.mktemp("iemocap"))


@pytest.fixture(scope="module")
def savee_small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SyntheticCorpus]:
    """Small SAVEE corpora (3 per emotion, 5 neutral) in both layouts, same seed."""
    return {
        layout: make_savee(
            tmp_path_factory.mktemp(f"savee_{layout}"), layout=layout, per_emotion=3, neutral=5
        )
        for layout in ("original", "flat")
    }


def _tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, keyed by its relative path."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _sentence_wavs(root: Path) -> list[Path]:
    """The utterance wavs of an IEMOCAP tree (AppleDouble companions excluded)."""
    return [p for p in root.glob("Session*/sentences/wav/*/*.wav") if not p.name.startswith("._")]


def _turn_lines(annotation: Path) -> list[re.Match[str]]:
    """Parsed consensus turn lines of an annotation file."""
    lines = annotation.read_text().splitlines()
    return [m for m in map(TURN_LINE_RE.match, lines) if m]


def _annotation_files(root: Path) -> list[Path]:
    """The consensus annotation files (``EmoEvaluation/<dialog>.txt``)."""
    return [
        p for p in root.glob("Session*/dialog/EmoEvaluation/*.txt") if not p.name.startswith("._")
    ]


def _rms(path: Path) -> float:
    """Root-mean-square amplitude of a wav (full scale = 1)."""
    audio, _ = sf.read(path, dtype="float32")
    return float(np.sqrt(np.mean(audio**2)))


def _pitch_hz(path: Path) -> float:
    """Median autocorrelation pitch of the loudest 40 ms frames of a wav, in Hz."""
    audio, sr = sf.read(path, dtype="float64")
    frame = int(0.04 * sr)
    frames = np.lib.stride_tricks.sliding_window_view(audio, frame)[:: frame // 2]
    energy = np.mean(frames**2, axis=1)
    frames = frames[np.argsort(energy)[-10:]]
    frames = frames - frames.mean(axis=1, keepdims=True)
    spectrum = np.fft.rfft(frames, 2 * frame, axis=1)
    autocorr = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :frame]
    low, high = int(sr / 450), int(sr / 70)  # lags of 450 Hz and 70 Hz
    lags = low + np.argmax(autocorr[:, low:high], axis=1)
    return float(np.median(sr / lags))


# ----------------------------------------------------------------------------
# Determinism
# ----------------------------------------------------------------------------


def test_same_seed_writes_identical_files(tmp_path: Path) -> None:
    kwargs = dict(sessions=(1, 2), dialogs_per_session=1, turns_per_dialog=6, seed=3)
    first = make_iemocap(tmp_path / "a", **kwargs)
    second = make_iemocap(tmp_path / "b", **kwargs)
    assert _tree_bytes(first.root) == _tree_bytes(second.root)
    assert [(u.id, u.code, u.speaker, u.duration) for u in first.utterances] == [
        (u.id, u.code, u.speaker, u.duration) for u in second.utterances
    ]
    savee_a = make_savee(tmp_path / "c", per_emotion=1, neutral=2, seed=3)
    savee_b = make_savee(tmp_path / "d", per_emotion=1, neutral=2, seed=3)
    assert _tree_bytes(savee_a.root) == _tree_bytes(savee_b.root)


def test_different_seeds_give_different_corpora(tmp_path: Path) -> None:
    kwargs = dict(sessions=(1,), dialogs_per_session=2, turns_per_dialog=12)
    first = make_iemocap(tmp_path / "a", seed=0, **kwargs)
    second = make_iemocap(tmp_path / "b", seed=1, **kwargs)
    assert [u.code for u in first.utterances] != [u.code for u in second.utterances]
    same_named = {u.id: u.path for u in second.utterances}
    common = [u for u in first.utterances if u.id in same_named]
    assert common
    assert all(u.path.read_bytes() != same_named[u.id].read_bytes() for u in common)
    savee_a = make_savee(tmp_path / "c", per_emotion=1, neutral=1, seed=0)
    savee_b = make_savee(tmp_path / "d", per_emotion=1, neutral=1, seed=1)
    for a, b in zip(savee_a.utterances, savee_b.utterances):
        assert a.id == b.id and a.path.read_bytes() != b.path.read_bytes()


def test_savee_layouts_hold_the_same_audio(savee_small: dict[str, SyntheticCorpus]) -> None:
    original, flat = savee_small["original"], savee_small["flat"]
    assert [u.id for u in original.utterances] == [u.id for u in flat.utterances]
    for a, b in zip(original.utterances, flat.utterances):
        assert a.path.read_bytes() == b.path.read_bytes()


# ----------------------------------------------------------------------------
# IEMOCAP layout and annotation
# ----------------------------------------------------------------------------


def test_iemocap_root_is_the_full_release_folder(iemocap: SyntheticCorpus) -> None:
    assert iemocap.root.name == "IEMOCAP_full_release"
    assert iemocap.sample_rate == 16000
    assert sorted(p.name for p in iemocap.root.glob("Session*")) == [
        f"Session{n}" for n in range(1, 6)
    ]
    assert len(iemocap.utterances) == 5 * 2 * 24


def test_iemocap_wav_paths_follow_the_real_naming(iemocap: SyntheticCorpus) -> None:
    wavs = _sentence_wavs(iemocap.root)
    assert len(wavs) == len(iemocap.utterances)
    for wav in wavs:
        session_dir = wav.parents[3]
        dialog = DIALOG_RE.match(wav.parent.name)
        utterance = UTTERANCE_RE.match(wav.stem)
        assert dialog and utterance, wav
        assert session_dir.name == f"Session{dialog['session']}"
        assert utterance["dialog"] == wav.parent.name


def test_dialogs_mix_improvisations_scripts_and_marker_letters(iemocap: SyntheticCorpus) -> None:
    dialogs = {p.name for p in iemocap.root.glob("Session*/sentences/wav/Ses*") if p.is_dir()}
    assert any("_impro" in d for d in dialogs) and any("_script" in d for d in dialogs)
    assert {DIALOG_RE.match(d)["marker"] for d in dialogs} == {"F", "M"}


def test_iemocap_wavs_are_16k_mono_pcm16(iemocap: SyntheticCorpus) -> None:
    for utterance in iemocap.utterances:
        info = sf.info(utterance.path)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (
            16000,
            1,
            "PCM_16",
            "WAV",
        )
        assert info.frames / info.samplerate == pytest.approx(utterance.duration, abs=1e-9)
        assert 0.6 - 1e-3 <= utterance.duration <= 2.0 + 1e-3


def test_annotation_files_start_with_the_header_line(iemocap: SyntheticCorpus) -> None:
    annotations = _annotation_files(iemocap.root)
    assert len(annotations) == 10
    for annotation in annotations:
        lines = annotation.read_text().splitlines()
        assert lines[0] == IEMOCAP_HEADER
        assert lines[1] == ""


def test_annotation_blocks_have_turn_evaluator_and_blank_lines(iemocap: SyntheticCorpus) -> None:
    for annotation in _annotation_files(iemocap.root):
        blocks = annotation.read_text().split("\n\n")[1:]
        blocks = [b for b in blocks if b.strip()]
        assert len(blocks) == 24
        for block in blocks:
            turn, *evaluations = block.strip("\n").split("\n")
            assert TURN_LINE_RE.match(turn), turn
            assert any(CATEGORY_LINE_RE.match(line) for line in evaluations)
            assert any(ATTRIBUTE_LINE_RE.match(line) for line in evaluations)
            for line in evaluations:
                assert CATEGORY_LINE_RE.match(line) or ATTRIBUTE_LINE_RE.match(line), line


def test_every_turn_line_names_an_existing_wav_of_matching_duration(
    iemocap: SyntheticCorpus,
) -> None:
    seen = 0
    for annotation in _annotation_files(iemocap.root):
        dialog = annotation.stem
        previous_end = 0.0
        for turn in _turn_lines(annotation):
            wav = annotation.parents[2] / "sentences" / "wav" / dialog / f"{turn['name']}.wav"
            assert wav.is_file(), wav
            start, end = float(turn["start"]), float(turn["end"])
            assert start >= previous_end
            previous_end = end
            assert sf.info(wav).duration == pytest.approx(end - start, abs=2e-4)
            seen += 1
    assert seen == len(iemocap.utterances)


def test_public_parser_idiom_reads_exactly_the_turn_lines(iemocap: SyntheticCorpus) -> None:
    # Public IEMOCAP scripts take every line matching r"\[.+\]\n", drop the first
    # (the header) and split the rest on tabs into four fields.
    for annotation in _annotation_files(iemocap.root):
        lines = re.findall(r"\[.+\]\n", annotation.read_text())[1:]
        assert len(lines) == 24
        for line in lines:
            span, name, code, vad = line.strip().split("\t")
            start, end = (float(x) for x in span[1:-1].split("-"))
            assert end > start and name.startswith(annotation.stem) and len(code) == 3
            assert len([float(x) for x in vad[1:-1].split(",")]) == 3


def test_corpus_records_match_the_annotations(iemocap: SyntheticCorpus) -> None:
    annotated = {}
    for annotation in _annotation_files(iemocap.root):
        for turn in _turn_lines(annotation):
            annotated[turn["name"]] = turn["code"]
    recorded = {u.id: u for u in iemocap.utterances}
    assert set(recorded) == set(annotated)
    for name, utterance in recorded.items():
        assert utterance.code == annotated[name]
        assert utterance.path.is_absolute() and utterance.path.stem == name
        match = UTTERANCE_RE.match(name)
        assert utterance.speaker == f"{name[:5]}_{match['speaker']}"


def test_each_dialog_has_turns_from_both_actors(iemocap: SyntheticCorpus) -> None:
    letters: dict[str, set[str]] = {}
    for utterance in iemocap.utterances:
        match = UTTERANCE_RE.match(utterance.id)
        letters.setdefault(match["dialog"], set()).add(match["speaker"])
    assert len(letters) == 10
    assert all(found == {"F", "M"} for found in letters.values())
    assert len({u.speaker for u in iemocap.utterances}) == 10


def test_four_class_codes_dominate_but_dropped_codes_are_present(
    iemocap: SyntheticCorpus,
) -> None:
    codes = Counter(u.code for u in iemocap.utterances)
    assert set(codes) <= set(synthetic.IEMOCAP_CODES)
    assert FOUR_CLASS <= set(codes)
    assert {"fru", "xxx", "oth", "sur"} <= set(codes)
    assert sum(codes[c] for c in FOUR_CLASS) > 0.6 * len(iemocap.utterances)
    for session in range(1, 6):
        in_session = {u.code for u in iemocap.utterances if u.id.startswith(f"Ses0{session}")}
        assert FOUR_CLASS <= in_session


def test_junk_of_real_copies_is_present(iemocap: SyntheticCorpus) -> None:
    root = iemocap.root
    appledouble = list(root.rglob("._*"))
    assert any(p.name.endswith(".wav") and "sentences" in p.parts for p in appledouble)
    assert any(p.parent.name == "EmoEvaluation" and p.suffix == ".txt" for p in appledouble)
    assert all(p.read_bytes()[:4] == b"\x00\x05\x16\x07" for p in appledouble)
    for session in root.glob("Session*"):
        emo = session / "dialog" / "EmoEvaluation"
        assert list((emo / "Categorical").glob("Ses*_e*_cat.txt"))
        assert (emo / "Attribute").is_dir() and (emo / "Self-evaluation").is_dir()
        assert list(session.glob("sentences/wav/*/*.pk"))
        assert list(session.rglob(".DS_Store"))
        assert list(session.glob("dialog/wav/Ses*.wav"))


def test_no_junk_when_disabled(tmp_path: Path) -> None:
    corpus = make_iemocap(
        tmp_path, sessions=(2,), dialogs_per_session=2, turns_per_dialog=4, junk=False
    )
    files = [p for p in corpus.root.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith(".")]
    emo = corpus.root / "Session2" / "dialog" / "EmoEvaluation"
    assert all(p.is_file() and p.suffix == ".txt" for p in emo.iterdir())
    assert all(p.suffix == ".wav" for p in corpus.root.glob("Session2/sentences/wav/*/*"))
    assert len(_sentence_wavs(corpus.root)) == len(corpus.utterances) == 8


# ----------------------------------------------------------------------------
# SAVEE
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["original", "flat"])
def test_savee_layout_and_counts(savee_small: dict[str, SyntheticCorpus], layout: str) -> None:
    corpus = savee_small[layout]
    pattern = SAVEE_ORIGINAL_RE if layout == "original" else SAVEE_FLAT_RE
    if layout == "original":
        assert (corpus.root / "AudioData").is_dir()
    else:
        assert corpus.root.name == "ALL"
    wavs = sorted(p for p in corpus.root.rglob("*") if p.is_file())
    assert len(wavs) == len(corpus.utterances) == 4 * (6 * 3 + 5)
    counts: Counter[tuple[str, str]] = Counter()
    numbers: dict[tuple[str, str], set[int]] = {}
    for wav in wavs:
        match = pattern.match(str(wav.relative_to(corpus.root)).replace("\\", "/"))
        assert match, wav
        speaker, code, number = match.groups()
        counts[(speaker, code)] += 1
        numbers.setdefault((speaker, code), set()).add(int(number))
        info = sf.info(wav)
        assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_16")
    for speaker in ("DC", "JE", "JK", "KL"):
        for code in ("a", "d", "f", "h", "sa", "su"):
            assert counts[(speaker, code)] == 3
            assert numbers[(speaker, code)] == {1, 2, 3}
        assert counts[(speaker, "n")] == 5
        assert numbers[(speaker, "n")] == set(range(1, 6))
    assert {u.code for u in corpus.utterances} >= {"sa", "su"}


@pytest.mark.parametrize("layout", ["original", "flat"])
def test_savee_records_name_speaker_and_stem(
    savee_small: dict[str, SyntheticCorpus], layout: str
) -> None:
    corpus = savee_small[layout]
    assert corpus.sample_rate == 44100
    for utterance in corpus.utterances:
        speaker, stem = utterance.id.split("_")
        assert utterance.speaker == speaker
        assert re.fullmatch(rf"{utterance.code}\d{{2}}", stem)
        assert utterance.path.is_absolute() and utterance.path.is_file()
        expected = f"{stem}.wav" if layout == "original" else f"{utterance.id}.wav"
        assert utterance.path.name == expected


def test_default_savee_numbers_neutral_to_thirty(tmp_path: Path) -> None:
    corpus = make_savee(
        tmp_path, speakers=("JK",), min_seconds=0.2, max_seconds=0.3, sample_rate=8000
    )
    codes = Counter(u.code for u in corpus.utterances)
    assert codes == {"n": 30, "a": 15, "d": 15, "f": 15, "h": 15, "sa": 15, "su": 15}
    assert (tmp_path / "AudioData" / "JK" / "n30.wav").is_file()
    assert (tmp_path / "AudioData" / "JK" / "su15.wav").is_file()


# ----------------------------------------------------------------------------
# Audio and prosody
# ----------------------------------------------------------------------------


def test_synthesized_utterance_is_float32_in_range_and_exact_length() -> None:
    voice = make_voice("Ses01_F", "F", np.random.default_rng(0))
    for code in ("ang", "sad", "xxx", "oth", "su", "neutral"):
        audio = synthesize_utterance(code, voice, 1.25, 16000, np.random.default_rng(1))
        assert audio.dtype == np.float32 and audio.shape == (20000,)
        assert np.all(np.abs(audio) <= 1.0) and np.sqrt(np.mean(audio**2)) > 1e-3
    again = synthesize_utterance("ang", voice, 1.25, 16000, np.random.default_rng(1))
    assert np.array_equal(
        again, synthesize_utterance("ang", voice, 1.25, 16000, np.random.default_rng(1))
    )
    with pytest.raises(ValueError):
        synthesize_utterance("bored", voice, 1.0, 16000, np.random.default_rng(0))


def test_angry_utterances_are_louder_than_sad_ones(iemocap: SyntheticCorpus) -> None:
    rms = {code: [] for code in ("ang", "neu", "sad")}
    for utterance in iemocap.utterances:
        if utterance.code in rms:
            rms[utterance.code].append(_rms(utterance.path))
    assert np.mean(rms["ang"]) > np.mean(rms["neu"]) > np.mean(rms["sad"])
    # Distributions overlap: the quietest angry turn is quieter than the loudest neutral one.
    assert min(rms["ang"]) < max(rms["neu"])


def test_female_speakers_have_higher_pitch_than_male_ones(iemocap: SyntheticCorpus) -> None:
    pitch = {"F": [], "M": []}
    for utterance in iemocap.utterances[::3]:
        pitch[utterance.speaker[-1]].append(_pitch_hz(utterance.path))
    assert np.median(pitch["F"]) > 1.4 * np.median(pitch["M"])
    assert 150 < np.median(pitch["F"]) < 320 and 80 < np.median(pitch["M"]) < 180


def test_simple_prosody_features_separate_classes_but_not_perfectly(
    iemocap: SyntheticCorpus,
) -> None:
    # Nearest class centroid on (log RMS, log pitch) with each speaker's
    # features standardised; train on sessions 1-4, test on session 5.
    rows = [u for u in iemocap.utterances if u.code in FOUR_CLASS]
    labels = np.array(["hap" if u.code == "exc" else u.code for u in rows])
    features = np.array([[np.log(_rms(u.path)), np.log(_pitch_hz(u.path))] for u in rows])
    speakers = np.array([u.speaker for u in rows])
    for speaker in set(speakers):
        mine = speakers == speaker
        features[mine] = (features[mine] - features[mine].mean(0)) / features[mine].std(0)
    test = np.char.startswith(speakers, "Ses05")
    classes = sorted(set(labels))
    centroids = np.array([features[~test & (labels == c)].mean(0) for c in classes])
    distance = ((features[test, None, :] - centroids[None]) ** 2).sum(-1)
    predicted = np.array(classes)[distance.argmin(1)]
    recall = [np.mean(predicted[labels[test] == c] == c) for c in classes]
    assert 0.4 < np.mean(recall) < 0.95


def test_command_line_prints_counts_per_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = synthetic.main(
        [
            "savee",
            str(tmp_path),
            "--layout",
            "flat",
            "--per_emotion",
            "2",
            "--neutral",
            "3",
            "--seed",
            "5",
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert "a 8" in out and "n 12" in out and "sa 8" in out and "su 8" in out
    assert len(list((tmp_path / "ALL").glob("*.wav"))) == 4 * (6 * 2 + 3)
    status = synthetic.main(
        ["iemocap", str(tmp_path), "--turns_per_dialog", "4", "--dialogs_per_session", "1"]
    )
    assert status == 0
    assert "20 utterances" in capsys.readouterr().out
