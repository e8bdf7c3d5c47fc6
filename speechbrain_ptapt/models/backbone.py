"""The wav2vec2 backbone: loading from a hub id or a local folder, and a forward pass
with explicit padding, masking and frame-length arithmetic.

The same loader serves ``facebook/wav2vec2-base`` from the Hugging Face Hub and
a local folder written by ``save_pretrained`` (config.json, weights,
preprocessor_config.json), such as the adapted backbones TAPT and P-TAPT write.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    PreTrainedModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from speechbrain_ptapt.deploy.inference import normalize_waveforms, receptive_field_samples
from speechbrain_ptapt.protocol.errors import PtaptError

logger = logging.getLogger(__name__)


class BackboneLoadError(PtaptError, RuntimeError):
    """The wav2vec2 backbone could not be loaded; the message says what to do."""


#: The hub revision of ``facebook/wav2vec2-base`` the authors load
#: (FT-w2v2-ser ``modules/FeatureFuser.py:101,181``); the recipes' ``wav2vec2_revision``.
AUTHORS_WAV2VEC2_REVISION = "2dcc7b7f9b11f0ef271067e62599a27317a03114"

#: The only transformers ``model_type`` the backbone code supports.
SUPPORTED_MODEL_TYPE = "wav2vec2"

#: Weights a checkpoint may hold that :class:`~transformers.Wav2Vec2Model` (the
#: classification backbone) legitimately leaves out: the pretraining-only quantizer
#: and projections of ``Wav2Vec2ForPreTraining`` checkpoints (``facebook/wav2vec2-base``,
#: TAPT's adapted folders), the CTC head of ``Wav2Vec2ForCTC`` checkpoints, and the
#: mask embedding when the config's mask probabilities are all 0 (no
#: ``masked_spec_embed`` is built then). Names without the ``wav2vec2.`` prefix.
DROPPABLE_WEIGHTS = {
    "Wav2Vec2Model": frozenset(
        {
            "quantizer.codevectors",
            "quantizer.weight_proj.weight",
            "quantizer.weight_proj.bias",
            "project_q.weight",
            "project_q.bias",
            "project_hid.weight",
            "project_hid.bias",
            "lm_head.weight",
            "lm_head.bias",
            "masked_spec_embed",
        }
    ),
    "Wav2Vec2ForPreTraining": frozenset({"masked_spec_embed"}),
}

#: Weights a checkpoint may lack: the mask embedding (a checkpoint of a config whose
#: mask probabilities are 0 has none; the backbone draws one, as transformers does).
ABSENT_WEIGHTS_ALLOWED = frozenset({"masked_spec_embed"})


def is_local_source(source: str | Path) -> bool:
    """Whether ``source`` names an existing local path (else it is a hub id)."""
    return Path(str(source)).exists()


def hub_revision(source: str | Path, revision: str | None) -> str | None:
    """The revision to load ``source`` at: ``revision`` for a hub id, None for a
    local folder (a folder has no revisions)."""
    if revision is None or is_local_source(source):
        return None
    return str(revision)


def _explain_load_failure(source: str, err: Exception, revision: str | None) -> BackboneLoadError:
    if is_local_source(source):
        return BackboneLoadError(
            f"Cannot load a wav2vec2 model from the folder '{source}': {err}. "
            "Expected a folder written by save_pretrained: config.json, the weights "
            "(model.safetensors or pytorch_model.bin) and preprocessor_config.json."
        )
    at = f" at revision '{revision}'" if revision else ""
    pinned = (
        f" wav2vec2_revision ('{revision}') must exist in that repository: set it to null "
        "(the latest) or to one of its branches, tags or commits for another model."
        if revision
        else ""
    )
    return BackboneLoadError(
        f"Cannot load the wav2vec2 model '{source}'{at}: it is not a local folder and the "
        f"Hugging Face Hub could not provide it ({type(err).__name__}: {err}). "
        "Check the hub id and your network (or HF_HUB_OFFLINE / a pre-filled cache), "
        "or set wav2vec2_hub to a local folder holding config.json, the weights and "
        f"preprocessor_config.json.{pinned}"
    )


def check_model_type(source: str, save_path: str | None = None, **kwargs: Any) -> None:
    """Refuses a config.json whose ``model_type`` is not ``wav2vec2``.

    transformers loads a WavLM, HuBERT or data2vec-audio checkpoint into a wav2vec2
    class with only a logged warning, dropping and randomly initialising weights;
    the backbone code supports wav2vec2 alone.

    Arguments
    ---------
    source : str
        Hub id or local folder.
    save_path : str, optional
        Cache folder for hub downloads.
    **kwargs
        ``revision``, ``local_files_only`` ... as for ``from_pretrained``.

    Raises
    ------
    BackboneLoadError
        Naming the model type found and the source.
    """
    config_kwargs = {k: v for k, v in kwargs.items() if k in ("revision", "local_files_only")}
    config_dict, _ = Wav2Vec2Config.get_config_dict(source, cache_dir=save_path, **config_kwargs)
    model_type = config_dict.get("model_type")
    if model_type != SUPPORTED_MODEL_TYPE:
        raise BackboneLoadError(
            f"'{source}' holds a model of type '{model_type}' (config.json 'model_type'), "
            f"not '{SUPPORTED_MODEL_TYPE}': only wav2vec2 backbones are supported. Loading it "
            "as wav2vec2 would drop or randomly initialise its weights. Set wav2vec2_hub to "
            "a wav2vec2 model (e.g. facebook/wav2vec2-base) or a folder saved from one."
        )


def check_loading_info(model_class: type, source: str, info: dict[str, Any]) -> None:
    """Refuses a load that left weights of the model uninitialised or weights of the
    checkpoint unused, beyond :data:`DROPPABLE_WEIGHTS` and
    :data:`ABSENT_WEIGHTS_ALLOWED` (transformers only logs those).

    Arguments
    ---------
    model_class : type
        The class loaded (``Wav2Vec2Model`` or ``Wav2Vec2ForPreTraining``).
    source : str
        Hub id or local folder (for the message).
    info : dict
        ``from_pretrained(..., output_loading_info=True)``'s second output.

    Raises
    ------
    BackboneLoadError
        Listing the missing, unexpected or mismatched weights.
    """

    def bare(names) -> set[str]:
        return {str(n).removeprefix("wav2vec2.") for n in names or ()}

    droppable = DROPPABLE_WEIGHTS.get(model_class.__name__, frozenset({"masked_spec_embed"}))
    missing = sorted(bare(info.get("missing_keys")) - ABSENT_WEIGHTS_ALLOWED)
    unexpected = sorted(bare(info.get("unexpected_keys")) - droppable)
    mismatched = sorted(
        str(m[0] if isinstance(m, tuple) else m) for m in info.get("mismatched_keys") or ()
    )
    problems = [
        f"{what}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''} ({len(names)})"
        for what, names in (
            ("missing from the checkpoint (would be randomly initialised)", missing),
            ("in the checkpoint but not in the model (would be dropped)", unexpected),
            ("of another shape in the checkpoint", mismatched),
        )
        if names
    ] + [str(msg) for msg in info.get("error_msgs") or ()]
    if problems:
        raise BackboneLoadError(
            f"Loading {model_class.__name__} from '{source}' does not match its weights: "
            + "; ".join(problems)
            + ". Expected a wav2vec2 checkpoint of the same architecture (config.json and "
            "weights written together by save_pretrained)."
        )


def load_pretrained(
    model_class: type,
    source: str,
    save_path: str | None = None,
    revision: str | None = None,
    **kwargs: Any,
):
    """Loads a transformers model class from a hub id or a local folder.

    For models and configs the folder's ``model_type`` must be wav2vec2
    (:func:`check_model_type`); models must load every weight, up to the
    pretraining-only parts a backbone drops (:func:`check_loading_info`).

    Arguments
    ---------
    model_class : type
        A transformers class with ``from_pretrained`` (``Wav2Vec2Model``,
        ``Wav2Vec2ForPreTraining``, ``Wav2Vec2Config``, ``Wav2Vec2FeatureExtractor`` ...).
    source : str
        Hub id (``facebook/wav2vec2-base``) or local folder.
    save_path : str, optional
        Cache folder for hub downloads.
    revision : str, optional
        Hub revision (branch, tag or commit) of a hub id; ignored for a local folder.
    **kwargs
        Passed on to ``from_pretrained`` (e.g. config overrides).

    Raises
    ------
    BackboneLoadError
        With a message naming the source and what was expected.
    """
    source = str(source)
    is_feature_extractor = issubclass(model_class, Wav2Vec2FeatureExtractor)
    if (
        is_local_source(source)
        and not (Path(source) / "config.json").is_file()
        and not is_feature_extractor
    ):
        raise BackboneLoadError(
            f"'{source}' is a local folder without config.json: expected a wav2vec2 "
            "folder written by save_pretrained (config.json, weights, preprocessor_config.json)."
        )
    revision = hub_revision(source, revision)
    if revision is not None:
        kwargs["revision"] = revision
    is_model = issubclass(model_class, PreTrainedModel)
    try:
        if not is_feature_extractor:
            check_model_type(source, save_path, **kwargs)
        if not is_model:
            return model_class.from_pretrained(source, cache_dir=save_path, **kwargs)
        model, info = model_class.from_pretrained(
            source, cache_dir=save_path, output_loading_info=True, **kwargs
        )
    except (OSError, ValueError) as err:
        raise _explain_load_failure(source, err, revision) from err
    check_loading_info(model_class, source, info)
    return model


def _known_absent(source: str, filename: str, save_path: str | None, revision: str) -> bool:
    """Whether the hub cache records that ``filename`` does not exist in ``source`` at
    ``revision`` (huggingface_hub keeps such markers after a 404)."""
    from huggingface_hub import _CACHED_NO_EXIST, try_to_load_from_cache

    found = try_to_load_from_cache(source, filename, cache_dir=save_path, revision=revision)
    return found is _CACHED_NO_EXIST


def _default_feature_extractor() -> Wav2Vec2FeatureExtractor:
    """wav2vec2-base's preprocessing: 16 kHz, zero-mean unit-variance input."""
    return Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True)


