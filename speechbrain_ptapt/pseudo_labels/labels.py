"""P-TAPT pseudo-labels: k-means cluster ids of the phase-1 frame-level emotion
model's features, one sequence per K per utterance, aligned to wav2vec2's frames.

Three stages, each writing files the next one reads, each rerunnable alone:

1. :func:`dump_features` runs the phase-1 model over every utterance of a
   manifest and appends its frames to ``features/features.npy`` (read back
   memory-mapped), with ``features/index.json`` (ids, frames and samples per
   utterance).
2. :func:`fit_codebooks` learns one k-means codebook per K (``kmeans_<K>.npy``),
   every K on the same fitting set of up to ``1000 * max(K)`` frames (whole
   utterances, as the authors' code; :func:`shared_fitting_rows`), or
   optionally each K on its own ``1000 * K`` randomly sampled frames.
3. :func:`write_labels` assigns every frame to its nearest centroid and writes
   ``labels.npy`` (total wav2vec2 frames, number of K) with ``index.json``,
   plus ``diagnostics.json`` / ``diagnostics.md`` (cluster usage, purity and
   NMI against the utterance emotion).

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
import hashlib
import inspect
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import speechbrain as sb
import torch
from sklearn.metrics import normalized_mutual_info_score
from torch import nn
from tqdm import tqdm
from transformers import Wav2Vec2Config

from speechbrain_ptapt.deploy.inference import load_audio
from speechbrain_ptapt.models.backbone import wav2vec2_frame_lengths, wav2vec2_hop_samples
from speechbrain_ptapt.protocol.errors import MissingFileError, PtaptError
from speechbrain_ptapt.protocol.experiment import read_json, write_json
from speechbrain_ptapt.protocol.stage_cache import StageCache, atomic_write, canonical, differences
from speechbrain_ptapt.pseudo_labels.kmeans import KMeansSettings, assign_clusters, fit_kmeans
from speechbrain_ptapt.stages.frame_emotion import load_frame_model

logger = logging.getLogger(__name__)

#: Label of frames without a pseudo-label (cross-entropy's ``ignore_index``).
IGNORE_INDEX = -100

#: Version of the on-disk layout; part of every fingerprint.
FORMAT_VERSION = 1

FEATURES_SUBFOLDER = "features"
FEATURES_FILE = "features.npy"
INDEX_FILE = "index.json"
PROGRESS_FILE = "progress.json"
LABELS_FILE = "labels.npy"
FINGERPRINT_FILE = "fingerprint.json"
KMEANS_RECORD_FILE = "kmeans.json"
DIAGNOSTICS_JSON = "diagnostics.json"
DIAGNOSTICS_MD = "diagnostics.md"
FRAME_MODEL_FILES = ("frame_model.ckpt", "frame_model.json")
#: The recipes' k-means settings (the authors' code): 20 iterations, uniform seeding,
#: one shared fitting set of up to 1000 * max(K) frames, seed 0.
DEFAULT_KMEANS = KMeansSettings()


class PseudoLabelMismatchError(PtaptError, RuntimeError):
    """Pseudo-labels that do not belong to the audio the pipeline reads."""


# ----------------------------------------------------------------------------
# Fingerprints
# ----------------------------------------------------------------------------


def _sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(manifest: str | Path) -> dict[str, dict[str, Any]]:
    with open(manifest, encoding="utf-8") as f:
        return json.load(f)


def manifest_hash(manifest: str | Path) -> str:
    """SHA-256 of a JSON manifest's content (key order and formatting ignored)."""
    canonical = json.dumps(_read_manifest(manifest), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def module_state_hash(model: nn.Module) -> str:
    """SHA-256 of a module's class name and every tensor of its state dict."""
    digest = hashlib.sha256(type(model).__qualname__.encode("utf-8"))
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(name.encode("utf-8"))
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def frame_model_hash(frame_model: str | Path | nn.Module) -> str:
    """SHA-256 of a phase-1 model: of the files ``frame_model.ckpt`` and
    ``frame_model.json`` for a final folder, of the state dict for a module."""
    if isinstance(frame_model, nn.Module):
        return module_state_hash(frame_model)
    folder = Path(frame_model)
    missing = [name for name in FRAME_MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise MissingFileError(
            f"{folder} is not a phase-1 frame model folder: {', '.join(missing)} missing "
            "(expected the 'final' folder written by the frame-level emotion stage)."
        )
    digest = hashlib.sha256()
    for name in FRAME_MODEL_FILES:
        digest.update(name.encode("utf-8"))
        digest.update(_sha256_file(folder / name).encode("utf-8"))
    return digest.hexdigest()


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
# Stage 1: feature dump
# ----------------------------------------------------------------------------


class _AppendableNpy:
    """A float32 (rows, dim) .npy file grown by appending rows at its end.

    ``numpy.lib.format.open_memmap`` needs the row count up front, but the phase-1
    model's frames per utterance are known only once it has run (its frame mask).
    numpy's version 1.0 header reserves room for the growth axis to reach 21 digits
    (``numpy.lib.format.GROWTH_AXIS_MAX_DIGITS``), so the header written with 0 rows
    is overwritten in place with the true shape by :meth:`close`.
    """

    def __init__(self, path: Path, dim: int, resume_rows: int = 0) -> None:
        self.path = path
        self.dim = dim
        self.rows = resume_rows
        if resume_rows:
            self.header_bytes = _npy_data_offset(path)
            self.file = open(path, "r+b")
            self.file.truncate(self.header_bytes + resume_rows * dim * 4)
            self.file.seek(0, os.SEEK_END)
        else:
            self.file = open(path, "wb")
            self._write_header()
            self.header_bytes = self.file.tell()

    def _write_header(self) -> None:
        header = {"descr": "<f4", "fortran_order": False, "shape": (self.rows, self.dim)}
        np.lib.format.write_array_header_1_0(self.file, header)

    def append(self, rows: np.ndarray) -> None:
        """Writes (n, dim) rows at the end of the file."""
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"Expected (frames, {self.dim}) features, got {rows.shape}.")
        self.file.write(np.ascontiguousarray(rows, dtype="<f4").tobytes())
        self.file.flush()
        self.rows += rows.shape[0]

    def sync(self) -> None:
        """Makes the rows written so far durable on disk."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        """Writes the final shape into the header and closes the file."""
        self.file.seek(0)
        self._write_header()
        if self.file.tell() != self.header_bytes:
            raise ValueError(f"The .npy header of {self.path} changed size; the dump is unusable.")
        self.sync()
        self.file.close()


def _npy_data_offset(path: Path) -> int:
    """Bytes before the data of a version 1.0 .npy file (its header's size)."""
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


def _holds_rows(path: Path, rows: int, dim: int) -> bool:
    """Whether the partial dump ``path`` has a readable header and ``rows`` rows."""
    try:
        return path.stat().st_size >= _npy_data_offset(path) + rows * dim * 4
    except (OSError, ValueError):
        return False


@dataclass
class FeatureDump:
    """A finished feature dump: phase-1 frames of every utterance of a manifest.

    Attributes
    ----------
    folder : Path
        The folder holding ``features.npy`` and ``index.json``.
    ids : list of str
        Utterance ids, in manifest order.
    lengths : np.ndarray
        (utterances,) int64 frames the phase-1 model gave each utterance.
    num_samples : np.ndarray
        (utterances,) int64 samples of each utterance's audio at the dump's
        sampling rate, as the data pipeline loads it.
    emotions : list
        The manifest's ``emo`` of each utterance (None where absent).
    dim : int
        Feature dimension (512 for the phase-1 model).
    fingerprint : dict
        What the features were computed from (manifest and model hashes ...).
    """

    folder: Path
    ids: list[str]
    lengths: np.ndarray
    num_samples: np.ndarray
    emotions: list[str | None]
    dim: int
    fingerprint: dict[str, Any]

    @property
    def offsets(self) -> np.ndarray:
        """(utterances,) int64 first row of each utterance in :attr:`features`."""
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    @property
    def num_frames(self) -> int:
        """Total frames (rows of :attr:`features`)."""
        return int(self.lengths.sum())

    @property
    def features(self) -> np.ndarray:
        """(frames, dim) float32 memory-mapped features of every utterance, in order."""
        return np.load(self.folder / FEATURES_FILE, mmap_mode="r")

    @classmethod
    def load(cls, folder: str | Path) -> FeatureDump:
        """Opens a finished dump; FileNotFoundError when there is none in ``folder``."""
        folder = Path(folder)
        index_path = folder / INDEX_FILE
        if not index_path.is_file() or not (folder / FEATURES_FILE).is_file():
            raise FileNotFoundError(f"No finished feature dump in {folder}.")
        index = read_json(index_path)
        return cls(
            folder=folder,
            ids=list(index["ids"]),
            lengths=np.asarray(index["lengths"], dtype=np.int64),
            num_samples=np.asarray(index["num_samples"], dtype=np.int64),
            emotions=list(index["emotions"]),
            dim=int(index["dim"]),
            fingerprint=dict(index["fingerprint"]),
        )


def features_cache(folder: str | Path, fingerprint: dict[str, Any]) -> StageCache:
    """A feature dump as a cached stage (:mod:`~speechbrain_ptapt.protocol.stage_cache`): derived
    data, recorded in ``index.json`` under ``fingerprint``, computed again when stale."""
    return StageCache(
        "pseudo-label features",
        fingerprint,
        Path(folder) / INDEX_FILE,
        expensive=False,
        field="fingerprint",
    )


def features_fingerprint(
    manifest: str | Path,
    frame_model: str | Path | nn.Module,
    sample_rate: int = 16000,
    batch_size: int = 1,
) -> dict[str, Any]:
    """What a feature dump depends on: the manifest's content, the phase-1
    model's weights, the sampling rate and the batch size (padding changes
    the frames of a GroupNorm CNN)."""
    return {
        "format": FORMAT_VERSION,
        "manifest": manifest_hash(manifest),
        "frame_model": frame_model_hash(frame_model),
        "sample_rate": int(sample_rate),
        "batch_size": int(batch_size),
    }


def _batches(items: list, batch_size: int) -> Iterable[list]:
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def _pad(wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, max samples) zero-padded waveforms and (batch,) relative lengths."""
    longest = max(w.shape[0] for w in wavs)
    batch = torch.zeros(len(wavs), longest)
    for i, wav in enumerate(wavs):
        batch[i, : wav.shape[0]] = wav
    lens = torch.tensor([w.shape[0] / longest for w in wavs], dtype=torch.float32)
    return batch, lens


def _resumable_record(
    progress_path: Path, partial: Path, fingerprint: dict[str, Any], ids: list[str]
) -> dict[str, Any] | None:
    """The progress record of an interrupted dump that can be resumed: same fingerprint,
    same leading utterances and every recorded row in ``partial``; None otherwise."""
    if not (progress_path.is_file() and partial.is_file()):
        return None
    previous = read_json(progress_path)
    if (
        previous.get("fingerprint") == fingerprint
        and previous["ids"] == ids[: len(previous["lengths"])]
        and _holds_rows(partial, sum(previous["lengths"]), previous["dim"] or 0)
    ):
        return previous
    return None


class _DumpProgress:
    """The rows of an unfinished feature dump (appended to ``partial``) and their durable
    record in ``progress_path``: frames per utterance, samples per utterance, width."""

    def __init__(
        self,
        partial: Path,
        progress_path: Path,
        fingerprint: dict[str, Any],
        ids: list[str],
        record: dict[str, Any],
    ) -> None:
        self.partial = partial
        self.progress_path = progress_path
        self.fingerprint = fingerprint
        self.ids = ids
        self.record = record
        self.writer = (
            _AppendableNpy(partial, record["dim"], resume_rows=sum(record["lengths"]))
            if self.done
            else None
        )

    @property
    def done(self) -> int:
        """Utterances written so far."""
        return len(self.record["lengths"])

    def append(self, frames: np.ndarray, num_frames: int, num_samples: int) -> None:
        """Writes the first ``num_frames`` rows of one utterance's (frames, dim) features."""
        if self.writer is None:
            self.record["dim"] = int(frames.shape[1])
            self.writer = _AppendableNpy(self.partial, self.record["dim"])
        self.writer.append(frames[:num_frames])
        self.record["lengths"].append(num_frames)
        self.record["num_samples"].append(num_samples)

    def save(self) -> None:
        """Makes the rows written so far durable and records them."""
        if self.writer is not None:
            self.writer.sync()
        write_json(
            self.progress_path,
            {"fingerprint": self.fingerprint, "ids": self.ids[: self.done], **self.record},
        )


def _compute_features(
    model: nn.Module,
    entries: dict[str, dict[str, Any]],
    progress: _DumpProgress,
    batch_size: int,
    device: str | torch.device,
    sample_rate: int,
    sync_every: int,
) -> None:
    """Runs the phase-1 model (in eval mode, restored after) over the utterances not yet
    in ``progress`` and appends their valid frames; the progress is saved every
    ``sync_every`` utterances and when interrupted."""
    ids = progress.ids
    was_training = model.training
    model.eval()
    model.to(device)
    todo = ids[progress.done :]
    since_sync = 0
    try:
        with (
            torch.no_grad(),
            tqdm(total=len(ids), initial=progress.done, desc="phase-1 features", unit="utt") as bar,
        ):
            for batch_ids in _batches(todo, batch_size):
                wavs = [load_audio(entries[u]["wav"], sample_rate) for u in batch_ids]
                batch, lens = _pad(wavs)
                features, frame_mask = model.frame_features(batch.to(device), lens.to(device))
                features = features.detach().float().cpu().numpy()
                valid = frame_mask.detach().cpu().sum(dim=1).numpy()
                for i, wav in enumerate(wavs):
                    progress.append(features[i], int(valid[i]), int(wav.shape[0]))
                bar.update(len(batch_ids))
                since_sync += len(batch_ids)
                if since_sync >= sync_every:
                    progress.save()
                    since_sync = 0
    except BaseException:
        progress.save()
        raise
    finally:
        model.train(was_training)


def dump_features(
    model: nn.Module,
    manifest: str | Path,
    out_folder: str | Path,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    sample_rate: int = 16000,
    fingerprint: dict[str, Any] | None = None,
    sync_every: int = 100,
) -> FeatureDump:
    """Runs the phase-1 model over every utterance of a manifest and stores its frames.

    Frames are appended to ``out_folder/features.npy`` as each batch is computed,
    so memory holds one batch at a time. The files carry temporary names until
    the last utterance is written (``features.npy.partial``, ``progress.json``);
    an interrupted dump with the same fingerprint resumes after the last
    utterance recorded in ``progress.json``. A finished dump with the same
    fingerprint is returned as is.

    Arguments
    ---------
    model : nn.Module
        The phase-1 model: ``model.frame_features(wavs (B, samples), wav_lens (B,)
        relative)`` returns ``(features (B, frames, D), frame_mask (B, frames))``
        at 20 ms frames, valid frames first.
    manifest : str or Path
        SpeechBrain JSON manifest (``wav`` and optionally ``emo`` per utterance).
    out_folder : str or Path
        The dump's folder.
    batch_size : int
        Utterances per forward pass. 1 (default) gives each utterance the frames
        it gets alone; with more, padding changes the frames of a CNN with
        GroupNorm over time.
    device : str or torch.device
        Where the model runs.
    sample_rate : int
        Sampling rate the audio is read at, in Hz.
    fingerprint : dict, optional
        Recorded in the index; default :func:`features_fingerprint`.
    sync_every : int
        Utterances between two durable progress records.

    Returns
    -------
    FeatureDump
        The finished dump.
    """
    out_folder = Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    if fingerprint is None:
        fingerprint = features_fingerprint(manifest, model, sample_rate, batch_size)
    cache = features_cache(out_folder, fingerprint)
    if cache.is_done([out_folder / FEATURES_FILE]):
        logger.info("Feature dump in %s is up to date, reusing it.", out_folder)
        return FeatureDump.load(out_folder)
    for name in (INDEX_FILE, FEATURES_FILE):
        (out_folder / name).unlink(missing_ok=True)

    entries = _read_manifest(manifest)
    ids = list(entries)
    partial = out_folder / (FEATURES_FILE + ".partial")
    progress_path = out_folder / PROGRESS_FILE
    record = _resumable_record(progress_path, partial, fingerprint, ids)
    if record is None:
        record = {"lengths": [], "num_samples": [], "dim": None}
    else:
        logger.info(
            "Resuming the feature dump in %s after %d utterances.",
            out_folder,
            len(record["lengths"]),
        )
    progress = _DumpProgress(partial, progress_path, fingerprint, ids, record)
    _compute_features(model, entries, progress, batch_size, device, sample_rate, sync_every)

    if progress.writer is None:
        raise ValueError(f"The manifest {manifest} holds no utterance.")
    progress.writer.close()
    os.replace(partial, out_folder / FEATURES_FILE)
    cache.publish(
        dim=record["dim"],
        sample_rate=int(sample_rate),
        ids=ids,
        lengths=record["lengths"],
        num_samples=record["num_samples"],
        emotions=[entries[u].get("emo") for u in ids],
    )
    progress_path.unlink(missing_ok=True)
    dump = FeatureDump.load(out_folder)
    logger.info(
        "Dumped %d frames of %d utterances (dim %d) to %s.",
        dump.num_frames,
        len(ids),
        dump.dim,
        out_folder,
    )
    return dump


# ----------------------------------------------------------------------------
# Stage 2: k-means codebooks
# ----------------------------------------------------------------------------


def codebook_fingerprint(
    dump: FeatureDump,
    n_clusters: int,
    kmeans: KMeansSettings,
    fit_frames: int | str | None = None,
) -> dict[str, Any]:
    """What the codebook of one K depends on: the features, K and the k-means settings.

    ``fit_frames`` describes a shared fitting set (:func:`shared_fitting_rows`):
    ``"all"`` when it holds every frame, else its size limit in frames; None for
    the per-K random sample.
    """
    return canonical(
        {
            "features": dump.fingerprint,
            "n_clusters": int(n_clusters),
            "n_iter": int(kmeans.iterations),
            "max_points_per_cluster": int(kmeans.points_per_cluster),
            "seed": int(kmeans.seed),
            "init": kmeans.init,
            "fit_set": kmeans.fit_set,
            "fit_frames": fit_frames,
        }
    )


def shared_fitting_rows(lengths: Sequence[int], max_frames: int, seed: int) -> np.ndarray | None:
    """The one k-means fitting set shared by every K: whole utterances in a seeded
    random order, taken until the next one would exceed ``max_frames`` frames.

    This is how the authors' ``cluster.py`` fills its buffer of ``1000 * max(K)``
    frames (``cluster.py:76, 79-101``): utterances come from a shuffled DataLoader
    and each contributes ``sample_ratio`` of its frames, 1.0 in their IEMOCAP
    script (``bin/run_exp_iemocap.sh:8``), i.e. all of them; the loop stops at the
    first utterance that does not fit. The buffer holds every frame of IEMOCAP (about
    1 M frames of a fold's training sessions against 4 096 000) and of SAVEE.

    Arguments
    ---------
    lengths : sequence of int
        Frames of each utterance, in the order of their rows in the features.
    max_frames : int
        Size limit of the set in frames (``1000 * max(K)``).
    seed : int
        Seed of the utterance order.

    Returns
    -------
    np.ndarray or None
        Sorted int64 row ids of the set, or None when it holds every frame.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if int(lengths.sum()) <= max_frames:
        return None
    order = np.random.default_rng(int(seed)).permutation(lengths.size)
    taken = int(np.searchsorted(np.cumsum(lengths[order]), max_frames, side="right"))
    if taken == 0:
        raise ValueError(
            f"The k-means fitting set of {max_frames} frames cannot hold a whole utterance "
            f"(the first one drawn has {int(lengths[order[0]])} frames)."
        )
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    utterances = np.sort(order[:taken])
    return np.concatenate(
        [np.arange(offsets[u], offsets[u] + lengths[u], dtype=np.int64) for u in utterances]
    )


def _as_numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.ascontiguousarray(array, dtype=np.float32)


def fit_codebooks(
    dump: FeatureDump,
    n_clusters: Sequence[int] = (64, 512, 4096),
    kmeans: KMeansSettings = DEFAULT_KMEANS,
    device: str | torch.device | None = None,
    out_folder: str | Path | None = None,
) -> dict[int, np.ndarray]:
    """Learns one k-means codebook per K on the dumped features.

    Each K is fitted by :func:`speechbrain_ptapt.pseudo_labels.kmeans.fit_kmeans` and saved as
    ``out_folder/kmeans_<K>.npy``; ``kmeans.json`` records each codebook's
    fingerprint, fitting frames and inertia, and a codebook whose fingerprint
    matches is loaded instead of refitted. The fitting frames are, with
    ``kmeans.fit_set="shared"`` (the authors' code), one set of whole utterances of
    at most ``kmeans.points_per_cluster * max(K)`` frames shared by every K
    (:func:`shared_fitting_rows`; every frame when they fit, read chunk by chunk
    from the memory-mapped dump); with ``"per_k"``, at most
    ``kmeans.points_per_cluster * K`` frames drawn at random for each K.

    Arguments
    ---------
    dump : FeatureDump
        The features.
    n_clusters : sequence of int
        The K values.
    kmeans : KMeansSettings
        Iterations, seeding, fitting set and seed (same settings, same codebook).
    device : str or torch.device, optional
        Where k-means runs (its default when None).
    out_folder : str or Path, optional
        Where codebooks go; default the dump folder's parent.

    Returns
    -------
    dict
        K -> (K, dim) float32 centroids.
    """
    shared: np.ndarray | None = None
    fit_frames: int | str | None = None
    if kmeans.fit_set == "shared":
        max_frames = kmeans.points_per_cluster * max(int(k) for k in n_clusters)
        shared = shared_fitting_rows(dump.lengths, max_frames, kmeans.seed)
        fit_frames = "all" if shared is None else max_frames
    out_folder = Path(out_folder) if out_folder is not None else dump.folder.parent
    out_folder.mkdir(parents=True, exist_ok=True)
    record_path = out_folder / KMEANS_RECORD_FILE
    record = read_json(record_path) if record_path.is_file() else {}
    codebooks: dict[int, np.ndarray] = {}
    for k in n_clusters:
        k = int(k)
        if k > dump.num_frames:
            raise ValueError(
                f"Cannot fit {k} clusters on {dump.num_frames} frames: use a smaller K "
                "or more training data."
            )
        fingerprint = codebook_fingerprint(dump, k, kmeans, fit_frames)
        path = out_folder / f"kmeans_{k}.npy"
        entry = record.get(str(k))
        if entry is not None and path.is_file():
            changed = differences(entry.get("fingerprint"), fingerprint)
            if not changed:
                logger.info("k-means codebook K=%d in %s is up to date, reusing it.", k, path)
                codebooks[k] = np.load(path)
                continue
            logger.info("k-means codebook K=%d differs in %s: fitting it again.", k, changed)
        if kmeans.fit_set == "shared":
            n_fit = dump.num_frames if shared is None else int(shared.size)
            sampling = {"rows": shared}
        else:
            n_fit = min(kmeans.points_per_cluster * k, dump.num_frames)
            sampling = {"max_points": kmeans.points_per_cluster * k}
        if n_fit < k:
            raise ValueError(
                f"Cannot fit {k} clusters on the {n_fit} frames of the k-means fitting set: "
                "raise the points per cluster (kmeans_points_per_cluster)."
            )
        logger.info(
            "Fitting k-means K=%d on %d of %d frames (%s set, %d iterations, %s seeding).",
            k,
            n_fit,
            dump.num_frames,
            kmeans.fit_set,
            kmeans.iterations,
            kmeans.init,
        )
        result = fit_kmeans(
            dump.features,
            k,
            n_iter=kmeans.iterations,
            seed=kmeans.seed,
            device=device,
            init=kmeans.init,
            **sampling,
        )
        centroids = _as_numpy(result.centroids)
        with atomic_write(path, "wb") as handle:
            np.save(handle, centroids)
        record[str(k)] = {
            "fingerprint": fingerprint,
            "fit_frames": n_fit,
            "inertia": float(result.inertia),
            "n_iter": int(result.n_iter),
        }
        write_json(record_path, record)
        codebooks[k] = centroids
    return codebooks


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
    (:func:`fit_codebooks`) and the feature dump in ``out_folder/features``
    (:func:`dump_features`). Finished labels whose ``fingerprint.json`` matches
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
        k-means iterations, seeding, fitting set and seed (see :func:`fit_codebooks`).
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
        ids = list(_read_manifest(manifest))
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
