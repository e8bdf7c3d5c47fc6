"""Every kind of bad input, and the behaviour chosen for each.

The rule: input that makes results wrong or impossible stops the command with one
line, ``error: ...`` (exit status 1, no traceback), naming the file, folder or
option and saying what to do; input a user would want to go on with is used or
left out with a logged warning; nothing already computed is lost.

===================================================  ==========================================
bad input                                            behaviour
===================================================  ==========================================
data folder missing, empty, or the other corpus      error naming the folder and the layout
requested session / speaker missing                  error listing the ones present
session / speaker missing but not requested          warning, the folds present run [1]_
annotation line truncated / unknown emotion code     error naming file, line number and line
odd whitespace in annotation lines (spaces, CRLF,    parsed exactly like the release's tabs
BOM, padding inside brackets)
annotation file empty                                warning naming it, its dialog left out
every annotation file of a held-out session empty    error: the fold has no test utterance
wav not audio / 0 samples                            error naming the wav (IEMOCAP and SAVEE)
NaN samples                                          SAVEE: error at preparation; IEMOCAP
                                                     (headers only): error when first read,
                                                     earlier folds and checkpoints kept
stereo / 8 kHz / 48 kHz                              IEMOCAP: error (the release is 16 kHz
                                                     mono); SAVEE and inference: converted
silent file                                          valid audio: trains, no NaN
0.05 s file                                          shorter than a mask span and than the
                                                     receptive field: padded, trains
60 s file                                            cropped to ``max_train_seconds`` in
                                                     training, evaluated whole
AppleDouble ``._*``, ``__MACOSX/``, ``.DS_Store``    ignored; stray SAVEE wavs warned about
pseudo-labels of another run (other manifest,        recomputed from their fingerprint, or
frame geometry, K; unreadable fingerprint)           refused before training (error)
unknown override / wrong type / out of range /       error naming the option, the value and
malformed / ``--data_folder`` missing                what is expected, before anything runs
hub id not reachable offline                         error naming the id, suggesting a folder
file that is not a wav2vec 1.0 checkpoint            error naming the file
===================================================  ==========================================

.. [1] Partial copies: ``test_partial_copy_warns_and_makes_one_fold_per_session``
   (test_iemocap_prepare.py) and ``test_a_partial_copy_warns_and_goes_on``
   (test_savee.py); errors of the
   preparation functions themselves are tested in those modules too. Here every
   error goes through a recipe's command line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO, run_recipe_script
from test_pseudo_labels import StandInFrameModel
from transformers import Wav2Vec2Config

from speechbrain_ptapt.data.dataio import emotion_dataset, make_label_encoder
from speechbrain_ptapt.data.iemocap import parse_annotation_file, prepare_iemocap
from speechbrain_ptapt.data.savee import prepare_savee
from speechbrain_ptapt.deploy.inference import load_audio
from speechbrain_ptapt.models.backbone import Wav2Vec2Backbone
from speechbrain_ptapt.models.classifier import EmotionClassifier
from speechbrain_ptapt.models.frame_emotion import build_frame_model, frame_emotion_losses
from speechbrain_ptapt.models.masking import ChannelMask, TimeMask
from speechbrain_ptapt.models.pretraining import Wav2Vec2Pretraining
from speechbrain_ptapt.models.pseudo_label_heads import build_ptapt_model
from speechbrain_ptapt.protocol.errors import PtaptError
from speechbrain_ptapt.protocol.experiment import load_hparams, parse_recipe_arguments
from speechbrain_ptapt.protocol.hparams_check import HparamsError, check_overrides
from speechbrain_ptapt.pseudo_labels.kmeans import KMeansSettings
from speechbrain_ptapt.pseudo_labels.labels import (
    FINGERPRINT_FILE,
    PseudoLabelMismatchError,
    PseudoLabelStore,
    frame_geometry,
    prepare_pseudo_labels,
)
from speechbrain_ptapt.stages.ptapt import train_ptapt
from speechbrain_ptapt.testing.synthetic import make_iemocap, make_savee

SR = 16000  # Hz
CLASSES = ["neu", "hap", "sad", "ang"]


@dataclass(frozen=True)
class Corpora:
    """Small synthetic corpora (read-only: tests change copies)."""

    iemocap: Path  # IEMOCAP_full_release, Session1-2, two dialogs of four turns each
    savee: Path  # SAVEE original layout, 8 utterances per speaker


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Corpora:
    root = tmp_path_factory.mktemp("bad_input_corpora")
    iemocap = make_iemocap(
        root / "iemocap", sessions=(1, 2), dialogs_per_session=2, turns_per_dialog=4,
        min_seconds=0.4, max_seconds=0.8, junk=False,
    )
    savee = make_savee(
        root / "savee", per_emotion=1, neutral=1, min_seconds=0.3, max_seconds=0.5
    )
    return Corpora(iemocap.root, savee.root)


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data" / folder.name
    shutil.copytree(folder, target)
    return target


def _annotations(iemocap: Path, session: int) -> list[Path]:
    return sorted((iemocap / f"Session{session}" / "dialog" / "EmoEvaluation").glob("Ses*.txt"))


def _labelled_wav(iemocap: Path, session: int = 2) -> Path:
    """The wav of the first 4-class turn of a session."""
    for annotation in _annotations(iemocap, session):
        for turn, code, _, _ in parse_annotation_file(annotation):
            if code in {"neu", "hap", "exc", "sad", "ang"}:
                dialog = turn.rsplit("_", 1)[0]
                return iemocap / f"Session{session}" / "sentences" / "wav" / dialog / f"{turn}.wav"
    raise AssertionError("no 4-class turn")


def _tone(seconds: float, rate: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    wave = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def _recipe_error(dataset: str, method: str, args: list[str], monkeypatch) -> str:
    """Runs a recipe in this process as its command line would; returns the one-line
    ``error: ...`` it exits with (``sys.exit`` with a message: exit status 1)."""
    script = REPO / "recipes" / dataset / f"train_{method}.py"
    with monkeypatch.context() as m, pytest.raises(SystemExit) as exited:
        run_recipe_script(script, [f"hparams/{method}.yaml", *args], m)
    message = exited.value.code
    assert isinstance(message, str), f"exit code {message!r} is not a message"
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def _common(tmp_path: Path, model: Path | str) -> list[str]:
    return [
        f"--output_folder={tmp_path / 'out'}", f"--wav2vec2_hub={model}",
        "--device=cpu", "--noprogressbar", "--runs=1",
    ]


# ----------------------------------------------------------------------------
# Corpus folders, annotations and audio the preparation must refuse
# ----------------------------------------------------------------------------


def _cut_first_turn_line(iemocap: Path) -> None:
    path = _annotations(iemocap, 2)[0]
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if line.startswith("["))
    lines[index] = lines[index][:30] + "\n"  # a copy cut short mid-line
    path.write_text("".join(lines), encoding="utf-8")


def _unknown_code(iemocap: Path) -> None:
    path = _annotations(iemocap, 2)[0]
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if line.startswith("["))
    fields = lines[index].split("\t")
    fields[2] = "Joy"
    lines[index] = "\t".join(fields)
    path.write_text("".join(lines), encoding="utf-8")


def _empty_session(iemocap: Path) -> None:
    for path in _annotations(iemocap, 2):
        path.write_bytes(b"")


def _write_labelled(iemocap: Path, data: np.ndarray | bytes, rate: int = SR) -> None:
    wav = _labelled_wav(iemocap)
    if isinstance(data, bytes):
        wav.write_bytes(data)
    else:
        sf.write(str(wav), data, rate, subtype="PCM_16")


def _savee_wav(savee: Path, data: np.ndarray | bytes, subtype: str = "PCM_16") -> None:
    wav = savee / "AudioData" / "JE" / "h01.wav"
    if isinstance(data, bytes):
        wav.write_bytes(data)
    else:
        sf.write(str(wav), data, 44100, subtype=subtype)


def _nan_tone() -> np.ndarray:
    wave = _tone(0.3, 44100)
    wave[100] = np.nan
    return wave


def _only_speaker(savee: Path, keep: str) -> None:
    for folder in (savee / "AudioData").iterdir():
        if folder.name != keep:
            shutil.rmtree(folder)


def _partial_savee(savee: Path) -> None:
    for speaker in ("JK", "KL"):
        shutil.rmtree(savee / "AudioData" / speaker)


#: (id, corpus, change to a copy of it or the data folder to use, extra args, expected)
DATA_ERRORS: list[tuple[str, str, Callable[[Path], object] | str, list[str], list[str]]] = [
    ("iemocap-folder-missing", "IEMOCAP", "missing", [], ["does not exist", "Session1"]),
    ("iemocap-folder-empty", "IEMOCAP", "empty", [], ["No Session1", "IEMOCAP corpus?"]),
    ("iemocap-recipe-on-savee", "IEMOCAP", "other", [], ["No Session1", "IEMOCAP corpus?"]),
    ("savee-folder-missing", "SAVEE", "missing", [], ["does not exist", "AudioData"]),
    ("savee-folder-empty", "SAVEE", "empty", [], ["No SAVEE audio", "SAVEE corpus?"]),
    ("savee-recipe-on-iemocap", "SAVEE", "other", [], ["No SAVEE audio", "SAVEE corpus?"]),
    ("iemocap-session-missing", "IEMOCAP", lambda d: None, ["--folds=[3]"],
     ["Session3 does not exist", "sessions present: Session1, Session2"]),
    ("iemocap-fold-not-a-session", "IEMOCAP", lambda d: None, ["--folds=7"],
     ["Invalid IEMOCAP fold '7'", "1 ... 5"]),
    ("savee-speaker-missing", "SAVEE", _partial_savee, ["--folds=[KL]"],
     ["KL requested", "speakers present: DC, JE"]),
    ("savee-fold-not-a-speaker", "SAVEE", lambda d: None, ["--folds=[XX]"],
     ["Invalid SAVEE fold 'XX'", "DC, JE, JK, KL"]),
    ("savee-single-speaker", "SAVEE", lambda d: _only_speaker(d, "KL"), ["--folds=[KL]"],
     ["only speaker KL", "at least two speakers"]),
    ("annotation-line-truncated", "IEMOCAP", _cut_first_turn_line, [],
     ["Malformed turn line", "Ses02", "line "]),
    ("annotation-unknown-code", "IEMOCAP", _unknown_code, [],
     ["Unknown emotion code 'Joy'", "Ses02", "expected one of"]),
    ("annotations-of-held-out-session-empty", "IEMOCAP", _empty_session, ["--folds=[2]"],
     ["fold 2 has no test utterance", "Session2", "EmoEvaluation"]),
    ("iemocap-wav-not-audio", "IEMOCAP", lambda d: _write_labelled(d, b"%PDF-1.4 a report"), [],
     ["Ses02", "unreadable or corrupt"]),
    ("iemocap-wav-0-samples", "IEMOCAP", lambda d: _write_labelled(d, np.zeros(0)), [],
     ["Ses02", "0 samples"]),
    ("iemocap-wav-stereo", "IEMOCAP", lambda d: _write_labelled(d, _tone(0.5, channels=2)), [],
     ["Ses02", "2 channel(s)", "16000 Hz mono"]),
    ("iemocap-wav-8k", "IEMOCAP", lambda d: _write_labelled(d, _tone(0.5, 8000), 8000), [],
     ["Ses02", "8000 Hz", "convert"]),
    ("iemocap-wav-48k", "IEMOCAP", lambda d: _write_labelled(d, _tone(0.5, 48000), 48000), [],
     ["Ses02", "48000 Hz", "convert"]),
    ("savee-wav-not-audio", "SAVEE", lambda d: _savee_wav(d, b"not audio at all"), [],
     ["h01.wav", "unreadable or corrupt"]),
    ("savee-wav-0-samples", "SAVEE", lambda d: _savee_wav(d, np.zeros(0)), [],
     ["h01.wav", "0 samples"]),
    ("savee-wav-nan", "SAVEE", lambda d: _savee_wav(d, _nan_tone(), "FLOAT"), [],
     ["h01.wav", "NaN"]),
    ("savee-unknown-code-in-name",
     "SAVEE", lambda d: shutil.copy(d / "AudioData/DC/a01.wav", d / "AudioData/DC/x01.wav"),
     [], ["x01.wav", "unknown emotion code 'x'"]),
]


@pytest.mark.parametrize(
    ("corpus", "change", "extra", "expected"),
    [case[1:] for case in DATA_ERRORS],
    ids=[case[0] for case in DATA_ERRORS],
)
def test_bad_corpus_is_one_error_line_naming_it(
    corpus, change, extra, expected, corpora, tiny_wav2vec2, tmp_path, monkeypatch
):
    """Refused at preparation: one line naming the folder / file and what to do."""
    own, other = corpora.iemocap, corpora.savee
    if corpus == "SAVEE":
        own, other = other, own
    if change == "missing":
        data = tmp_path / "nowhere"
    elif change == "empty":
        data = tmp_path / "empty"
        data.mkdir()
    elif change == "other":
        data = other
    else:
        data = _copy(own, tmp_path)
        change(data)
    if not any(arg.startswith("--folds") for arg in extra):
        extra = [*extra, "--folds=[1,2]" if corpus == "IEMOCAP" else "--folds=[DC]"]
    args = [f"--data_folder={data}", *_common(tmp_path, tiny_wav2vec2), *extra]
    message = _recipe_error(corpus, "vft", args, monkeypatch)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    if change in ("missing", "empty", "other"):
        assert str(data) in message
    assert not (tmp_path / "out" / "manifests" / "preparation.json").exists()


# ----------------------------------------------------------------------------
# Corpus content that is odd but usable
# ----------------------------------------------------------------------------


def _entries(paths: dict) -> dict[str, dict]:
    """Every manifest entry of every fold, the wav path reduced to its name."""
    out = {}
    for fold, split in paths.items():
        for part, path in split.items():
            for utt, entry in json.loads(Path(path).read_text()).items():
                out[f"{fold}/{part}/{utt}"] = {**entry, "wav": Path(entry["wav"]).name}
    return out


def _odd_whitespace(text: str) -> str:
    """The release's annotation text as copies mangle it: spaces for tabs, padding
    inside brackets, leading and trailing blanks, CRLF endings, and no header line
    but a byte-order mark before the first turn line."""
    lines = []
    for line in text.splitlines():
        if line.startswith("%"):
            continue
        if line.startswith("["):
            line = "  " + line.replace("\t", "   ").replace("[", "[ ").replace("]", " ]") + " \t"
        lines.append(line)
    return "\ufeff" + "\r\n".join(lines) + "\r\n"


def test_annotations_with_odd_whitespace_parse_like_the_release(corpora, tmp_path):
    """Odd whitespace is not an error: the manifests equal the clean copy's."""
    clean = prepare_iemocap(corpora.iemocap, tmp_path / "clean")
    data = _copy(corpora.iemocap, tmp_path)
    for session in (1, 2):
        for path in _annotations(data, session):
            path.write_bytes(_odd_whitespace(path.read_text(encoding="utf-8")).encode("utf-8"))
    assert _entries(prepare_iemocap(data, tmp_path / "odd")) == _entries(clean)


