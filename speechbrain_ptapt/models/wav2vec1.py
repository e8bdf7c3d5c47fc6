"""wav2vec 1.0 (Schneider et al., 2019) in plain PyTorch, loadable from fairseq's checkpoints.

P-TAPT phase 1 fine-tunes the released ``wav2vec_large.pt`` as a frame-level emotion
CNN: its convolutional feature extractor stays frozen and its convolutional context
aggregator is trained. This module rebuilds that network with the same module tree and
parameter names as fairseq's ``Wav2VecModel``, so the released state dict loads key for
key, and it reads the checkpoint file without fairseq or omegaconf being installed.

Units: waveforms are sampled at 16 kHz and measured in samples; the extractor and the
aggregator output one 512-dim vector per frame of 10 ms (hop 160 samples).
"""

from __future__ import annotations

import argparse
import ast
import logging
import math
import os
import pickle
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechbrain_ptapt.protocol.errors import MissingFileError, PtaptError

logger = logging.getLogger(__name__)

__all__ = [
    "WAV2VEC1_LARGE_URL",
    "WAV2VEC1_LARGE_FILENAME",
    "ConvLayerSpec",
    "Wav2Vec1CheckpointError",
    "Wav2Vec1Config",
    "Wav2Vec1",
    "ensure_wav2vec1_checkpoint",
    "freeze_feature_extractor",
    "load_wav2vec1",
    "parse_conv_layers",
]

WAV2VEC1_LARGE_URL = "https://dl.fbaipublicfiles.com/fairseq/wav2vec/wav2vec_large.pt"
"""Where FAIR publishes the LibriSpeech-pretrained wav2vec 1.0 large checkpoint."""

WAV2VEC1_LARGE_FILENAME = "wav2vec_large.pt"
"""File name under which :func:`ensure_wav2vec1_checkpoint` stores the download."""

ConvLayerSpec = tuple[int, int, int]
"""One convolution as ``(output channels, kernel size, stride)``; sizes in input steps."""

# Released large model (fairseq's wav2vec README training command): five strided
# convolutions (total stride 160 samples) and two 1x1 "linear" layers in the extractor,
# twelve causal stride-1 convolutions of kernel 2..13 in the aggregator.
_LARGE_FEATURE_LAYERS: tuple[ConvLayerSpec, ...] = (
    (512, 10, 5),
    (512, 8, 4),
    (512, 4, 2),
    (512, 4, 2),
    (512, 4, 2),
    (512, 1, 1),
    (512, 1, 1),
)
_LARGE_AGGREGATOR_LAYERS: tuple[ConvLayerSpec, ...] = tuple((512, k, 1) for k in range(2, 14))

# fairseq's default for a checkpoint whose arguments lack ``conv_feature_layers``: the
# Wav2VecConfig dataclass default (fairseq/models/wav2vec/wav2vec.py:55-60 at b8ea8a9b,
# the commit FT-w2v2-ser's docker/Dockerfile:11 installs), which has three 1x1 layers where
# the large model has two. Its other defaults of the fields modelled here are the large
# model's values.
_FAIRSEQ_DEFAULT_FEATURE_LAYERS: tuple[ConvLayerSpec, ...] = _LARGE_FEATURE_LAYERS + ((512, 1, 1),)

# Names under which checkpoints saved before fairseq's renames store the architecture, task
# and criterion, and their current names. fairseq rewrites them in the ``args`` of every
# checkpoint it loads (fairseq/checkpoint_utils.py:500-514 at b8ea8a9b; HEAD 3d262bb,
# lines 683-700, also renames kd_binary_cross_entropy). The released wav2vec_large.pt
# stores task='speech_pretraining' (fairseq issues #3256, #3612).
_FAIRSEQ_LEGACY_NAMES: dict[str, dict[str, str]] = {
    "arch": {"audio_cpc": "wav2vec"},
    "task": {"speech_pretraining": "audio_pretraining"},
    "criterion": {"binary_cross_entropy": "wav2vec", "kd_binary_cross_entropy": "wav2vec"},
}

_ACTIVATIONS = ("relu", "gelu")


class Wav2Vec1CheckpointError(PtaptError, RuntimeError):
    """A wav2vec 1.0 checkpoint file cannot be read or does not fit the model."""


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


def parse_conv_layers(spec: str | Sequence[Sequence[int]]) -> tuple[ConvLayerSpec, ...]:
    """Parse a fairseq ``conv_*_layers`` description into a tuple of layer specs.

    fairseq stores the layers as a Python expression such as
    ``"[(512, 10, 5)] + [(512, 8, 4)] + [(512, 4, 2)] * 3"``. Only list/tuple literals of
    integers, ``+`` between lists and ``*`` by an integer are accepted; the string is
    never executed.

    Arguments
    ---------
    spec : str or sequence
        The expression, or an already parsed sequence of ``(dim, kernel, stride)``.

    Returns
    -------
    tuple of (int, int, int)
        ``(output channels, kernel size, stride)`` per layer, first layer first.
    """
    value = (
        _evaluate_layer_expression(ast.parse(spec, mode="eval").body)
        if isinstance(spec, str)
        else spec
    )
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"expected a non-empty list of (dim, kernel, stride), got {spec!r}")
    layers = []
    for layer in value:
        if (
            not isinstance(layer, (list, tuple))
            or len(layer) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in layer)
        ):
            raise ValueError(f"bad conv layer {layer!r} in {spec!r}: need 3 positive ints")
        layers.append((int(layer[0]), int(layer[1]), int(layer[2])))
    return tuple(layers)


