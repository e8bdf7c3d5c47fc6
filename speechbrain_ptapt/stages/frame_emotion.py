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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import speechbrain as sb
import torch
from speechbrain.dataio.sampler import ReproducibleRandomSampler
from speechbrain.utils.checkpoints import Checkpoint
from speechbrain.utils.distributed import (
    ddp_barrier,
    ddp_broadcast,
    if_main_process,
)
from speechbrain.utils.seed import seed_everything
from torch import Tensor

from speechbrain_ptapt.analysis.metrics import classification_metrics
from speechbrain_ptapt.data.dataio import (
    duration_batch_sampler,
    emotion_dataset,
    make_label_encoder,
)
from speechbrain_ptapt.models.frame_emotion import (
    FrameEmotionModel,
    FrameEmotionOutput,
    crop_to_shortest,
    frame_emotion_losses,
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
    "FINAL_FOLDER",
    "MODEL_FILE",
    "RECORD_FILE",
    "SELECTION_CRITERIA",
    "VALID_CROPS",
    "FrameEmotionBrain",
    "frame_fingerprint",
    "labelled_manifest_digest",
    "load_frame_model",
    "run_frame_stage",
    "save_frame_model",
    "selection_rank",
    "split_validation",
    "train_frame_model",
    "validation_every_steps",
    "validation_loader",
]


SELECTION_CRITERIA = ("valid_loss", "valid_ua")
"""Values of ``frame_select_by``: the lowest validation loss (the authors' code), or the
highest validation UA."""

VALID_CROPS = ("shortest", "none")
"""Values of ``frame_valid_crop``: validation batches cropped to their shortest utterance
(the authors' code), or whole utterances."""

FINAL_FOLDER = "final"
"""Sub-folder of ``frame_folder`` holding the finished stage's model."""

MODEL_FILE = "frame_model.ckpt"
"""State dict of the selected
:class:`~speechbrain_ptapt.models.frame_emotion.FrameEmotionModel`, in :data:`FINAL_FOLDER`."""

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
    """Trains a :class:`~speechbrain_ptapt.models.frame_emotion.FrameEmotionModel`
    (``modules.model``) for a fixed number of optimizer steps (the stage's settings:
    :class:`~speechbrain_ptapt.stages.training.StepStageBrain`), validating after every epoch
    (a pass over the training part) or every ``valid_every`` optimizer steps, and after
    the last step.

    Training batches are cropped to their shortest utterance at random offsets; the
    loss is the sum of :func:`~speechbrain_ptapt.models.frame_emotion.frame_emotion_losses`.
    With ``valid_crop: shortest`` validation batches are cropped the same way, at offsets
    drawn from a generator seeded by ``valid_seed`` and the optimizer steps done (the
    training random state is left alone). After each validation a checkpoint is saved
    with the validation ``loss`` (mean over utterances of the batches' summed cross-entropies,
    each batch weighted by its utterances as Lightning 1.4.5 averages the authors'
    ``valid_loss``: ``pytorch_lightning/trainer/connectors/logger_connector/result.py:196-212``)
    and ``ua`` (unweighted accuracy of
    :meth:`~speechbrain_ptapt.models.frame_emotion.FrameEmotionOutput.utterance_log_probs`),
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