def test_an_empty_annotation_file_is_a_logged_skip_of_its_dialog(corpora, tmp_path, caplog):
    data = _copy(corpora.iemocap, tmp_path)
    emptied = _annotations(data, 1)[0]
    emptied.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="speechbrain_ptapt.data.iemocap"):
        paths = prepare_iemocap(data, tmp_path / "save")
    assert any(str(emptied) in r.getMessage() and "left out" in r.getMessage()
               for r in caplog.records)
    test = json.loads(paths["1"]["test"].read_text())
    assert test and not any(utt.startswith(emptied.stem) for utt in test)


def _add_junk(root: Path) -> None:
    """macOS junk as real copies carry it, everywhere in a corpus folder."""
    appledouble = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(40)
    for path in [p for p in root.rglob("*") if p.is_file() or p.is_dir()]:
        (path.parent / f"._{path.name}").write_bytes(appledouble)
        (path.parent / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    mirror = root / "__MACOSX"
    for path in [p for p in root.rglob("*.wav") if not p.name.startswith("._")][:4]:
        junk = mirror / path.relative_to(root).parent / f"._{path.name}"
        junk.parent.mkdir(parents=True, exist_ok=True)
        junk.write_bytes(appledouble)


@pytest.mark.parametrize("corpus", ["IEMOCAP", "SAVEE"])
def test_appledouble_junk_everywhere_changes_nothing(corpus, corpora, tmp_path):
    prepare = prepare_iemocap if corpus == "IEMOCAP" else prepare_savee
    source = corpora.iemocap if corpus == "IEMOCAP" else corpora.savee
    clean = _entries(prepare(source, tmp_path / "clean"))
    data = _copy(source, tmp_path)
    _add_junk(data)
    assert _entries(prepare(data, tmp_path / "junk")) == clean


@pytest.mark.parametrize(
    ("kind", "rate", "channels"), [("stereo", 44100, 2), ("8 kHz", 8000, 1), ("48 kHz", 48000, 1)]
)
def test_savee_converts_other_rates_and_channels_with_a_counted_warning(
    kind, rate, channels, corpora, tmp_path, caplog
):
    data = _copy(corpora.savee, tmp_path)
    sf.write(str(data / "AudioData/KL/a01.wav"), _tone(0.4, rate, channels), rate)
    with caplog.at_level(logging.INFO, logger="speechbrain_ptapt.data.savee"):
        paths = prepare_savee(data, tmp_path / "save", folds=["KL"])
    copy = json.loads(paths["KL"]["test"].read_text())["KL_a01"]
    info = sf.info(copy["wav"])
    assert (info.samplerate, info.channels) == (SR, 1)
    assert copy["duration"] == pytest.approx(0.4, abs=1e-3)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"1 source file(s) at {rate} Hz with {channels} channel(s)" in w for w in warned)


