"""P-TAPT phase 1's frame-level emotion model (Chen & Rudnicky 2022, Sec. 2.4, Fig. 1a,
and the authors' code): a frozen convolutional feature encoder (wav2vec 1.0's, as in
the paper, or wav2vec2's own CNN), SpecAugment in training, a trainable aggregator with
one 512-dim vector per 20 ms frame, a frame-wise head and a mean-pooled BiLSTM head, and
their summed class-weighted cross-entropies. The stage that trains it is
:mod:`speechbrain_ptapt.stages.frame_emotion`.

Units: waveforms are 16 kHz and measured in samples; "frames" are the encoders' output
frames of 20 ms.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from speechbrain.utils.distributed import run_on_main
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2FeatureEncoder

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

FRAME_ENCODERS = ("wav2vec1", "w2v2_cnn")
"""Values of ``frame_encoder``: the paper's wav2vec 1.0, or wav2vec2's own CNN."""


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
        Its config (frame arithmetic, and rebuilding the CNN in
        :func:`~speechbrain_ptapt.stages.frame_emotion.load_frame_model`).
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