def _evaluate_layer_expression(node: ast.AST) -> Any:
    """Evaluate the restricted expression grammar of :func:`parse_conv_layers`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_evaluate_layer_expression(item) for item in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left = _evaluate_layer_expression(node.left)
        right = _evaluate_layer_expression(node.right)
        if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
            return left + right
        if isinstance(node.op, ast.Mult):
            if isinstance(left, list) and isinstance(right, int):
                return left * right
            if isinstance(left, int) and isinstance(right, list):
                return left * right
    raise ValueError(f"unsupported conv layer expression: {ast.dump(node)}")


@dataclass(frozen=True)
class Wav2Vec1Config:
    """Architecture of a wav2vec 1.0 model; field names follow fairseq's arguments.

    The defaults are those of the released ``wav2vec_large.pt`` (same as
    :meth:`wav2vec_large`).

    Arguments
    ---------
    conv_feature_layers : tuple of (int, int, int)
        Feature extractor convolutions ``(channels, kernel, stride)`` in samples, then
        in extractor frames. Large: kernels 10,8,4,4,4,1,1 and strides 5,4,2,2,2,1,1,
        i.e. a receptive field of 465 samples and a hop of 160 samples (10 ms).
    conv_aggregator_layers : tuple of (int, int, int)
        Context aggregator convolutions, causal (left padded by ``kernel - 1``), in
        frames. Large: twelve layers of kernel 2..13, stride 1, 512 channels.
    dropout : float
        Dropout inside each aggregator block (after the convolution).
    dropout_features : float
        Dropout on the extractor output before the aggregator.
    dropout_agg : float
        Dropout on the aggregator output.
    skip_connections_feat : bool
        Residual connections in the extractor (between layers of equal width).
    skip_connections_agg : bool
        Residual connections around every aggregator block.
    residual_scale : float
        A residual sum is multiplied by ``sqrt(residual_scale)``.
    log_compression : bool
        The extractor output is ``log(1 + |x|)``.
    non_affine_group_norm : bool
        Group norms without learned scale and shift.
    conv_bias : bool
        Aggregator convolutions have a bias (fairseq's ``not no_conv_bias``); the
        extractor convolutions never do.
    agg_zero_pad : bool
        Left-pad the aggregator inputs with zeros instead of repeating the first frame.
    activation : str
        ``"relu"`` or ``"gelu"`` after every group norm.
    prediction_steps : int
        Future frames scored by the pretraining head ``wav2vec_predictions``.
    """

    conv_feature_layers: tuple[ConvLayerSpec, ...] = _LARGE_FEATURE_LAYERS
    conv_aggregator_layers: tuple[ConvLayerSpec, ...] = _LARGE_AGGREGATOR_LAYERS
    dropout: float = 0.0
    dropout_features: float = 0.0
    dropout_agg: float = 0.0
    skip_connections_feat: bool = False
    skip_connections_agg: bool = True
    residual_scale: float = 0.5
    log_compression: bool = True
    non_affine_group_norm: bool = False
    conv_bias: bool = True
    agg_zero_pad: bool = False
    activation: str = "relu"
    prediction_steps: int = 12

    def __post_init__(self) -> None:
        object.__setattr__(self, "conv_feature_layers", parse_conv_layers(self.conv_feature_layers))
        object.__setattr__(
            self, "conv_aggregator_layers", parse_conv_layers(self.conv_aggregator_layers)
        )
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {self.activation!r}")
        if self.skip_connections_agg and any(s != 1 for _, _, s in self.conv_aggregator_layers):
            raise ValueError("aggregator skip connections need stride-1 aggregator layers")
        if self.prediction_steps < 1:
            raise ValueError(f"prediction_steps must be >= 1, got {self.prediction_steps}")

    @classmethod
    def wav2vec_large(cls) -> Wav2Vec1Config:
        """Return the architecture of the released ``wav2vec_large.pt``."""
        return cls()

    @classmethod
    def from_fairseq_args(cls, args: Mapping[str, Any]) -> Wav2Vec1Config:
        """Build a config from the model arguments stored in a fairseq checkpoint.

        Arguments that are absent (checkpoints from 2019 predate ``activation`` and
        ``vq_type``) take fairseq's ``Wav2VecConfig`` defaults, as fairseq's loader does
        (fairseq/dataclass/utils.py:214 at b8ea8a9b): the large model's values except
        ``conv_feature_layers``, whose default has a third 1x1 layer.

        Arguments
        ---------
        args : mapping
            fairseq argument names to values (``vars(checkpoint["args"])`` or
            ``checkpoint["cfg"]["model"]``), with the legacy names already upgraded
            (``arch='audio_cpc'`` is accepted as ``'wav2vec'`` here too).

        Returns
        -------
        Wav2Vec1Config

        Raises
        ------
        ValueError
            The architecture is not wav2vec 1.0 (the message names the one found), or
            uses a variant this module does not implement (vq-wav2vec, GRU aggregator).
        """
        arch = _unwrap(args.get("arch", args.get("_name")))
        arch = _FAIRSEQ_LEGACY_NAMES["arch"].get(arch, arch) if isinstance(arch, str) else arch
        if arch is not None and arch != "wav2vec":
            raise ValueError(
                f"its model architecture is {arch!r}, not wav2vec 1.0 ('wav2vec', stored "
                f"as 'audio_cpc' in checkpoints saved before fairseq renamed it)"
            )
        for name, plain in (
            ("aggregator", "cnn"),
            ("vq_type", "none"),
            ("project_features", "none"),
        ):
            value = _unwrap(args.get(name))
            if value is not None and value != plain:
                raise ValueError(f"{name}={value!r} is not supported (only {name}={plain!r})")

        values: dict[str, Any] = {}
        for field in fields(cls):
            if field.name == "conv_bias":
                if args.get("no_conv_bias") is not None:
                    values["conv_bias"] = not bool(_unwrap(args["no_conv_bias"]))
            elif args.get(field.name) is not None:
                values[field.name] = _unwrap(args[field.name])
        for name in ("dropout", "dropout_features", "dropout_agg", "residual_scale"):
            if name in values:
                values[name] = float(values[name])
        for name in (
            "skip_connections_feat",
            "skip_connections_agg",
            "log_compression",
            "non_affine_group_norm",
            "agg_zero_pad",
        ):
            if name in values:
                values[name] = bool(values[name])
        if "prediction_steps" in values:
            values["prediction_steps"] = int(values["prediction_steps"])
        fairseq_defaults = replace(
            cls.wav2vec_large(), conv_feature_layers=_FAIRSEQ_DEFAULT_FEATURE_LAYERS
        )
        return replace(fairseq_defaults, **values)

    @property
    def embed_dim(self) -> int:
        """Channels of the feature extractor output (512 for large)."""
        return self.conv_feature_layers[-1][0]

    @property
    def context_dim(self) -> int:
        """Channels of the aggregator output, the context representation (512 for large)."""
        return self.conv_aggregator_layers[-1][0]

    @property
    def hop_length(self) -> int:
        """Samples between consecutive output frames (160 = 10 ms at 16 kHz for large)."""
        hop = 1
        for _, _, stride in self.conv_feature_layers:
            hop *= stride
        for _, _, stride in self.conv_aggregator_layers:
            hop *= stride
        return hop

    @property
    def receptive_field(self) -> int:
        """Samples seen by one feature extractor frame (465 for large, about 29 ms)."""
        return self._receptive_field(self.conv_feature_layers, field=1, jump=1)[0]

    @property
    def context_receptive_field(self) -> int:
        """Samples seen by one aggregator frame (12945 for large, about 809 ms)."""
        field, jump = self._receptive_field(self.conv_feature_layers, field=1, jump=1)
        return self._receptive_field(self.conv_aggregator_layers, field=field, jump=jump)[0]

    @staticmethod
    def _receptive_field(layers: Sequence[ConvLayerSpec], field: int, jump: int) -> tuple[int, int]:
        """Grow a receptive field (samples) and jump (samples per step) through layers."""
        for _, kernel, stride in layers:
            field += (kernel - 1) * jump
            jump *= stride
        return field, jump

    def output_frames(self, num_samples: int | Tensor) -> int | Tensor:
        """Number of output frames for waveforms of ``num_samples`` samples.

        Pure arithmetic on the layer specs, exact for :meth:`Wav2Vec1.forward` and
        :meth:`Wav2Vec1.extract_features` (the aggregator keeps the frame count):
        ``floor((n - kernel) / stride) + 1`` per extractor layer, and
        ``floor((n - 1) / stride) + 1`` per causally padded aggregator layer. An input
        shorter than :attr:`receptive_field` gives 0 frames (the model refuses it).

        Arguments
        ---------
        num_samples : int or Tensor
            Waveform length(s) in samples; a tensor of any shape is mapped elementwise.

        Returns
        -------
        int or Tensor
            Frame count(s) (frames of :attr:`hop_length` samples), same type as the input.
        """
        length = num_samples
        for _, kernel, stride in self.conv_feature_layers:
            length = _conv_output_length(length, kernel, stride, padding=0)
        for _, kernel, stride in self.conv_aggregator_layers:
            length = _conv_output_length(length, kernel, stride, padding=kernel - 1)
        return length


def _conv_output_length(
    length: int | Tensor, kernel: int, stride: int, padding: int
) -> int | Tensor:
    """Output length of an unpadded-then-``padding``-padded conv; 0 when input is too short."""
    if isinstance(length, Tensor):
        out = torch.div(length + padding - kernel, stride, rounding_mode="floor") + 1
        return out.clamp_min(0)
    return max(0, (int(length) + padding - kernel) // stride + 1)


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


class _Fp32GroupNorm(nn.GroupNorm):
    """Group norm computed in float32 whatever the input dtype (as in fairseq)."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` (batch, channels, frames); returns the same shape and dtype."""
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        out = F.group_norm(x.float(), self.num_groups, weight, bias, self.eps)
        return out.type_as(x)


class _ZeroPad1d(nn.Module):
    """Left/right zero padding of the last axis."""

    def __init__(self, pad_left: int, pad_right: int) -> None:
        super().__init__()
        self.pad_left = pad_left
        self.pad_right = pad_right

    def forward(self, x: Tensor) -> Tensor:
        """Pad ``x`` (batch, channels, frames) to frames + pad_left + pad_right."""
        return F.pad(x, (self.pad_left, self.pad_right))


def _make_activation(name: str) -> nn.Module:
    """Return the activation module called ``name`` ("relu" or "gelu")."""
    return nn.ReLU() if name == "relu" else nn.GELU()


class Wav2Vec1FeatureExtractor(nn.Module):
    """Convolutional encoder from waveform to 10 ms features (fairseq's ``feature_extractor``).

    Each layer is ``Sequential(Conv1d(no bias), Dropout, GroupNorm(1 group), activation)``
    held in ``conv_layers``, so the parameters are ``conv_layers.{i}.0.weight`` and
    ``conv_layers.{i}.2.{weight,bias}``.

    Arguments
    ---------
    config : Wav2Vec1Config
        Architecture; the extractor uses ``conv_feature_layers``,
        ``skip_connections_feat``, ``residual_scale``, ``log_compression``,
        ``non_affine_group_norm`` and ``activation``.
    """

    def __init__(self, config: Wav2Vec1Config) -> None:
        super().__init__()
        self.conv_layers = nn.ModuleList()
        in_channels = 1
        for channels, kernel, stride in config.conv_feature_layers:
            self.conv_layers.append(
                nn.Sequential(
                    nn.Conv1d(in_channels, channels, kernel, stride=stride, bias=False),
                    nn.Dropout(p=0.0),
                    _Fp32GroupNorm(1, channels, affine=not config.non_affine_group_norm),
                    _make_activation(config.activation),
                )
            )
            in_channels = channels
        self.log_compression = config.log_compression
        self.skip_connections = config.skip_connections_feat
        self.residual_scale = math.sqrt(config.residual_scale)

    def forward(self, wav: Tensor) -> Tensor:
        """Encode waveforms.

        Arguments
        ---------
        wav : Tensor
            (batch, samples) waveform at 16 kHz.

        Returns
        -------
        Tensor
            (batch, embed_dim, frames) features, one frame per hop of the strides.
        """
        x = wav.unsqueeze(1)
        for layer in self.conv_layers:
            residual = x
            x = layer(x)
            if self.skip_connections and x.size(1) == residual.size(1):
                # Subsample the residual to the new frame rate, then trim it.
                step = residual.size(2) // x.size(2)
                x = (x + residual[..., ::step][..., : x.size(2)]) * self.residual_scale
        if self.log_compression:
            x = torch.log1p(x.abs())
        return x


class Wav2Vec1ContextAggregator(nn.Module):
    """Causal convolutional context network (fairseq's ``feature_aggregator``).

    Each layer is ``Sequential(left pad of kernel-1, Conv1d, Dropout, GroupNorm,
    activation)`` held in the ``nn.Sequential`` ``conv_layers``, so the parameters are
    ``conv_layers.{i}.1.{weight,bias}`` and ``conv_layers.{i}.3.{weight,bias}``; with skip
    connections a layer that changes the width has a 1x1 projection
    ``residual_proj.{i}.weight`` (none in the large model, whose widths are all 512).

    Arguments
    ---------
    config : Wav2Vec1Config
        Architecture; the aggregator uses ``conv_aggregator_layers``, ``dropout``,
        ``skip_connections_agg``, ``residual_scale``, ``non_affine_group_norm``,
        ``conv_bias``, ``agg_zero_pad`` and ``activation``.
    """

    def __init__(self, config: Wav2Vec1Config) -> None:
        super().__init__()
        layers = []
        self.residual_proj = nn.ModuleList()
        in_channels = config.embed_dim
        for channels, kernel, stride in config.conv_aggregator_layers:
            pad: nn.Module = (
                _ZeroPad1d(kernel - 1, 0)
                if config.agg_zero_pad
                else nn.ReplicationPad1d((kernel - 1, 0))
            )
            layers.append(
                nn.Sequential(
                    pad,
                    nn.Conv1d(in_channels, channels, kernel, stride=stride, bias=config.conv_bias),
                    nn.Dropout(p=config.dropout),
                    _Fp32GroupNorm(1, channels, affine=not config.non_affine_group_norm),
                    _make_activation(config.activation),
                )
            )
            needs_projection = config.skip_connections_agg and in_channels != channels
            self.residual_proj.append(
                nn.Conv1d(in_channels, channels, 1, bias=False) if needs_projection else None
            )
            in_channels = channels
        self.conv_layers = nn.Sequential(*layers)
        self.skip_connections = config.skip_connections_agg
        self.residual_scale = math.sqrt(config.residual_scale)

    def forward(self, features: Tensor) -> Tensor:
        """Aggregate features into context representations.

        Arguments
        ---------
        features : Tensor
            (batch, embed_dim, frames) feature extractor output.

        Returns
        -------
        Tensor
            (batch, context_dim, frames) context. The convolutions are causal but each
            group norm pools over all frames, so every frame depends on the whole input.
        """
        x = features
        for projection, layer in zip(self.residual_proj, self.conv_layers):
            residual = x
            x = layer(x)
            if self.skip_connections:
                if projection is not None:
                    residual = projection(residual)
                x = (x + residual) * self.residual_scale
        return x


class Wav2Vec1Predictions(nn.Module):
    """Pretraining head of wav2vec 1.0 (fairseq's ``wav2vec_predictions``).

    Holds ``project_to_steps``, a ``ConvTranspose2d(context_dim, embed_dim, (1, steps))``
    that maps every context frame to one predicted feature per future step. It is not
    used for emotion recognition; it is kept so that the released state dict loads with
    every weight accounted for.

    Arguments
    ---------
    config : Wav2Vec1Config
        Architecture (``context_dim``, ``embed_dim``, ``prediction_steps``, ``dropout``).
    """

    def __init__(self, config: Wav2Vec1Config) -> None:
        super().__init__()
        self.project_to_steps = nn.ConvTranspose2d(
            config.context_dim, config.embed_dim, (1, config.prediction_steps)
        )
        self.dropout = nn.Dropout(p=config.dropout)

    def forward(self, context: Tensor) -> Tensor:
        """Predict future features.

        Arguments
        ---------
        context : Tensor
            (batch, context_dim, frames) aggregator output.

        Returns
        -------
        Tensor
            (batch, embed_dim, frames, prediction_steps): entry ``[..., t, s]`` is the
            prediction of the features ``s + offset`` frames after frame ``t``.
        """
        return self.dropout(self.project_to_steps(context.unsqueeze(-1)))


class Wav2Vec1(nn.Module):
    """wav2vec 1.0: feature extractor, context aggregator and pretraining head.

    The submodules are named as in fairseq's ``Wav2VecModel`` (``feature_extractor``,
    ``feature_aggregator``, ``wav2vec_predictions``), so fairseq state dicts load with
    ``strict=True``.

    Every layer ends with a one-group norm whose statistics pool all channels and all
    frames of an utterance, so zero padding changes the representation of every frame:
    feed equal-length (cropped) batches, or one utterance at a time, rather than padded
    ones.

    Arguments
    ---------
    config : Wav2Vec1Config, optional
        Architecture; the released large model by default.
    freeze_feature_extractor : bool
        Freeze the feature extractor right away (see :meth:`freeze_feature_extractor`).

    Example
    -------
    >>> model = Wav2Vec1(Wav2Vec1Config(
    ...     conv_feature_layers=((16, 10, 5), (16, 8, 4)),
    ...     conv_aggregator_layers=((16, 2, 1), (16, 3, 1))))
    >>> model(torch.randn(2, 1000)).shape
    torch.Size([2, 16, 48])
    >>> model.output_frames(1000)
    48
    """

    def __init__(
        self, config: Wav2Vec1Config | None = None, freeze_feature_extractor: bool = False
    ) -> None:
        super().__init__()
        self.config = config if config is not None else Wav2Vec1Config.wav2vec_large()
        self.feature_extractor = Wav2Vec1FeatureExtractor(self.config)
        self.feature_aggregator = Wav2Vec1ContextAggregator(self.config)
        self.wav2vec_predictions = Wav2Vec1Predictions(self.config)
        self.dropout_feats = nn.Dropout(p=self.config.dropout_features)
        self.dropout_agg = nn.Dropout(p=self.config.dropout_agg)
        self.feature_extractor_frozen = False
        if freeze_feature_extractor:
            self.freeze_feature_extractor()

    def freeze_feature_extractor(self) -> None:
        """Freeze the feature extractor; the aggregator (and head) stay trainable.

        The extractor's parameters stop requiring gradients, it runs without autograd,
        and it stays in eval mode (dropout off) even after ``model.train()``.
        """
        self.feature_extractor_frozen = True
        for parameter in self.feature_extractor.parameters():
            parameter.requires_grad_(False)
        self.feature_extractor.eval()

    def train(self, mode: bool = True) -> Wav2Vec1:
        """Set train/eval mode, keeping a frozen feature extractor in eval mode."""
        super().train(mode)
        if self.feature_extractor_frozen:
            self.feature_extractor.eval()
        return self

    def output_frames(self, num_samples: int | Tensor) -> int | Tensor:
        """Frames produced for ``num_samples`` samples; see :meth:`Wav2Vec1Config.output_frames`."""
        return self.config.output_frames(num_samples)

    def extract_features(self, wav: Tensor) -> Tensor:
        """Run the feature extractor.

        Arguments
        ---------
        wav : Tensor
            (batch, samples) waveform at 16 kHz, at least :attr:`Wav2Vec1Config.receptive_field`
            samples (465 for large) long.

        Returns
        -------
        Tensor
            (batch, embed_dim, frames) features, ``frames = output_frames(samples)``.
        """
        if wav.dim() != 2:
            raise ValueError(f"expected a (batch, samples) waveform, got shape {tuple(wav.shape)}")
        if wav.size(1) < self.config.receptive_field:
            raise ValueError(
                f"waveform of {wav.size(1)} samples is shorter than the receptive field of "
                f"one frame ({self.config.receptive_field} samples)"
            )
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.feature_extractor_frozen):
            return self.feature_extractor(wav)

    def aggregate(self, features: Tensor) -> Tensor:
        """Turn features into the context representation.

        Arguments
        ---------
        features : Tensor
            (batch, embed_dim, frames) output of :meth:`extract_features`, possibly masked.

        Returns
        -------
        Tensor
            (batch, context_dim, frames) context representation.
        """
        return self.dropout_agg(self.feature_aggregator(self.dropout_feats(features)))

    def forward(self, wav: Tensor) -> Tensor:
        """Compute the context representation of waveforms.

        Arguments
        ---------
        wav : Tensor
            (batch, samples) waveform at 16 kHz.

        Returns
        -------
        Tensor
            (batch, context_dim, frames) aggregator output (context_dim = 512 for large),
            one frame per 10 ms, ``frames = output_frames(samples)``.
        """
        return self.aggregate(self.extract_features(wav))


