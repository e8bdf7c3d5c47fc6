"""P-TAPT pseudo-labels: k-means cluster ids of the phase-1 frame-level emotion
model's features, one sequence per K per utterance, aligned to wav2vec2's frames.

Three steps (fairseq's ``simple_kmeans``), each writing files the next one reads,
each rerunnable alone:

1. :func:`~speechbrain_ptapt.pseudo_labels.features.dump_features` runs the
   phase-1 model over every utterance of a manifest and appends its frames to
   ``features/features.npy`` (read back memory-mapped), with
   ``features/index.json`` (ids, frames and samples per utterance).
2. :func:`~speechbrain_ptapt.pseudo_labels.codebooks.fit_codebooks` learns one
   k-means codebook per K (``kmeans_<K>.npy``), every K on the same fitting set
   of up to ``1000 * max(K)`` frames (whole utterances, as the authors' code;
   :func:`~speechbrain_ptapt.pseudo_labels.codebooks.shared_fitting_rows`), or
   optionally each K on its own ``1000 * K`` randomly sampled frames.
3. :func:`write_labels` (this module) assigns every frame to its nearest centroid
   and writes ``labels.npy`` (total wav2vec2 frames, number of K) with
   ``index.json``, plus ``diagnostics.json`` / ``diagnostics.md`` (cluster usage,
   purity and NMI against the utterance emotion).

:func:`prepare_pseudo_labels` chains them behind ``fingerprint.json`` (what the
labels were computed from), reusing fresh results and recomputing stale ones.
:class:`PseudoLabelStore` and :func:`cropped_audio_with_labels` bring the labels
into a SpeechBrain data pipeline, cropped consistently with the audio.

Frame alignment: utterance ``u`` of ``num_samples`` samples (as
:func:`~speechbrain_ptapt.deploy.inference.load_audio` reads it, i.e. what the data
pipeline feeds the backbone) gets exactly :func:`backbone_frame_counts` label
frames, the number of frames the wav2vec2 backbone outputs for it. Frame ``f``
of the phase-1 model is frame ``f`` of wav2vec2 (both 20 ms, starting at sample
0); where the phase-1 model gives fewer frames the labels are padded with
:data:`IGNORE_INDEX`, where it gives more they are trimmed.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import speechbrain as sb
import torch
from sklearn.metrics import normalized_mutual_info_score
from torch import nn
from transformers import Wav2Vec2Config

from speechbrain_ptapt.deploy.inference import load_audio
from speechbrain_ptapt.models.backbone import wav2vec2_frame_lengths, wav2vec2_hop_samples
from speechbrain_ptapt.protocol.errors import MissingFileError, PtaptError
from speechbrain_ptapt.protocol.experiment import read_json, write_json
from speechbrain_ptapt.protocol.stage_cache import StageCache, canonical
from speechbrain_ptapt.pseudo_labels.codebooks import (
    DEFAULT_KMEANS,
    KMEANS_RECORD_FILE,
    fit_codebooks,
)
from speechbrain_ptapt.pseudo_labels.features import (
    FEATURES_FILE,
    FEATURES_SUBFOLDER,
    FORMAT_VERSION,
    INDEX_FILE,
    FeatureDump,
    dump_features,
    features_cache,
    features_fingerprint,
    read_manifest,
)
from speechbrain_ptapt.pseudo_labels.kmeans import KMeansSettings, assign_clusters
from speechbrain_ptapt.stages.frame_emotion import load_frame_model

logger = logging.getLogger(__name__)


#: Label of frames without a pseudo-label (cross-entropy's ``ignore_index``).
IGNORE_INDEX = -100
LABELS_FILE = "labels.npy"
FINGERPRINT_FILE = "fingerprint.json"
DIAGNOSTICS_JSON = "diagnostics.json"
DIAGNOSTICS_MD = "diagnostics.md"


class PseudoLabelMismatchError(PtaptError, RuntimeError):
    """Pseudo-labels that do not belong to the audio the pipeline reads."""


# ----------------------------------------------------------------------------
# wav2vec2 frame geometry
# ----------------------------------------------------------------------------


def frame_geometry(config: Wav2Vec2Config) -> dict[str, Any]:
    """The part of a wav2vec2 config that decides its frame count: conv kernels
    and strides, plus the derived hop and receptive field in samples."""
    geometry = {
        "conv_kernel": [int(k) for k in config.conv_kernel],
        "conv_stride": [int(s) for s in config.conv_stride],
    }
    geometry["hop_samples"] = wav2vec2_hop_samples(config)
    geometry["receptive_field_samples"] = receptive_field_of_config(config)
    return geometry


def config_from_geometry(geometry: dict[str, Any]) -> Wav2Vec2Config:
    """A wav2vec2 config with the conv kernels and strides of ``geometry`` (enough
    for transformers' frame-length formula, not for building a model)."""
    kernel, stride = list(geometry["conv_kernel"]), list(geometry["conv_stride"])
    return Wav2Vec2Config(conv_dim=[1] * len(kernel), conv_kernel=kernel, conv_stride=stride)


def receptive_field_of_config(config: Wav2Vec2Config) -> int:
    """Smallest input in samples that yields one wav2vec2 frame (400 for base),
    found with transformers' length formula."""
    kernel, stride = list(config.conv_kernel), list(config.conv_stride)
    span, jump = 1, 1
    for k, s in zip(kernel, stride):
        span += (int(k) - 1) * jump
        jump *= int(s)
    candidates = torch.arange(1, span + 2)
    frames = wav2vec2_frame_lengths(config, candidates)
    return int(candidates[frames >= 1][0])


def backbone_frame_counts(config: Wav2Vec2Config, num_samples: Any) -> np.ndarray:
    """Frames the wav2vec2 backbone outputs for inputs of ``num_samples`` samples.

    transformers' length formula (``(samples - 400) // 320 + 1`` for base) after
    inputs shorter than the receptive field are padded to it, as
    :meth:`~speechbrain_ptapt.models.backbone.Wav2Vec2Backbone.frame_lengths` does: every
    input yields at least one frame.

    Arguments
    ---------
    config : Wav2Vec2Config
        The backbone's config.
    num_samples : int or array-like
        Input lengths in samples.

    Returns
    -------
    np.ndarray
        int64 frame counts, shaped as ``num_samples``.
    """
    samples = torch.as_tensor(np.asarray(num_samples, dtype=np.int64))
    samples = samples.clamp(min=receptive_field_of_config(config))
    return wav2vec2_frame_lengths(config, samples).numpy().astype(np.int64)


# ----------------------------------------------------------------------------
# Stage 3: labels and diagnostics
# ----------------------------------------------------------------------------


def cluster_diagnostics(
    clusters: np.ndarray, n_clusters: int, emotions: np.ndarray | None
) -> dict[str, Any]:
    """How a K-cluster labelling uses its clusters and how it relates to emotion.

    Arguments
    ---------
    clusters : np.ndarray
        (frames,) cluster id of each labelled frame.
    n_clusters : int
        K.
    emotions : np.ndarray, optional
        (frames,) emotion label of the utterance each frame belongs to.

    Returns
    -------
    dict
        ``used_clusters``, ``entropy_bits`` and ``perplexity`` of the cluster
        distribution, ``largest_cluster_share`` (fractions in [0, 1]), and when
        emotions are given ``purity`` (share of frames in their cluster's
        majority emotion), ``nmi`` (sklearn's normalized mutual information)
        and ``majority_emotion_share`` (the purity of a single cluster).
    """
    counts = np.bincount(clusters, minlength=n_clusters).astype(np.float64)
    total = counts.sum()
    share = counts[counts > 0] / total
    entropy = float(-(share * np.log2(share)).sum())
    out: dict[str, Any] = {
        "n_clusters": int(n_clusters),
        "frames": int(total),
        "used_clusters": int((counts > 0).sum()),
        "entropy_bits": entropy,
        "perplexity": float(2.0**entropy),
        "largest_cluster_share": float(share.max()),
    }
    if emotions is not None:
        classes, emotion_ids = np.unique(emotions, return_inverse=True)
        table = np.zeros((n_clusters, len(classes)), dtype=np.int64)
        np.add.at(table, (clusters, emotion_ids), 1)
        out["purity"] = float(table.max(axis=1).sum() / total)
        out["nmi"] = float(normalized_mutual_info_score(emotion_ids, clusters))
        out["majority_emotion_share"] = float(np.bincount(emotion_ids).max() / total)
    return out


def diagnostics_markdown(diagnostics: dict[str, Any]) -> str:
    """A readable summary of ``diagnostics.json``."""
    alignment = diagnostics["alignment"]
    lines = [
        "# P-TAPT pseudo-labels",
        "",
        f"{diagnostics['utterances']} utterances, {diagnostics['label_frames']} wav2vec2 "
        f"frames ({diagnostics['feature_frames']} phase-1 frames).",
        "",
        "| K | used clusters | perplexity | largest cluster | purity | NMI |",
        "|---|---|---|---|---|---|",
    ]
    for k, entry in diagnostics["clusters"].items():
        purity = f"{100 * entry['purity']:.1f} %" if "purity" in entry else "-"
        nmi = f"{entry['nmi']:.3f}" if "nmi" in entry else "-"
        lines.append(
            f"| {k} | {entry['used_clusters']} | {entry['perplexity']:.1f} | "
            f"{100 * entry['largest_cluster_share']:.1f} % | {purity} | {nmi} |"
        )
    first = next(iter(diagnostics["clusters"].values()))
    lines += [
        "",
        "Perplexity = 2^entropy of the cluster distribution (K when every cluster is "
        "used equally). Purity = share of frames whose cluster's majority emotion is "
        "their utterance's emotion"
        + (
            f" (a single cluster would score {100 * first['majority_emotion_share']:.1f} %)"
            if "majority_emotion_share" in first
            else ""
        )
        + "; NMI = normalized mutual information between cluster ids and emotions.",
        "",
        "Alignment to wav2vec2 frames: "
        f"{alignment['padded_utterances']} utterances padded with {IGNORE_INDEX}, "
        f"{alignment['trimmed_utterances']} trimmed, "
        f"{alignment['differ_by_more_than_2']} differ by more than 2 frames "
        f"(largest difference {alignment['max_difference']} frames).",
    ]
    return "\n".join(lines) + "\n"


def write_labels(
    dump: FeatureDump,
    centroids: dict[int, np.ndarray],
    out_folder: str | Path,
    wav2vec2_config: Wav2Vec2Config,
    device: str | torch.device | None = None,
    fingerprint: dict[str, Any] | None = None,
) -> Path:
    """Writes the cluster id of every wav2vec2 frame of every utterance, per K.

    Files in ``out_folder``:

    - ``labels.npy``: (total wav2vec2 frames, number of K) int16 (int32 when
      some K exceeds 32767), column j for the j-th K of ``centroids``;
      :data:`IGNORE_INDEX` where the phase-1 model gave no frame.
    - ``index.json``: ``n_clusters``, ``frame_geometry`` and ``utterances``:
      ``{utt_id: [first row, frames, samples]}``, frames being
      :func:`backbone_frame_counts` of the utterance's samples.
    - ``diagnostics.json`` and ``diagnostics.md`` (see :func:`cluster_diagnostics`).
    - ``fingerprint.json`` when ``fingerprint`` is given, written last.

    Arguments
    ---------
    dump : FeatureDump
        The phase-1 features.
    centroids : dict
        K -> (K, dim) centroids.
    out_folder : str or Path
        The labels folder.
    wav2vec2_config : Wav2Vec2Config
        Config of the backbone the labels are for (its frame geometry).
    device : str or torch.device, optional
        Where cluster assignment runs.
    fingerprint : dict, optional
        What the labels were computed from.

    Returns
    -------
    Path
        ``out_folder``.
    """
    out_folder = Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    ks = [int(k) for k in centroids]
    targets = backbone_frame_counts(wav2vec2_config, dump.num_samples)
    label_offsets = np.concatenate([[0], np.cumsum(targets)[:-1]]).astype(np.int64)
    feature_offsets = dump.offsets
    kept = np.minimum(dump.lengths, targets)
    dtype = np.int16 if max(ks) <= np.iinfo(np.int16).max else np.int32

    differences = dump.lengths - targets
    far = int((np.abs(differences) > 2).sum())
    if far:
        logger.warning(
            "%d of %d utterances: the phase-1 model's frame count differs from "
            "wav2vec2's by more than 2 frames (largest difference %d).",
            far,
            len(dump.ids),
            int(np.abs(differences).max()),
        )

    tmp = out_folder / (LABELS_FILE + ".partial.npy")
    labels = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=dtype, shape=(int(targets.sum()), len(ks))
    )
    labels[:] = IGNORE_INDEX
    for j, k in enumerate(ks):
        logger.info("Assigning %d frames to the K=%d codebook.", dump.num_frames, k)
        assigned = assign_clusters(dump.features, centroids[k], device=device)
        for i in range(len(dump.ids)):
            n = int(kept[i])
            src, dst = int(feature_offsets[i]), int(label_offsets[i])
            labels[dst : dst + n, j] = assigned[src : src + n]
    labels.flush()

    emotions = None
    if all(e is not None for e in dump.emotions):
        classes = sorted(set(dump.emotions))
        codes = np.asarray([classes.index(e) for e in dump.emotions], dtype=np.int64)
        emotions = np.repeat(codes, targets)
    diagnostics: dict[str, Any] = {
        "utterances": len(dump.ids),
        "feature_frames": dump.num_frames,
        "label_frames": int(targets.sum()),
        "alignment": {
            "padded_utterances": int((differences < 0).sum()),
            "trimmed_utterances": int((differences > 0).sum()),
            "differ_by_more_than_2": far,
            "max_difference": int(np.abs(differences).max()),
        },
        "clusters": {},
    }
    for j, k in enumerate(ks):
        column = np.asarray(labels[:, j], dtype=np.int64)
        valid = column != IGNORE_INDEX
        diagnostics["clusters"][str(k)] = cluster_diagnostics(
            column[valid], k, None if emotions is None else emotions[valid]
        )
    del labels
    os.replace(tmp, out_folder / LABELS_FILE)

    write_json(
        out_folder / INDEX_FILE,
        {
            "format": FORMAT_VERSION,
            "n_clusters": ks,
            "ignore_index": IGNORE_INDEX,
            "frame_geometry": frame_geometry(wav2vec2_config),
            "sample_rate": int(dump.fingerprint.get("sample_rate", 16000)),
            "utterances": {
                utt: [int(label_offsets[i]), int(targets[i]), int(dump.num_samples[i])]
                for i, utt in enumerate(dump.ids)
            },
        },
    )
    write_json(out_folder / DIAGNOSTICS_JSON, diagnostics)
    (out_folder / DIAGNOSTICS_MD).write_text(diagnostics_markdown(diagnostics), encoding="utf-8")
    if fingerprint is not None:
        write_json(out_folder / FINGERPRINT_FILE, fingerprint)
    for k, entry in diagnostics["clusters"].items():
        logger.info(
            "K=%s: %d/%s clusters used, perplexity %.1f, purity %s, NMI %s.",
            k,
            entry["used_clusters"],
            k,
            entry["perplexity"],
            f"{entry['purity']:.3f}" if "purity" in entry else "-",
            f"{entry['nmi']:.3f}" if "nmi" in entry else "-",
        )
    return out_folder


