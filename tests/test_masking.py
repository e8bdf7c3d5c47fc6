"""Time and channel masks as the authors' code draws them, and the frozen mask embedding."""

from __future__ import annotations

from functools import cache
from math import comb

import numpy as np
import pytest
import torch
from conftest import IEMOCAP_RECIPES

from speechbrain_ptapt.models.backbone import Wav2Vec2Backbone
from speechbrain_ptapt.models.classifier import EmotionClassifier
from speechbrain_ptapt.models.masking import ChannelMask, TimeMask
from speechbrain_ptapt.models.pretraining import Wav2Vec2Pretraining
from speechbrain_ptapt.models.pseudo_label_heads import build_ptapt_model
from speechbrain_ptapt.protocol.distributed import needs_unused_parameter_search
from speechbrain_ptapt.protocol.experiment import load_hparams
from speechbrain_ptapt.protocol.hparams_check import HparamsError, check_overrides

SAMPLE_RATE = 16000
MAX_SECONDS = 10.0  # training crops (authors' code: downstream/Custom/dataloader.py:28-33)


def frames(seconds: float) -> int:
    """wav2vec2-base frames of ``seconds`` of 16 kHz audio."""
    return (int(seconds * SAMPLE_RATE) - 400) // 320 + 1


@cache
def expected_share(valid: int, padded: int, prob: float, length: int, min_masks: int) -> float:
    """Exact expected masked share of the first ``valid`` frames of a batch row under
    transformers 4.10's ``_compute_mask_indices`` on a batch padded to ``padded`` frames:
    ``n = max(min_masks, int(prob * padded / length + U))`` spans (at most
    ``padded // length``) with distinct uniform starts in ``[0, padded - length]``;
    overlaps and the lower coverage of the first ``length - 1`` frames included."""
    starts = padded - length + 1
    base = prob * padded / length
    counts: dict[int, float] = {}
    for n, weight in ((int(base), 1 - (base - int(base))), (int(base) + 1, base - int(base))):
        n = max(n, min_masks)
        if n * length > padded:
            n = padded // length
        counts[n] = counts.get(n, 0.0) + weight
    total = 0.0
    for t in range(valid):
        covering = min(t, starts - 1) - max(0, t - length + 1) + 1  # starts that mask frame t
        unmasked = sum(w * comb(starts - covering, n) / comb(starts, n) for n, w in counts.items())
        total += 1.0 - unmasked
    return total / valid


def iemocap_like_batches(num_batches: int, batch_size: int, seed: int):
    """Padded batches of IEMOCAP-like lengths (log-normal, median 3.3 s, 0.6-30 s, cropped
    to 10 s), each holding one 1 s and one 8 s utterance first."""
    rng = np.random.default_rng(seed)
    for _ in range(num_batches):
        seconds = np.clip(rng.lognormal(np.log(3.3), 0.65, batch_size - 2), 0.6, 30.0)
        seconds = np.minimum(np.concatenate([[1.0, 8.0], seconds]), MAX_SECONDS)
        lengths = torch.tensor([frames(s) for s in seconds])
        yield lengths, int(lengths.max())


def test_batch_masks_give_short_and_long_utterances_the_authors_share():
    """Each utterance is about p-share masked whatever its length (not ~50 % of a 1 s one),
    as in the authors' code, and padding is never masked."""
    np.random.seed(0)
    time_mask = TimeMask(prob=0.08, length=15, min_masks=2)
    measured = {1: [], 8: []}
    expected = {1: [], 8: []}
    for lengths, padded in iemocap_like_batches(1500, 16, seed=0):
        mask = time_mask(lengths, padded)
        valid = torch.arange(padded)[None, :] < lengths[:, None]
        assert mask.shape == (16, padded) and not (mask & ~valid).any()
        for row, seconds in enumerate((1, 8)):
            measured[seconds].append(float(mask[row].sum()) / int(lengths[row]))
            expected[seconds].append(expected_share(int(lengths[row]), padded, 0.08, 15, 2))
    for seconds in (1, 8):
        share, target = np.mean(measured[seconds]), np.mean(expected[seconds])
        assert 0.06 < target < 0.085, (seconds, target)  # p = 8 % less overlaps and edges
        assert abs(share - target) < 0.02, (
            f"{seconds} s utterances: {share:.1%} of frames masked, expected {target:.1%}"
        )


