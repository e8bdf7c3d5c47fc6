"""V-FT: wav2vec2 + mean pooling + ReLU + linear head, and its Brain.

The fine-tuning stage of all three methods (V-FT, and the last stage of TAPT
and P-TAPT). Architecture and training follow Chen & Rudnicky (2022), Sec. 2.2,
and the authors' code: ReLU on the transformer output, mean over valid frames,
ReLU, Linear; SpecAugment-style masks while training; CNN encoder and feature
projection frozen; class-weighted cross-entropy; evaluation of the last model.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.sampler import ReproducibleRandomSampler
from speechbrain.utils.distributed import if_main_process
from torch import nn

from speechbrain_ptapt.analysis.metrics import classification_metrics
from speechbrain_ptapt.data.dataio import (
    check_labels,
    duration_batch_sampler,
    emotion_dataset,
    inverse_prior_weights,
    make_label_encoder,
)
from speechbrain_ptapt.protocol.experiment import read_json, write_json
from speechbrain_ptapt.stages.training import StageBrain, with_default_precision

logger = logging.getLogger(__name__)


class VFTBrain(StageBrain):
    """Fine-tunes an :class:`~speechbrain_ptapt.models.classifier.EmotionClassifier`
    (``modules.model``) for a fixed number of epochs, and evaluates the last model on the
    held-out fold.

    Expects in hparams: ``class_weights`` (tensor, inverse class prior of the
    training split), ``classes`` (label names), ``run_folder`` (where test
    predictions and metrics are written) and optionally ``train_logger``.
    After ``evaluate``, ``self.test_metrics`` holds UA, WA, macro-F1 and the
    confusion matrix.
    """

    def compute_forward(self, batch, stage):
        """Logits of a batch; masks are active in training mode only."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        return self.modules.model(wavs, wav_lens)

    def compute_objectives(self, predictions, batch, stage):
        """Class-weighted cross-entropy; collects test predictions."""
        targets = batch.emo_encoded.data[:, 0].to(predictions.device)
        weight = self.hparams.class_weights.to(predictions.device, predictions.dtype)
        loss = nn.functional.cross_entropy(predictions.float(), targets, weight=weight.float())
        if stage == sb.Stage.TEST:
            probs = torch.softmax(predictions.float(), dim=-1).detach().cpu()
            self.test_ids.extend(batch.id)
            self.test_targets.extend(targets.cpu().tolist())
            self.test_probs.extend(probs.tolist())
        return loss

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Loads the last checkpoint; the test loss is then averaged over the test
        batches alone, whatever batch count the checkpoint recorded."""
        super().on_evaluate_start(max_key=max_key, min_key=min_key)
        self.step = 0

    def on_stage_start(self, stage, epoch=None):
        """Resets the collected test predictions."""
        super().on_stage_start(stage, epoch)
        if stage == sb.Stage.TEST:
            self.test_ids, self.test_targets, self.test_probs = [], [], []

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """End of a training epoch: log and checkpoint. End of test: metrics and files."""
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            logger_obj = getattr(self.hparams, "train_logger", None)
            if logger_obj is not None:
                logger_obj.log_stats(stats_meta={"epoch": epoch}, train_stats={"loss": stage_loss})
            if self.checkpointer is not None:
                # The epoch is over: its checkpoint starts the next one (and the test
                # loss average, which evaluate() starts from the recovered count) at 0.
                self.step = 0
                self.checkpointer.save_and_keep_only(
                    meta={"epoch": epoch, "train_loss": stage_loss}, num_to_keep=1
                )
        elif stage == sb.Stage.TEST:
            predictions = [max(range(len(p)), key=p.__getitem__) for p in self.test_probs]
            self.test_metrics = classification_metrics(
                self.test_targets, predictions, len(self.hparams.classes)
            )
            self.test_metrics["loss"] = float(stage_loss)
            if if_main_process():
                self._write_test_outputs(predictions)
            # The logger writes on the main process and broadcasts: every process calls it.
            logger_obj = getattr(self.hparams, "train_logger", None)
            if logger_obj is not None:
                logger_obj.log_stats(
                    stats_meta={"test": "last model"},
                    test_stats={k: self.test_metrics[k] for k in ("loss", "ua", "wa", "macro_f1")},
                )

    def _write_test_outputs(self, predictions: list[int]) -> None:
        """Writes ``predictions.csv`` and ``metrics.json`` (each atomically: a file of
        that name is always complete)."""
        classes = list(self.hparams.classes)
        folder = Path(self.hparams.run_folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "predictions.csv.tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "target", "prediction"] + [f"p_{c}" for c in classes])
            for utt, target, pred, probs in zip(
                self.test_ids, self.test_targets, predictions, self.test_probs
            ):
                writer.writerow([utt, classes[target], classes[pred]] + [f"{p:.8f}" for p in probs])
        os.replace(tmp, folder / "predictions.csv")
        write_json(folder / "metrics.json", {"classes": classes, **self.test_metrics})


def train_loader_options(hparams: dict, train_set) -> dict:
    """The training loader's options for ``Brain.fit`` (``train_loader_kwargs``).

    ``train_dataloader_opts``, its ``shuffle`` as a ``ReproducibleRandomSampler``
    seeded by ``run_seed`` (a new permutation every epoch, the same on every process;
    SpeechBrain's own ``shuffle`` seeds from ``SB_GLOBAL_SEED``, and under DDP from 0)
    and no shuffle as a ``SequentialSampler`` (SpeechBrain's DDP sampler would shuffle).
    With ``dynamic_batching``: batches of at least ``dynamic_batch_seconds`` seconds of
    (cropped) audio from ``dynamic_batch_buckets`` length buckets
    (:class:`~speechbrain_ptapt.data.dataio.DurationBatchSampler`) instead of ``batch_size``
    random utterances. Under DDP SpeechBrain gives each process its share of every
    epoch. The loader gets a private generator: starting an epoch draws nothing from
    the global random state, so a run resumed in the middle of an epoch draws the crops
    and masks an uninterrupted one would.
    """
    options = dict(hparams["train_dataloader_opts"])
    if hparams.get("dynamic_batching", False):
        sampler = duration_batch_sampler(
            train_set,
            hparams["dynamic_batch_seconds"],
            hparams["max_train_seconds"],
            hparams["dynamic_batch_buckets"],
            seed=int(hparams["run_seed"]),
        )
        options = {"batch_sampler": sampler, "num_workers": options.get("num_workers", 0)}
    elif options.pop("shuffle", False):
        options["sampler"] = ReproducibleRandomSampler(train_set, seed=int(hparams["run_seed"]))
    else:
        options["sampler"] = torch.utils.data.SequentialSampler(train_set)
    return {**options, "generator": torch.Generator()}


def fine_tune(
    hparams: dict, run_opts, train_manifest: str | Path, test_manifest: str | Path
) -> dict:
    """One V-FT run: train on ``train_manifest`` for ``number_of_epochs``, evaluate the
    last model on ``test_manifest`` (whole utterances) and write ``result.json``.

    A run whose ``result.json`` exists is returned as is; an interrupted run resumes
    from its last checkpoint (epochs, optimizer and random state included).

    Arguments
    ---------
    hparams : dict
        One run's hyperparameters (see ``recipes/IEMOCAP/hparams/vft.yaml``).
    run_opts : RunOptions or dict
        SpeechBrain's run options (device, precision ...).
    train_manifest, test_manifest : str or Path
        SpeechBrain JSON manifests of the fold.

    Returns
    -------
    dict
        ``fold``, ``seed``, ``ua``, ``wa``, ``macro_f1``, ``confusion``, ``classes``.
    """
    folder = Path(hparams["run_folder"])
    result_file = folder / "result.json"
    if result_file.is_file():
        logger.info("Run %s is finished, skipping it.", folder)
        return read_json(result_file)
    classes = list(hparams["classes"])
    train_counts = check_labels(train_manifest, classes)
    check_labels(test_manifest, classes)
    hparams["class_weights"] = inverse_prior_weights(train_counts, classes)
    encoder = make_label_encoder(classes)
    sample_rate = hparams["sample_rate"]
    train_set = emotion_dataset(
        train_manifest,
        encoder,
        sample_rate,
        hparams["max_train_seconds"],
        crop=hparams["train_crop"],
    )
    test_set = emotion_dataset(test_manifest, encoder, sample_rate, None, sort=True)
    if if_main_process():
        folder.mkdir(parents=True, exist_ok=True)
        encoder.save(str(folder / "label_encoder.txt"))
    logger.info(
        "Fine-tuning fold %s seed %s from %s: %d training utterances %s, %d test.",
        hparams["fold"],
        hparams["run_seed"],
        hparams["wav2vec2_hub"],
        sum(train_counts.values()),
        dict(train_counts),
        len(test_set),
    )
    brain = VFTBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=with_default_precision(run_opts),
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        hparams["epoch_counter"],
        train_set,
        train_loader_kwargs=train_loader_options(hparams, train_set),
    )
    brain.evaluate(test_set, test_loader_kwargs=hparams["test_dataloader_opts"])
    result = {
        "fold": str(hparams["fold"]),
        "seed": int(hparams["run_seed"]),
        "backbone": str(hparams["wav2vec2_hub"]),
        "classes": classes,
        "train_counts": dict(train_counts),
        **brain.test_metrics,
    }
    if if_main_process():
        write_json(result_file, result)
    return result