# ----------------------------------------------------------------------------
# The whole preparation
# ----------------------------------------------------------------------------


#: Arguments of :func:`prepare_pseudo_labels` that are inputs, fingerprinted by content
#: (the features' fingerprint, the frame geometry), or that never change the labels.
#: Every other argument is a k-means setting and enters :func:`labels_fingerprint`.
_NOT_KMEANS_ARGUMENTS = (
    "frame_model",
    "manifest",
    "batch_size",
    "sample_rate",
    "wav2vec2_config",
    "out_folder",
    "device",
    "keep_features",
)


def labels_fingerprint(
    features: dict[str, Any], wav2vec2_config: Wav2Vec2Config, kmeans: dict[str, Any]
) -> dict[str, Any]:
    """What a labels folder depends on: the feature dump's fingerprint (manifest,
    phase-1 model, sampling rate, batch size), the k-means settings and wav2vec2's
    frame geometry."""
    kmeans = {**kmeans, "n_clusters": [int(k) for k in kmeans["n_clusters"]]}
    return canonical(
        {
            **kmeans,
            "format": FORMAT_VERSION,
            "features": features,
            "frame_geometry": frame_geometry(wav2vec2_config),
        }
    )


def pseudo_labels_fingerprint(**arguments: Any) -> dict[str, Any]:
    """The fingerprint :func:`prepare_pseudo_labels` gives the labels it makes from
    ``arguments`` (its own, defaults applied), computed without them: hashes of the
    manifest and of the phase-1 model, every k-means argument, the frame geometry."""
    bound = inspect.signature(prepare_pseudo_labels).bind(**arguments)
    bound.apply_defaults()
    args = bound.arguments
    if args["wav2vec2_config"] is None:
        raise ValueError("wav2vec2_config is needed to align the labels to wav2vec2's frames.")
    features = features_fingerprint(
        args["manifest"], args["frame_model"], args["sample_rate"], args["batch_size"]
    )
    kmeans = {key: value for key, value in args.items() if key not in _NOT_KMEANS_ARGUMENTS}
    kmeans.update(dataclasses.asdict(kmeans.pop("kmeans")))  # every KMeansSettings field
    return labels_fingerprint(features, args["wav2vec2_config"], kmeans)