def test_a_batch_shorter_than_a_span_is_masked_with_a_shorter_span():
    np.random.seed(0)
    mask = TimeMask(0.08, 15, 2)(torch.tensor([9, 4]), 9)
    assert mask.shape == (2, 9) and not mask[1, 4:].any()


def test_unknown_scope_is_refused_by_the_mask_and_the_option_check():
    with pytest.raises(ValueError, match="batch, utterance"):
        TimeMask(scope="sentence")
    for yaml_file, key in (
        ("vft.yaml", "time_mask_scope"),
        ("ptapt.yaml", "ptapt_time_mask_scope"),
    ):
        path = IEMOCAP_RECIPES / "hparams" / yaml_file
        check_overrides(path, {"data_folder": "/data", key: "utterance"})
        with pytest.raises(HparamsError, match="one of batch, utterance"):
            check_overrides(path, {"data_folder": "/data", key: "sentence"})


def test_channel_masks_one_span_per_utterance_at_its_own_place():
    """The authors' channel masks: p 0.05 x 64 of 768 channels gives exactly one span
    (``max(1, int(0.6 + U))``) per utterance, placed independently."""
    np.random.seed(0)
    mask = ChannelMask(0.05, 64, 1)(32, 768)
    assert (mask.sum(dim=1) == 64).all()
    assert len({int(row.nonzero()[0]) for row in mask}) > 1  # first masked channel


# ----------------------------------------------------------------------------
# masked_spec_embed: frozen in fine-tuning and P-TAPT phase 2, trained in TAPT
# ----------------------------------------------------------------------------


def _adam_step(model: torch.nn.Module, loss: torch.Tensor) -> None:
    """One Adam step over every parameter, as SpeechBrain's Brain builds its optimizer."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loss.backward()
    optimizer.step()


def test_fine_tuning_does_not_train_the_mask_embedding(tiny_wav2vec2):
    backbone = Wav2Vec2Backbone(str(tiny_wav2vec2))
    model = EmotionClassifier(backbone, 4, TimeMask(0.5, 5, 2), ChannelMask(0.05, 4, 1)).train()
    embed = backbone.model.masked_spec_embed.detach().clone()
    encoder = next(backbone.model.encoder.parameters()).detach().clone()
    np.random.seed(0)
    _adam_step(model, model(torch.randn(2, 16000), torch.tensor([1.0, 0.5])).sum())
    assert not backbone.model.masked_spec_embed.requires_grad
    assert torch.equal(backbone.model.masked_spec_embed, embed)
    assert not torch.equal(next(backbone.model.encoder.parameters()), encoder)
    assert not needs_unused_parameter_search(backbone)  # DDP: nothing unused (layerdrop 0)


def test_ptapt_phase_2_does_not_train_the_mask_embedding(tiny_wav2vec2):
    model = build_ptapt_model(str(tiny_wav2vec2), None, n_clusters=[4]).train()
    embed = model.backbone.model.masked_spec_embed.detach().clone()
    np.random.seed(0)
    out = model(torch.randn(2, 16000), torch.tensor([1.0, 0.5]), torch.randint(0, 4, (2, 49, 1)))
    assert out["num_masked"] > 0
    _adam_step(model, out["loss"])
    assert not model.backbone.model.masked_spec_embed.requires_grad
    assert torch.equal(model.backbone.model.masked_spec_embed, embed)
    assert model.time_mask.scope == "batch"


def test_tapt_trains_every_parameter_the_mask_embedding_included(tiny_wav2vec2):
    model = Wav2Vec2Pretraining(str(tiny_wav2vec2))
    assert all(p.requires_grad for p in model.parameters())
    assert model.time_mask.scope == "batch"


@pytest.mark.parametrize("yaml_file", ["vft.yaml", "tapt.yaml", "ptapt.yaml"])
def test_recipes_mask_per_batch_with_a_frozen_mask_embedding(yaml_file, tiny_wav2vec2, tmp_path):
    hparams = load_hparams(
        str(IEMOCAP_RECIPES / "hparams" / yaml_file),
        {
            "data_folder": str(tmp_path),
            "output_folder": str(tmp_path),
            "wav2vec2_hub": str(tiny_wav2vec2),
        },
    )
    assert hparams["time_mask_scope"] == "batch" and hparams["time_mask"].scope == "batch"
    assert not hparams["wav2vec2"].model.masked_spec_embed.requires_grad
    if yaml_file == "ptapt.yaml":
        assert hparams["ptapt_time_mask_scope"] == "batch"
        assert hparams["frame_time_mask"].scope == "batch"