# ----------------------------------------------------------------------------
# Audio that is unusual but valid: read, trained on and evaluated
# ----------------------------------------------------------------------------

#: kind -> (seconds, file sampling rate, channels, samples expected at 16 kHz)
AUDIO_KINDS = {
    "silent": (1.0, SR, 1, SR),
    "0.05 s": (0.05, SR, 1, 800),
    "60 s": (60.0, SR, 1, 60 * SR),
    "stereo": (1.0, SR, 2, SR),
    "8 kHz": (1.0, 8000, 1, SR),
    "48 kHz": (1.0, 48000, 1, SR),
}


@pytest.fixture(scope="module")
def classifier(tiny_wav2vec2) -> EmotionClassifier:
    torch.manual_seed(0)
    backbone = Wav2Vec2Backbone(str(tiny_wav2vec2))
    return EmotionClassifier(backbone, 4, TimeMask(0.08, 15, 2), ChannelMask(0.05, 8, 1))


@pytest.mark.parametrize("kind", list(AUDIO_KINDS))
def test_unusual_audio_is_converted_cropped_for_training_and_scored_whole(
    kind, classifier, tmp_path
):
    seconds, rate, channels, expected = AUDIO_KINDS[kind]
    wav = tmp_path / "x.wav"
    data = np.zeros(int(seconds * rate)) if kind == "silent" else _tone(seconds, rate, channels)
    sf.write(str(wav), data, rate, subtype="PCM_16")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"u": {"wav": str(wav), "duration": seconds, "emo": "sad"}}))
    encoder = make_label_encoder(CLASSES)

    train_item = emotion_dataset(manifest, encoder, SR, max_seconds=10.0)[0]
    whole = emotion_dataset(manifest, encoder, SR, max_seconds=None)[0]["sig"]
    assert whole.dim() == 1 and abs(whole.shape[0] - expected) <= 1
    assert train_item["sig"].shape[0] == min(whole.shape[0], 10 * SR)

    classifier.train()
    classifier.zero_grad()
    logits = classifier(train_item["sig"][None], torch.ones(1))
    torch.nn.functional.cross_entropy(logits, train_item["emo_encoded"]).backward()
    grads = [p.grad for p in classifier.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    classifier.eval()
    with torch.no_grad():
        assert torch.isfinite(classifier(whole[None], torch.ones(1))).all()


@pytest.fixture(scope="module")
def adaptation_models(tiny_wav2vec2) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    source = str(tiny_wav2vec2)
    return {
        "tapt": Wav2Vec2Pretraining(source),
        "ptapt": build_ptapt_model(source, None, [4, 8]),
        "frame": build_frame_model(
            "w2v2_cnn", 4, wav2vec2_hub=source, time_mask=TimeMask(0.08, 15, 2),
            feature_dim=16, lstm_dim=16, head_dim=8,
        ),
    }


@pytest.mark.parametrize("stage", ["tapt", "ptapt", "frame"])
@pytest.mark.parametrize("kind", ["silent", "0.05 s"])
def test_silent_and_very_short_audio_train_every_adaptation_stage(stage, kind, adaptation_models):
    """TAPT, P-TAPT phase 2 and phase 1 get a finite loss and finite gradients."""
    model = adaptation_models[stage].train()
    model.zero_grad()
    samples = SR if kind == "silent" else 800
    wavs = torch.zeros(2, samples) if kind == "silent" else 0.1 * torch.randn(2, samples)
    lens = torch.ones(2)
    if stage == "tapt":
        loss = model(wavs, lens).per_masked_frame
    elif stage == "ptapt":
        frames = int(model.backbone.frame_lengths(torch.tensor(samples)))
        loss = model(wavs, lens, torch.zeros(2, frames, 2, dtype=torch.long))["loss"]
    else:
        loss = sum(frame_emotion_losses(model(wavs, lens), torch.tensor([0, 1])))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_a_bad_file_found_in_fold_2_keeps_fold_1_and_fold_2s_training(
    corpora, tiny_wav2vec2, tmp_path, monkeypatch
):
    """IEMOCAP preparation reads headers only, so NaN samples are found when the file
    is first read (here: fold 2's evaluation). The error names the file; fold 1's
    result and summary and fold 2's checkpoint stay, so a rerun after the fix
    resumes instead of starting over."""
    data = _copy(corpora.iemocap, tmp_path)
    out = tmp_path / "out"
    args = [
        "hparams/vft.yaml", f"--data_folder={data}", *_common(tmp_path, tiny_wav2vec2),
        "--number_of_epochs=1", "--batch_size=8", "--channel_mask_length=8",
    ]
    script = REPO / "recipes" / "IEMOCAP" / "train_vft.py"
    with monkeypatch.context() as m:
        run_recipe_script(script, [*args, "--folds=[1]"], m)
    fold_1 = out / "fold_1" / "seed_1986" / "result.json"
    result_before = fold_1.read_bytes()
    ua_before = json.loads((out / "summary.json").read_text())["folds"]["1"]["ua"]

    bad = _labelled_wav(data, session=2)
    samples, rate = sf.read(str(bad), dtype="float32")
    samples[len(samples) // 2] = np.nan
    sf.write(str(bad), samples, rate, subtype="FLOAT")
    message = _recipe_error("IEMOCAP", "vft", [*args[1:], "--folds=[1,2]"], monkeypatch)

    assert str(bad) in message and "NaN" in message and "replace the file" in message
    assert fold_1.read_bytes() == result_before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folds"]["1"]["ua"] == ua_before and "2" not in summary["folds"]
    assert any((out / "fold_2" / "seed_1986" / "save").glob("CKPT*"))
    assert not (out / "fold_2" / "seed_1986" / "result.json").exists()


# ----------------------------------------------------------------------------
# Pseudo-labels from another run
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def label_manifest(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("label_audio")
    entries = {}
    for i, seconds in enumerate((0.5, 0.7, 0.9, 1.1)):
        path = folder / f"u{i}.wav"
        sf.write(str(path), _tone(seconds) * (1 + i), SR, subtype="PCM_16")
        entries[f"u{i}"] = {"wav": str(path), "duration": seconds, "emo": CLASSES[i]}
    manifest = folder / "train.json"
    manifest.write_text(json.dumps(entries))
    return manifest


def _half_hop_config(tiny_wav2vec2: Path) -> Wav2Vec2Config:
    """The tiny config with another frame geometry (10 ms hop instead of 20 ms)."""
    config = Wav2Vec2Config.from_pretrained(str(tiny_wav2vec2))
    config.conv_stride = [5, 2, 2, 2, 2, 2, 1]
    return config


@pytest.mark.parametrize("stale", ["other frame geometry", "unreadable fingerprint"])
def test_labels_left_by_another_run_are_recomputed(stale, label_manifest, tiny_wav2vec2, tmp_path):
    out = tmp_path / "pseudo_labels"
    config = Wav2Vec2Config.from_pretrained(str(tiny_wav2vec2))
    settings = {"n_clusters": [2, 3], "kmeans": KMeansSettings(iterations=2)}
    model = StandInFrameModel()
    other = _half_hop_config(tiny_wav2vec2) if stale == "other frame geometry" else config
    prepare_pseudo_labels(model, label_manifest, out, wav2vec2_config=other, **settings)
    if stale == "unreadable fingerprint":
        (out / FINGERPRINT_FILE).write_text('{"format": 1, "featu')  # cut short
    prepare_pseudo_labels(model, label_manifest, out, wav2vec2_config=config, **settings)
    store = PseudoLabelStore(out)
    assert store.frame_geometry == frame_geometry(config)
    assert json.loads((out / FINGERPRINT_FILE).read_text())["frame_geometry"] == frame_geometry(
        config
    )
    for utt, entry in json.loads(label_manifest.read_text()).items():
        assert store[utt].shape[0] == store.frame_count(load_audio(entry["wav"]).shape[0])


@pytest.mark.parametrize("differs", ["manifest", "frame geometry", "K"])
def test_labels_that_do_not_fit_are_refused_before_training(
    differs, label_manifest, tiny_wav2vec2, tmp_path
):
    """Phase 2 checks the labels against its manifest, its backbone's frames and its
    heads before the first step (an empty hparams dict: nothing else is read)."""
    config = Wav2Vec2Config.from_pretrained(str(tiny_wav2vec2))
    out = prepare_pseudo_labels(
        StandInFrameModel(), label_manifest, tmp_path / "labels", n_clusters=[2, 3],
        kmeans=KMeansSettings(iterations=2), wav2vec2_config=config,
    )
    manifest = label_manifest
    model = build_ptapt_model(str(tiny_wav2vec2), None, [2, 4] if differs == "K" else [2, 3])
    if differs == "manifest":
        entries = json.loads(label_manifest.read_text())
        entries["Ses05F_impro01_F000"] = entries["u0"]
        manifest = tmp_path / "other.json"
        manifest.write_text(json.dumps(entries))
    elif differs == "frame geometry":
        model.backbone.model.config.conv_stride = _half_hop_config(tiny_wav2vec2).conv_stride
    with pytest.raises(PseudoLabelMismatchError) as error:
        train_ptapt(model, {}, {"device": "cpu"}, manifest, PseudoLabelStore(out))
    message = str(error.value)
    assert str(out) in message and "prepare the pseudo-labels again" in message
    assert {"manifest": "Ses05F_impro01_F000", "frame geometry": "'hop_samples': 160",
            "K": "[2, 4]"}[differs] in message
    assert issubclass(PseudoLabelMismatchError, PtaptError)  # one line through the recipes


# ----------------------------------------------------------------------------
# Options and settings
# ----------------------------------------------------------------------------

#: (id, method, options, expected fragments)
OPTION_ERRORS = [
    ("unknown-option", "vft", ["--no_such_option=3"],
     ["Unknown option --no_such_option", "vft.yaml"]),
    ("misspelt-option", "vft", ["--numer_of_epochs=3"], ["Did you mean --number_of_epochs?"]),
    ("epochs-not-a-number", "vft", ["--number_of_epochs=abc"],
     ["--number_of_epochs=abc", "expected an integer", "default in vft.yaml is 15"]),
    ("epochs-fraction", "tapt", ["--tapt_steps=1.5"], ["--tapt_steps=1.5", "expected an integer"]),
    ("lr-not-a-number", "vft", ["--lr=abc"], ["--lr=abc", "expected a number"]),
    ("lr-negative", "vft", ["--lr=-1e-4"], ["--lr=-0.0001", "greater than 0"]),
    ("runs-zero", "vft", ["--runs=0"], ["--runs=0", "at least 1"]),
    ("bool-as-word", "vft", ["--discard_outliers=yes"], ["expected true or false"]),
    ("k-zero", "ptapt", ["--n_clusters=[0]"], ["--n_clusters=[0]", "at least 2"]),
    ("k-repeated", "ptapt", ["--n_clusters=[8,8]"], ["distinct"]),
    ("k-not-a-list", "ptapt", ["--n_clusters=64"], ["expected a list"]),
    ("kmeans-iterations-zero", "ptapt", ["--kmeans_iterations=0"],
     ["--kmeans_iterations=0", "at least 1"]),
    ("unknown-frame-encoder", "ptapt", ["--frame_encoder=wav3vec"], ["one of wav2vec1, w2v2_cnn"]),
    ("probability-above-1", "vft", ["--time_mask_prob=1.5"], ["between 0 and 1"]),
    ("batch-seconds-not-a-number", "tapt", ["--tapt_batch_seconds=lots"],
     ["--tapt_batch_seconds=lots", "expected a number"]),
    ("batch-seconds-zero", "ptapt", ["--frame_batch_seconds=0"],
     ["--frame_batch_seconds=0", "greater than 0"]),
    ("malformed-value", "vft", ["--folds=[1,2"], ["Cannot read the command-line option '--folds"]),
    ("data-folder-not-given", "vft", ["--data_folder"], ["--data_folder is required"]),
    ("data-folder-empty-value", "vft", ["--data_folder="], ["--data_folder is required"]),
]


@pytest.mark.parametrize(
    ("method", "options", "expected"),
    [case[1:] for case in OPTION_ERRORS],
    ids=[case[0] for case in OPTION_ERRORS],
)
def test_bad_options_stop_before_anything_runs(
    method, options, expected, corpora, tiny_wav2vec2, tmp_path, monkeypatch
):
    args = [f"--data_folder={corpora.iemocap}", *_common(tmp_path, tiny_wav2vec2), *options]
    if options == ["--data_folder"]:
        args = args[1:-1]
    message = _recipe_error("IEMOCAP", method, args, monkeypatch)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert not (tmp_path / "out").exists()


def test_an_unknown_option_given_to_a_later_stage_names_the_closest_keys():
    """load_hparams (every stage's loader) turns hyperpyyaml's KeyError into the same
    one-line error as the early check."""
    yaml = REPO / "recipes" / "IEMOCAP" / "hparams" / "vft.yaml"
    with pytest.raises(HparamsError, match="Did you mean --number_of_epochs"):
        load_hparams(str(yaml), {"data_folder": "/data", "numer_of_epochs": 3})


def test_good_options_keep_their_yaml_types():
    """YAML 1.2 like hyperpyyaml: 1e-3 is a number; a single fold and null crops are
    fine; an option given twice keeps its last value."""
    script = str(REPO / "recipes" / "IEMOCAP" / "train_vft.py")
    argv = ["hparams/vft.yaml", "--data_folder=/data", "--lr=1e-3", "--folds=5", "--runs=2",
            "--max_train_seconds=null", "--runs=1", "--precision=bf16"]
    hparams_file, run_opts, overrides = parse_recipe_arguments(argv, script)
    assert overrides == {"data_folder": "/data", "lr": pytest.approx(1e-3), "folds": 5,
                         "runs": 1, "max_train_seconds": None}
    assert run_opts["precision"] == "bf16"
    check_overrides(hparams_file, overrides)
    # batches by duration are switched on (a number) or off (null) from the command line
    ptapt_yaml = REPO / "recipes" / "IEMOCAP" / "hparams" / "ptapt.yaml"
    check_overrides(
        ptapt_yaml,
        {"data_folder": "/data", "frame_batch_seconds": 250, "frame_max_seconds": None},
    )
    tapt_yaml = ptapt_yaml.with_name("tapt.yaml")
    check_overrides(tapt_yaml, {"data_folder": "/data", "tapt_batch_seconds": 120.5})


@pytest.mark.parametrize("method", ["vft", "tapt", "ptapt"])
def test_unreachable_hub_id_is_one_line_suggesting_a_local_folder(
    method, corpora, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    args = [f"--data_folder={corpora.iemocap}", *_common(tmp_path, "no-such-org/no-such-model")]
    message = _recipe_error("IEMOCAP", method, args, monkeypatch)
    assert "'no-such-org/no-such-model'" in message and "local folder" in message


def test_a_file_that_is_not_a_wav2vec1_checkpoint_is_named(
    corpora, tiny_wav2vec2, tmp_path, monkeypatch
):
    fake = tmp_path / "wav2vec_large.pt"
    fake.write_text("<html>404 Not Found</html>")
    args = [f"--data_folder={corpora.iemocap}", *_common(tmp_path, tiny_wav2vec2),
            "--folds=[2]", f"--wav2vec1_checkpoint={fake}"]
    message = _recipe_error("IEMOCAP", "ptapt", args, monkeypatch)
    assert str(fake) in message and "download it again" in message


def test_offline_hub_through_the_real_command_line_exits_1_without_traceback(corpora, tmp_path):
    """The command as a user types it, with the default hub id and no network."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    cmd = [sys.executable, "recipes/IEMOCAP/train_vft.py", "hparams/vft.yaml",
           f"--data_folder={corpora.iemocap}", f"--output_folder={tmp_path / 'out'}",
           "--device=cpu"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Cannot load the wav2vec2 model 'facebook/wav2vec2-base'")