def labels_cache(out_folder: str | Path, fingerprint: dict[str, Any]) -> StageCache:
    """A labels folder as a cached stage (:mod:`~speechbrain_ptapt.protocol.stage_cache`): derived
    data, recorded in ``fingerprint.json``, computed again when stale."""
    return StageCache(
        "pseudo-labels",
        fingerprint,
        Path(out_folder) / FINGERPRINT_FILE,
        expensive=False,
        field=None,
    )


def labels_are_fresh(out_folder: str | Path, fingerprint: dict[str, Any]) -> bool:
    """True when ``out_folder`` holds finished labels computed from ``fingerprint``."""
    out_folder = Path(out_folder)
    return labels_cache(out_folder, fingerprint).is_done(
        [out_folder / LABELS_FILE, out_folder / INDEX_FILE]
    )


def _drop_codebooks_of_other_features(out_folder: Path, features: dict[str, Any]) -> None:
    """Deletes the codebooks in ``out_folder`` fitted on features other than ``features``."""
    record_path = out_folder / KMEANS_RECORD_FILE
    if not record_path.is_file():
        return
    record = read_json(record_path)
    for k, entry in list(record.items()):
        if entry["fingerprint"]["features"] != features:
            (out_folder / f"kmeans_{k}.npy").unlink(missing_ok=True)
            del record[k]
    write_json(record_path, record)


