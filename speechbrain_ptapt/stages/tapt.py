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
:class:`~speechbrain_ptapt.models.masking.TimeMask`); distractors come from valid
frames only; padding is excluded by the model's own frame attention mask. All parameters are trained
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.distributed import ddp_barrier, if_main_process
from speechbrain.utils.seed import seed_everything
from torch import nn
from transformers import Wav2Vec2ForPreTraining
from transformers.models.wav2vec2.modeling_wav2vec2 import _sample_negative_indices

from speechbrain_ptapt.data.dataio import audio_pipeline, duration_batch_sampler
from speechbrain_ptapt.deploy.inference import normalize_waveforms, receptive_field_samples
from speechbrain_ptapt.models.backbone import load_feature_extractor, load_pretrained
from speechbrain_ptapt.models.masking import TimeMask
from speechbrain_ptapt.protocol.distributed import unwrap
from speechbrain_ptapt.protocol.errors import StageSettingsError
from speechbrain_ptapt.protocol.stage_cache import (
    StageCache,
    StageKeys,
    finish_folder,
    partial_folder,
    stage_fingerprint,
)
from speechbrain_ptapt.stages.training import StepStageBrain, with_default_precision

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


# ----------------------------------------------------------------------------
# Data and training
# ----------------------------------------------------------------------------


def tapt_dataset(
    manifest: str | Path, sample_rate: int = 16000, max_seconds: float | None = 10.0
) -> DynamicItemDataset:
    """The audio of a manifest (labels unused) providing ``id`` and ``sig``, a random
    crop of at most ``max_seconds`` seconds of each utterance."""
    dataset = DynamicItemDataset.from_json(str(manifest))
    dataset.add_dynamic_item(audio_pipeline(sample_rate, max_seconds))
    dataset.set_output_keys(["id", "sig"])
    return dataset


