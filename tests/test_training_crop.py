"""Fine-tuning reads a training utterance longer than ``max_train_seconds`` as its
first seconds, as the authors' collate does; ``train_crop: random`` takes a random
window instead."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import speechbrain_ptapt.data.dataio as dataio
import speechbrain_ptapt.stages.vft as vft
from speechbrain_ptapt.deploy.inference import load_audio
from speechbrain_ptapt.protocol.experiment import load_hparams
from speechbrain_ptapt.protocol.hparams_check import HparamsError, check_overrides, yaml_defaults
from speechbrain_ptapt.stages.vft import fine_tune

REPO = Path(__file__).resolve().parents[1]
YAMLS = sorted((REPO / "recipes").glob("*/hparams/*.yaml"))
RATE = 16000


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory) -> Path:
    """15 s of noise: every window of it is different."""
    path = tmp_path_factory.mktemp("long") / "long.wav"
    rng = np.random.default_rng(0)
    sf.write(path, (0.1 * rng.standard_normal(15 * RATE)).astype("float32"), RATE)
    return path


def _manifest(folder: Path, wav: Path, label: str) -> Path:
    path = folder / "train.json"
    path.write_text(json.dumps({"u1": {"wav": str(wav), "duration": 15.0, "emo": label}}))
    return path


class _Stop(Exception):
    """Ends fine_tune once its training set is built."""


def _fine_tuning_train_set(yaml: Path, overrides: dict, wav: Path, tmp_path: Path, monkeypatch):
    """The training set fine_tune builds from the yaml (stopped before training)."""
    hparams = load_hparams(str(yaml), overrides)
    manifest = _manifest(tmp_path, wav, hparams["classes"][0])
    built = []
    real = vft.emotion_dataset

    def spy(*args, **kwargs):
        if kwargs.get("sort"):  # the test set comes second
            raise _Stop
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(vft, "emotion_dataset", spy)
    with pytest.raises(_Stop):
        fine_tune(hparams, {"device": "cpu"}, manifest, manifest)
    return built[0]


@pytest.mark.parametrize("yaml", YAMLS, ids=lambda p: f"{p.parent.parent.name}-{p.stem}")
def test_a_15_s_training_utterance_gives_its_first_10_s_by_default(
    yaml, long_wav, tiny_wav2vec2, tmp_path, monkeypatch
):
    assert yaml_defaults(yaml)["train_crop"] == "first"
    overrides = {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out"),
                 "wav2vec2_hub": str(tiny_wav2vec2), "channel_mask_length": 8}
    train_set = _fine_tuning_train_set(yaml, overrides, long_wav, tmp_path, monkeypatch)
    whole = load_audio(long_wav, RATE)
    assert whole.shape[0] == 15 * RATE
    for _ in range(3):  # every epoch reads the same samples
        assert torch.equal(train_set[0]["sig"], whole[: 10 * RATE])


def test_random_crops_stay_an_option(long_wav, tiny_wav2vec2, tmp_path, monkeypatch):
    yaml = REPO / "recipes" / "IEMOCAP" / "hparams" / "vft.yaml"
    overrides = {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out"),
                 "wav2vec2_hub": str(tiny_wav2vec2), "channel_mask_length": 8,
                 "train_crop": "random"}
    train_set = _fine_tuning_train_set(yaml, overrides, long_wav, tmp_path, monkeypatch)
    whole = load_audio(long_wav, RATE).numpy()
    torch.manual_seed(0)
    starts = set()
    for _ in range(6):
        crop = train_set[0]["sig"].numpy()
        assert crop.shape[0] == 10 * RATE
        windows = [
            int(start)
            for start in np.flatnonzero(whole[: 5 * RATE + 1] == crop[0])
            if np.array_equal(whole[start : start + 10 * RATE], crop)
        ]
        assert len(windows) == 1  # a contiguous 10 s window of the file
        starts.add(windows[0])
    assert len(starts) > 1


def test_first_crop_keeps_short_signals_whole():
    sig = torch.arange(100.0)
    assert torch.equal(dataio.first_crop(sig, 40)[0], sig[:40])
    assert torch.equal(dataio.first_crop(sig, 400)[0], sig)
    assert torch.equal(dataio.first_crop(sig, None)[0], sig)
    with pytest.raises(ValueError, match="crop"):
        dataio.audio_pipeline(RATE, 1.0, crop="middle")


def test_an_unknown_train_crop_is_refused_before_anything_runs():
    with pytest.raises(HparamsError, match="train_crop"):
        check_overrides(YAMLS[0], {"data_folder": "/data", "train_crop": "middle"})
    check_overrides(YAMLS[0], {"data_folder": "/data", "train_crop": "random"})