def _load_frame_model(folder: Path, device: str | torch.device) -> nn.Module:
    return load_frame_model(folder, map_location=device)


def prepare_pseudo_labels(
    frame_model: str | Path | nn.Module,
    manifest: str | Path,
    out_folder: str | Path,
    n_clusters: Sequence[int] = (64, 512, 4096),
    wav2vec2_config: Wav2Vec2Config | None = None,
    kmeans: KMeansSettings = DEFAULT_KMEANS,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    sample_rate: int = 16000,
    keep_features: bool = True,
) -> Path:
    """Pseudo-labels of every utterance of a manifest, recomputed only when stale.

    The labels, the feature dump and each codebook are cached stages of derived data
    (:mod:`~speechbrain_ptapt.protocol.stage_cache`): reused when their recorded fingerprint
    matches, computed again otherwise. The labels' fingerprint holds every argument
    but the inputs (hashed instead) and ``out_folder``, ``device``, ``keep_features``
    (:func:`pseudo_labels_fingerprint`).

    ``out_folder`` receives the labels (:func:`write_labels`), the codebooks
    (:func:`~speechbrain_ptapt.pseudo_labels.codebooks.fit_codebooks`) and the
    feature dump in ``out_folder/features``
    (:func:`~speechbrain_ptapt.pseudo_labels.features.dump_features`). Finished
    labels whose ``fingerprint.json`` matches
    (same manifest content, phase-1 weights, K list, k-means settings, sampling
    rate and wav2vec2 frame geometry) are reused without loading the model;
    otherwise the stale labels are deleted and recomputed, the features too when
    the manifest or the model changed, and codebooks are refitted only for the K
    whose inputs changed.

    Arguments
    ---------
    frame_model : str, Path or nn.Module
        The phase-1 model's final folder (``frame_model.ckpt`` +
        ``frame_model.json``, loaded with
        :func:`speechbrain_ptapt.stages.frame_emotion.load_frame_model` only when
        features must be computed) or the model itself.
    manifest : str or Path
        SpeechBrain JSON manifest of the utterances to label (a fold's
        training split).
    out_folder : str or Path
        The pseudo-label folder.
    n_clusters : sequence of int
        The K values (paper: 64, 512, 4096).
    wav2vec2_config : Wav2Vec2Config
        Config of the phase-2 backbone (its frame geometry).
    kmeans : KMeansSettings
        k-means iterations, seeding, fitting set and seed (see
        :func:`~speechbrain_ptapt.pseudo_labels.codebooks.fit_codebooks`).
    batch_size : int
        Utterances per phase-1 forward pass.
    device : str or torch.device
        Where the phase-1 model and k-means run.
    sample_rate : int
        Sampling rate of the audio, in Hz.
    keep_features : bool
        Keep the feature dump once the labels are written (needed to refit
        other K without rerunning the model).

    Returns
    -------
    Path
        ``out_folder``, ready for :class:`PseudoLabelStore`.
    """
    fingerprint = pseudo_labels_fingerprint(**locals())  # the arguments, first thing
    if len(set(int(k) for k in n_clusters)) != len(list(n_clusters)):
        raise ValueError(f"n_clusters has repeated values: {list(n_clusters)}.")
    out_folder = Path(out_folder)
    features_folder = out_folder / FEATURES_SUBFOLDER
    feat_fp = fingerprint["features"]
    labels = labels_cache(out_folder, fingerprint)
    if labels.is_done([out_folder / LABELS_FILE, out_folder / INDEX_FILE]):
        logger.info("Pseudo-labels in %s are up to date, reusing them.", out_folder)
        return out_folder

    logger.info("Pseudo-labels in %s missing or stale: computing them.", out_folder)
    for name in (FINGERPRINT_FILE, LABELS_FILE, INDEX_FILE, DIAGNOSTICS_JSON, DIAGNOSTICS_MD):
        (out_folder / name).unlink(missing_ok=True)
    if features_cache(features_folder, feat_fp).is_done([features_folder / FEATURES_FILE]):
        dump = FeatureDump.load(features_folder)
    else:
        _drop_codebooks_of_other_features(out_folder, feat_fp)
        model = (
            frame_model
            if isinstance(frame_model, nn.Module)
            else _load_frame_model(Path(frame_model), device)
        )
        dump = dump_features(
            model,
            manifest,
            features_folder,
            batch_size=batch_size,
            device=device,
            sample_rate=sample_rate,
            fingerprint=feat_fp,
        )
    codebooks = fit_codebooks(dump, n_clusters, kmeans, device=device, out_folder=out_folder)
    write_labels(dump, codebooks, out_folder, wav2vec2_config, device=device, fingerprint=None)
    labels.publish()
    if not keep_features:
        shutil.rmtree(features_folder)
    return out_folder