def load_feature_extractor(
    source: str,
    save_path: str | None = None,
    revision: str | None = None,
    normalize: bool | None = None,
) -> Wav2Vec2FeatureExtractor:
    """The backbone's preprocessor settings (input normalisation, sampling rate),
    with ``do_normalize`` set to ``normalize`` unless that is None.

    The authors' code feeds wav2vec2 the raw samples (no normalisation) although
    ``facebook/wav2vec2-base``'s preprocessor config asks for per-utterance
    normalisation, so the recipes pass ``normalize`` explicitly
    (``normalize_waveform``); the value is written back by ``save_pretrained``,
    so an adapted or exported backbone keeps it.
    """
    preprocessor = _load_preprocessor(source, save_path, revision)
    if normalize is not None:
        preprocessor.do_normalize = bool(normalize)
    return preprocessor


def _load_preprocessor(
    source: str, save_path: str | None = None, revision: str | None = None
) -> Wav2Vec2FeatureExtractor:
    """The preprocessor settings as stored with the backbone.

    A local folder without preprocessor_config.json, or a hub revision known to
    have none, gets wav2vec2-base's settings (16 kHz, per-utterance
    normalisation) and a warning.

    Arguments
    ---------
    source : str
        Hub id or local folder.
    save_path : str, optional
        Cache folder for hub downloads.
    revision : str, optional
        Hub revision of a hub id; ignored for a local folder.
    """
    local = Path(str(source))
    if local.is_dir() and not (local / "preprocessor_config.json").is_file():
        logger.warning(
            "%s has no preprocessor_config.json: using wav2vec2-base's preprocessing "
            "(16 kHz, zero-mean unit-variance input per utterance).",
            source,
        )
        return _default_feature_extractor()
    try:
        return load_pretrained(Wav2Vec2FeatureExtractor, source, save_path, revision)
    except BackboneLoadError:
        pinned = hub_revision(source, revision)
        if pinned is None or not _known_absent(
            str(source), "preprocessor_config.json", save_path, pinned
        ):
            raise
        logger.warning(
            "%s has no preprocessor_config.json at revision %s: using wav2vec2-base's "
            "preprocessing (16 kHz, zero-mean unit-variance input per utterance).",
            source,
            pinned,
        )
        return _default_feature_extractor()


