"""P-TAPT phase 2: continue training wav2vec2 to predict the pseudo-labels of masked
frames; and the fold's pseudo-label and phase-2 stages the P-TAPT recipe calls after
phase 1 (:func:`run_pseudo_label_stage`, :func:`run_ptapt_stage`).

Phase 2 (paper Fig. 1b and the authors' code): time masks on the projected CNN
features (p 0.06, span 15 frames, at least 2); the transformer; for every K a
head Linear(768, 256)-Tanh-Linear(256, K) on ReLU(transformer output) predicts
the k-means cluster of each *masked* frame; the loss is the sum over K of the
cross-entropies on masked frames. The CNN encoder and feature projection stay
frozen; Adam 1e-4 with warm-up, flat and linear decay, counted in optimizer
steps; batches of at least 250 s of audio filled greedily from length buckets
(:class:`~speechbrain_ptapt.data.dataio.DurationBatchSampler`, the authors' sampler) with
random crops of at most 10 s, the labels cropped to match.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.distributed import ddp_barrier, if_main_process, run_on_main
from speechbrain.utils.seed import seed_everything
from transformers import Wav2Vec2Config

from speechbrain_ptapt.data.dataio import duration_batch_sampler
from speechbrain_ptapt.models.backbone import load_pretrained
from speechbrain_ptapt.models.pseudo_label_heads import PseudoLabelPretraining
from speechbrain_ptapt.protocol.distributed import unwrap
from speechbrain_ptapt.protocol.stage_cache import StageCache, StageKeys, stage_fingerprint
from speechbrain_ptapt.pseudo_labels.kmeans import KMeansSettings
from speechbrain_ptapt.pseudo_labels.labels import (
    PseudoLabelStore,
    cropped_audio_with_labels,
    prepare_pseudo_labels,
    pseudo_labels_fingerprint,
)
from speechbrain_ptapt.stages.tapt import adapted_cache, manifest_digest
from speechbrain_ptapt.stages.training import StepStageBrain, with_default_precision

logger = logging.getLogger(__name__)


#: The hparams that define a fold's phase 2 (with its training data and pseudo-labels):
#: every ``ptapt_`` key but the result-neutral ones, and the shared keys it reads.
PTAPT_KEYS = StageKeys(
    prefixes=("ptapt_",),
    shared=(
        "wav2vec2_hub",
        "wav2vec2_revision",
        "normalize_waveform",
        "sample_rate",
        "warmup_steps",
        "n_clusters",
    ),
)

#: The hparams that define a fold's pseudo-labels (with the phase-1 model, the training
#: manifest and the backbone's frame geometry): the ``kmeans_`` keys but the device, the
#: K list and the sampling rate the audio is read at.
PSEUDO_LABEL_KEYS = StageKeys(prefixes=("kmeans_",), shared=("n_clusters", "sample_rate"))

#: The yaml key behind each argument of
#: :func:`~speechbrain_ptapt.pseudo_labels.labels.prepare_pseudo_labels` and each field of its
#: :class:`~speechbrain_ptapt.pseudo_labels.kmeans.KMeansSettings`; a key of
#: :data:`PSEUDO_LABEL_KEYS` that is none of these stops the stage (it would be ignored).
PSEUDO_LABEL_ARGUMENT_KEYS = {"n_clusters": "n_clusters", "sample_rate": "sample_rate"}
KMEANS_SETTING_KEYS = {
    "seed": "kmeans_seed",
    "iterations": "kmeans_iterations",
    "points_per_cluster": "kmeans_points_per_cluster",
    "init": "kmeans_init",
    "fit_set": "kmeans_fit_set",
}


class PTAPTBrain(StepStageBrain):
    """Trains a :class:`~speechbrain_ptapt.models.pseudo_label_heads.PseudoLabelPretraining`
    (``modules.wav2vec2``) for a fixed number of optimizer steps (the stage's settings:
    :class:`~speechbrain_ptapt.stages.training.StepStageBrain`). Each train log line holds the
    means over its window's batches of ``loss`` (the sum over K) and of the
    cross-entropy of each K (``ce_k<K>``), and the learning rate."""

    def compute_forward(self, batch, stage):
        """The P-TAPT loss terms of a batch."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        labels, _ = batch.cluster_labels
        return self.modules.wav2vec2(wavs, wav_lens, labels)

    def compute_objectives(self, predictions, batch, stage) -> torch.Tensor:
        """The sum over K of the masked-frame cross-entropies."""
        loss = predictions["loss"]
        n_clusters = unwrap(self.modules.wav2vec2).heads.n_clusters
        per_k = {f"ce_k{k}": value.detach() for k, value in zip(n_clusters, predictions["per_k"])}
        self.add_to_log(loss=loss.detach(), **per_k)
        return loss