class TAPTBrain(StepStageBrain):
    """Continues wav2vec2's self-supervised training (``modules.wav2vec2``, a
    :class:`Wav2Vec2Pretraining`) for a fixed number of optimizer steps (the
    stage's settings: :class:`~speechbrain_ptapt.stages.training.StepStageBrain`).

    The loss optimised is :attr:`PretrainingLoss.objective`: with the ``sum``
    reduction (transformers 4.10, the authors' code) it grows with the masked frames
    of a batch, so SpeechBrain's running ``train_loss`` does too. Each train log line
    holds the means over its window's batches of: ``loss``, the loss optimised;
    ``loss_per_masked_frame``, which compares across batch sizes; ``contrastive``, the
    contrastive loss per masked frame; ``diversity``, the codebook term
    ``(G*V - perplexity) / (G*V)``; ``masked_frames`` per batch; the learning rate,
    and the Gumbel temperature when it is annealed. Before each batch the model's
    Gumbel temperature is set for the optimizer steps done
    (:meth:`Wav2Vec2Pretraining.set_num_updates`).
    """

    def compute_forward(self, batch, stage) -> PretrainingLoss:
        """The summed loss terms of a batch of padded waveforms."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        return self.modules.wav2vec2(wavs, wav_lens)

    def compute_objectives(self, predictions: PretrainingLoss, batch, stage) -> torch.Tensor:
        """The pretraining loss as the model reduces it (:attr:`PretrainingLoss.objective`)."""
        loss = predictions.objective
        masked = max(predictions.num_masked, 1)
        self.add_to_log(
            loss=loss.detach(),
            loss_per_masked_frame=predictions.per_masked_frame.detach(),
            contrastive=predictions.contrastive.detach() / masked,
            diversity=predictions.codebook_diversity.detach(),
            masked_frames=predictions.num_masked,
        )
        return loss

    def on_fit_batch_start(self, batch, should_step: bool) -> None:
        """Sets the learning rate of the coming optimizer step and the model's
        Gumbel temperature for the optimizer steps done."""
        super().on_fit_batch_start(batch, should_step)
        set_num_updates = getattr(unwrap(self.modules.wav2vec2), "set_num_updates", None)
        if set_num_updates is not None:
            set_num_updates(self.optimizer_step)

    def extra_log_stats(self) -> dict[str, float]:
        """The quantizer's Gumbel temperature, when it is annealed."""
        model = unwrap(self.modules.wav2vec2)
        if getattr(model, "gumbel_temperature_annealed", False):
            return {"gumbel_temperature": float(model.model.quantizer.temperature)}
        return {}


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
        ``tapt_brain_hparams`` (the Brain's settings: steps, schedule, epoch counter,
        checkpoint and log intervals, logger), ``tapt_opt_class``,
        ``tapt_batch_seconds`` (batches of at least that many seconds of
        length-bucketed audio, as the authors' code; None: ``tapt_batch_size``
        utterances per batch), ``tapt_max_seconds``, ``tapt_num_buckets``,
        ``tapt_seed`` and ``tapt_num_workers``.
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
    brain = TAPTBrain(
        modules={"wav2vec2": model},
        opt_class=hparams["tapt_opt_class"],
        hparams=hparams["tapt_brain_hparams"],
        run_opts=with_default_precision(run_opts),
        checkpointer=checkpointer,
    )
    max_seconds = hparams["tapt_max_seconds"]
    dataset = tapt_dataset(train_manifest, model.sample_rate, max_seconds)
    batch_seconds = hparams.get("tapt_batch_seconds")
    sampler = duration_batch_sampler(
        dataset,
        batch_seconds,
        max_seconds,
        int(hparams["tapt_num_buckets"]),
        seed=int(hparams["tapt_seed"]),
        batch_size=int(hparams["tapt_batch_size"]),
    )
    logger.info(
        "TAPT on %d utterances of %s: %d steps of %s (%s).",
        len(dataset),
        train_manifest,
        brain.optimizer_step_limit,
        f"at least {batch_seconds} s of audio"
        if batch_seconds is not None
        else f"{hparams['tapt_batch_size']} utterances",
        "whole files" if max_seconds is None else f"random crops of at most {max_seconds} s",
    )
    workers = int(hparams.get("tapt_num_workers", 0))
    brain.fit_steps(dataset, {"batch_sampler": sampler, "num_workers": workers})
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


def run_tapt_stage(hparams: dict[str, Any], run_opts: Any, train_manifest: str | Path) -> str:
    """The TAPT stage of one fold.

    Adapts ``wav2vec2_hub`` on the audio of the fold's training manifest and writes
    it to ``tapt_adapted_folder`` (``<output_folder>/fold_<fold>/tapt/adapted_wav2vec2``).
    A finished stage with the same settings and data is skipped; an interrupted
    one resumes from its last checkpoint in ``tapt_save_folder``.

    Arguments
    ---------
    hparams : dict
        The fold's hparams (TAPT settings under ``tapt_`` names, ``fold`` set).
    run_opts : RunOptions or dict
        SpeechBrain's run options.
    train_manifest : str or Path
        The fold's training manifest.

    Returns
    -------
    str
        The adapted backbone folder, for ``wav2vec2_hub``.

    Raises
    ------
    StageSettingsError
        When the fold's TAPT folder holds results or checkpoints of other settings or
        data (:mod:`speechbrain_ptapt.protocol.stage_cache`).
    """
    fold = str(hparams["fold"])
    adapted = Path(hparams["tapt_adapted_folder"])
    cache = adapted_cache("TAPT", hparams, "tapt", tapt_fingerprint(hparams, train_manifest))
    if cache.is_done():
        logger.info("TAPT of fold %s is finished (%s), skipping it.", fold, adapted)
        return str(adapted)
    cache.guard_checkpoints()

    seed_everything(int(hparams["tapt_seed"]))
    model = hparams["tapt_model"]()
    checkpointer = hparams["tapt_checkpointer"]()
    brain = train_tapt(model, hparams, run_opts, train_manifest, checkpointer)
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
