"""The fine-tuning model of all three methods: wav2vec2 + ReLU + masked mean pooling
+ ReLU + Linear (Chen & Rudnicky 2022, Sec. 2.2, and the authors' code). The stage
that trains it is :mod:`speechbrain_ptapt.stages.vft`.
"""

from __future__ import annotations

import torch
from torch import nn

from speechbrain_ptapt.deploy.inference import masked_mean
from speechbrain_ptapt.models.backbone import Wav2Vec2Backbone
from speechbrain_ptapt.models.masking import ChannelMask, TimeMask


class EmotionClassifier(nn.Module):
    """wav2vec2 backbone + ReLU + masked mean pooling + ReLU + Linear.

    Arguments
    ---------
    backbone : Wav2Vec2Backbone
        The (possibly adapted) wav2vec2.
    n_classes : int
        Number of emotion classes.
    time_mask : TimeMask, optional
        Time masks applied in training mode only.
    channel_mask : ChannelMask, optional
        Channel masks applied in training mode only.
    """

    def __init__(
        self,
        backbone: Wav2Vec2Backbone,
        n_classes: int,
        time_mask: TimeMask | None = None,
        channel_mask: ChannelMask | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.hidden_size, n_classes)
        self.time_mask = time_mask
        self.channel_mask = channel_mask

    def embed(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        """Utterance embeddings (batch, hidden): the mean of ReLU(transformer output)
        over valid frames. Masks are applied in training mode only."""
        masks = (self.time_mask, self.channel_mask) if self.training else (None, None)
        hidden, frame_mask = self.backbone(wavs, wav_lens, *masks)
        return masked_mean(torch.relu(hidden), frame_mask)

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        """(batch, n_classes) logits for padded 16 kHz waveforms and relative lengths."""
        return self.head(torch.relu(self.embed(wavs, wav_lens)))


