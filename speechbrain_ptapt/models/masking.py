"""SpecAugment-style masks for wav2vec2's projected CNN features, safe on short inputs.

wav2vec2 masks spans of frames (time masks, replaced by the model's
``masked_spec_embed``) and spans of channels (set to 0). The span sampling is
transformers' ``_compute_mask_indices``. Time masks follow one of two rules
(:data:`TIME_MASK_SCOPES`):

``"batch"`` (default; the authors' code)
    One span count for the whole batch, computed from its *padded* length; each
    utterance's spans are placed over the padded length and the frames that fall
    on padding are dropped. Every utterance of a batch then has the same expected
    share of its frames masked whatever its length: ``prob`` less the overlaps
    (about 7-8 % for p 0.08, span 15, in batches padded to 10 s), more where
    ``min_masks`` decides (about 20 % in batches of at most 3 s). A short
    utterance in a long batch often has no masked frame.
    This is what transformers 4.10's ``_compute_mask_indices``
    (``modeling_wav2vec2.py:152-187``) does when FT-w2v2-ser calls it on the
    padded batch, in fine-tuning and P-TAPT phase 2
    (``modules/FeatureFuser.py:137-147``: ``mask_time_indices & mask``) and in
    TAPT (``modules/FeatureFuser.py:197-204``, ``attention_mask=attn_mask``).
``"utterance"``
    At least ``min_masks`` spans inside each utterance's own valid frames: a 1 s
    utterance (49 frames) gets about half of its frames masked with p 0.08,
    span 15, min 2 (transformers 5 with an ``attention_mask`` behaves so).

Either way padding is never masked, and a batch shorter than a span gets a
shorter span instead of the error transformers raises.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

#: Rules for drawing time masks over a padded batch (see the module docstring).
TIME_MASK_SCOPES = ("batch", "utterance")


class TimeMask:
    """Samples time masks of a padded batch; never on padding.

    Arguments
    ---------
    prob : float
        Expected share of frames that start a masked span (wav2vec2's ``mask_time_prob``).
    length : int
        Span length in frames.
    min_masks : int
        Minimum number of spans (per batch row with ``scope="batch"``, per utterance
        with ``scope="utterance"``; fewer when the frames are too few).
    scope : str
        ``"batch"``: one span count per batch from the padded length, spans placed
        over the padded length, padding dropped (the authors' code).
        ``"utterance"``: spans drawn inside each utterance's valid frames.
    """

    def __init__(
        self, prob: float = 0.08, length: int = 15, min_masks: int = 2, scope: str = "batch"
    ) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"Time mask probability must be in [0, 1], got {prob}.")
        if length < 1:
            raise ValueError(f"Time mask length must be at least 1 frame, got {length}.")
        if scope not in TIME_MASK_SCOPES:
            raise ValueError(
                f"Time mask scope must be one of {', '.join(TIME_MASK_SCOPES)}, got {scope!r}."
            )
        self.prob = prob
        self.length = length
        self.min_masks = min_masks
        self.scope = scope

    def __call__(self, frame_lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Samples a mask (NumPy's global random generator, as transformers does).

        Arguments
        ---------
        frame_lengths : torch.Tensor
            (batch,) number of valid frames of each utterance.
        num_frames : int
            Padded number of frames of the batch.

        Returns
        -------
        torch.Tensor
            (batch, num_frames) bool, True where a frame is masked; always False
            on padding.
        """
        lengths = torch.as_tensor(frame_lengths).long().clamp(min=0, max=num_frames)
        valid = torch.arange(num_frames)[None, :] < lengths[:, None]
        if (self.prob <= 0 and self.min_masks <= 0) or num_frames < 1:
            return torch.zeros_like(valid)
        if self.scope == "batch":
            mask = _compute_mask_indices(
                (len(lengths), num_frames),
                mask_prob=self.prob,
                mask_length=min(self.length, num_frames),
                min_masks=self.min_masks,
            )
            return torch.from_numpy(mask) & valid
        return self._per_utterance(lengths, num_frames)

    def _per_utterance(self, lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``scope="utterance"``: each utterance's spans inside its own valid frames."""
        mask = np.zeros((len(lengths), num_frames), dtype=bool)
        for i, valid in enumerate(lengths.tolist()):
            if valid < 1:
                continue
            span = min(self.length, valid)
            mask[i, :valid] = _compute_mask_indices(
                (1, valid), mask_prob=self.prob, mask_length=span, min_masks=self.min_masks
            )[0]
        return torch.from_numpy(mask)


class ChannelMask:
    """Samples channel (feature-dimension) masks, one span placement per utterance.

    As in the authors' code (``modules/FeatureFuser.py:150-158``): one span count
    for the batch, ``max(min_masks, int(prob * channels / length + U))`` (1 for
    p 0.05, span 64, 768 channels), each utterance's spans placed independently,
    the same channels zeroed on every frame of the utterance.

    Arguments
    ---------
    prob : float
        Expected share of channels that start a masked span (``mask_feature_prob``).
    length : int
        Span length in channels; shortened to half the number of channels when
        larger (so a small model never loses all of its channels at once).
    min_masks : int
        Minimum number of spans per utterance.
    """

    def __init__(self, prob: float = 0.05, length: int = 64, min_masks: int = 1) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"Channel mask probability must be in [0, 1], got {prob}.")
        if length < 1:
            raise ValueError(f"Channel mask length must be at least 1, got {length}.")
        self.prob = prob
        self.length = length
        self.min_masks = min_masks

    def __call__(self, batch_size: int, num_channels: int) -> torch.Tensor:
        """Samples a (batch, num_channels) bool mask, True where a channel is zeroed."""
        if self.prob <= 0 and self.min_masks <= 0:
            return torch.zeros(batch_size, num_channels, dtype=torch.bool)
        span = max(1, min(self.length, num_channels // 2))
        mask = _compute_mask_indices(
            (batch_size, num_channels),
            mask_prob=self.prob,
            mask_length=span,
            min_masks=self.min_masks,
        )
        return torch.from_numpy(mask)
