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
from pathlib import Path
from typing import Any

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.distributed import ddp_barrier, if_main_process
from speechbrain.utils.seed import seed_everything

from speechbrain_ptapt.data.dataio import audio_pipeline, duration_batch_sampler
from speechbrain_ptapt.models.pretraining import (
    PretrainingLoss,
    Wav2Vec2Pretraining,
)
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
    :class:`~speechbrain_ptapt.models.pretraining.Wav2Vec2Pretraining`) for a fixed number
    of optimizer steps (the stage's settings:
    :class:`~speechbrain_ptapt.stages.training.StepStageBrain`).

    The loss optimised is
    :attr:`~speechbrain_ptapt.models.pretraining.PretrainingLoss.objective`: with the ``sum``
    reduction (transformers 4.10, the authors' code) it grows with the masked frames
    of a batch, so SpeechBrain's running ``train_loss`` does too. Each train log line
    holds the means over its window's batches of: ``loss``, the loss optimised;
    ``loss_per_masked_frame``, which compares across batch sizes; ``contrastive``, the
    contrastive loss per masked frame; ``diversity``, the codebook term
    ``(G*V - perplexity) / (G*V)``; ``masked_frames`` per batch; the learning rate,
    and the Gumbel temperature when it is annealed. Before each batch the model's
    Gumbel temperature is set for the optimizer steps done
    (:meth:`~speechbrain_ptapt.models.pretraining.Wav2Vec2Pretraining.set_num_updates`).
    """

    def compute_forward(self, batch, stage) -> PretrainingLoss:
        """The summed loss terms of a batch of padded waveforms."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        return self.modules.wav2vec2(wavs, wav_lens)

    def compute_objectives(self, predictions: PretrainingLoss, batch, stage) -> torch.Tensor:
        """The pretraining loss as the model reduces it
        (:attr:`~speechbrain_ptapt.models.pretraining.PretrainingLoss.objective`)."""
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