def ptapt_dataset(
    manifest: str | Path, store: PseudoLabelStore, sample_rate: int, max_seconds: float | None
) -> DynamicItemDataset:
    """The audio of a manifest with its pseudo-labels, cropped together: provides
    ``id``, ``sig`` and ``cluster_labels`` ((frames, n_K) aligned to wav2vec2's frames)."""
    dataset = DynamicItemDataset.from_json(str(manifest))
    dataset.add_dynamic_item(cropped_audio_with_labels(store, sample_rate, max_seconds))
    dataset.set_output_keys(["id", "sig", "cluster_labels"])
    return dataset


def train_ptapt(
    model: PseudoLabelPretraining,
    hparams: dict[str, Any],
    run_opts: Any,
    train_manifest: str | Path,
    store: PseudoLabelStore,
    checkpointer: sb.utils.checkpoints.Checkpointer | None = None,
) -> PTAPTBrain:
    """Trains (or resumes) phase 2 on the fold's training utterances.

    Arguments
    ---------
    model : PseudoLabelPretraining
        The wav2vec2 and heads.
    hparams : dict
        ``ptapt_brain_hparams`` (the Brain's settings: steps, schedule, epoch counter,
        checkpoint and log intervals, logger), ``ptapt_opt_class``,
        ``ptapt_batch_seconds``, ``ptapt_num_buckets``, ``ptapt_max_seconds``,
        ``ptapt_seed`` and ``ptapt_num_workers``.
    run_opts : RunOptions or dict
        SpeechBrain's run options.
    train_manifest : str or Path
        The fold's training manifest (the utterances that were pseudo-labelled).
    store : PseudoLabelStore
        The pseudo-labels; refused (:class:`PseudoLabelMismatchError`) when they lack
        utterances of ``train_manifest`` or were made for another frame geometry or K.
    checkpointer : Checkpointer, optional
        Receives the stage's state; an existing checkpoint is resumed.
    """
    store.check_compatible(train_manifest, model.backbone.config, model.heads.n_clusters)
    brain = PTAPTBrain(
        modules={"wav2vec2": model},
        opt_class=hparams["ptapt_opt_class"],
        hparams=hparams["ptapt_brain_hparams"],
        run_opts=with_default_precision(run_opts),
        checkpointer=checkpointer,
    )
    max_seconds = hparams["ptapt_max_seconds"]
    dataset = ptapt_dataset(train_manifest, store, model.sample_rate, max_seconds)
    sampler = duration_batch_sampler(
        dataset,
        float(hparams["ptapt_batch_seconds"]),
        max_seconds,
        int(hparams["ptapt_num_buckets"]),
        seed=int(hparams["ptapt_seed"]),
    )
    logger.info(
        "P-TAPT phase 2 on %d utterances of %s: %d steps of at least %s s of audio, K = %s.",
        len(dataset),
        train_manifest,
        brain.optimizer_step_limit,
        hparams["ptapt_batch_seconds"],
        model.heads.n_clusters,
    )
    workers = int(hparams.get("ptapt_num_workers", 0))
    brain.fit_steps(dataset, {"batch_sampler": sampler, "num_workers": workers})
    return brain