class _ConfigOnly:
    """Holds a config so transformers' length formula can run without a model."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        self.config = config


def wav2vec2_frame_lengths(config: Wav2Vec2Config, num_samples) -> torch.Tensor:
    """Frames wav2vec2 outputs for inputs of ``num_samples`` samples.

    transformers' own ``_get_feat_extract_output_lengths`` evaluated on a config
    (no weights needed): ``(samples - 400) // 320 + 1`` for wav2vec2-base. Inputs
    shorter than the receptive field give 0 or less here; the backbone pads them
    to one frame (see :meth:`Wav2Vec2Backbone.frame_lengths`).
    """
    lengths = torch.as_tensor(num_samples)
    return Wav2Vec2Model._get_feat_extract_output_lengths(_ConfigOnly(config), lengths).long()


def wav2vec2_hop_samples(config: Wav2Vec2Config) -> int:
    """Samples between consecutive wav2vec2 frames (the product of the conv strides: 320)."""
    hop = 1
    for stride in config.conv_stride:
        hop *= int(stride)
    return hop


class Wav2Vec2Backbone(nn.Module):
    """wav2vec2 (CNN feature encoder + feature projection + transformer) as a
    SpeechBrain module, taking padded waveforms and relative lengths.

    Arguments
    ---------
    source : str
        Hub id (``facebook/wav2vec2-base``) or a local folder written by
        ``save_pretrained``.
    save_path : str, optional
        Cache folder for hub downloads.
    freeze_feature_encoder : bool
        Freeze the CNN feature encoder *and* the feature projection (V-FT and
        P-TAPT train only the transformer).
    layerdrop : float, optional
        Overrides the config's LayerDrop probability (None keeps it).
    revision : str, optional
        Hub revision of a hub id (the recipes pin the authors'
        :data:`AUTHORS_WAV2VEC2_REVISION`); ignored for a local folder.
    normalize : bool, optional
        Normalise each waveform to zero mean and unit variance before the CNN;
        None follows the backbone's preprocessor config (see
        :func:`load_feature_extractor`).
    freeze_mask_embedding : bool
        Freeze ``masked_spec_embed``, the learned vector that replaces time-masked
        frames. The authors' fine-tuning and P-TAPT phase 2 never optimise it:
        their optimizers get the transformer encoder and the heads only
        (``modules/FeatureFuser.py:120-122``, ``pretrain/trainer.py:192, 258-259``,
        ``downstream/Custom/trainer.py:57``), and the vector is written in under
        ``torch.no_grad`` (``modules/FeatureFuser.py:125-147``). (TAPT trains it:
        its model is :class:`~speechbrain_ptapt.models.pretraining.Wav2Vec2Pretraining`.) Frozen,
        it needs no unused-parameter search under DDP on batches without masked
        frames.

    Example
    -------
    >>> backbone = Wav2Vec2Backbone("facebook/wav2vec2-base")  # doctest: +SKIP
    >>> hidden, frame_mask = backbone(wavs, wav_lens)  # doctest: +SKIP
    """

    def __init__(
        self,
        source: str,
        save_path: str | None = None,
        freeze_feature_encoder: bool = True,
        layerdrop: float | None = None,
        revision: str | None = None,
        normalize: bool | None = None,
        freeze_mask_embedding: bool = True,
    ) -> None:
        super().__init__()
        self.source = str(source)
        overrides = {} if layerdrop is None else {"layerdrop": layerdrop}
        self.model: Wav2Vec2Model = load_pretrained(
            Wav2Vec2Model, self.source, save_path, revision, **overrides
        )
        self.feature_extractor_config = load_feature_extractor(
            self.source, save_path, revision, normalize
        )
        self.normalize = bool(getattr(self.feature_extractor_config, "do_normalize", True))
        self.sample_rate = int(self.feature_extractor_config.sampling_rate)
        if getattr(self.model, "masked_spec_embed", None) is None:
            # Configs with every mask probability at 0 build no mask embedding.
            self.model.masked_spec_embed = nn.Parameter(
                torch.empty(self.model.config.hidden_size).uniform_()
            )
        self.model.masked_spec_embed.requires_grad = not freeze_mask_embedding
        self.min_samples = receptive_field_samples(self.model)
        self.freeze_feature_encoder = freeze_feature_encoder
        if freeze_feature_encoder:
            for module in (self.model.feature_extractor, self.model.feature_projection):
                for param in module.parameters():
                    param.requires_grad = False

    @property
    def config(self) -> Wav2Vec2Config:
        """The transformers config of the backbone."""
        return self.model.config

    @property
    def hidden_size(self) -> int:
        """Dimension of the transformer output (768 for wav2vec2-base)."""
        return int(self.model.config.hidden_size)

    def frame_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Number of output frames for inputs of ``num_samples`` samples.

        The model's own length formula, applied after short inputs are padded
        to the receptive field (so every input yields at least one frame).
        """
        num_samples = torch.as_tensor(num_samples).clamp(min=self.min_samples)
        return self.model._get_feat_extract_output_lengths(num_samples).long()

    def sample_lengths(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        """(batch,) valid samples from SpeechBrain's relative lengths."""
        return torch.round(wav_lens.to(torch.float64) * wavs.shape[1]).long().clamp(min=1)

    def extract_features(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CNN encoder + feature projection.

        Arguments
        ---------
        wavs : torch.Tensor
            (batch, samples) padded 16 kHz waveforms.
        wav_lens : torch.Tensor
            (batch,) relative lengths in (0, 1], SpeechBrain's convention.

        Returns
        -------
        projected : torch.Tensor
            (batch, frames, hidden) projected features, the input of the transformer.
        frame_mask : torch.Tensor
            (batch, frames) bool, True on valid frames.
        cnn_features : torch.Tensor
            (batch, frames, conv_dim[-1]) CNN features before the projection.
        """
        num_samples = self.sample_lengths(wavs, wav_lens).to(wavs.device)
        if self.normalize:
            wavs = normalize_waveforms(wavs, num_samples)
        if wavs.shape[1] < self.min_samples:
            wavs = nn.functional.pad(wavs, (0, self.min_samples - wavs.shape[1]))
        num_samples = num_samples.clamp(min=self.min_samples)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_feature_encoder):
            cnn_features = self.model.feature_extractor(wavs).transpose(1, 2)
            projected, cnn_features = self.model.feature_projection(cnn_features)
        num_frames = cnn_features.shape[1]
        frame_lens = self.model._get_feat_extract_output_lengths(num_samples).clamp(
            min=1, max=num_frames
        )
        frame_mask = torch.arange(num_frames, device=wavs.device)[None, :] < frame_lens[:, None]
        return projected, frame_mask, cnn_features

    def encode(
        self,
        projected: torch.Tensor,
        frame_mask: torch.Tensor,
        time_mask: torch.Tensor | None = None,
        channel_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Masks the projected features and runs the transformer.

        Arguments
        ---------
        projected : torch.Tensor
            (batch, frames, hidden) output of :meth:`extract_features`.
        frame_mask : torch.Tensor
            (batch, frames) bool, True on valid frames (the attention mask).
        time_mask : torch.Tensor, optional
            (batch, frames) bool; masked frames become ``masked_spec_embed``.
        channel_mask : torch.Tensor, optional
            (batch, hidden) bool; masked channels become 0 on every frame.

        Returns
        -------
        torch.Tensor
            (batch, frames, hidden) transformer output.
        """
        hidden = projected
        if time_mask is not None and bool(time_mask.any()):
            time_mask = time_mask.to(hidden.device)
            embed = self.model.masked_spec_embed.to(hidden.dtype)
            hidden = torch.where(time_mask[..., None], embed, hidden)
        if channel_mask is not None and bool(channel_mask.any()):
            hidden = hidden.masked_fill(channel_mask.to(hidden.device)[:, None, :], 0.0)
        out = self.model.encoder(hidden, attention_mask=frame_mask)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def forward(
        self,
        wavs: torch.Tensor,
        wav_lens: torch.Tensor,
        time_mask=None,
        channel_mask=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms to transformer output.

        Arguments
        ---------
        wavs : torch.Tensor
            (batch, samples) padded waveforms.
        wav_lens : torch.Tensor
            (batch,) relative lengths.
        time_mask : callable or torch.Tensor, optional
            A :class:`~speechbrain_ptapt.models.masking.TimeMask` to sample from, or a
            ready (batch, frames) bool mask.
        channel_mask : callable or torch.Tensor, optional
            A :class:`~speechbrain_ptapt.models.masking.ChannelMask` or a (batch, hidden) mask.

        Returns
        -------
        hidden : torch.Tensor
            (batch, frames, hidden) transformer output.
        frame_mask : torch.Tensor
            (batch, frames) bool, True on valid frames.
        """
        projected, frame_mask, _ = self.extract_features(wavs, wav_lens)
        if callable(time_mask):
            time_mask = time_mask(frame_mask.sum(dim=1).cpu(), frame_mask.shape[1])
        if callable(channel_mask):
            channel_mask = channel_mask(projected.shape[0], projected.shape[2])
        hidden = self.encode(projected, frame_mask, time_mask, channel_mask)
        return hidden, frame_mask

    def save_pretrained(self, folder: str | Path) -> None:
        """Writes the backbone in transformers format (config, weights, preprocessor config)."""
        self.model.save_pretrained(str(folder))
        self.feature_extractor_config.save_pretrained(str(folder))