def freeze_feature_extractor(model: Wav2Vec1) -> Wav2Vec1:
    """Freeze ``model``'s feature extractor in place and return ``model``.

    See :meth:`Wav2Vec1.freeze_feature_extractor`.
    """
    model.freeze_feature_extractor()
    return model


# --------------------------------------------------------------------------------------
# Reading fairseq checkpoints without fairseq
# --------------------------------------------------------------------------------------


class _MissingClass:
    """Base of the stand-ins for classes whose module cannot be imported.

    An instance accepts any constructor arguments (kept in ``_standin_args``) and any
    pickled state (kept in ``__dict__``, or ``_standin_state`` when not a dict), so
    objects such as fairseq's configs, meters or omegaconf containers unpickle into
    inert records.
    """

    _standin_for = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _MissingClass:
        instance = super().__new__(cls)
        instance.__dict__["_standin_args"] = args
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state, slots = state
            self.__dict__.update(slots)
        if isinstance(state, dict):
            self.__dict__.update(state)
        elif state is not None:
            self.__dict__["_standin_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("_standin_items", {})[key] = value

    def append(self, value: Any) -> None:
        """Keep an item pickled for a list-like original."""
        self.__dict__.setdefault("_standin_list", []).append(value)

    def extend(self, values: Any) -> None:
        """Keep items pickled for a list-like original."""
        self.__dict__.setdefault("_standin_list", []).extend(values)

    def __repr__(self) -> str:
        return f"<stand-in for {self._standin_for}>"


_STAND_INS: dict[tuple[str, str], type] = {}


def _stand_in(module: str, name: str) -> type:
    """Return the (cached) stand-in class for ``module.name``."""
    key = (module, name)
    if key not in _STAND_INS:
        _STAND_INS[key] = type(
            name.rsplit(".", 1)[-1],
            (_MissingClass,),
            {"__module__": module, "__qualname__": name, "_standin_for": f"{module}.{name}"},
        )
    return _STAND_INS[key]


class _TolerantUnpickler(pickle.Unpickler):
    """Unpickler that replaces classes from missing modules by inert stand-ins."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            logger.debug("unpickling %s.%s as a stand-in", module, name)
            return _stand_in(module, name)


def _tolerant_load(file: IO[bytes], **kwargs: Any) -> Any:
    """``pickle.load`` with :class:`_TolerantUnpickler`."""
    return _TolerantUnpickler(file, **kwargs).load()


_TOLERANT_PICKLE = types.ModuleType("speechbrain_ptapt.models.wav2vec1.tolerant_pickle")
_TOLERANT_PICKLE.Unpickler = _TolerantUnpickler  # type: ignore[attr-defined]
_TOLERANT_PICKLE.load = _tolerant_load  # type: ignore[attr-defined]


def _unwrap(value: Any) -> Any:
    """Plain value of a checkpoint entry (an enum stand-in becomes its value)."""
    if isinstance(value, _MissingClass):
        if "_val" in value.__dict__:  # an omegaconf value node
            return _unwrap(value.__dict__["_val"])
        args = value.__dict__.get("_standin_args", ())
        if len(args) == 1:  # an enum member pickled as Class(value)
            return _unwrap(args[0])
    return value


def _as_mapping(obj: Any) -> dict[str, Any] | None:
    """Read an ``args``/``cfg`` object (Namespace, dict, omegaconf or stand-in) as a dict."""
    if obj is None:
        return None
    if isinstance(obj, argparse.Namespace):
        return dict(vars(obj))
    if isinstance(obj, Mapping):
        return {str(k): v for k, v in obj.items()}
    if isinstance(obj, _MissingClass):
        state = obj.__dict__
        content = state.get("_content")
        if isinstance(content, Mapping):  # an omegaconf DictConfig
            return {str(k): _unwrap(v) for k, v in content.items()}
        items = state.get("_standin_items")
        if isinstance(items, Mapping):  # a dict subclass
            return {str(k): v for k, v in items.items()}
        return {k: v for k, v in state.items() if not k.startswith("_standin")}
    if hasattr(obj, "__dict__"):
        return dict(vars(obj))
    return None


def _upgrade_legacy_names(args: Mapping[str, Any]) -> dict[str, Any]:
    """Rename a legacy arch/task/criterion in argparse-era ``args`` as fairseq does on load.

    See :data:`_FAIRSEQ_LEGACY_NAMES`; other arguments are copied unchanged.
    """
    upgraded = dict(args)
    for key, renames in _FAIRSEQ_LEGACY_NAMES.items():
        value = _unwrap(upgraded.get(key))
        if isinstance(value, str) and value in renames:
            upgraded[key] = renames[value]
    return upgraded


def _model_args(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The model arguments of a fairseq checkpoint (``args``, else ``cfg["model"]``).

    As in fairseq's ``load_model_ensemble_and_task``, ``args`` wins when both exist;
    its legacy names are upgraded (:func:`_upgrade_legacy_names`).
    """
    args = _as_mapping(checkpoint.get("args"))
    if args is not None:
        return _upgrade_legacy_names(args)
    cfg = _as_mapping(checkpoint.get("cfg"))
    if cfg is not None and cfg.get("model") is not None:
        return _as_mapping(cfg["model"])
    return None


def _read_checkpoint(path: Path, map_location: Any) -> Any:
    """``torch.load`` a fairseq checkpoint, tolerating classes from missing modules."""
    try:
        return torch.load(
            path, map_location=map_location, pickle_module=_TOLERANT_PICKLE, weights_only=False
        )
    except Exception as err:
        raise Wav2Vec1CheckpointError(
            f"cannot read the wav2vec 1.0 checkpoint {path} ({type(err).__name__}: {err}). "
            f"The file is truncated, corrupted or not a PyTorch checkpoint; delete it and "
            f"download it again from {WAV2VEC1_LARGE_URL}"
        ) from err


def _describe_keys(keys: Sequence[str], limit: int = 20) -> str:
    """Comma-separated key list, cut after ``limit`` entries."""
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown}, ... ({len(keys)} in all)"