def ptapt_fingerprint(
    hparams: dict[str, Any], train_manifest: str | Path, pseudo_labels: dict[str, Any]
) -> dict[str, Any]:
    """The settings (:data:`PTAPT_KEYS`), training data and pseudo-labels (their
    fingerprint, :func:`~speechbrain_ptapt.pseudo_labels.labels.pseudo_labels_fingerprint`)
    that define a fold's phase 2."""
    return stage_fingerprint(
        PTAPT_KEYS,
        hparams,
        train_manifest=manifest_digest(train_manifest),
        pseudo_labels=pseudo_labels,
    )


def pseudo_label_options(
    hparams: dict[str, Any],
    run_opts: Any,
    frame_model: str | Path,
    train_manifest: str | Path,
    wav2vec2_config: Any,
) -> dict[str, Any]:
    """The arguments of :func:`~speechbrain_ptapt.pseudo_labels.labels.prepare_pseudo_labels`
    for a fold: every setting of :data:`PSEUDO_LABEL_KEYS` under its argument name
    (:data:`PSEUDO_LABEL_ARGUMENT_KEYS`), the inputs and the device.

    Raises
    ------
    KeyError
        A pseudo-label setting of the yaml has no argument (it would be ignored).
    """
    settings = PSEUDO_LABEL_KEYS.settings(hparams)
    unmapped = sorted(
        set(settings) - {*PSEUDO_LABEL_ARGUMENT_KEYS.values(), *KMEANS_SETTING_KEYS.values()}
    )
    if unmapped:
        raise KeyError(
            f"The pseudo-label settings {unmapped} are passed to no argument of "
            "prepare_pseudo_labels: add them to ptapt.PSEUDO_LABEL_ARGUMENT_KEYS or "
            "ptapt.KMEANS_SETTING_KEYS."
        )
    return {
        "frame_model": frame_model,
        "manifest": train_manifest,
        "out_folder": hparams["pseudo_label_folder"],
        "wav2vec2_config": wav2vec2_config,
        "device": pseudo_label_device(hparams, run_opts),
        "kmeans": kmeans_settings(hparams),
        **{argument: hparams[key] for argument, key in PSEUDO_LABEL_ARGUMENT_KEYS.items()},
    }


def kmeans_settings(hparams: dict[str, Any]) -> KMeansSettings:
    """The pseudo-labels' k-means settings from the yaml's ``kmeans_*`` keys
    (:data:`KMEANS_SETTING_KEYS`)."""
    return KMeansSettings(**{field: hparams[key] for field, key in KMEANS_SETTING_KEYS.items()})


def pseudo_label_device(hparams: dict[str, Any], run_opts: Any) -> str:
    """Where the phase-1 features are computed and k-means runs: ``kmeans_device``
    when set, else the run's ``--device``, else the GPU when one is present, else
    the CPU."""
    device = hparams.get("kmeans_device") or (run_opts or {}).get("device")
    if device:
        return str(device)
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def phase_2_cache(
    hparams: dict[str, Any], run_opts: Any, frame_folder: str | Path, train_manifest: str | Path
) -> tuple[dict[str, Any], StageCache]:
    """The arguments of the fold's pseudo-labels (:func:`pseudo_label_options`) and
    the cache of its phase 2, whose fingerprint holds the labels' fingerprint computed
    from those arguments, without the labels."""
    backbone_config = load_pretrained(
        Wav2Vec2Config,
        str(hparams["wav2vec2_hub"]),
        hparams["wav2vec2_folder"],
        hparams.get("wav2vec2_revision"),
    )
    labels_options = pseudo_label_options(
        hparams, run_opts, frame_folder, train_manifest, backbone_config
    )
    fingerprint = ptapt_fingerprint(
        hparams, train_manifest, pseudo_labels_fingerprint(**labels_options)
    )
    return labels_options, adapted_cache("P-TAPT phase 2", hparams, "ptapt", fingerprint)


