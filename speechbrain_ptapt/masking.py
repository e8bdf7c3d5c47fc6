"""SpecAugment-style masks for wav2vec2's projected CNN features, safe on short inputs.

wav2vec2 masks spans of frames (time masks, replaced by the model's learned
``masked_spec_embed``) and spans of channels (set to 0). The span sampling is
transformers' ``_compute_mask_indices``; this module applies it one utterance
at a time over its *valid* frames, shortening the span where an utterance is
shorter than it, so padding is never masked and no input length can crash it.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices


class TimeMask:
    """Samples time masks over the valid frames of each utterance.

    Arguments
    ---------
    prob : float
        Expected share of frames that start a masked span (wav2vec2's ``mask_time_prob``).
    length : int
        Span length in frames.
    min_masks : int
        Minimum number of spans per utterance (fewer when the utterance is too short).
    """

    def __init__(self, prob: float = 0.08, length: int = 15, min_masks: int = 2) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"Time mask probability must be in [0, 1], got {prob}.")
        if length < 1:
            raise ValueError(f"Time mask length must be at least 1 frame, got {length}.")
        self.prob = prob
        self.length = length
        self.min_masks = min_masks

    def __call__(self, frame_lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Samples a mask.

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
        mask = np.zeros((len(frame_lengths), num_frames), dtype=bool)
        if self.prob <= 0 and self.min_masks <= 0:
            return torch.from_numpy(mask)
        for i, valid in enumerate(frame_lengths.tolist()):
            valid = int(min(valid, num_frames))
            if valid < 1:
                continue
            span = min(self.length, valid)
            mask[i, :valid] = _compute_mask_indices(
                (1, valid), mask_prob=self.prob, mask_length=span, min_masks=self.min_masks
            )[0]
        return torch.from_numpy(mask)


class ChannelMask:
    """Samples channel (feature-dimension) masks, one per utterance.

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
