"""P-TAPT phase 1: the frame-level emotion model whose frame representation k-means
turns into pseudo-labels (Chen & Rudnicky 2022, Sec. 2.4, Fig. 1a, and the authors' code).

A frozen convolutional feature encoder (wav2vec 1.0's feature extractor, as in the
paper, or wav2vec2's own CNN) is followed by SpecAugment (training only) and a
trainable aggregator that outputs one 512-dim vector per 20 ms frame, wav2vec2's frame
rate. Two heads are trained with the utterance's emotion label: a frame-wise head on
every valid frame and a BiLSTM whose outputs are mean-pooled over the valid frames;
the loss is the sum of the two class-weighted cross-entropies. The stage trains on the
fold's training manifest only, validates once per epoch on a seeded 10 % validation
split of it (batches cropped to their shortest utterance, as in training), keeps the
checkpoint with the lowest validation loss (as the authors' code; or the best
unweighted accuracy) and writes that model as
``<frame_folder>/final/frame_model.ckpt`` + ``frame_model.json``.

Units: waveforms are 16 kHz and measured in samples; "frames" are the encoders' output
frames of 20 ms (wav2vec 1.0's 10 ms frames after a stride-2 convolution, or wav2vec2's
CNN frames).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.dataio.sampler import ReproducibleRandomSampler
from speechbrain.utils.checkpoints import Checkpoint
from speechbrain.utils.distributed import (
    ddp_barrier,
    ddp_broadcast,
    if_main_process,
    run_on_main,
)
from speechbrain.utils.seed import seed_everything
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2FeatureEncoder

from speechbrain_ptapt.analysis.metrics import classification_metrics
from speechbrain_ptapt.data.dataio import (
    duration_batch_sampler,
    emotion_dataset,
    make_label_encoder,
)
from speechbrain_ptapt.deploy.inference import masked_mean, normalize_waveforms
from speechbrain_ptapt.models.backbone import (
    load_feature_extractor,
    load_pretrained,
    wav2vec2_frame_lengths,
)
from speechbrain_ptapt.models.masking import ChannelMask, TimeMask
from speechbrain_ptapt.models.wav2vec1 import (
    Wav2Vec1,
    Wav2Vec1Config,
    ensure_wav2vec1_checkpoint,
    load_wav2vec1,
)
from speechbrain_ptapt.protocol.checkpointing import load_checkpoint_file
from speechbrain_ptapt.protocol.distributed import world_size
from speechbrain_ptapt.protocol.experiment import read_json, write_json
from speechbrain_ptapt.protocol.stage_cache import (
    StageCache,
    StageKeys,
    finish_folder,
    partial_folder,
    stage_fingerprint,
)
from speechbrain_ptapt.stages.training import StepStageBrain, with_default_precision

logger = logging.getLogger(__name__)

__all__ = [
    "FRAME_ENCODERS",
    "FINAL_FOLDER",
    "MODEL_FILE",
    "RECORD_FILE",
    "SELECTION_CRITERIA",
    "VALID_CROPS",
    "ConvAggregator",
    "EmotionHead",
    "FrameEmotionBrain",
    "FrameEmotionModel",
    "FrameEmotionOutput",
    "FrameEncoder",
    "Wav2Vec1FrameEncoder",
    "Wav2Vec2CNNFrameEncoder",
    "build_frame_model",
    "crop_to_shortest",
    "frame_emotion_losses",
    "frame_fingerprint",
    "labelled_manifest_digest",
    "load_frame_model",
    "run_frame_stage",
    "sample_lengths",
    "save_frame_model",
    "selection_rank",
    "split_validation",
    "train_frame_model",
    "validation_every_steps",
    "validation_loader",
]

FRAME_ENCODERS = ("wav2vec1", "w2v2_cnn")
"""Values of ``frame_encoder``: the paper's wav2vec 1.0, or wav2vec2's own CNN."""

SELECTION_CRITERIA = ("valid_loss", "valid_ua")
"""Values of ``frame_select_by``: the lowest validation loss (the authors' code), or the
highest validation UA."""

VALID_CROPS = ("shortest", "none")
"""Values of ``frame_valid_crop``: validation batches cropped to their shortest utterance
(the authors' code), or whole utterances."""

FINAL_FOLDER = "final"
"""Sub-folder of ``frame_folder`` holding the finished stage's model."""

MODEL_FILE = "frame_model.ckpt"
"""State dict of the selected :class:`FrameEmotionModel`, in :data:`FINAL_FOLDER`."""

RECORD_FILE = "frame_model.json"
"""Architecture, settings fingerprint and selection record, in :data:`FINAL_FOLDER`."""

_SETTINGS_FILE = "frame_settings.json"
_FORMAT_VERSION = 1


#: Keys each encoder leaves unread (kept out of the other encoder's fingerprint).
_ENCODER_ONLY_KEYS = {
    "wav2vec1": ("wav2vec1_checkpoint",),
    "w2v2_cnn": (
        "wav2vec2_hub",
        "wav2vec2_revision",
        "normalize_waveform",
        "frame_cnn_aggregator_layers",
        "frame_cnn_aggregator_kernel",
    ),
}


def _unused_by_encoder(hparams: Mapping[str, Any]) -> list[str]:
    """The keys of the encoders ``frame_encoder`` is not (the paper's wav2vec 1.0 reads
    no wav2vec2 and no CNN aggregator setting; wav2vec2's CNN no wav2vec 1.0 file)."""
    encoder = hparams.get("frame_encoder")
    return [key for name, keys in _ENCODER_ONLY_KEYS.items() if name != encoder for key in keys]


#: The hparams that define a fold's phase 1 (with its labelled training data's digest):
#: every ``frame_`` key but the result-neutral ones, and the shared keys it reads.
FRAME_KEYS = StageKeys(
    prefixes=("frame_",),
    shared=(
        "classes",
        "sample_rate",
        "wav2vec1_checkpoint",
        "wav2vec2_hub",
        "wav2vec2_revision",
        "normalize_waveform",
    ),
    unused=_unused_by_encoder,
)


# ----------------------------------------------------------------------------
# Lengths and crops
# ----------------------------------------------------------------------------


def sample_lengths(wavs: Tensor, wav_lens: Tensor | None) -> Tensor:
    """(batch,) valid samples of padded waveforms from SpeechBrain's relative lengths.

    Arguments
    ---------
    wavs : Tensor
        (batch, samples) padded waveforms.
    wav_lens : Tensor or None
        (batch,) relative lengths in (0, 1]; None means every waveform is whole.

    Returns
    -------
    Tensor
        (batch,) long, ``round(wav_lens * samples)`` clamped to [1, samples].
    """
    if wav_lens is None:
        return torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long, device=wavs.device)
    lengths = torch.round(wav_lens.to(torch.float64) * wavs.shape[1]).long()
    return lengths.clamp(min=1, max=wavs.shape[1]).to(wavs.device)


def crop_to_shortest(
    wavs: Tensor, wav_lens: Tensor | None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Crop every waveform of a batch to the shortest one, at random offsets.

    The authors' phase-1 batches are built this way, so no sample is padding (the group
    norms of wav2vec 1.0's and wav2vec2's CNNs would otherwise see it). The offsets come
    from ``generator``, by default torch's global random generator.

    Arguments
    ---------
    wavs : Tensor
        (batch, samples) padded waveforms.
    wav_lens : Tensor or None
        (batch,) relative lengths.
    generator : torch.Generator, optional
        A CPU generator for the offsets.

    Returns
    -------
    wavs : Tensor
        (batch, shortest) crops, ``shortest`` = the smallest valid length in samples.
    wav_lens : Tensor
        (batch,) ones.
    """
    num_samples = sample_lengths(wavs, wav_lens)
    shortest = int(num_samples.min())
    offsets = torch.tensor(
        [
            int(torch.randint(0, int(n) - shortest + 1, (1,), generator=generator))
            for n in num_samples.tolist()
        ],
        device=wavs.device,
    )
    index = offsets[:, None] + torch.arange(shortest, device=wavs.device)[None, :]
    return wavs.gather(1, index), torch.ones(wavs.shape[0], device=wavs.device)


def _smallest_input(num_frames: Callable[[int], int], start: int = 1) -> int:
    """Smallest input length in samples for which ``num_frames`` gives one frame."""
    length = max(1, start)
    while num_frames(length) < 1:
        length += 1
    return length


# ----------------------------------------------------------------------------
# Encoders: frozen CNN features -> SpecAugment -> trainable aggregator
# ----------------------------------------------------------------------------


class FrameEncoder(nn.Module, ABC):
    """Frozen convolutional features, SpecAugment in training mode, trainable aggregator.

    Subclasses provide the frozen features (:meth:`frozen_features`), the aggregator
    (:meth:`aggregate`), the frame arithmetic (:meth:`raw_num_frames`) and
    :attr:`min_samples`. :meth:`forward` takes *unpadded*, equal-length waveforms
    (both encoders normalise over whole utterances, so padding would change the
    features); :class:`FrameEmotionModel` groups a padded batch by length.

    Arguments
    ---------
    feature_dim : int
        Width of the output frame representation (512 in the paper).
    time_mask : TimeMask, optional
        Time masks on the frozen features in training mode; masked frames become 0.
    channel_mask : ChannelMask, optional
        Channel masks on the frozen features in training mode; masked channels become 0.
    """

    kind = ""
    min_samples = 1

    def __init__(
        self,
        feature_dim: int = 512,
        time_mask: TimeMask | None = None,
        channel_mask: ChannelMask | None = None,
    ) -> None:
        super().__init__()
        self.feature_dim = int(feature_dim)
        self.time_mask = time_mask
        self.channel_mask = channel_mask

    @abstractmethod
    def raw_num_frames(self, num_samples: int | Tensor) -> int | Tensor:
        """Frames for inputs of exactly ``num_samples`` samples (0 or less when too short)."""

    def num_frames(self, num_samples: int | Tensor) -> int | Tensor:
        """Output frames (20 ms) for waveforms of ``num_samples`` samples.

        Inputs shorter than :attr:`min_samples` are zero-padded to it, so every
        waveform gets at least one frame.

        Arguments
        ---------
        num_samples : int or Tensor
            Waveform length(s) in samples.

        Returns
        -------
        int or Tensor
            Frame count(s), same type as the input.
        """
        if isinstance(num_samples, Tensor):
            return self.raw_num_frames(num_samples.clamp(min=self.min_samples))
        return int(self.raw_num_frames(max(int(num_samples), self.min_samples)))

    @abstractmethod
    def frozen_features(self, wavs: Tensor) -> Tensor:
        """(batch, channels, cnn frames) frozen features of equal-length waveforms."""

    @abstractmethod
    def aggregate(self, features: Tensor) -> Tensor:
        """(batch, feature_dim, frames) frame representation of (masked) frozen features."""

    @abstractmethod
    def architecture(self) -> dict[str, Any]:
        """What :func:`_encoder_from_architecture` needs to rebuild the encoder."""

    def spec_augment(self, features: Tensor) -> Tensor:
        """Zero random spans of frames and of channels (one channel draw per utterance).

        Arguments
        ---------
        features : Tensor
            (batch, channels, frames) frozen features.

        Returns
        -------
        Tensor
            Same shape, masked.
        """
        batch, channels, frames = features.shape
        if self.time_mask is not None:
            lengths = torch.full((batch,), frames, dtype=torch.long)
            mask = self.time_mask(lengths, frames).to(features.device)
            features = features.masked_fill(mask[:, None, :], 0.0)
        if self.channel_mask is not None:
            mask = self.channel_mask(batch, channels).to(features.device)
            features = features.masked_fill(mask[:, :, None], 0.0)
        return features

    def forward(self, wavs: Tensor) -> Tensor:
        """Frame representation of equal-length waveforms.

        Arguments
        ---------
        wavs : Tensor
            (batch, samples) unpadded 16 kHz waveforms, all ``samples`` long.

        Returns
        -------
        Tensor
            (batch, num_frames(samples), feature_dim).
        """
        with torch.no_grad():
            features = self.frozen_features(wavs)
        if self.training:
            features = self.spec_augment(features)
        return self.aggregate(features).transpose(1, 2)

    def _mask_settings(self) -> dict[str, Any]:
        return {
            "time_mask": None
            if self.time_mask is None
            else {
                "prob": self.time_mask.prob,
                "length": self.time_mask.length,
                "min_masks": self.time_mask.min_masks,
            },
            "channel_mask": None
            if self.channel_mask is None
            else {
                "prob": self.channel_mask.prob,
                "length": self.channel_mask.length,
                "min_masks": self.channel_mask.min_masks,
            },
        }


class Wav2Vec1FrameEncoder(FrameEncoder):
    """The paper's encoder: wav2vec 1.0 with a frozen feature extractor, SpecAugment on
    its features, its trainable context aggregator, then Conv1d(512, 512, kernel 4,
    stride 2) + ReLU from 10 ms to 20 ms frames.

    Frames: ``(wav2vec1 frames - 4) // 2 + 1`` with ``wav2vec1 frames =
    (samples - 465) // 160 + 1`` for the large model, i.e. within a frame or two of
    wav2vec2's ``(samples - 400) // 320 + 1``.

    Arguments
    ---------
    wav2vec1 : Wav2Vec1
        The pretrained model; its feature extractor is frozen here and its unused
        pretraining head dropped.
    feature_dim : int
        Output width of the stride-2 convolution (512).
    time_mask, channel_mask : optional
        SpecAugment on the extractor features, training mode only.
    """

    kind = "wav2vec1"

    def __init__(
        self,
        wav2vec1: Wav2Vec1,
        feature_dim: int = 512,
        time_mask: TimeMask | None = None,
        channel_mask: ChannelMask | None = None,
    ) -> None:
        super().__init__(feature_dim, time_mask, channel_mask)
        wav2vec1.freeze_feature_extractor()
        wav2vec1.wav2vec_predictions = None  # pretraining head, unused here
        self.wav2vec1 = wav2vec1
        self.downsample = nn.Conv1d(wav2vec1.config.context_dim, self.feature_dim, 4, stride=2)
        self.min_samples = _smallest_input(self.raw_num_frames, wav2vec1.config.receptive_field)

    def raw_num_frames(self, num_samples: int | Tensor) -> int | Tensor:
        """``(wav2vec1 frames - 4) // 2 + 1`` for exactly ``num_samples`` samples."""
        frames = self.wav2vec1.output_frames(num_samples)
        if isinstance(frames, Tensor):
            return torch.div(frames - 4, 2, rounding_mode="floor") + 1
        return (int(frames) - 4) // 2 + 1

    def frozen_features(self, wavs: Tensor) -> Tensor:
        """(batch, 512, 10 ms frames) extractor features; short inputs zero-padded."""
        if wavs.shape[1] < self.min_samples:
            wavs = F.pad(wavs, (0, self.min_samples - wavs.shape[1]))
        return self.wav2vec1.extract_features(wavs)

    def aggregate(self, features: Tensor) -> Tensor:
        """Context aggregator, then the stride-2 convolution + ReLU: (batch, 512, frames)."""
        return torch.relu(self.downsample(self.wav2vec1.aggregate(features)))

    def architecture(self) -> dict[str, Any]:
        """The wav2vec 1.0 config and the output width."""
        return {
            "kind": self.kind,
            "feature_dim": self.feature_dim,
            "wav2vec1_config": asdict(self.wav2vec1.config),
            **self._mask_settings(),
        }


class _FrameLayerNorm(nn.LayerNorm):
    """Layer norm over the channels of each frame of a (batch, channels, frames) tensor."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` (batch, channels, frames); same shape."""
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConvAggregator(nn.Module):
    """Convolutional context network for wav2vec2's CNN features: per-frame layer
    norm and a 1x1 projection to ``out_dim``, then ``num_layers`` residual blocks
    ``x + ReLU(LayerNorm(Conv1d(x)))`` (stride 1, same-length padding), then ReLU.

    Normalisation is per frame, so the aggregator keeps the frame count and adds no
    dependence on the utterance length; each block widens the context by
    ``kernel_size - 1`` frames (3 blocks of kernel 5: 13 frames, 260 ms).

    Arguments
    ---------
    in_dim : int
        Channels of the CNN features (512 for wav2vec2-base).
    out_dim : int
        Width of the frame representation (512).
    num_layers : int
        Residual convolution blocks.
    kernel_size : int
        Odd kernel of the block convolutions, in frames.
    """

    def __init__(
        self, in_dim: int, out_dim: int = 512, num_layers: int = 3, kernel_size: int = 5
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same-length output), got {kernel_size}")
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self.input_norm = _FrameLayerNorm(in_dim)
        self.input_proj = nn.Conv1d(in_dim, out_dim, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv1d(out_dim, out_dim, kernel_size, padding=kernel_size // 2),
                _FrameLayerNorm(out_dim),
                nn.ReLU(),
            )
            for _ in range(num_layers)
        )

    def forward(self, features: Tensor) -> Tensor:
        """(batch, in_dim, frames) -> (batch, out_dim, frames)."""
        hidden = self.input_proj(self.input_norm(features))
        for block in self.blocks:
            hidden = hidden + block(hidden)
        return torch.relu(hidden)


class Wav2Vec2CNNFrameEncoder(FrameEncoder):
    """wav2vec2's own CNN feature encoder (frozen), SpecAugment on its features and a
    trainable :class:`ConvAggregator`: 20 ms frames, exactly wav2vec2's frame count.

    Arguments
    ---------
    cnn : Wav2Vec2FeatureEncoder
        The CNN of a (pretrained) wav2vec2; frozen here.
    config : Wav2Vec2Config
        Its config (frame arithmetic, and rebuilding the CNN in :func:`load_frame_model`).
    normalize : bool
        Normalise each waveform to zero mean, unit variance first (wav2vec2-base's
        preprocessing).
    feature_dim : int
        Width of the frame representation (512).
    aggregator_layers, aggregator_kernel : int
        Residual blocks and their odd kernel (frames) in the aggregator.
    time_mask, channel_mask : optional
        SpecAugment on the CNN features, training mode only.
    """

    kind = "w2v2_cnn"

    def __init__(
        self,
        cnn: Wav2Vec2FeatureEncoder,
        config: Wav2Vec2Config,
        normalize: bool = True,
        feature_dim: int = 512,
        aggregator_layers: int = 3,
        aggregator_kernel: int = 5,
        time_mask: TimeMask | None = None,
        channel_mask: ChannelMask | None = None,
    ) -> None:
        super().__init__(feature_dim, time_mask, channel_mask)
        cnn._freeze_parameters()
        self.cnn = cnn.eval()
        self.wav2vec2_config = config
        self.normalize = bool(normalize)
        self.aggregator_layers = int(aggregator_layers)
        self.aggregator_kernel = int(aggregator_kernel)
        self.aggregator = ConvAggregator(
            int(config.conv_dim[-1]), self.feature_dim, self.aggregator_layers, aggregator_kernel
        )
        self.min_samples = _smallest_input(self.raw_num_frames)

    def train(self, mode: bool = True) -> Wav2Vec2CNNFrameEncoder:
        """Set train/eval mode; the frozen CNN stays in eval mode."""
        super().train(mode)
        self.cnn.eval()
        return self

    def raw_num_frames(self, num_samples: int | Tensor) -> int | Tensor:
        """wav2vec2's own length formula (``(samples - 400) // 320 + 1`` for base)."""
        frames = wav2vec2_frame_lengths(self.wav2vec2_config, num_samples)
        return frames if isinstance(num_samples, Tensor) else int(frames)

    def frozen_features(self, wavs: Tensor) -> Tensor:
        """(batch, conv_dim, frames) CNN features; input normalised, then short inputs
        zero-padded to the receptive field (400 samples for base)."""
        if self.normalize:
            wavs = normalize_waveforms(wavs, sample_lengths(wavs, None))
        if wavs.shape[1] < self.min_samples:
            wavs = F.pad(wavs, (0, self.min_samples - wavs.shape[1]))
        return self.cnn(wavs)

    def aggregate(self, features: Tensor) -> Tensor:
        """The trainable aggregator: (batch, feature_dim, frames)."""
        return self.aggregator(features)

    def architecture(self) -> dict[str, Any]:
        """The wav2vec2 config (the CNN is rebuilt from it) and the aggregator shape."""
        return {
            "kind": self.kind,
            "feature_dim": self.feature_dim,
            "wav2vec2_config": self.wav2vec2_config.to_dict(),
            "normalize": self.normalize,
            "aggregator_layers": self.aggregator_layers,
            "aggregator_kernel": self.aggregator_kernel,
            **self._mask_settings(),
        }


# ----------------------------------------------------------------------------
# The model: encoder + frame-wise head + BiLSTM mean-pooled head
# ----------------------------------------------------------------------------


class EmotionHead(nn.Sequential):
    """Linear(in_dim, hidden) - Tanh - Linear(hidden, n_classes) on the last axis."""

    def __init__(self, in_dim: int, hidden_dim: int, n_classes: int) -> None:
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, n_classes))


