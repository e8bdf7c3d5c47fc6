"""wav2vec2's self-supervised pretraining objective as transformers 4.10 (the authors'
version) computes it, the model TAPT continues to train: :class:`Wav2Vec2Pretraining`
(``Wav2Vec2ForPreTraining`` with its quantizer, time masks and distractors drawn from
valid frames), its loss terms (:class:`PretrainingLoss`) and the Gumbel-softmax
temperature schedule. The stage that trains it is :mod:`speechbrain_ptapt.stages.tapt`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import Wav2Vec2ForPreTraining
from transformers.models.wav2vec2.modeling_wav2vec2 import _sample_negative_indices

from speechbrain_ptapt.deploy.inference import normalize_waveforms, receptive_field_samples
from speechbrain_ptapt.models.backbone import load_feature_extractor, load_pretrained
from speechbrain_ptapt.models.masking import TimeMask

# ----------------------------------------------------------------------------
# The objective
# ----------------------------------------------------------------------------


#: How the batch's loss is reduced over its masked frames: ``sum`` (transformers 4.10's
#: ``Wav2Vec2ForPreTraining`` loss, what the authors optimised) or ``mean`` (per masked frame).
LOSS_REDUCTIONS = ("sum", "mean")
#: How the codebook diversity term enters the summed loss: ``unscaled`` (once per
#: batch, transformers 4.10) or ``per_masked_frame`` (times the number of masked
#: frames, as fairseq and later transformers count it).
DIVERSITY_SCALINGS = ("unscaled", "per_masked_frame")


@dataclass
class PretrainingLoss:
    """wav2vec2's pretraining loss terms of one batch.

    Attributes
    ----------
    contrastive : torch.Tensor
        () sum over masked frames of the contrastive cross-entropy.
    codebook_diversity : torch.Tensor
        () the codebook diversity term ``(G*V - perplexity) / (G*V)`` of the batch,
        in [0, 1), perplexity over the masked frames (as transformers computes it).
    diversity_weight : float
        The config's ``diversity_loss_weight``.
    num_masked : int
        Number of masked (predicted) frames in the batch.
    diversity_scaling : str
        ``unscaled`` or ``per_masked_frame`` (see :data:`DIVERSITY_SCALINGS`).
    reduction : str
        ``sum`` or ``mean`` (see :data:`LOSS_REDUCTIONS`): what :attr:`objective` is.
    """

    contrastive: torch.Tensor
    codebook_diversity: torch.Tensor
    diversity_weight: float
    num_masked: int
    diversity_scaling: str = "unscaled"
    reduction: str = "sum"

    @property
    def diversity(self) -> torch.Tensor:
        """() the diversity term as it enters :attr:`total`: the codebook diversity
        once (``unscaled``, transformers 4.10) or times the number of masked frames
        (``per_masked_frame``, fairseq and transformers 5)."""
        if self.diversity_scaling == "per_masked_frame":
            return self.codebook_diversity * self.num_masked
        return self.codebook_diversity

    @property
    def total(self) -> torch.Tensor:
        """() contrastive + diversity_weight * diversity: the batch's summed loss
        (``Wav2Vec2ForPreTraining``'s ``loss`` under the chosen diversity scaling)."""
        return self.contrastive + self.diversity_weight * self.diversity

    @property
    def per_masked_frame(self) -> torch.Tensor:
        """() the total divided by the number of masked frames (0 when none)."""
        return self.total / max(self.num_masked, 1)

    @property
    def objective(self) -> torch.Tensor:
        """() the loss to optimise: :attr:`total` (``sum``) or
        :attr:`per_masked_frame` (``mean``)."""
        return self.total if self.reduction == "sum" else self.per_masked_frame


def gumbel_temperature_schedule(value: float | Sequence[float]) -> tuple[float, float, float]:
    """``(start, end, decay)`` of a Gumbel-softmax temperature setting.

    Arguments
    ---------
    value : float or sequence of 3 floats
        A constant temperature, or fairseq's anneal ``[start, end, decay]``: the
        temperature after ``n`` optimizer steps is ``max(start * decay**n, end)``
        (fairseq's wav2vec 2.0 base: ``[2.0, 0.5, 0.999995]``).

    Returns
    -------
    tuple of float
        ``(start, end, decay)``; a constant ``t`` gives ``(t, t, 1.0)``.

    Raises
    ------
    ValueError
        Unless ``start >= end > 0`` (finite) and ``0 < decay <= 1``.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        start = end = float(value)
        decay = 1.0
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3:
        start, end, decay = (float(v) for v in value)
    else:
        raise ValueError(
            f"gumbel_temperature must be a number or [start, end, decay], got {value!r}."
        )
    if not (math.isfinite(start) and start >= end > 0 and 0 < decay <= 1):
        raise ValueError(
            "gumbel_temperature needs start >= end > 0 (finite) and 0 < decay <= 1, got "
            f"{value!r}."
        )
    return start, end, decay


def sample_negative_indices(frame_mask: np.ndarray, num_negatives: int) -> np.ndarray:
    """Distractor indices for the contrastive loss, drawn among the valid frames of
    the same utterance (never the frame itself), as transformers'
    ``_sample_negative_indices`` draws them.

    Arguments
    ---------
    frame_mask : np.ndarray
        (batch, frames) bool, True on valid frames.
    num_negatives : int
        Distractors per frame.

    Returns
    -------
    np.ndarray
        (batch, frames, num_negatives) int64 indices into the flattened
        (batch * frames) features. Utterances with fewer than two valid frames
        point at their own first frame (they must have no masked frame).
    """
    batch, frames = frame_mask.shape
    indices = np.zeros((batch, frames, num_negatives), dtype=np.int64)
    for b in range(batch):
        if frame_mask[b].sum() >= 2:
            indices[b] = _sample_negative_indices(
                (1, frames), num_negatives, mask_time_indices=frame_mask[b : b + 1]
            )[0]
        indices[b] += b * frames
    return indices


class Wav2Vec2Pretraining(nn.Module):
    """wav2vec2 with its quantizer (``Wav2Vec2ForPreTraining``) computing the
    self-supervised loss on padded batches.

    Arguments
    ---------
    source : str
        Hub id (``facebook/wav2vec2-base``) or a local folder written by
        ``save_pretrained``; its weights are loaded.
    save_path : str, optional
        Cache folder for hub downloads.
    gumbel_temperature : float or sequence of 3 floats
        Temperature of the Gumbel-softmax quantizer in training mode: a constant
        (1, transformers 4.10's default, which the authors' code kept) or
        fairseq's anneal ``[start, end, decay]`` per optimizer step (see
        :func:`gumbel_temperature_schedule` and :meth:`set_num_updates`).
    loss_reduction : str
        ``sum`` (transformers 4.10) or ``mean`` over masked frames: what
        :attr:`PretrainingLoss.objective` returns.
    diversity_scaling : str
        ``unscaled`` (transformers 4.10) or ``per_masked_frame`` (fairseq,
        transformers 5): see :attr:`PretrainingLoss.diversity`.
    revision : str, optional
        Hub revision of a hub id; ignored for a local folder.
    normalize : bool, optional
        Normalise each waveform before the CNN; None follows the backbone's
        preprocessor config (see :func:`~speechbrain_ptapt.models.backbone.load_feature_extractor`).

    Example
    -------
    >>> model = Wav2Vec2Pretraining("facebook/wav2vec2-base")  # doctest: +SKIP
    >>> model(wavs, wav_lens).objective.backward()  # doctest: +SKIP
    """

    def __init__(
        self,
        source: str,
        save_path: str | None = None,
        gumbel_temperature: float | Sequence[float] = 1.0,
        loss_reduction: str = "sum",
        diversity_scaling: str = "unscaled",
        revision: str | None = None,
        normalize: bool | None = None,
    ) -> None:
        super().__init__()
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(
                f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {loss_reduction!r}."
            )
        if diversity_scaling not in DIVERSITY_SCALINGS:
            raise ValueError(
                f"diversity_scaling must be one of {DIVERSITY_SCALINGS}, got {diversity_scaling!r}."
            )
        self.loss_reduction = loss_reduction
        self.diversity_scaling = diversity_scaling
        self.gumbel_schedule = gumbel_temperature_schedule(gumbel_temperature)
        self.source = str(source)
        self.model: Wav2Vec2ForPreTraining = load_pretrained(
            Wav2Vec2ForPreTraining, self.source, save_path, revision
        )
        self.feature_extractor_config = load_feature_extractor(
            self.source, save_path, revision, normalize
        )
        self.normalize = bool(getattr(self.feature_extractor_config, "do_normalize", True))
        self.sample_rate = int(self.feature_extractor_config.sampling_rate)
        self.min_samples = receptive_field_samples(self.model)
        config = self.model.config
        # transformers applies explicit masks only when spec augment is on; the
        # config's own value is written back by save_pretrained.
        self._saved_apply_spec_augment = getattr(config, "apply_spec_augment", True)
        config.apply_spec_augment = True
        if getattr(self.model.wav2vec2, "masked_spec_embed", None) is None:
            self.model.wav2vec2.masked_spec_embed = nn.Parameter(
                torch.empty(config.hidden_size).uniform_()
            )
        self.time_mask = TimeMask(
            prob=float(config.mask_time_prob),
            length=int(config.mask_time_length),
            min_masks=int(config.mask_time_min_masks),
        )
        self.set_num_updates(0)

    @property
    def config(self):
        """The transformers config of the model."""
        return self.model.config

    @property
    def gumbel_temperature_annealed(self) -> bool:
        """Whether the Gumbel-softmax temperature changes with the optimizer steps."""
        start, end, decay = self.gumbel_schedule
        return start != end and decay != 1.0

    def set_num_updates(self, num_updates: int) -> float:
        """Sets the quantizer's Gumbel-softmax temperature for a batch after
        ``num_updates`` optimizer steps, as fairseq's ``GumbelVectorQuantizer``:
        ``max(start * decay**num_updates, end)`` (the constant for a constant
        setting). Returns it."""
        start, end, decay = self.gumbel_schedule
        temperature = max(start * decay ** int(num_updates), end)
        self.model.set_gumbel_temperature(temperature)
        return temperature

    def prepare_inputs(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised, padded model inputs and their sample / frame masks.

        Arguments
        ---------
        wavs : torch.Tensor
            (batch, samples) padded waveforms at ``sample_rate``.
        wav_lens : torch.Tensor
            (batch,) relative lengths in (0, 1], SpeechBrain's convention.

        Returns
        -------
        input_values : torch.Tensor
            (batch, samples') waveforms normalised per utterance over their valid
            samples when the preprocessor config says so, padded to at least the
            receptive field (400 samples for wav2vec2-base).
        attention_mask : torch.Tensor
            (batch, samples') long, 1 on valid samples.
        frame_mask : torch.Tensor
            (batch, frames) bool, True on valid frames: the model's own
            ``_get_feature_vector_attention_mask`` of ``attention_mask``.
        """
        num_samples = torch.round(wav_lens.to(torch.float64) * wavs.shape[1]).long()
        num_samples = num_samples.clamp(min=1, max=wavs.shape[1]).to(wavs.device)
        if self.normalize:
            wavs = normalize_waveforms(wavs, num_samples)
        if wavs.shape[1] < self.min_samples:
            wavs = nn.functional.pad(wavs, (0, self.min_samples - wavs.shape[1]))
        num_samples = num_samples.clamp(min=self.min_samples)
        positions = torch.arange(wavs.shape[1], device=wavs.device)
        attention_mask = (positions[None, :] < num_samples[:, None]).long()
        num_frames = int(self.model._get_feat_extract_output_lengths(wavs.shape[1]))
        frame_mask = self.model._get_feature_vector_attention_mask(num_frames, attention_mask)
        return wavs, attention_mask, frame_mask.bool()

    def sample_masks(self, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Time masks and distractors for a batch (NumPy's global random generator).

        Arguments
        ---------
        frame_mask : torch.Tensor
            (batch, frames) bool, True on valid frames.

        Returns
        -------
        mask_time_indices : torch.Tensor
            (batch, frames) bool, True on masked frames (never on padding, and
            none in an utterance of fewer than two frames).
        sampled_negative_indices : torch.Tensor
            (batch, frames, num_negatives) long, see :func:`sample_negative_indices`.
        """
        valid = frame_mask.cpu()
        lengths = valid.sum(dim=1)
        time_mask = self.time_mask(lengths, valid.shape[1])
        time_mask[lengths < 2] = False
        negatives = sample_negative_indices(valid.numpy(), int(self.config.num_negatives))
        device = frame_mask.device
        return time_mask.to(device), torch.from_numpy(negatives).to(device)

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> PretrainingLoss:
        """Masks, distractors and the pretraining loss of a batch.

        Arguments
        ---------
        wavs : torch.Tensor
            (batch, samples) padded waveforms at ``sample_rate``.
        wav_lens : torch.Tensor
            (batch,) relative lengths.

        Returns
        -------
        PretrainingLoss
            The loss terms, with this model's diversity scaling and reduction
            (zero, still attached to the graph, when the batch has no masked frame).
        """
        input_values, attention_mask, frame_mask = self.prepare_inputs(wavs, wav_lens)
        mask_time_indices, negatives = self.sample_masks(frame_mask)
        num_masked = int(mask_time_indices.sum())
        out = self.model(
            input_values,
            attention_mask=attention_mask,
            mask_time_indices=mask_time_indices,
            sampled_negative_indices=negatives if num_masked else None,
        )
        config = self.config
        weight = float(config.diversity_loss_weight)
        options = {"diversity_scaling": self.diversity_scaling, "reduction": self.loss_reduction}
        if not num_masked:
            zero = out.projected_states.sum() * 0.0
            return PretrainingLoss(zero, zero, weight, 0, **options)
        # transformers 5 returns the diversity term times the number of masked
        # frames; the codebook term itself is 4.10's (G*V - perplexity) / (G*V).
        num_codevectors = config.num_codevectors_per_group * config.num_codevector_groups
        codebook_diversity = (num_codevectors - out.codevector_perplexity) / num_codevectors
        return PretrainingLoss(
            out.contrastive_loss, codebook_diversity, weight, num_masked, **options
        )

    def save_pretrained(self, folder: str | Path) -> None:
        """Writes the model (config, weights, quantizer included) and the
        preprocessor config in Hugging Face format."""
        config = self.model.config
        config.apply_spec_augment = self._saved_apply_spec_augment
        try:
            self.model.save_pretrained(str(folder))
        finally:
            config.apply_spec_augment = True
        self.feature_extractor_config.save_pretrained(str(folder))


