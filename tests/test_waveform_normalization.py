"""wav2vec2 reads raw samples by default, as the authors' code feeds it; the
preprocessor config's per-utterance normalisation is an option, and the choice
travels with adapted backbones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speechbrain_ptapt.models.backbone import Wav2Vec2Backbone, load_feature_extractor
from speechbrain_ptapt.models.pretraining import Wav2Vec2Pretraining
from speechbrain_ptapt.models.pseudo_label_heads import build_ptapt_model
from speechbrain_ptapt.protocol.experiment import load_hparams
from speechbrain_ptapt.protocol.hparams_check import check_overrides, yaml_defaults
from speechbrain_ptapt.stages.tapt import tapt_fingerprint

REPO = Path(__file__).resolve().parents[1]
YAMLS = sorted((REPO / "recipes").glob("*/hparams/*.yaml"))


def _cnn_input(backbone: Wav2Vec2Backbone, wavs: torch.Tensor) -> torch.Tensor:
    """The waveforms that reach wav2vec2's CNN feature encoder."""
    seen = []
    hook = backbone.model.feature_extractor.register_forward_hook(
        lambda module, args, out: seen.append(args[0].detach().clone())
    )
    with torch.no_grad():
        backbone.extract_features(wavs, torch.ones(wavs.shape[0]))
    hook.remove()
    return seen[0]


def test_raw_samples_reach_the_cnn_unless_normalisation_is_asked_for(tiny_wav2vec2):
    torch.manual_seed(0)
    wavs = 0.05 * torch.randn(2, 8000) + 0.01
    raw = Wav2Vec2Backbone(str(tiny_wav2vec2), normalize=False)
    assert torch.equal(_cnn_input(raw, wavs), wavs)
    normalised = _cnn_input(Wav2Vec2Backbone(str(tiny_wav2vec2), normalize=True), wavs)
    assert torch.allclose(normalised.mean(dim=1), torch.zeros(2), atol=1e-5)
    assert torch.allclose(normalised.std(dim=1, unbiased=False), torch.ones(2), atol=1e-3)
    # None follows the folder's preprocessor_config.json (the tiny model's asks for it).
    assert Wav2Vec2Backbone(str(tiny_wav2vec2)).normalize is True


def test_the_choice_is_saved_with_the_backbone(tiny_wav2vec2, tmp_path):
    Wav2Vec2Backbone(str(tiny_wav2vec2), normalize=False).save_pretrained(tmp_path / "raw")
    assert load_feature_extractor(str(tmp_path / "raw")).do_normalize is False
    assert Wav2Vec2Backbone(str(tmp_path / "raw")).normalize is False
    tapt = Wav2Vec2Pretraining(str(tiny_wav2vec2), normalize=False)
    assert tapt.normalize is False
    tapt.save_pretrained(tmp_path / "tapt")
    assert load_feature_extractor(str(tmp_path / "tapt")).do_normalize is False
    ptapt = build_ptapt_model(str(tiny_wav2vec2), None, [4], normalize=False)
    assert ptapt.backbone.normalize is False


@pytest.mark.parametrize("yaml", YAMLS, ids=lambda p: f"{p.parent.parent.name}-{p.stem}")
def test_recipes_feed_raw_samples_by_default(yaml, tiny_wav2vec2, tmp_path):
    assert yaml_defaults(yaml)["normalize_waveform"] is False
    hparams = load_hparams(str(yaml), {"data_folder": str(tmp_path),
                                       "output_folder": str(tmp_path / "out"),
                                       "wav2vec2_hub": str(tiny_wav2vec2),
                                       "channel_mask_length": 8})
    assert hparams["wav2vec2"].normalize is False
    if "tapt_model" in hparams:
        assert hparams["tapt_model"]().normalize is False
    if "ptapt_model" in hparams:
        assert hparams["ptapt_model"]().backbone.normalize is False
    check_overrides(yaml, {"data_folder": "/data", "normalize_waveform": None})
    check_overrides(yaml, {"data_folder": "/data", "normalize_waveform": True})


def test_normalisation_enters_the_tapt_fingerprint(tmp_path):
    manifest = tmp_path / "train.json"
    manifest.write_text('{"u1": {"wav": "a.wav", "duration": 1.0, "emo": "neu"}}')
    base = {
        "sample_rate": 16000, "tapt_seed": 1, "tapt_steps": 1, "tapt_batch_size": 1,
        "warmup_steps": 0, "tapt_flat_fraction": 0.0, "tapt_lr": 1e-4,
        "tapt_max_seconds": 1.0, "tapt_num_buckets": 2, "tapt_gumbel_temperature": 1.0,
        "tapt_max_grad_norm": 1.0, "tapt_loss_reduction": "sum",
        "tapt_diversity_scaling": "unscaled", "wav2vec2_hub": str(tmp_path),
    }
    raw = tapt_fingerprint({**base, "normalize_waveform": False}, manifest)
    assert raw != tapt_fingerprint({**base, "normalize_waveform": True}, manifest)