# ----------------------------------------------------------------------------
# Data pipeline
# ----------------------------------------------------------------------------


class PseudoLabelStore:
    """The pseudo-labels of a folder written by :func:`write_labels`, memory-mapped.

    Arguments
    ---------
    folder : str or Path
        The labels folder (``labels.npy`` + ``index.json``).

    Example
    -------
    >>> store = PseudoLabelStore("results/pseudo_labels/fold_1")  # doctest: +SKIP
    >>> store["Ses01F_impro01_F000"].shape  # doctest: +SKIP
    torch.Size([61, 3])
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not (self.folder / LABELS_FILE).is_file():
            raise MissingFileError(
                f"No pseudo-labels in {self.folder} ({LABELS_FILE} missing): run "
                "recipes/IEMOCAP/prepare_pseudo_labels.py first."
            )
        index = read_json(self.folder / INDEX_FILE)
        self.n_clusters: list[int] = [int(k) for k in index["n_clusters"]]
        self.frame_geometry: dict[str, Any] = dict(index["frame_geometry"])
        self.sample_rate: int = int(index.get("sample_rate", 16000))
        self._entries: dict[str, tuple[int, int, int]] = {
            utt: (int(v[0]), int(v[1]), int(v[2])) for utt, v in index["utterances"].items()
        }
        self._config = config_from_geometry(self.frame_geometry)
        self._labels: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_labels"] = None  # each process maps the file itself
        return state

    @property
    def labels(self) -> np.ndarray:
        """(total frames, number of K) memory-mapped labels of every utterance."""
        if self._labels is None:
            self._labels = np.load(self.folder / LABELS_FILE, mmap_mode="r")
        return self._labels

    @property
    def ids(self) -> list[str]:
        """The labelled utterance ids."""
        return list(self._entries)

    @property
    def hop_samples(self) -> int:
        """Samples between two wav2vec2 frames (320)."""
        return int(self.frame_geometry["hop_samples"])

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, utt_id: object) -> bool:
        return utt_id in self._entries

    def _entry(self, utt_id: str) -> tuple[int, int, int]:
        try:
            return self._entries[utt_id]
        except KeyError:
            raise KeyError(
                f"Utterance '{utt_id}' has no pseudo-labels in {self.folder}: the labels "
                "were prepared for another manifest."
            ) from None

    def num_samples(self, utt_id: str) -> int:
        """Samples of the utterance's audio the labels were computed for."""
        return self._entry(utt_id)[2]

    def check_compatible(
        self,
        manifest: str | Path,
        wav2vec2_config: Wav2Vec2Config,
        n_clusters: Sequence[int],
    ) -> None:
        """Refuses labels made for other utterances, another wav2vec2 frame geometry
        or other K, before any training step reads them.

        Arguments
        ---------
        manifest : str or Path
            The manifest phase 2 trains on: every utterance needs labels.
        wav2vec2_config : Wav2Vec2Config
            Config of the backbone being adapted: its frames must be the labels' frames.
        n_clusters : sequence of int
            The K of the model's heads, in order.

        Raises
        ------
        PseudoLabelMismatchError
            Naming the folder, what differs and how to get matching labels.
        """
        redo = (
            f"prepare the pseudo-labels again (delete {self.folder} or run "
            "recipes/IEMOCAP/prepare_pseudo_labels.py with this manifest and backbone)."
        )
        ids = list(read_manifest(manifest))
        missing = [utt for utt in ids if utt not in self._entries]
        if missing:
            raise PseudoLabelMismatchError(
                f"The pseudo-labels in {self.folder} have no labels for {len(missing)} of the "
                f"{len(ids)} utterances of {manifest} (e.g. {', '.join(missing[:3])}): they "
                f"were made for another manifest; {redo}"
            )
        geometry = frame_geometry(wav2vec2_config)
        if geometry != self.frame_geometry:
            raise PseudoLabelMismatchError(
                f"The pseudo-labels in {self.folder} are aligned to wav2vec2 frames of "
                f"{self.frame_geometry} but the backbone has {geometry}; {redo}"
            )
        wanted = [int(k) for k in n_clusters]
        if wanted != self.n_clusters:
            raise PseudoLabelMismatchError(
                f"The pseudo-labels in {self.folder} have K = {self.n_clusters}, not the "
                f"n_clusters = {wanted} of the model's heads; {redo}"
            )

    def frame_count(self, num_samples: int) -> int:
        """wav2vec2 frames of an input of ``num_samples`` samples (at least 1)."""
        return int(backbone_frame_counts(self._config, num_samples))

    def __getitem__(self, utt_id: str) -> torch.Tensor:
        """(frames, number of K) LongTensor of the utterance's labels."""
        offset, frames, _ = self._entry(utt_id)
        return torch.from_numpy(np.asarray(self.labels[offset : offset + frames], dtype=np.int64))


