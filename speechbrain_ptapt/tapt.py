"""TAPT: task-adaptive pretraining, i.e. wav2vec2's own self-supervised objective
continued on the audio of a fold's training split (Chen & Rudnicky 2022, Sec. 2.3).

The objective is ``Wav2Vec2ForPreTraining``'s loss as transformers 4.10 (the
authors' version) computes it: the contrastive loss that picks the quantized
target of each masked frame among distractors drawn from the same utterance,
summed over the masked frames, plus ``diversity_loss_weight`` times the codebook
diversity term counted once per batch, with the quantizer's Gumbel-softmax at
temperature 1. A mean per masked frame, the diversity term per masked frame
(fairseq, later transformers) and fairseq's temperature anneal are options.
The model is loaded with its
weights (hub id or local folder); masks follow the backbone config
(``mask_time_prob``, ``mask_time_length``, ``mask_time_min_masks``), one span count
per padded batch as in the authors' code (``modules/FeatureFuser.py:197-204``, see
:class:`~speechbrain_ptapt.masking.TimeMask`); distractors come from valid frames only; padding is
excluded by the model's own frame attention mask. All parameters are trained
with Adam under a warm-up / flat / linear-decay schedule for a fixed number of
optimizer steps, on length-bucketed batches of random crops. The stage resumes
from its last checkpoint and ends by writing the adapted backbone in Hugging Face
format (``config.json``, weights, ``preprocessor_config.json``), ready to be used
as ``wav2vec2_hub`` by the fine-tuning stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import ddp_barrier, if_main_process
from speechbrain.utils.epoch_loop import EpochCounter
from speechbrain.utils.seed import seed_everything
from torch import nn
from transformers import Wav2Vec2ForPreTraining
from transformers.models.wav2vec2.modeling_wav2vec2 import _sample_negative_indices

from speechbrain_ptapt.backbone import load_feature_extractor, load_pretrained
from speechbrain_ptapt.checkpointing import RandomState
from speechbrain_ptapt.dataio import audio_pipeline, cropped_durations, duration_step_batches
from speechbrain_ptapt.distributed import (
    make_train_loader,
    unwrap,
    with_ddp_options,
    world_size,
)
from speechbrain_ptapt.errors import StageSettingsError
from speechbrain_ptapt.experiment import load_hparams
from speechbrain_ptapt.inference import normalize_waveforms, receptive_field_samples
from speechbrain_ptapt.masking import TimeMask
from speechbrain_ptapt.stage_cache import (
    StageCache,
    StageKeys,
    finish_folder,
    partial_folder,
    stage_fingerprint,
)

logger = logging.getLogger(__name__)

#: File written into the adapted backbone folder: what it was adapted from and how.
MARKER_FILE = "tapt_stage.json"

#: The hparams that define a fold's TAPT stage (with its training data's digest): every
#: ``tapt_`` key but the result-neutral ones, and the shared keys it reads.
TAPT_KEYS = StageKeys(
    prefixes=("tapt_",),
    shared=(
        "wav2vec2_hub",
        "wav2vec2_revision",
        "normalize_waveform",
        "sample_rate",
        "warmup_steps",
    ),
)

#: A stage folder of other settings or data (kept for code that catches it by this name).
TAPTSettingsError = StageSettingsError


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
        preprocessor config (see :func:`~speechbrain_ptapt.backbone.load_feature_extractor`).

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


# ----------------------------------------------------------------------------
# Schedule and batches
# ----------------------------------------------------------------------------


@register_checkpoint_hooks
class WarmupFlatLinearDecay:
    """Learning-rate schedule counted in optimizer steps: linear warm-up to ``lr``
    over ``warmup_steps``, ``flat_fraction`` of ``total_steps`` at ``lr``, then a
    linear decay that reaches 0 after the last step.

    Calling it before each optimizer step sets the learning rate of that step.

    Arguments
    ---------
    lr : float
        Peak learning rate.
    total_steps : int
        Optimizer steps of the whole stage.
    warmup_steps : int
        Warm-up steps (step ``s`` of them uses ``lr * s / warmup_steps``).
    flat_fraction : float
        Share of ``total_steps`` spent at ``lr`` after the warm-up.

    Example
    -------
    >>> schedule = WarmupFlatLinearDecay(1.0, total_steps=100, warmup_steps=10)
    >>> [round(schedule.lr_at(s), 4) for s in (1, 10, 15, 16, 100)]
    [0.1, 1.0, 1.0, 0.9884, 0.0116]
    """

    def __init__(
        self, lr: float, total_steps: int, warmup_steps: int = 100, flat_fraction: float = 0.05
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {total_steps}.")
        if warmup_steps < 0 or not 0.0 <= flat_fraction <= 1.0:
            raise ValueError(
                f"Need warmup_steps >= 0 and flat_fraction in [0, 1], got {warmup_steps}, "
                f"{flat_fraction}."
            )
        self.lr = float(lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.flat_steps = int(flat_fraction * total_steps)
        self.steps_done = 0

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (1-based)."""
        if step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        decay_start = self.warmup_steps + self.flat_steps
        if step <= decay_start:
            return self.lr
        decay_steps = self.total_steps - decay_start
        return self.lr * max(0.0, (self.total_steps - step + 1) / (decay_steps + 1))

    def __call__(self, optimizer: torch.optim.Optimizer) -> float:
        """Advances one step and sets the learning rate of every parameter group;
        returns it."""
        self.steps_done += 1
        lr = self.lr_at(self.steps_done)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    @mark_as_saver
    def _save(self, path: str) -> None:
        torch.save({"steps_done": self.steps_done}, path)

    @mark_as_loader
    def _recover(self, path: str, end_of_epoch: bool = True) -> None:
        del end_of_epoch
        self.steps_done = int(torch.load(path)["steps_done"])