def run_pseudo_label_stage(
    hparams: dict[str, Any], run_opts: Any, frame_folder: str | Path, train_manifest: str | Path
) -> Path:
    """The pseudo-labels of one fold (paper Sec. 2.3): the phase-1 model's frame
    features of the fold's training utterances, clustered by k-means for every K of
    ``n_clusters`` and aligned to wav2vec2's frames, in ``pseudo_label_folder``.

    Computed on the main process (the others wait and read the result); reused when
    their inputs are unchanged, computed again when stale, resumed when interrupted
    (:func:`~speechbrain_ptapt.pseudo_labels.labels.prepare_pseudo_labels`). Nothing is
    computed when the fold's phase 2 is finished with labels of these inputs: labels
    deleted to save space are not made again for it.

    Arguments
    ---------
    hparams : dict
        The fold's hparams (``kmeans_`` settings, ``n_clusters``, ``wav2vec2_hub``).
    run_opts : RunOptions or dict
        SpeechBrain's run options (``--device`` unless ``kmeans_device`` is set).
    frame_folder : str or Path
        The phase-1 model (:func:`~speechbrain_ptapt.stages.frame_emotion.run_frame_stage`).
    train_manifest : str or Path
        The fold's training manifest (the utterances phase 1 was trained on).

    Returns
    -------
    Path
        The pseudo-label folder, for :func:`run_ptapt_stage`.
    """
    labels_options, phase_2 = phase_2_cache(hparams, run_opts, frame_folder, train_manifest)
    if phase_2.is_done():
        logger.info(
            "P-TAPT phase 2 of fold %s is finished: no pseudo-labels needed.", hparams["fold"]
        )
        return Path(labels_options["out_folder"])
    run_on_main(prepare_pseudo_labels, kwargs=labels_options)
    return Path(prepare_pseudo_labels(**labels_options))


def run_ptapt_stage(
    hparams: dict[str, Any],
    run_opts: Any,
    train_manifest: str | Path,
    frame_folder: str | Path,
    labels_folder: str | Path,
) -> str:
    """P-TAPT phase 2 of one fold (paper Fig. 1b): wav2vec2 trained to predict the
    pseudo-labels of masked frames, then saved in transformers format to
    ``ptapt_adapted_folder``.

    Skipped when finished with the same settings, training data and pseudo-labels
    (then the labels are not read), resumed from its checkpoints when interrupted;
    stale results are refused (:mod:`speechbrain_ptapt.protocol.stage_cache`). The test
    manifest is never read.

    Arguments
    ---------
    hparams : dict
        The fold's hparams (``ptapt_`` settings, ``fold`` set).
    run_opts : RunOptions or dict
        SpeechBrain's run options.
    train_manifest : str or Path
        The fold's training manifest (the utterances that were pseudo-labelled).
    frame_folder : str or Path
        The phase-1 model (recorded with the adapted backbone).
    labels_folder : str or Path
        The pseudo-labels (:func:`run_pseudo_label_stage`).

    Returns
    -------
    str
        The adapted backbone folder, for ``wav2vec2_hub``.
    """
    fold = str(hparams["fold"])
    adapted = Path(hparams["ptapt_adapted_folder"])
    _, cache = phase_2_cache(hparams, run_opts, frame_folder, train_manifest)
    if cache.is_done():
        logger.info("P-TAPT of fold %s is finished (%s), skipping it.", fold, adapted)
        return str(adapted)

    cache.guard_checkpoints()

    store = PseudoLabelStore(labels_folder)
    seed_everything(int(hparams["ptapt_seed"]))
    model = hparams["ptapt_model"]()
    brain = train_ptapt(
        model, hparams, run_opts, train_manifest, store, hparams["ptapt_checkpointer"]()
    )
    if if_main_process():
        cache.publish_folder(
            model.save_pretrained,
            fold=str(fold),
            optimizer_steps=int(brain.optimizer_step),
            train_manifest=str(train_manifest),
            frame_model=str(frame_folder),
            pseudo_labels=str(labels_folder),
        )
        logger.info("P-TAPT of fold %s done: adapted backbone in %s.", fold, adapted)
    ddp_barrier()
    return str(adapted)