def hop_aligned_crop(
    sig: torch.Tensor, max_samples: int | None, hop_samples: int
) -> tuple[torch.Tensor, int]:
    """Crops ``sig`` to at most ``max_samples`` samples at a random start that is
    a multiple of ``hop_samples``, so the crop's frames are frames of the whole.

    Arguments
    ---------
    sig : torch.Tensor
        (samples,) waveform.
    max_samples : int, optional
        Longest crop in samples; None keeps the whole waveform.
    hop_samples : int
        Samples per wav2vec2 frame (320).

    Returns
    -------
    crop : torch.Tensor
        (min(samples, max_samples),) waveform.
    start : int
        Start of the crop in samples (0 when not cropped).
    """
    if max_samples is None or sig.shape[0] <= max_samples:
        return sig, 0
    starts = (sig.shape[0] - max_samples) // hop_samples + 1
    start = int(torch.randint(0, starts, (1,))) * hop_samples
    return sig[start : start + max_samples], start


def crop_labels(labels: torch.Tensor, start_frame: int, num_frames: int) -> torch.Tensor:
    """Frames ``start_frame`` to ``start_frame + num_frames`` of an utterance's
    labels, padded with :data:`IGNORE_INDEX` past its end.

    Arguments
    ---------
    labels : torch.Tensor
        (frames, number of K) labels of the whole utterance.
    start_frame : int
        First frame of the crop.
    num_frames : int
        Frames of the crop.

    Returns
    -------
    torch.Tensor
        (num_frames, number of K) labels.
    """
    piece = labels[start_frame : start_frame + num_frames]
    missing = num_frames - piece.shape[0]
    if missing > 0:
        pad = piece.new_full((missing, labels.shape[1]), IGNORE_INDEX)
        piece = torch.cat([piece, pad])
    return piece