@dataclass
class FrameEmotionOutput:
    """What :class:`FrameEmotionModel` computes for a batch.

    Attributes
    ----------
    frame_logits : Tensor
        (batch, frames, n_classes) frame-wise head.
    utterance_logits : Tensor
        (batch, n_classes) BiLSTM mean-pooled head.
    frame_mask : Tensor
        (batch, frames) bool, True on valid frames.
    """

    frame_logits: Tensor
    utterance_logits: Tensor
    frame_mask: Tensor

    def utterance_log_probs(self) -> Tensor:
        """(batch, n_classes) mean of the two heads' log-probabilities, the frame head
        averaged over valid frames: the utterance prediction used for validation."""
        frame = masked_mean(torch.log_softmax(self.frame_logits.float(), -1), self.frame_mask)
        return 0.5 * (frame + torch.log_softmax(self.utterance_logits.float(), -1))


class FrameEmotionModel(nn.Module):
    """Frame-level emotion model of P-TAPT phase 1.

    ``encoder`` turns waveforms into 512-dim frames at 20 ms (the representation
    clustered into pseudo-labels); a frame-wise :class:`EmotionHead` classifies every
    frame; a BiLSTM (``lstm_dim`` outputs, half per direction) is mean-pooled over valid
    frames, passed through ReLU and another :class:`EmotionHead`.

    Waveforms of different lengths are encoded one length group at a time, so a frame's
    representation never depends on the padding or on the other utterances of a batch.

    Arguments
    ---------
    encoder : FrameEncoder
        :class:`Wav2Vec1FrameEncoder` or :class:`Wav2Vec2CNNFrameEncoder`.
    n_classes : int
        Emotion classes.
    lstm_dim : int
        BiLSTM output width (authors' code: 512, i.e. 256 per direction).
    head_dim : int
        Hidden width of both heads (128).
    """

    def __init__(
        self, encoder: FrameEncoder, n_classes: int, lstm_dim: int = 512, head_dim: int = 128
    ) -> None:
        super().__init__()
        if lstm_dim % 2:
            raise ValueError(f"lstm_dim must be even (two directions), got {lstm_dim}")
        self.encoder = encoder
        self.n_classes = int(n_classes)
        self.lstm_dim = int(lstm_dim)
        self.head_dim = int(head_dim)
        self.frame_head = EmotionHead(encoder.feature_dim, head_dim, n_classes)
        self.lstm = nn.LSTM(
            encoder.feature_dim, lstm_dim // 2, bidirectional=True, batch_first=True
        )
        self.utterance_head = EmotionHead(lstm_dim, head_dim, n_classes)

    @property
    def frame_encoder(self) -> str:
        """``"wav2vec1"`` or ``"w2v2_cnn"``."""
        return self.encoder.kind

    @property
    def feature_dim(self) -> int:
        """Width of :meth:`frame_features` (512)."""
        return self.encoder.feature_dim

    def num_frames(self, num_samples: int | Tensor) -> int | Tensor:
        """Frames (20 ms) for waveforms of ``num_samples`` samples; see
        :meth:`FrameEncoder.num_frames`."""
        return self.encoder.num_frames(num_samples)

    def encode(self, wavs: Tensor, wav_lens: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Frame representation of a padded batch (masks in training mode only).

        Arguments
        ---------
        wavs : Tensor
            (batch, samples) padded 16 kHz waveforms.
        wav_lens : Tensor, optional
            (batch,) relative lengths; None when no waveform is padded.

        Returns
        -------
        features : Tensor
            (batch, frames, feature_dim), 0 on padding frames;
            ``frames = max(num_frames(valid samples))``.
        frame_mask : Tensor
            (batch, frames) bool, True on the ``num_frames(valid samples)`` valid frames.
        """
        num_samples = sample_lengths(wavs, wav_lens)
        frame_lens = self.num_frames(num_samples)
        lengths = num_samples.tolist()
        if len(set(lengths)) == 1:
            features = self.encoder(wavs[:, : lengths[0]])
        else:
            features = None
            for length in sorted(set(lengths)):
                rows = (num_samples == length).nonzero(as_tuple=True)[0]
                group = self.encoder(wavs[rows, :length])
                if features is None:
                    features = group.new_zeros(wavs.shape[0], int(frame_lens.max()), group.shape[2])
                features[rows, : group.shape[1]] = group
        positions = torch.arange(features.shape[1], device=features.device)
        frame_mask = positions[None, :] < frame_lens.to(features.device)[:, None]
        return features, frame_mask

    def frame_features(self, wavs: Tensor, wav_lens: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The 512-dim frame representation that k-means clusters (eval mode, no
        masks, no gradient): the stride-2 convolution + ReLU output (wav2vec1) or the
        aggregator output (w2v2_cnn).

        Arguments
        ---------
        wavs : Tensor
            (batch, samples) padded 16 kHz waveforms.
        wav_lens : Tensor, optional
            (batch,) relative lengths; None when no waveform is padded.

        Returns
        -------
        features : Tensor
            (batch, frames, feature_dim), frames of 20 ms, 0 on padding frames.
        frame_mask : Tensor
            (batch, frames) bool, True on valid frames.
        """
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self.encode(wavs, wav_lens)
        finally:
            self.train(was_training)

    def forward(self, wavs: Tensor, wav_lens: Tensor | None = None) -> FrameEmotionOutput:
        """Both heads' logits for a padded batch.

        Arguments
        ---------
        wavs : Tensor
            (batch, samples) padded 16 kHz waveforms.
        wav_lens : Tensor, optional
            (batch,) relative lengths.

        Returns
        -------
        FrameEmotionOutput
        """
        features, frame_mask = self.encode(wavs, wav_lens)
        frame_logits = self.frame_head(features)
        lengths = frame_mask.sum(dim=1).cpu()
        packed = pack_padded_sequence(features, lengths, batch_first=True, enforce_sorted=False)
        hidden, _ = self.lstm(packed)
        hidden, _ = pad_packed_sequence(hidden, batch_first=True, total_length=features.shape[1])
        pooled = torch.relu(masked_mean(hidden, frame_mask))
        return FrameEmotionOutput(frame_logits, self.utterance_head(pooled), frame_mask)

    def architecture(self) -> dict[str, Any]:
        """Everything :meth:`from_architecture` needs to rebuild the model (no weights)."""
        return {
            "frame_encoder": self.frame_encoder,
            "n_classes": self.n_classes,
            "lstm_dim": self.lstm_dim,
            "head_dim": self.head_dim,
            "encoder": self.encoder.architecture(),
        }

    @classmethod
    def from_architecture(cls, architecture: Mapping[str, Any]) -> FrameEmotionModel:
        """A randomly initialised model of the recorded architecture (no download, no hub).

        Arguments
        ---------
        architecture : mapping
            The output of :meth:`architecture` (e.g. read from ``frame_model.json``).

        Returns
        -------
        FrameEmotionModel
        """
        return cls(
            _encoder_from_architecture(architecture["encoder"]),
            n_classes=int(architecture["n_classes"]),
            lstm_dim=int(architecture["lstm_dim"]),
            head_dim=int(architecture["head_dim"]),
        )


def _masks_from_record(record: Mapping[str, Any]) -> tuple[TimeMask | None, ChannelMask | None]:
    time_mask = record.get("time_mask")
    channel_mask = record.get("channel_mask")
    return (
        None if time_mask is None else TimeMask(**time_mask),
        None if channel_mask is None else ChannelMask(**channel_mask),
    )


def _encoder_from_architecture(record: Mapping[str, Any]) -> FrameEncoder:
    """Rebuild an encoder (random weights) from :meth:`FrameEncoder.architecture`."""
    time_mask, channel_mask = _masks_from_record(record)
    if record["kind"] == "wav2vec1":
        return Wav2Vec1FrameEncoder(
            Wav2Vec1(Wav2Vec1Config(**record["wav2vec1_config"])),
            feature_dim=int(record["feature_dim"]),
            time_mask=time_mask,
            channel_mask=channel_mask,
        )
    if record["kind"] == "w2v2_cnn":
        config = Wav2Vec2Config.from_dict(dict(record["wav2vec2_config"]))
        return Wav2Vec2CNNFrameEncoder(
            Wav2Vec2FeatureEncoder(config),
            config,
            normalize=bool(record["normalize"]),
            feature_dim=int(record["feature_dim"]),
            aggregator_layers=int(record["aggregator_layers"]),
            aggregator_kernel=int(record["aggregator_kernel"]),
            time_mask=time_mask,
            channel_mask=channel_mask,
        )
    raise ValueError(f"unknown frame encoder {record['kind']!r}; expected one of {FRAME_ENCODERS}")


def build_frame_model(
    frame_encoder: str,
    n_classes: int,
    wav2vec1_checkpoint: str | os.PathLike[str] | None = None,
    wav2vec1_folder: str | os.PathLike[str] | None = None,
    wav2vec2_hub: str | None = None,
    wav2vec2_folder: str | None = None,
    time_mask: TimeMask | None = None,
    channel_mask: ChannelMask | None = None,
    feature_dim: int = 512,
    lstm_dim: int = 512,
    head_dim: int = 128,
    cnn_aggregator_layers: int = 3,
    cnn_aggregator_kernel: int = 5,
    wav2vec2_revision: str | None = None,
    normalize_waveform: bool | None = None,
) -> FrameEmotionModel:
    """A phase-1 model with pretrained encoder weights (the yaml's ``frame_model``).

    Arguments
    ---------
    frame_encoder : str
        ``"wav2vec1"`` (the paper's) or ``"w2v2_cnn"``.
    n_classes : int
        Emotion classes.
    wav2vec1_checkpoint : path, optional
        fairseq ``wav2vec_large.pt``; when missing it is downloaded into
        ``wav2vec1_folder`` (see :func:`ensure_wav2vec1_checkpoint`).
    wav2vec1_folder : path, optional
        Where the downloaded checkpoint is kept.
    wav2vec2_hub : str, optional
        Hub id or local folder whose CNN feature encoder ``w2v2_cnn`` uses.
    wav2vec2_folder : str, optional
        Cache folder for hub downloads.
    time_mask, channel_mask : optional
        SpecAugment on the frozen features (training mode only).
    feature_dim, lstm_dim, head_dim : int
        Frame representation width (512), BiLSTM output width (512), head hidden width
        (128).
    cnn_aggregator_layers, cnn_aggregator_kernel : int
        Shape of the ``w2v2_cnn`` aggregator.
    wav2vec2_revision : str, optional
        Hub revision of ``wav2vec2_hub`` when it is a hub id (ignored for a folder).
    normalize_waveform : bool, optional
        ``w2v2_cnn`` only: normalise each waveform before the CNN (None follows the
        backbone's preprocessor config). wav2vec 1.0 always reads raw samples, as
        fairseq and the authors' code do.

    Returns
    -------
    FrameEmotionModel
    """
    if frame_encoder == "wav2vec1":
        if wav2vec1_checkpoint is None and wav2vec1_folder is None:
            raise ValueError(
                "frame_encoder 'wav2vec1' needs wav2vec1_checkpoint or wav2vec1_folder"
            )
        folder = wav2vec1_folder if wav2vec1_folder is not None else "."
        # Under DDP the main process downloads, the others then find the file.
        run_on_main(ensure_wav2vec1_checkpoint, args=[wav2vec1_checkpoint, folder])
        path = ensure_wav2vec1_checkpoint(wav2vec1_checkpoint, folder)
        encoder: FrameEncoder = Wav2Vec1FrameEncoder(
            load_wav2vec1(path), feature_dim, time_mask, channel_mask
        )
    elif frame_encoder == "w2v2_cnn":
        if wav2vec2_hub is None:
            raise ValueError("frame_encoder 'w2v2_cnn' needs wav2vec2_hub")
        wav2vec2 = load_pretrained(
            Wav2Vec2Model, str(wav2vec2_hub), wav2vec2_folder, wav2vec2_revision
        )
        preprocessor: Wav2Vec2FeatureExtractor = load_feature_extractor(
            str(wav2vec2_hub), wav2vec2_folder, wav2vec2_revision, normalize_waveform
        )
        encoder = Wav2Vec2CNNFrameEncoder(
            wav2vec2.feature_extractor,
            wav2vec2.config,
            normalize=bool(getattr(preprocessor, "do_normalize", True)),
            feature_dim=feature_dim,
            aggregator_layers=cnn_aggregator_layers,
            aggregator_kernel=cnn_aggregator_kernel,
            time_mask=time_mask,
            channel_mask=channel_mask,
        )
    else:
        raise ValueError(f"frame_encoder must be one of {FRAME_ENCODERS}, got {frame_encoder!r}")
    return FrameEmotionModel(encoder, n_classes, lstm_dim=lstm_dim, head_dim=head_dim)


def frame_emotion_losses(
    output: FrameEmotionOutput, targets: Tensor, class_weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The two class-weighted cross-entropies of phase 1 (their sum is optimised).

    Arguments
    ---------
    output : FrameEmotionOutput
        The model's output for a batch.
    targets : Tensor
        (batch,) class indices, one label per utterance.
    class_weights : Tensor, optional
        (n_classes,) weights, e.g. the inverse class prior of the training split.

    Returns
    -------
    frame_loss : Tensor
        () weighted mean over every valid frame of the batch, each frame labelled with
        its utterance's class.
    utterance_loss : Tensor
        () weighted mean over utterances of the BiLSTM head's loss.
    """
    weight = None if class_weights is None else class_weights.to(targets.device).float()
    mask = output.frame_mask
    frame_targets = targets[:, None].expand(mask.shape)[mask]
    frame_loss = F.cross_entropy(output.frame_logits[mask].float(), frame_targets, weight=weight)
    utterance_loss = F.cross_entropy(output.utterance_logits.float(), targets, weight=weight)
    return frame_loss, utterance_loss


# ----------------------------------------------------------------------------
# Data: validation split
# ----------------------------------------------------------------------------


def split_validation(
    manifest: str | Path, valid_ratio: float, seed: int, out_folder: str | Path
) -> tuple[Path, Path]:
    """Carve a random validation split out of a training manifest.

    The split depends only on the manifest's utterance ids and ``seed``: the ids are
    sorted, permuted by ``numpy.random.default_rng(seed)`` and the first
    ``max(1, round(valid_ratio * N))`` go to validation (at least one utterance stays
    for training).

    Arguments
    ---------
    manifest : str or Path
        The fold's training manifest (SpeechBrain JSON).
    valid_ratio : float
        Share of utterances held out, in (0, 1).
    seed : int
        Seed of the draw.
    out_folder : str or Path
        Where ``train_split.json`` and ``valid_split.json`` are written (atomically).

    Returns
    -------
    tuple of Path
        ``(train_split.json, valid_split.json)``, subsets of ``manifest``.
    """
    if not 0.0 < valid_ratio < 1.0:
        raise ValueError(f"frame_valid_ratio must be in (0, 1), got {valid_ratio}")
    data = read_json(manifest)
    if len(data) < 2:
        raise ValueError(f"{manifest} has {len(data)} utterance(s): cannot hold one out")
    ids = sorted(data)
    order = np.random.default_rng(int(seed)).permutation(len(ids))
    n_valid = min(max(1, round(valid_ratio * len(ids))), len(ids) - 1)
    valid_ids = {ids[i] for i in order[:n_valid]}
    out_folder = Path(out_folder)
    train_path, valid_path = out_folder / "train_split.json", out_folder / "valid_split.json"
    if if_main_process():
        write_json(train_path, {k: v for k, v in data.items() if k not in valid_ids})
        write_json(valid_path, {k: v for k, v in data.items() if k in valid_ids})
    ddp_barrier()
    return train_path, valid_path


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------


class FrameEmotionBrain(StepStageBrain):
    """Trains a :class:`FrameEmotionModel` (``modules.model``) for a fixed number of
    optimizer steps (the stage's settings:
    :class:`~speechbrain_ptapt.stages.training.StepStageBrain`), validating after every epoch
    (a pass over the training part) or every ``valid_every`` optimizer steps, and after
    the last step.

    Training batches are cropped to their shortest utterance at random offsets; the
    loss is the sum of :func:`frame_emotion_losses`. With ``valid_crop: shortest``
    validation batches are cropped the same way, at offsets drawn from a generator
    seeded by ``valid_seed`` and the optimizer steps done (the training random state is
    left alone). After each validation a checkpoint is saved with the validation
    ``loss`` (mean over utterances of the batches' summed cross-entropies, each batch
    weighted by its utterances as Lightning 1.4.5 averages the authors'
    ``valid_loss``: ``pytorch_lightning/trainer/connectors/logger_connector/result.py:196-212``)
    and ``ua`` (unweighted accuracy of :meth:`FrameEmotionOutput.utterance_log_probs`),
    keeping the most recent one and the best one by ``select_by``
    (:func:`selection_rank`); a validation between two epochs' ends saves the loader's
    position with it, so a resumed stage goes on with the epoch's next batch.

    Expects in hparams, besides the step-counted stage's: ``class_weights`` (tensor),
    ``n_classes``, ``select_by`` (one of :data:`SELECTION_CRITERIA`), ``valid_crop``
    (one of :data:`VALID_CROPS`), ``valid_seed`` (int), ``valid_every`` (``"epoch"`` or
    a number of optimizer steps, :func:`validation_every_steps`) and optionally
    ``train_logger`` (one line per validation, with the mean training loss since the
    previous one).
    """

    _epoch = 0
    _mid_epoch = False
    _valid_loader: Any = None

    def compute_forward(self, batch, stage) -> FrameEmotionOutput:
        """Model output; training batches (and validation ones with ``valid_crop``) are
        cropped to their shortest utterance."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        if stage == sb.Stage.TRAIN:
            wavs, wav_lens = crop_to_shortest(wavs, wav_lens)
        elif self.hparams.valid_crop == "shortest":
            wavs, wav_lens = crop_to_shortest(wavs, wav_lens, self._crop_generator)
        return self.modules.model(wavs, wav_lens)

    def compute_objectives(self, predictions: FrameEmotionOutput, batch, stage) -> Tensor:
        """Sum of the frame-wise and utterance-level weighted cross-entropies."""
        targets = batch.emo_encoded.data[:, 0].to(predictions.utterance_logits.device)
        frame_loss, utterance_loss = frame_emotion_losses(
            predictions, targets, self.hparams.class_weights
        )
        loss = frame_loss + utterance_loss
        if stage == sb.Stage.TRAIN:
            self.add_to_log(loss=loss.detach())
        else:
            self._loss_sum += float(loss.detach()) * targets.numel()
            self._utterances += targets.numel()
            scores = predictions.utterance_log_probs().detach()
            self._targets.extend(targets.cpu().tolist())
            self._predictions.extend(scores.argmax(dim=-1).cpu().tolist())
            mask = predictions.frame_mask
            frame_hits = predictions.frame_logits.argmax(dim=-1) == targets[:, None]
            self._frame_hits += int(frame_hits[mask].sum())
            self._frames += int(mask.sum())
        return loss

    def fit_steps(
        self,
        train_set: torch.utils.data.Dataset,
        train_loader_kwargs: dict[str, Any],
        valid_set: Any = None,
    ) -> None:
        """Trains the stage, validating on ``valid_set`` (a loader) after every epoch,
        or every ``valid_every`` optimizer steps."""
        self._valid_loader = valid_set
        by_epoch = validation_every_steps(self.hparams.valid_every) is None
        super().fit_steps(train_set, train_loader_kwargs, valid_set if by_epoch else None)

    def on_fit_batch_end(self, batch, outputs, loss, should_step: bool) -> None:
        """After an optimizer step: the checkpoint when due, and the validation when
        ``valid_every`` steps are done (or the last step)."""
        super().on_fit_batch_end(batch, outputs, loss, should_step)
        every = validation_every_steps(self.hparams.valid_every)
        if should_step and every is not None:
            if self.optimizer_step % every == 0 or self.stage_finished:
                self.validate_mid_epoch()

    def validate_mid_epoch(self) -> None:
        """A validation between two epochs' ends (SpeechBrain validates after an
        epoch only); its checkpoint keeps the training loader's position."""
        self._mid_epoch = True
        self.on_stage_start(sb.Stage.VALID, self._epoch)
        self.modules.eval()
        try:
            with torch.no_grad():
                for batch in self._valid_loader:
                    self.evaluate_batch(batch, stage=sb.Stage.VALID)
            self.on_stage_end(sb.Stage.VALID, None, self._epoch)
        finally:
            self.modules.train()
            self._mid_epoch = False

    def on_stage_start(self, stage, epoch=None) -> None:
        """Training: the epoch. Validation: resets the collected predictions and seeds
        the validation crops."""
        super().on_stage_start(stage, epoch)
        if stage == sb.Stage.TRAIN:
            self._epoch = int(epoch or 0)
            return
        self._targets: list[int] = []
        self._predictions: list[int] = []
        self._frame_hits = 0
        self._frames = 0
        self._loss_sum = 0.0
        self._utterances = 0
        seed = np.random.SeedSequence([int(self.hparams.valid_seed), int(self.optimizer_step)])
        self._crop_generator = torch.Generator().manual_seed(int(seed.generate_state(1)[0]))

    def on_stage_end(self, stage, stage_loss, epoch=None) -> None:
        """Validation: metrics, log line, checkpoint (nothing after training: the last
        validation holds the finished stage)."""
        if stage == sb.Stage.TRAIN:
            return
        metrics = classification_metrics(self._targets, self._predictions, self.hparams.n_classes)
        self.valid_stats = {
            "loss": self._loss_sum / max(self._utterances, 1),
            "ua": metrics["ua"],
            "wa": metrics["wa"],
            "frame_acc": self._frame_hits / max(self._frames, 1),
        }
        meta = {"optimizer_step": int(self.optimizer_step), "lr": float(getattr(self, "lr", 0.0))}
        train_logger = getattr(self.hparams, "train_logger", None)
        train_loss = self.take_log_window().get("loss", float("nan"))
        if train_logger is not None:
            train_logger.log_stats(
                stats_meta={"epoch": epoch, **meta},
                train_stats={"loss": train_loss},
                valid_stats=self.valid_stats,
            )
        if stage == sb.Stage.VALID and self.checkpointer is not None:
            meta = {**meta, **self.valid_stats}
            # One decision for every process: saving synchronises them.
            if ddp_broadcast(self._worth_saving(meta) if if_main_process() else None):
                self.checkpointer.save_and_keep_only(
                    meta=meta,
                    end_of_epoch=not self._mid_epoch,
                    importance_keys=[selection_rank(self.hparams.select_by)],
                    ckpt_predicate=is_validated,
                    num_to_keep=1,
                )

    def _worth_saving(self, meta: dict[str, Any]) -> bool:
        """Whether a validation's checkpoint is saved: when it beats every saved one by
        ``select_by`` (the authors' ``ModelCheckpoint(save_top_k=1)`` saves only then,
        ``run_pretrain.py:24-31``), and after the stage's last step (its finished state).
        Skipped ones cost a resumed stage some replayed steps (it replays them exactly),
        not hundreds of writes of the whole training state (5 steps per epoch on SAVEE).
        """
        limit = self.optimizer_step_limit
        if limit is not None and self.optimizer_step >= limit:
            return True
        rank = selection_rank(self.hparams.select_by)
        best = self.checkpointer.find_checkpoint(importance_key=rank, ckpt_predicate=is_validated)
        return best is None or rank(Checkpoint(Path(), meta, {})) > rank(best)


def is_validated(checkpoint: Checkpoint) -> bool:
    """Whether a phase-1 checkpoint was saved after a validation (has a ``ua``)."""
    return "ua" in checkpoint.meta


def lowest_loss_rank(checkpoint: Checkpoint) -> tuple[float, int]:
    """Order of validated phase-1 checkpoints by ``frame_select_by: valid_loss``: the
    lower validation loss first and, among equal losses, the earlier step, whatever
    order the checkpoint folders are listed in (so an interrupted and resumed stage
    selects what an uninterrupted one would)."""
    return -float(checkpoint.meta["loss"]), -int(checkpoint.meta.get("optimizer_step", 0))


def highest_ua_rank(checkpoint: Checkpoint) -> tuple[float, int]:
    """Order of validated phase-1 checkpoints by ``frame_select_by: valid_ua``: the
    higher validation UA first and, among equal UA, the earlier step."""
    return float(checkpoint.meta["ua"]), -int(checkpoint.meta.get("optimizer_step", 0))


def selection_rank(select_by: str) -> Callable[[Checkpoint], tuple[float, int]]:
    """The checkpoint order (higher is better) of a ``frame_select_by`` value."""
    ranks = {"valid_loss": lowest_loss_rank, "valid_ua": highest_ua_rank}
    if select_by not in ranks:
        raise ValueError(f"frame_select_by must be one of {SELECTION_CRITERIA}, got {select_by!r}")
    return ranks[select_by]


def validation_every_steps(valid_every: int | str) -> int | None:
    """Optimizer steps between two validations, from ``frame_valid_every``.

    Arguments
    ---------
    valid_every : int or str
        ``"epoch"``: after every pass over the training part, as the authors'
        Lightning loop (``check_val_every_n_epoch=1``, ``run_pretrain.py:14, 37``);
        or a positive number of optimizer steps. Either way the last step is validated
        too.

    Returns
    -------
    int or None
        The number of steps, or None for ``"epoch"``.

    Raises
    ------
    ValueError
        For any other value.
    """
    if valid_every == "epoch":
        return None
    if isinstance(valid_every, int) and not isinstance(valid_every, bool) and valid_every >= 1:
        return int(valid_every)
    raise ValueError(
        f"frame_valid_every must be 'epoch' or a positive number of steps, got {valid_every!r}"
    )


def validation_loader(
    brain: sb.Brain, valid_manifest: str | Path, hparams: Mapping[str, Any], num_workers: int = 0
) -> torch.utils.data.DataLoader:
    """The phase-1 validation batches of ``frame_valid_batch_size`` utterances.

    With ``frame_valid_crop: shortest`` (cropped by :class:`FrameEmotionBrain`) they
    keep the authors' composition: the validation split in one fixed random order
    (from ``frame_seed``), as their ``random_split`` subset read without shuffling
    (``pretrain/trainer.py:25, 51-57``). Whole utterances (``none``) are sorted by
    duration, so that little of a batch is padding.

    Arguments
    ---------
    brain : sb.Brain
        The stage's brain (its ``make_dataloader``).
    valid_manifest : str or Path
        The validation split.
    hparams : mapping
        ``classes``, ``sample_rate``, ``frame_valid_crop``, ``frame_valid_batch_size``
        and ``frame_seed``.
    num_workers : int
        Loader processes.

    Returns
    -------
    DataLoader
        Batches in the same order at every validation.
    """
    crop = hparams["frame_valid_crop"] == "shortest"
    encoder = make_label_encoder(hparams["classes"])
    valid_set = emotion_dataset(valid_manifest, encoder, hparams["sample_rate"], sort=not crop)
    order = None
    if crop:
        order = np.random.default_rng(int(hparams["frame_seed"])).permutation(len(valid_set))
    # A private generator: creating the loader's iterator draws nothing from the global
    # random state, so a resumed stage draws the crops and masks an uninterrupted one would.
    return brain.make_dataloader(
        valid_set,
        stage=sb.Stage.VALID,
        ckpt_prefix=None,
        num_workers=num_workers,
        batch_size=int(hparams["frame_valid_batch_size"]),
        sampler=None if order is None else order.tolist(),
        generator=torch.Generator(),
    )


def train_frame_model(
    model: FrameEmotionModel,
    hparams: Mapping[str, Any],
    run_opts: Any,
    train_manifest: str | Path,
    valid_manifest: str | Path,
    class_weights: Tensor,
    checkpointer: sb.utils.checkpoints.Checkpointer | None = None,
) -> FrameEmotionBrain:
    """Train (or resume) phase 1 on ``train_manifest``, validating on ``valid_manifest``.

    Arguments
    ---------
    model : FrameEmotionModel
        The model, encoder weights loaded.
    hparams : mapping
        ``frame_brain_hparams`` (the Brain's settings: steps, schedule, epoch counter,
        validation, checkpoints, logger), ``frame_opt_class``, ``classes``,
        ``sample_rate``, ``frame_batch_size`` (or ``frame_batch_seconds`` and
        ``frame_num_buckets``: batches of at least that many seconds of length-bucketed
        audio when not None), ``frame_max_seconds`` (random crops of at most that
        length when not None), ``frame_valid_batch_size``, ``frame_valid_crop``,
        ``frame_seed`` and ``frame_num_workers``.
    run_opts : RunOptions or dict
        SpeechBrain's run options.
    train_manifest, valid_manifest : str or Path
        The training part and the validation split (SpeechBrain JSON manifests).
    class_weights : Tensor
        (n_classes,) loss weights.
    checkpointer : Checkpointer, optional
        Receives the stage's state after every validation (and every
        ``frame_ckpt_interval_steps`` steps); an existing checkpoint is resumed.

    Returns
    -------
    FrameEmotionBrain
        The brain after training (``optimizer_step == frame_steps``).
    """
    settings = dict(hparams["frame_brain_hparams"])
    selection_rank(settings["select_by"])  # an unknown criterion fails before training
    valid_every = validation_every_steps(settings["valid_every"])
    if settings["valid_crop"] not in VALID_CROPS:
        raise ValueError(
            f"frame_valid_crop must be one of {VALID_CROPS}, got {settings['valid_crop']!r}"
        )
    brain = FrameEmotionBrain(
        modules={"model": model},
        opt_class=hparams["frame_opt_class"],
        hparams={**settings, "class_weights": class_weights},
        run_opts=with_default_precision(run_opts),
        checkpointer=checkpointer,
    )
    max_seconds = hparams.get("frame_max_seconds")
    encoder = make_label_encoder(hparams["classes"])
    train_set = emotion_dataset(train_manifest, encoder, hparams["sample_rate"], max_seconds)
    seed = int(hparams["frame_seed"])
    batch_seconds = hparams.get("frame_batch_seconds")
    if batch_seconds is None:
        # The authors' phase 1: frame_batch_size random utterances, the rest of a pass
        # dropped (pretrain/trainer.py:43-49); each process batches its share.
        batch_size = min(int(hparams["frame_batch_size"]), max(1, len(train_set) // world_size()))
        loader_kwargs = {
            "sampler": ReproducibleRandomSampler(train_set, seed=seed),
            "batch_size": batch_size,
            "drop_last": True,
        }
        batches = f"{batch_size} utterances"
    else:
        sampler = duration_batch_sampler(
            train_set, float(batch_seconds), max_seconds, int(hparams["frame_num_buckets"]), seed
        )
        loader_kwargs = {"batch_sampler": sampler}
        batches = f"at least {batch_seconds} s of audio"
    workers = int(hparams.get("frame_num_workers", 0))
    valid_loader = validation_loader(brain, valid_manifest, hparams, workers)
    logger.info(
        "P-TAPT phase 1 (%s) on %d utterances of %s, validated on %d (%s): %d steps of %s "
        "(%s, cropped to the batch's shortest), validation %s, keeping the checkpoint of "
        "the %s.",
        model.frame_encoder,
        len(train_set),
        train_manifest,
        len(valid_loader.dataset),
        "cropped to each batch's shortest"
        if settings["valid_crop"] == "shortest"
        else "whole files",
        brain.optimizer_step_limit,
        batches,
        "whole files" if max_seconds is None else f"random crops of at most {max_seconds} s",
        "after every epoch" if valid_every is None else f"every {valid_every} steps",
        "lowest validation loss" if settings["select_by"] == "valid_loss" else "highest UA",
    )
    brain.fit_steps(train_set, {**loader_kwargs, "num_workers": workers}, valid_loader)
    return brain


# ----------------------------------------------------------------------------
# The stage: fingerprint, skip/resume, final model
# ----------------------------------------------------------------------------


def labelled_manifest_digest(manifest: str | Path) -> str:
    """SHA-256 of a manifest's utterance ids, durations and emotion labels (not of its
    paths, so moving the corpus keeps the digest)."""
    with open(manifest, encoding="utf-8") as f:
        data = json.load(f)
    items = sorted(
        (str(k), round(float(v.get("duration", 0.0)), 4), str(v.get("emo")))
        for k, v in data.items()
    )
    return hashlib.sha256(json.dumps(items).encode("utf-8")).hexdigest()


def frame_fingerprint(hparams: Mapping[str, Any], train_manifest: str | Path) -> dict[str, Any]:
    """The settings that define a fold's phase 1 (:data:`FRAME_KEYS`), plus its training
    data digest.

    Arguments
    ---------
    hparams : mapping
        The stage's hyperparameters.
    train_manifest : str or Path
        The fold's training manifest.

    Returns
    -------
    dict
        JSON-compatible settings; ``train_manifest`` holds
        :func:`labelled_manifest_digest`.
    """
    digest = labelled_manifest_digest(train_manifest)
    return stage_fingerprint(FRAME_KEYS, hparams, train_manifest=digest)


def save_frame_model(model: FrameEmotionModel, folder: str | Path, record: dict[str, Any]) -> Path:
    """Write :data:`MODEL_FILE` (state dict) and :data:`RECORD_FILE` (``record`` plus the
    architecture) into a temporary folder, then rename it to ``folder``: a folder of
    that name is always complete.

    Arguments
    ---------
    model : FrameEmotionModel
        The model to save.
    folder : str or Path
        The final folder (must not exist).
    record : dict
        Extra JSON entries (settings fingerprint, selected step ...).

    Returns
    -------
    Path
        ``folder``.
    """
    partial = partial_folder(folder)
    _write_state(model, partial)
    content = {"format_version": _FORMAT_VERSION, **record, "architecture": model.architecture()}
    return finish_folder(partial, folder, (RECORD_FILE, content))


def _write_state(model: FrameEmotionModel, folder: Path) -> None:
    """Writes the model's state dict (on the CPU) as ``folder/``:data:`MODEL_FILE`."""
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    torch.save(state, folder / MODEL_FILE)


def load_frame_model(
    final_folder: str | Path, map_location: str | torch.device = "cpu"
) -> FrameEmotionModel:
    """Rebuild the phase-1 model saved by :func:`run_frame_stage` (no hub, no download).

    Arguments
    ---------
    final_folder : str or Path
        ``<frame_folder>/final`` with :data:`MODEL_FILE` and :data:`RECORD_FILE`.
    map_location : str or torch.device
        Device of the returned model.

    Returns
    -------
    FrameEmotionModel
        In eval mode, weights loaded.
    """
    final_folder = Path(final_folder)
    with open(final_folder / RECORD_FILE, encoding="utf-8") as f:
        record = json.load(f)
    model = FrameEmotionModel.from_architecture(record["architecture"])
    state = torch.load(final_folder / MODEL_FILE, map_location=map_location, weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()


def run_frame_stage(hparams: dict[str, Any], run_opts: Any, train_manifest: str | Path) -> Path:
    """P-TAPT phase 1 of one fold: train the frame-level emotion model on the fold's
    training manifest (never its test manifest) and save the best validated model.

    Writes to ``frame_folder`` (``<output_folder>/fold_<fold>/frame_emotion``): the
    validation split (``train_split.json``, ``valid_split.json``), checkpoints in
    ``frame_save_folder``, ``train_log.txt`` and finally ``final/`` (:data:`MODEL_FILE`,
    :data:`RECORD_FILE`). A ``final/`` whose recorded fingerprint matches the current
    settings and training manifest is reused as is; one that does not match, or
    checkpoints of other settings, stop the stage with a
    :class:`~speechbrain_ptapt.protocol.errors.StageSettingsError` naming what differs (nothing
    is deleted; :mod:`speechbrain_ptapt.protocol.stage_cache`). An interrupted stage resumes
    from its last readable checkpoint.

    Arguments
    ---------
    hparams : dict
        The fold's hparams (phase-1 settings under ``frame_`` names, ``fold`` set).
    run_opts : RunOptions or dict
        SpeechBrain's run options.
    train_manifest : str or Path
        The fold's training manifest.

    Returns
    -------
    Path
        The ``final`` folder, for :func:`load_frame_model`.
    """
    from speechbrain_ptapt.data.dataio import check_labels, inverse_prior_weights

    fold = str(hparams["fold"])
    train_manifest = Path(train_manifest)
    folder = Path(hparams["frame_folder"])
    final = folder / FINAL_FOLDER
    save_folder = Path(hparams["frame_save_folder"])
    cache = StageCache(
        "P-TAPT phase 1",
        frame_fingerprint(hparams, train_manifest),
        final / RECORD_FILE,
        checkpoints=save_folder,
        checkpoint_record=_SETTINGS_FILE,
    )
    if cache.is_done([final / MODEL_FILE]):
        logger.info("P-TAPT phase 1 of fold %s is finished (%s), skipping it.", fold, final)
        return final
    cache.guard_checkpoints()

    classes = list(hparams["classes"])
    class_weights = inverse_prior_weights(check_labels(train_manifest, classes), classes)
    seed = int(hparams["frame_seed"])
    train_part, valid_part = split_validation(
        train_manifest, float(hparams["frame_valid_ratio"]), seed, folder
    )
    seed_everything(seed)
    model = hparams["frame_model"]()
    checkpointer = hparams["frame_checkpointer"]()
    brain = train_frame_model(
        model, hparams, run_opts, train_part, valid_part, class_weights, checkpointer
    )

    select_by = str(hparams["frame_select_by"])
    best = checkpointer.find_checkpoint(
        importance_key=selection_rank(select_by), ckpt_predicate=is_validated
    )
    if best is None:
        raise RuntimeError(f"no validated checkpoint in {save_folder}: nothing to select")
    model.load_state_dict(load_checkpoint_file(best.paramfiles["model"]), strict=True)
    if if_main_process():
        cache.publish_folder(
            lambda partial: _write_state(model, partial),
            **{
                "format_version": _FORMAT_VERSION,
                "fold": str(fold),
                "classes": classes,
                "sample_rate": int(hparams["sample_rate"]),
                "class_weights": class_weights.tolist(),
                "train_manifest": str(train_manifest),
                "select_by": select_by,
                "selected": {
                    key: best.meta[key]
                    for key in ("optimizer_step", "ua", "wa", "loss", "frame_acc")
                    if key in best.meta
                },
                "optimizer_steps": int(brain.optimizer_step),
                "architecture": model.architecture(),
            },
        )
        logger.info(
            "P-TAPT phase 1 of fold %s done: step %s (validation loss %.4f, UA %.3f; "
            "selected by %s) saved in %s.",
            fold,
            best.meta.get("optimizer_step"),
            best.meta["loss"],
            best.meta["ua"],
            select_by,
            final,
        )
    ddp_barrier()
    return final