def load_wav2vec1(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    freeze_feature_extractor: bool = False,
) -> Wav2Vec1:
    """Load a fairseq wav2vec 1.0 checkpoint (such as ``wav2vec_large.pt``) without fairseq.

    The file is a pickled dict with the model arguments (``args``, an
    ``argparse.Namespace``, or ``cfg``, an omegaconf config, in newer files) and the
    state dict (``model``). Classes from modules that are not installed (``fairseq.*``,
    ``omegaconf.*``) unpickle as inert stand-ins. As fairseq does on load, the names of
    ``args`` saved before fairseq's renames are upgraded (``arch='audio_cpc'`` is
    ``'wav2vec'``, ``task='speech_pretraining'`` is ``'audio_pretraining'``; the released
    ``wav2vec_large.pt`` is such a file) and absent arguments take fairseq's defaults (see
    :meth:`Wav2Vec1Config.from_fairseq_args`). The architecture is read from the stored
    arguments (the large model's when there are none) and the state dict must match it
    exactly: every weight of the file is used and every parameter is loaded. Unpickling
    can run code stored in the file: only load files from a trusted source.

    Arguments
    ---------
    path : str or path-like
        The checkpoint file.
    map_location : str or torch.device
        Where to put the tensors while reading (as in ``torch.load``); the returned
        model is on the CPU either way (move it with ``.to(device)``).
    freeze_feature_extractor : bool
        Freeze the feature extractor (see :meth:`Wav2Vec1.freeze_feature_extractor`).

    Returns
    -------
    Wav2Vec1
        The model, in eval mode.

    Raises
    ------
    MissingFileError
        The file does not exist (a ``FileNotFoundError``).
    Wav2Vec1CheckpointError
        The file cannot be unpickled (truncated or corrupted), is not a wav2vec 1.0
        checkpoint (the message names the file and the architecture found), or its
        weights do not match the architecture (missing keys, unexpected keys, wrong
        shapes; all are listed).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"wav2vec 1.0 checkpoint not found: {path}. Download it from {WAV2VEC1_LARGE_URL}"
        )
    checkpoint = _read_checkpoint(path, map_location)

    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        state_dict = checkpoint["model"]
        args = _model_args(checkpoint)
    elif isinstance(checkpoint, Mapping) and all(
        isinstance(v, Tensor) for v in checkpoint.values()
    ):
        state_dict, args = checkpoint, None  # a bare state dict
    else:
        raise Wav2Vec1CheckpointError(
            f"{path} is not a fairseq checkpoint (no 'model' state dict; "
            f"found {type(checkpoint).__name__})"
        )
    state_dict = {str(k): v for k, v in state_dict.items()}
    try:  # the stored architecture first, so a foreign checkpoint is named as such
        config = (
            Wav2Vec1Config.wav2vec_large()
            if args is None
            else Wav2Vec1Config.from_fairseq_args(args)
        )
    except (ValueError, TypeError, SyntaxError) as err:
        raise Wav2Vec1CheckpointError(
            f"{path} is not a supported wav2vec 1.0 checkpoint: {err}"
        ) from err
    if not any(k.startswith("feature_aggregator.") for k in state_dict) or not any(
        k.startswith("feature_extractor.") for k in state_dict
    ):
        raise Wav2Vec1CheckpointError(
            f"{path} is not a wav2vec 1.0 checkpoint: its state dict has no "
            f"feature_extractor/feature_aggregator weights (keys: "
            f"{_describe_keys(sorted(state_dict), limit=5)})"
        )

    model = Wav2Vec1(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if not isinstance(state_dict[k], Tensor) or state_dict[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys: {_describe_keys(missing)}")
        if unexpected:
            problems.append(
                f"unexpected keys (weights that would go unused): {_describe_keys(unexpected)}"
            )
        if mismatched:
            problems.append(f"shape mismatches (file vs model): {_describe_keys(mismatched)}")
        raise Wav2Vec1CheckpointError(
            f"the weights in {path} do not match the wav2vec 1.0 architecture of its "
            f"arguments; " + "; ".join(problems)
        )
    model.load_state_dict(state_dict, strict=True)
    if freeze_feature_extractor:
        model.freeze_feature_extractor()
    model.eval()
    logger.info(
        "loaded wav2vec 1.0 from %s (%d tensors, %d extractor + %d aggregator layers)",
        path,
        len(state_dict),
        len(config.conv_feature_layers),
        len(config.conv_aggregator_layers),
    )
    return model


# --------------------------------------------------------------------------------------
# Getting the checkpoint
# --------------------------------------------------------------------------------------


def ensure_wav2vec1_checkpoint(
    path: str | os.PathLike[str] | None, save_folder: str | os.PathLike[str]
) -> Path:
    """Return a local wav2vec 1.0 large checkpoint, downloading it when needed.

    Arguments
    ---------
    path : str, path-like or None
        A checkpoint the user already has (the yaml's ``wav2vec1_checkpoint``); returned
        as is when it exists.
    save_folder : str or path-like
        Where the official checkpoint is stored as ``wav2vec_large.pt`` (reused when
        already there, otherwise downloaded from :data:`WAV2VEC1_LARGE_URL` to a
        temporary name and renamed once complete).

    Returns
    -------
    Path
        The checkpoint file.

    Raises
    ------
    MissingFileError
        Nothing local and the download failed (a ``FileNotFoundError``); the message
        says where to download the file from and where to put it.
    """
    if path is not None and Path(path).is_file():
        return Path(path)
    target = Path(save_folder) / WAV2VEC1_LARGE_FILENAME
    if path is not None:
        logger.warning("wav2vec 1.0 checkpoint %s does not exist; using %s", path, target)
    if target.is_file():
        return target

    partial = target.with_name(target.name + ".part")
    logger.info("downloading %s to %s", WAV2VEC1_LARGE_URL, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(WAV2VEC1_LARGE_URL, str(partial), progress=True)
        os.replace(partial, target)
    except Exception as err:
        partial.unlink(missing_ok=True)
        requested = f"{path} does not exist and " if path is not None else ""
        raise MissingFileError(
            f"No wav2vec 1.0 checkpoint: {requested}downloading {WAV2VEC1_LARGE_URL} failed "
            f"({type(err).__name__}: {err}). Download wav2vec_large.pt by hand from "
            f"{WAV2VEC1_LARGE_URL} and put it at {target}, or anywhere and set "
            f"`wav2vec1_checkpoint: /path/to/wav2vec_large.pt` in the hparams yaml."
        ) from err
    return target