def cropped_audio_with_labels(
    store: PseudoLabelStore,
    sample_rate: int = 16000,
    max_seconds: float | None = 10.0,
    hop_samples: int | None = None,
    frame_lengths_fn: Callable[[int], int] | None = None,
):
    """A dynamic item reading ``wav`` into ``sig`` and the utterance's labels into
    ``cluster_labels``, both cropped to the same random window.

    A waveform longer than ``max_seconds`` is cropped at a start that is a
    multiple of the hop, ``start = s * hop``; frame ``f`` of the crop is then
    frame ``s + f`` of the whole utterance, and the labels are frames ``s`` to
    ``s + frame_lengths_fn(crop samples)``. Uncropped audio gets the whole
    sequence. Either way ``cluster_labels`` has exactly as many frames as the
    backbone outputs for ``sig``. Batched by SpeechBrain's ``PaddedBatch``,
    labels are padded with 0: the backbone's frame mask tells valid frames.

    Arguments
    ---------
    store : PseudoLabelStore
        The labels.
    sample_rate : int
        Sampling rate the audio is read at, in Hz.
    max_seconds : float, optional
        Longest crop in seconds; None reads whole utterances.
    hop_samples : int, optional
        Samples per frame; default the store's geometry (320).
    frame_lengths_fn : callable, optional
        Frames the backbone outputs for an input of a given number of samples;
        default the store's geometry (:func:`backbone_frame_counts`).

    Returns
    -------
    callable
        ``@takes("id", "wav") @provides("sig", "cluster_labels")``; ``sig`` is
        (samples,) float32, ``cluster_labels`` (frames, number of K) int64.

    Raises
    ------
    PseudoLabelMismatchError
        When the audio read has another length than the audio the labels were
        computed from.
    """
    max_samples = None if max_seconds is None else int(round(max_seconds * sample_rate))
    hop = int(hop_samples) if hop_samples is not None else store.hop_samples
    frames_of = frame_lengths_fn if frame_lengths_fn is not None else store.frame_count

    @sb.utils.data_pipeline.takes("id", "wav")
    @sb.utils.data_pipeline.provides("sig", "cluster_labels")
    def read(utt_id: str, wav: str) -> tuple[torch.Tensor, torch.Tensor]:
        sig = load_audio(wav, sample_rate)
        expected = store.num_samples(utt_id)
        if sig.shape[0] != expected:
            raise PseudoLabelMismatchError(
                f"Utterance '{utt_id}': {wav} has {sig.shape[0]} samples at {sample_rate} Hz "
                f"but its pseudo-labels in {store.folder} were computed for {expected}: "
                "prepare the pseudo-labels again for this audio."
            )
        labels = store[utt_id]
        crop, start = hop_aligned_crop(sig, max_samples, hop)
        return crop, crop_labels(labels, start // hop, int(frames_of(crop.shape[0])))

    return read
