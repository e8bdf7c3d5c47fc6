"""P-TAPT phase 2's model: wav2vec2 with one head per K predicting the k-means
pseudo-label of each masked frame (paper Fig. 1b and the authors' code), its loss
(the sum over K of the cross-entropies on masked frames) and the builder the recipe
calls. The stage that trains it is :mod:`speechbrain_ptapt.stages.ptapt`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from speechbrain_ptapt.models.backbone import Wav2Vec2Backbone
from speechbrain_ptapt.models.masking import TimeMask

IGNORE_INDEX = -100


class PseudoLabelHeads(nn.Module):
    """One head Linear(hidden, head_dim)-Tanh-Linear(head_dim, K) per K.

    Arguments
    ---------
    input_size : int
        Transformer width (768 for wav2vec2-base).
    n_clusters : sequence of int
        The K of each k-means labelling (e.g. 64, 512, 4096).
    head_dim : int
        Hidden width of every head (256 in the authors' code).
    """

    def __init__(self, input_size: int, n_clusters: Sequence[int], head_dim: int = 256) -> None:
        super().__init__()
        self.n_clusters = [int(k) for k in n_clusters]
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(input_size, head_dim), nn.Tanh(), nn.Linear(head_dim, k))
            for k in self.n_clusters
        )

    def forward(self, reps: torch.Tensor) -> list[torch.Tensor]:
        """(batch, frames, hidden) -> one (batch, frames, K) logit tensor per K."""
        return [head(reps) for head in self.heads]


def masked_prediction_loss(
    logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    predict_mask: torch.Tensor,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Sum over K of the cross-entropy on the frames of ``predict_mask`` only.

    Arguments
    ---------
    logits : sequence of torch.Tensor
        One (batch, frames, K) tensor per labelling.
    labels : torch.Tensor
        (batch, frames, n_K) cluster ids; ``IGNORE_INDEX`` where a frame has none.
    predict_mask : torch.Tensor
        (batch, frames) bool: the masked, valid frames whose labels are predicted.

    Returns
    -------
    total : torch.Tensor
        Scalar: the sum over K of the mean cross-entropy over predicted frames.
    per_k : list of torch.Tensor
        The mean cross-entropy of each K.
    """
    per_k = []
    for k, logit in enumerate(logits):
        target = labels[..., k].masked_fill(~predict_mask, IGNORE_INDEX)
        if bool((target != IGNORE_INDEX).any()):
            loss = nn.functional.cross_entropy(
                logit.float().reshape(-1, logit.shape[-1]),
                target.reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
        else:  # no labelled masked frame: a zero that keeps the graph
            loss = logit.sum() * 0.0
        per_k.append(loss)
    return torch.stack(per_k).sum(), per_k


def align_labels(labels: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Pads (with ``IGNORE_INDEX``) or trims a (batch, frames, n_K) label batch to
    ``num_frames`` frames, the backbone's padded frame count."""
    if labels.shape[1] >= num_frames:
        return labels[:, :num_frames]
    pad = labels.new_full(
        (labels.shape[0], num_frames - labels.shape[1], labels.shape[2]), IGNORE_INDEX
    )
    return torch.cat([labels, pad], dim=1)


class PseudoLabelPretraining(nn.Module):
    """wav2vec2 + pseudo-label heads: the P-TAPT objective.

    Arguments
    ---------
    backbone : Wav2Vec2Backbone
        The wav2vec2 to adapt (CNN encoder and feature projection frozen).
    n_clusters : sequence of int
        The K of each labelling, in the order of the label columns.
    time_mask : TimeMask
        Time masks of the projected features (p 0.06, span 15, at least 2 per
        batch row, one span count per batch: ``modules/FeatureFuser.py:137-147``).
    head_dim : int
        Hidden width of the heads.
    """

    def __init__(
        self,
        backbone: Wav2Vec2Backbone,
        n_clusters: Sequence[int],
        time_mask: TimeMask,
        head_dim: int = 256,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = PseudoLabelHeads(backbone.hidden_size, n_clusters, head_dim)
        self.time_mask = time_mask

    @property
    def sample_rate(self) -> int:
        """Sampling rate of the backbone's input, in Hz."""
        return self.backbone.sample_rate

    def forward(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, Any]:
        """The P-TAPT loss of a batch.

        Arguments
        ---------
        wavs : torch.Tensor
            (batch, samples) padded waveforms.
        wav_lens : torch.Tensor
            (batch,) relative lengths.
        labels : torch.Tensor
            (batch, frames, n_K) pseudo-labels aligned to the backbone's frames;
            padding frames may hold anything (they are never predicted).

        Returns
        -------
        dict
            ``loss`` (sum over K), ``per_k`` (list), ``num_masked`` (frames predicted).
        """
        projected, frame_mask, _ = self.backbone.extract_features(wavs, wav_lens)
        time_mask = self.time_mask(frame_mask.sum(dim=1).cpu(), frame_mask.shape[1])
        time_mask = time_mask.to(frame_mask.device) & frame_mask
        hidden = self.backbone.encode(projected, frame_mask, time_mask)
        logits = self.heads(torch.relu(hidden))
        labels = align_labels(labels.to(frame_mask.device), frame_mask.shape[1])
        loss, per_k = masked_prediction_loss(logits, labels, time_mask)
        return {"loss": loss, "per_k": per_k, "num_masked": int(time_mask.sum())}

    def save_pretrained(self, folder: str | Path) -> None:
        """Writes the adapted wav2vec2 (without the heads) in transformers format."""
        self.backbone.save_pretrained(folder)




def build_ptapt_model(
    source: str,
    save_path: str | None,
    n_clusters: Sequence[int],
    time_mask_prob: float = 0.06,
    time_mask_length: int = 15,
    time_mask_min_masks: int = 2,
    head_dim: int = 256,
    layerdrop: float | None = None,
    revision: str | None = None,
    normalize: bool | None = None,
    time_mask_scope: str = "batch",
) -> PseudoLabelPretraining:
    """The phase-2 model: wav2vec2 from ``source`` (at hub ``revision`` for a hub id;
    CNN encoder, feature projection and ``masked_spec_embed`` frozen, as in the
    authors' code; waveforms normalised when ``normalize``, None following the
    preprocessor config) and one pseudo-label head per K. ``time_mask_scope``: see
    :class:`~speechbrain_ptapt.models.masking.TimeMask`."""
    backbone = Wav2Vec2Backbone(
        source,
        save_path=save_path,
        freeze_feature_encoder=True,
        layerdrop=layerdrop,
        revision=revision,
        normalize=normalize,
    )
    time_mask = TimeMask(time_mask_prob, time_mask_length, time_mask_min_masks, time_mask_scope)
    return PseudoLabelPretraining(backbone, n_clusters, time_mask, head_dim)