class BucketBatchSampler(torch.utils.data.Sampler):
    """Length-bucketed batches of a fixed number of utterances, for a fixed number
    of batches (as many passes over the data as needed): TAPT's batches when
    ``tapt_batch_seconds`` is null. The authors' TAPT trains on batches of at least
    250 s of audio instead (their ``RandomBucketSampler`` defaults
    ``dynamic_batch=True``, FT-w2v2-ser ``pretrain/dataloader.py:274-275``, and
    TAPT's ``pretrain/trainer.py:305-306`` does not override it), which
    :class:`~speechbrain_ptapt.dataio.DurationBatchSampler` reproduces.

    Each pass sorts the utterances by duration (random order among equal
    durations), cuts them into ``num_buckets`` buckets of neighbouring lengths,
    shuffles each bucket, cuts the sequence into batches of ``batch_size`` and
    shuffles the batches. Pass ``p`` of epoch ``e`` depends only on
    ``(seed, e, p)``, so an interrupted stage can skip the batches it has seen.

    Arguments
    ---------
    durations : sequence of float
        Duration of each utterance in seconds (cropped length, as trained).
    batch_size : int
        Utterances per batch (the last batch of a pass may be smaller).
    num_batches : int
        Batches to yield per epoch.
    num_buckets : int
        Length buckets per pass.
    seed : int
        Seed of the shuffles.
    """

    def __init__(
        self,
        durations: Sequence[float],
        batch_size: int,
        num_batches: int,
        num_buckets: int = 50,
        seed: int = 0,
    ) -> None:
        if not len(durations):
            raise ValueError("BucketBatchSampler needs at least one utterance.")
        if batch_size < 1 or num_batches < 0 or num_buckets < 1:
            raise ValueError(
                f"Need batch_size >= 1, num_batches >= 0, num_buckets >= 1; got {batch_size}, "
                f"{num_batches}, {num_buckets}."
            )
        self.durations = np.asarray(durations, dtype=np.float64)
        self.batch_size = int(batch_size)
        self.num_batches = int(num_batches)
        self.num_buckets = int(num_buckets)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch (called by SpeechBrain before each epoch)."""
        self.epoch = int(epoch)

    def one_pass(self, pass_index: int) -> list[list[int]]:
        """The batches of one pass over every utterance."""
        rng = np.random.default_rng([self.seed, self.epoch, pass_index])
        shuffled = rng.permutation(len(self.durations))
        by_length = shuffled[np.argsort(self.durations[shuffled], kind="stable")]
        buckets = np.array_split(by_length, min(self.num_buckets, len(by_length)))
        order = np.concatenate([rng.permutation(bucket) for bucket in buckets])
        batches = [
            order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)
        ]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        yielded, pass_index = 0, 0
        while yielded < self.num_batches:
            for batch in self.one_pass(pass_index):
                if yielded == self.num_batches:
                    return
                yielded += 1
                yield batch
            pass_index += 1

    def __len__(self) -> int:
        return self.num_batches


def tapt_dataset(
    manifest: str | Path, sample_rate: int = 16000, max_seconds: float | None = 10.0
) -> DynamicItemDataset:
    """The audio of a manifest (labels unused) providing ``id`` and ``sig``, a random
    crop of at most ``max_seconds`` seconds of each utterance."""
    dataset = DynamicItemDataset.from_json(str(manifest))
    dataset.add_dynamic_item(audio_pipeline(sample_rate, max_seconds))
    dataset.set_output_keys(["id", "sig"])
    return dataset


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------


class TAPTBrain(sb.Brain):
    """Continues wav2vec2's self-supervised training (``modules.wav2vec2``, a
    :class:`Wav2Vec2Pretraining`) for a fixed number of optimizer steps.

    Expects in hparams: ``lr_scheduler`` (a :class:`WarmupFlatLinearDecay`),
    optionally ``train_logger`` and ``log_interval_steps`` (every that many
    optimizer steps, log the means over the window's batches of: ``loss``, the
    loss optimised; ``loss_per_masked_frame``; ``contrastive``, the contrastive
    loss per masked frame; ``diversity``, the codebook term
    ``(G*V - perplexity) / (G*V)``; ``masked_frames`` per batch; and the learning
    rate, plus the Gumbel temperature when it is annealed). The loss optimised is
    :attr:`PretrainingLoss.objective`: with the ``sum`` reduction (transformers
    4.10, the authors' code) it grows with the masked frames of a batch, so
    SpeechBrain's running ``train_loss`` does too; ``loss_per_masked_frame``
    compares across batch sizes. Before each batch the model's Gumbel temperature
    is set for the optimizer steps done (:meth:`Wav2Vec2Pretraining.set_num_updates`).

    A ``max_grad_norm`` of 0 or less means no gradient clipping.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.max_grad_norm is None or self.max_grad_norm <= 0:
            self.max_grad_norm = math.inf
        self._reset_window()

    def _reset_window(self) -> None:
        """Starts a new logging window (sums over its batches of the logged values)."""
        self._window = {
            "loss": 0.0,
            "loss_per_masked_frame": 0.0,
            "contrastive": 0.0,
            "diversity": 0.0,
            "masked_frames": 0.0,
            "batches": 0,
        }

    def compute_forward(self, batch, stage) -> PretrainingLoss:
        """The summed loss terms of a batch of padded waveforms."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        return self.modules.wav2vec2(wavs, wav_lens)

    def compute_objectives(self, predictions: PretrainingLoss, batch, stage) -> torch.Tensor:
        """The pretraining loss as the model reduces it (:attr:`PretrainingLoss.objective`)."""
        loss = predictions.objective
        masked = max(predictions.num_masked, 1)
        self._window["loss"] += float(loss.detach())
        self._window["loss_per_masked_frame"] += float(predictions.per_masked_frame.detach())
        self._window["contrastive"] += float(predictions.contrastive.detach()) / masked
        self._window["diversity"] += float(predictions.codebook_diversity.detach())
        self._window["masked_frames"] += predictions.num_masked
        self._window["batches"] += 1
        return loss

    def on_fit_batch_start(self, batch, should_step: bool) -> None:
        """Sets the learning rate of the coming optimizer step and the model's
        Gumbel temperature for the optimizer steps done."""
        if should_step:
            self.lr = self.hparams.lr_scheduler(self.optimizer)
        set_num_updates = getattr(unwrap(self.modules.wav2vec2), "set_num_updates", None)
        if set_num_updates is not None:
            set_num_updates(self.optimizer_step)

    def on_fit_batch_end(self, batch, outputs, loss, should_step: bool) -> None:
        """Logs the mean loss terms every ``log_interval_steps`` optimizer steps."""
        interval = int(getattr(self.hparams, "log_interval_steps", 0) or 0)
        if not should_step or interval <= 0 or self.optimizer_step % interval:
            return
        count = max(self._window.pop("batches"), 1)
        stats = {key: value / count for key, value in self._window.items()}
        stats["lr"] = float(self.lr)
        model = unwrap(self.modules.wav2vec2)
        if getattr(model, "gumbel_temperature_annealed", False):
            stats["gumbel_temperature"] = float(model.model.quantizer.temperature)
        train_logger = getattr(self.hparams, "train_logger", None)
        if train_logger is not None:
            train_logger.log_stats(stats_meta={"step": self.optimizer_step}, train_stats=stats)
        self._reset_window()

    def on_stage_end(self, stage, stage_loss, epoch=None) -> None:
        """End of the stage: a final checkpoint, so a rerun finds it finished."""
        if stage == sb.Stage.TRAIN and self.checkpointer is not None:
            self.step = 0  # the epoch is over (SpeechBrain resets it after this hook)
            self.checkpointer.save_and_keep_only(
                meta={"optimizer_step": self.optimizer_step, "train_loss": float(stage_loss)},
                num_to_keep=1,
            )


#: Mixed precision of every training stage on a CUDA device unless ``--precision``
#: says otherwise: the authors train all stages with PyTorch Lightning's
#: ``precision=16``, ``amp_backend='native'`` (FT-w2v2-ser bin/run_exp_iemocap.sh:6,9,14,
#: bin/run_exp_iemocap_baseline.sh:6,10, bin/run_exp_iemocap_vft.sh:8;
#: run_downstream_custom_multiple_fold.py:56-57): fp16 autocast with a gradient scaler,
#: pytorch-lightning 1.4.5's native AMP plugin (docker/Dockerfile) autocasting the
#: validation and test steps too. Pseudo-labelling is no Brain and stays fp32, as the
#: authors' cluster.py (bin/run_exp_iemocap.sh:8 passes no --precision). The paper does
#: not say.
CUDA_DEFAULT_PRECISION = "fp16"


def default_precision(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the authors' precision filled in on a CUDA device.

    On CUDA (``device``, or the device SpeechBrain would pick when none is given), a
    missing ``precision`` becomes :data:`CUDA_DEFAULT_PRECISION` (SpeechBrain then
    trains under fp16 autocast with a gradient scaler) and a missing
    ``eval_precision`` follows the training precision, one switch as in the
    authors' code. On the CPU or with an explicit ``--precision`` (or SpeechBrain's
    deprecated ``--auto_mix_prec`` / ``--bfloat16_mix_prec``) nothing is added:
    the CPU stays fp32 unless asked otherwise.
    """
    device = str(options.get("device") or sb.utils.distributed.infer_device())
    if device.split(":")[0] != "cuda":
        return options
    resolved = dict(options)
    if options.get("bfloat16_mix_prec"):
        train = "bf16"
    elif options.get("auto_mix_prec"):
        train = "fp16"
    else:
        train = resolved.setdefault("precision", CUDA_DEFAULT_PRECISION)
    resolved.setdefault("eval_precision", train)
    return resolved


def stage_run_options(run_opts: Any, **forced: Any) -> dict[str, Any]:
    """The user's run options (device, precision ...) with the stage's own values,
    and the authors' mixed precision on a CUDA device unless the user chose one
    (:func:`default_precision`)."""
    if run_opts is None:
        base: dict[str, Any] = {}
    elif isinstance(run_opts, dict):
        base = dict(run_opts)
    else:
        base = {key: run_opts[key] for key in run_opts.overridden_args}
    base.update(forced)
    return default_precision(base)


#: The yaml keys each step-counted stage reads, by prefix (see :func:`step_stage_brain`).
STEP_STAGE_KEYS = {
    prefix_keys[0].split("_")[0]: prefix_keys
    for prefix_keys in (
        (
            "tapt_steps",
            "tapt_lr",
            "tapt_flat_fraction",
            "tapt_ckpt_interval_steps",
            "tapt_max_grad_norm",
            "tapt_opt_class",
            "tapt_train_logger",
            "tapt_log_interval_steps",
        ),
        (
            "ptapt_steps",
            "ptapt_lr",
            "ptapt_flat_fraction",
            "ptapt_ckpt_interval_steps",
            "ptapt_max_grad_norm",
            "ptapt_opt_class",
            "ptapt_train_logger",
            "ptapt_log_interval_steps",
        ),
    )
}


def step_stage_brain(
    brain_class: type,
    model: torch.nn.Module,
    hparams: dict[str, Any],
    prefix: str,
    run_opts: Any,
    checkpointer: sb.utils.checkpoints.Checkpointer | None = None,
) -> tuple[sb.Brain, EpochCounter]:
    """The Brain of a stage counted in optimizer steps (TAPT, P-TAPT phase 2).

    Reads ``<prefix>_steps``, ``<prefix>_lr``, ``warmup_steps``,
    ``<prefix>_flat_fraction``, ``<prefix>_ckpt_interval_steps``,
    ``<prefix>_max_grad_norm``, ``<prefix>_opt_class`` and optionally
    ``<prefix>_train_logger`` and ``<prefix>_log_interval_steps``. The stage is one
    epoch of exactly ``<prefix>_steps`` batches; the checkpointer receives the
    model, the schedule, the epoch counter and the random state (SpeechBrain adds
    the optimizer and the data position), so an interrupted stage resumes at the
    step it reached.

    Returns
    -------
    brain : sb.Brain
        An instance of ``brain_class`` with ``modules.wav2vec2 = model``.
    epoch_counter : EpochCounter
        The counter to pass to ``fit``.
    """
    optional = (f"{prefix}_train_logger", f"{prefix}_log_interval_steps")
    missing = [k for k in STEP_STAGE_KEYS[prefix] if k not in hparams and k not in optional]
    if missing:
        raise KeyError(f"The {prefix} stage needs the yaml keys {missing}.")
    steps = int(hparams[f"{prefix}_steps"])
    scheduler = WarmupFlatLinearDecay(
        hparams[f"{prefix}_lr"],
        steps,
        hparams["warmup_steps"],
        hparams[f"{prefix}_flat_fraction"],
    )
    epoch_counter = EpochCounter(limit=1)
    if checkpointer is not None:
        checkpointer.add_recoverables(
            {
                "wav2vec2": model,
                "lr_scheduler": scheduler,
                "counter": epoch_counter,
                "rng": RandomState(),
            }
        )
    opts = stage_run_options(
        run_opts,
        optimizer_step_limit=steps,
        ckpt_interval_steps=int(hparams[f"{prefix}_ckpt_interval_steps"]),
        ckpt_interval_minutes=0.0,
        max_grad_norm=float(hparams[f"{prefix}_max_grad_norm"]),
    )
    # Under DDP: masks that hit no frame leave the mask embedding without a gradient.
    opts = with_ddp_options(opts, model)
    brain = brain_class(
        modules={"wav2vec2": model},
        opt_class=hparams[f"{prefix}_opt_class"],
        hparams={
            "lr_scheduler": scheduler,
            "train_logger": hparams.get(f"{prefix}_train_logger"),
            "log_interval_steps": hparams.get(f"{prefix}_log_interval_steps", 0),
        },
        run_opts=opts,
        checkpointer=checkpointer,
    )
    return brain, epoch_counter


def fit_steps(
    brain: sb.Brain,
    epoch_counter: EpochCounter,
    dataset: DynamicItemDataset,
    batch_sampler: torch.utils.data.Sampler,
    num_workers: int = 0,
    valid_loader: torch.utils.data.DataLoader | None = None,
) -> None:
    """Trains a step-counted stage on ``dataset`` batched by ``batch_sampler``,
    validating on ``valid_loader`` after every epoch when given.

    Under DDP each process takes its share of the sampler's batches
    (:func:`speechbrain_ptapt.distributed.make_train_loader`): a sampler of
    ``world_size`` times the stage's steps gives every process the stage's steps.
    """
    loader = make_train_loader(
        brain,
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        # A private generator: creating the loader's iterator does not draw from
        # the global random state, so a resumed stage draws what an uninterrupted
        # one would.
        generator=torch.Generator(),
    )
    brain.fit(epoch_counter, loader, valid_loader)


def train_tapt(
    model: Wav2Vec2Pretraining,
    hparams: dict[str, Any],
    run_opts: Any,
    train_manifest: str | Path,
    checkpointer: sb.utils.checkpoints.Checkpointer | None = None,
) -> TAPTBrain:
    """Trains (or resumes) ``model`` on the audio of ``train_manifest``.

    Arguments
    ---------
    model : Wav2Vec2Pretraining
        The model, with the weights to adapt.
    hparams : dict
        ``tapt_steps``, ``tapt_batch_seconds`` (batches of at least that many seconds
        of length-bucketed audio, as the authors' code; None: ``tapt_batch_size``
        utterances per batch), ``warmup_steps``,
        ``tapt_flat_fraction``,
        ``tapt_lr``, ``tapt_max_seconds``, ``tapt_num_buckets``, ``tapt_seed``,
        ``tapt_ckpt_interval_steps``, ``tapt_log_interval_steps``,
        ``tapt_max_grad_norm``, ``tapt_num_workers``, ``tapt_opt_class`` and
        optionally ``tapt_train_logger``.
    run_opts : RunOptions or dict
        SpeechBrain's run options (device, precision ...).
    train_manifest : str or Path
        SpeechBrain JSON manifest (``wav``, ``duration`` per utterance).
    checkpointer : Checkpointer, optional
        Where the stage's state goes every ``tapt_ckpt_interval_steps`` steps and
        at the end; an existing checkpoint is resumed at the step it reached.

    Returns
    -------
    TAPTBrain
        The brain after training (``optimizer_step`` == ``tapt_steps``).
    """
    steps = int(hparams["tapt_steps"])
    brain, epoch_counter = step_stage_brain(
        TAPTBrain, model, hparams, "tapt", run_opts, checkpointer
    )
    max_seconds = hparams["tapt_max_seconds"]
    dataset = tapt_dataset(train_manifest, model.sample_rate, max_seconds)
    num_batches = steps * brain.grad_accumulation_factor * world_size()
    batch_seconds = hparams.get("tapt_batch_seconds")
    if batch_seconds is None:
        sampler = BucketBatchSampler(
            cropped_durations(dataset, max_seconds),
            batch_size=int(hparams["tapt_batch_size"]),
            num_batches=num_batches,
            num_buckets=int(hparams["tapt_num_buckets"]),
            seed=int(hparams["tapt_seed"]),
        )
        batches = f"{hparams['tapt_batch_size']} utterances"
    else:
        sampler = duration_step_batches(dataset, hparams, "tapt", max_seconds, num_batches)
        batches = f"at least {batch_seconds} s of audio"
    logger.info(
        "TAPT on %d utterances of %s: %d steps of %s (%s).",
        len(dataset),
        train_manifest,
        steps,
        batches,
        "whole files" if max_seconds is None else f"random crops of at most {max_seconds} s",
    )
    fit_steps(brain, epoch_counter, dataset, sampler, int(hparams.get("tapt_num_workers", 0)))
    return brain


# ----------------------------------------------------------------------------
# The stage: settings, skip/resume, adapted folder
# ----------------------------------------------------------------------------


def manifest_digest(manifest: str | Path) -> str:
    """SHA-256 of a manifest's utterance ids and durations (not of its paths, so
    moving the corpus keeps the digest)."""
    with open(manifest, encoding="utf-8") as f:
        data = json.load(f)
    items = sorted((str(k), round(float(v.get("duration", 0.0)), 4)) for k, v in data.items())
    return hashlib.sha256(json.dumps(items).encode("utf-8")).hexdigest()


def tapt_fingerprint(hparams: dict[str, Any], train_manifest: str | Path) -> dict[str, Any]:
    """The settings that define a fold's TAPT stage (:data:`TAPT_KEYS`), plus its
    training data digest."""
    return stage_fingerprint(TAPT_KEYS, hparams, train_manifest=manifest_digest(train_manifest))


def save_adapted(model: Wav2Vec2Pretraining, folder: str | Path, marker: dict[str, Any]) -> Path:
    """Writes the adapted model (Hugging Face format) and ``MARKER_FILE`` into a
    temporary folder, then renames it to ``folder``: a folder of that name is
    always complete."""
    partial = partial_folder(folder)
    model.save_pretrained(partial)
    return finish_folder(partial, folder, (MARKER_FILE, marker))


def adapted_cache(
    name: str, hparams: dict[str, Any], prefix: str, fingerprint: dict[str, Any]
) -> StageCache:
    """The cache of a stage that writes an adapted backbone (TAPT, P-TAPT phase 2):
    ``<prefix>_adapted_folder`` with its :data:`MARKER_FILE`, checkpoints guarded in
    ``<prefix>_save_folder`` by ``<prefix>_settings.json``."""
    return StageCache(
        name,
        fingerprint,
        Path(hparams[f"{prefix}_adapted_folder"]) / MARKER_FILE,
        checkpoints=Path(hparams[f"{prefix}_save_folder"]),
        checkpoint_record=f"{prefix}_settings.json",
    )


def run_tapt_stage(
    fold: str, hparams_file: str, overrides: dict[str, Any], run_opts: Any, manifests: dict
) -> str:
    """The TAPT stage of one fold, as a recipe's ``adapt`` step.

    Adapts ``wav2vec2_hub`` on the audio of the fold's training manifest and writes
    it to ``tapt_adapted_folder`` (``<output_folder>/fold_<fold>/tapt/adapted_wav2vec2``).
    A finished stage with the same settings and data is skipped; an interrupted
    one resumes from its last checkpoint in ``tapt_save_folder``.

    Arguments
    ---------
    fold : str
        The fold (held-out session or speaker).
    hparams_file : str
        The recipe's yaml (TAPT settings under ``tapt_`` names).
    overrides : dict
        The user's yaml overrides.
    run_opts : RunOptions or dict
        SpeechBrain's run options.
    manifests : dict
        ``{"train": manifest, "test": manifest}`` of the fold; only ``train`` is read.

    Returns
    -------
    str
        The adapted backbone folder, for ``wav2vec2_hub``.

    Raises
    ------
    StageSettingsError
        When the fold's TAPT folder holds results or checkpoints of other settings or
        data (:mod:`speechbrain_ptapt.stage_cache`).
    """
    hparams = load_hparams(hparams_file, {**overrides, "fold": fold})
    train_manifest = manifests["train"]
    adapted = Path(hparams["tapt_adapted_folder"])
    cache = adapted_cache("TAPT", hparams, "tapt", tapt_fingerprint(hparams, train_manifest))
    if cache.is_done():
        logger.info("TAPT of fold %s is finished (%s), skipping it.", fold, adapted)
        return str(adapted)
    cache.guard_checkpoints()

    seed_everything(int(hparams["tapt_seed"]))
    model = hparams["tapt_model"]()
    checkpointer = hparams["tapt_checkpointer"]()
    brain = train_tapt(
        model,
        {**hparams, "tapt_train_logger": hparams["tapt_train_logger"]()},
        run_opts,
        train_manifest,
        checkpointer,
    )
    if if_main_process():
        cache.publish_folder(
            model.save_pretrained,
            fold=str(fold),
            optimizer_steps=int(brain.optimizer_step),
            train_manifest=str(train_manifest),
        )
        logger.info("TAPT of fold %s done: adapted backbone in %s.", fold, adapted)
    ddp_barrier()
    return str(adapted)
