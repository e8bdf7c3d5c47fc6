"""The wav2vec2 backbone, masks, pooling, audio reading and the V-FT model."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_ptapt.data.dataio import UnknownLabelError, check_labels, inverse_prior_weights
from speechbrain_ptapt.deploy.inference import (
    AudioError,
    load_audio,
    masked_mean,
    normalize_waveforms,
)
from speechbrain_ptapt.models.backbone import (
    BackboneLoadError,
    Wav2Vec2Backbone,
    wav2vec2_frame_lengths,
)
from speechbrain_ptapt.models.classifier import EmotionClassifier
from speechbrain_ptapt.models.masking import ChannelMask, TimeMask


@pytest.fixture(scope="module")
def backbone(tiny_wav2vec2):
    return Wav2Vec2Backbone(str(tiny_wav2vec2))


def test_frame_lengths_follow_the_models_formula(backbone):
    # wav2vec2-base geometry: 400-sample receptive field, 320-sample hop.
    lengths = torch.tensor([400, 719, 720, 16000, 16001])
    expected = torch.tensor([1, 1, 2, 49, 49])
    assert torch.equal(backbone.frame_lengths(lengths), expected)
    assert torch.equal(wav2vec2_frame_lengths(backbone.config, lengths), expected)
    assert backbone.min_samples == 400


@pytest.mark.parametrize("num_samples", [1, 50, 399, 400, 401, 1000])
def test_inputs_shorter_than_the_receptive_field_give_one_frame(backbone, num_samples):
    backbone.train()
    hidden, frame_mask = backbone(
        torch.randn(2, num_samples), torch.ones(2), TimeMask(), ChannelMask(length=8)
    )
    assert hidden.shape[0] == 2 and hidden.shape[2] == backbone.hidden_size
    assert frame_mask.sum(dim=1).min() >= 1
    assert torch.isfinite(hidden).all()


def test_padded_batch_frame_mask_matches_each_utterance(backbone):
    wavs = torch.randn(3, 16000)
    wav_lens = torch.tensor([1.0, 0.5, 0.02])  # 16000, 8000, 320 samples
    hidden, frame_mask = backbone.eval()(wavs, wav_lens)
    assert frame_mask.sum(dim=1).tolist() == [49, 24, 1]
    assert hidden.shape[1] == 49


def test_time_mask_never_touches_padding_and_handles_short_utterances():
    np.random.seed(0)
    mask = TimeMask(prob=0.5, length=15, min_masks=2, scope="utterance")(
        torch.tensor([100, 20, 3, 1]), 100
    )
    assert mask.shape == (4, 100)
    assert not mask[1, 20:].any() and not mask[2, 3:].any() and not mask[3, 1:].any()
    assert mask[0].any() and mask[1].any() and mask[2].any()
    # spans are 15 frames long where the utterance allows it
    assert mask[0].sum() >= 15


def test_time_mask_min_masks_on_long_utterances():
    np.random.seed(1)
    mask = TimeMask(prob=0.0, length=10, min_masks=2)(torch.tensor([500]), 500)
    assert mask.sum() >= 10  # at least one full span even with p = 0 (two may overlap)


def test_channel_mask_leaves_channels_of_a_small_model():
    np.random.seed(0)
    mask = ChannelMask(prob=0.05, length=64, min_masks=1)(4, 32)
    assert mask.any(dim=1).all()
    assert (mask.sum(dim=1) < 32).all()


def test_masked_mean_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    frame_mask = torch.tensor([[True, True, False]])
    assert torch.allclose(masked_mean(hidden, frame_mask), torch.tensor([[2.0, 3.0]]))


def test_classifier_embedding_does_not_depend_on_padded_frames(backbone):
    """The pooled embedding of an utterance ignores whatever lies in the padding."""
    model = EmotionClassifier(backbone, n_classes=4).eval()
    wav = torch.randn(1, 8000)
    padded_a = torch.cat([wav, torch.zeros(1, 8000)], dim=1)
    padded_b = torch.cat([wav, 5 * torch.randn(1, 8000)], dim=1)
    # The waveform itself is zero-padded after normalisation; only the frames
    # differ past the valid length, and pooling must not see them.
    hidden_a, mask_a = backbone(padded_a, torch.tensor([0.5]))
    hidden_b, mask_b = backbone(padded_b, torch.tensor([0.5]))
    assert torch.equal(mask_a, mask_b)
    assert torch.allclose(
        model.embed(padded_a, torch.tensor([0.5])),
        model.embed(padded_b, torch.tensor([0.5])),
        atol=1e-5,
    )


def test_normalization_uses_valid_samples_only():
    wavs = torch.tensor([[1.0, 3.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    out = normalize_waveforms(wavs, torch.tensor([2, 4]))
    assert torch.allclose(out[0, :2], torch.tensor([-1.0, 1.0]), atol=1e-3)
    assert torch.equal(out[0, 2:], torch.zeros(2))
    assert out[1].mean().abs() < 1e-6


def test_cnn_and_projection_frozen_transformer_and_head_trainable(backbone):
    model = EmotionClassifier(backbone, n_classes=4).train()
    logits = model(torch.randn(2, 8000), torch.tensor([1.0, 0.7]))
    logits.sum().backward()
    frozen = list(backbone.model.feature_extractor.parameters()) + list(
        backbone.model.feature_projection.parameters()
    )
    assert all(not p.requires_grad and p.grad is None for p in frozen)
    trainable = list(backbone.model.encoder.parameters()) + list(model.head.parameters())
    assert all(p.requires_grad for p in trainable)
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.model.encoder.parameters()
    )
    assert model.head.weight.grad.abs().sum() > 0


def test_local_folder_without_config_is_explained(tmp_path):
    with pytest.raises(BackboneLoadError, match="config.json"):
        Wav2Vec2Backbone(str(tmp_path))


def test_unreachable_hub_id_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import: without this it tries the network.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(BackboneLoadError, match="no-such-org/no-such-model"):
        Wav2Vec2Backbone("no-such-org/no-such-model", save_path=str(tmp_path))


def test_stereo_and_8khz_audio_is_converted(tmp_path):
    t = np.arange(8000) / 8000
    stereo = np.stack([np.sin(2 * np.pi * 200 * t), np.sin(2 * np.pi * 200 * t)], axis=1)
    sf.write(tmp_path / "x.wav", stereo.astype("float32"), 8000)
    wav = load_audio(tmp_path / "x.wav")
    assert wav.dim() == 1 and abs(wav.shape[0] - 16000) <= 1


@pytest.mark.parametrize("content", [b"", b"RIFF garbage that is not a wav"])
def test_corrupt_or_empty_audio_names_the_file(tmp_path, content):
    path = tmp_path / "broken.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match="broken.wav"):
        load_audio(path)


def test_audio_with_zero_samples_names_the_file(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0,), dtype="float32"), 16000)
    with pytest.raises(AudioError, match="empty.wav.*0 samples"):
        load_audio(path)


def test_unknown_label_is_named(tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_text('{"u1": {"wav": "a.wav", "duration": 1.0, "emo": "joy"}}')
    with pytest.raises(UnknownLabelError, match="'joy'.*u1|u1.*'joy'"):
        check_labels(manifest, ["neu", "hap", "sad", "ang"])


def test_inverse_prior_weights():
    from collections import Counter

    weights = inverse_prior_weights(
        Counter(neu=60, hap=20, sad=10, ang=10), ["neu", "hap", "sad", "ang"]
    )
    # w_c = N / (C * n_c)
    assert torch.allclose(weights, torch.tensor([100 / 240, 100 / 80, 100 / 40, 100 / 40]))
