"""P-TAPT pseudo-labels, step 1 (as fairseq's ``simple_kmeans/dump_*_feature.py``):
the phase-1 frame-level emotion model's features of every utterance of a manifest.

:func:`dump_features` runs the phase-1 model over every utterance and appends its
frames to ``features/features.npy`` (read back memory-mapped by :class:`FeatureDump`),
with ``features/index.json`` (ids, frames and samples per utterance); an interrupted
dump resumes from ``progress.json``. :func:`features_fingerprint` says what the
features were computed from. Steps 2 and 3 are
:mod:`~speechbrain_ptapt.pseudo_labels.codebooks` and
:mod:`~speechbrain_ptapt.pseudo_labels.labels`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from speechbrain_ptapt.deploy.inference import load_audio
from speechbrain_ptapt.protocol.errors import MissingFileError
from speechbrain_ptapt.protocol.experiment import read_json, write_json
from speechbrain_ptapt.protocol.stage_cache import StageCache

logger = logging.getLogger(__name__)


#: Version of the on-disk layout; part of every fingerprint.
FORMAT_VERSION = 1

FEATURES_SUBFOLDER = "features"
FEATURES_FILE = "features.npy"
INDEX_FILE = "index.json"
PROGRESS_FILE = "progress.json"
FRAME_MODEL_FILES = ("frame_model.ckpt", "frame_model.json")


# ----------------------------------------------------------------------------
# Fingerprints
# ----------------------------------------------------------------------------


def _sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(manifest: str | Path) -> dict[str, dict[str, Any]]:
    with open(manifest, encoding="utf-8") as f:
        return json.load(f)


def manifest_hash(manifest: str | Path) -> str:
    """SHA-256 of a JSON manifest's content (key order and formatting ignored)."""
    canonical = json.dumps(read_manifest(manifest), sort_keys=True, separators=(",", ":"))
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

    entries = read_manifest(manifest)
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
