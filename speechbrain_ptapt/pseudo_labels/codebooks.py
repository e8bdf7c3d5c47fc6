"""P-TAPT pseudo-labels, step 2 (as fairseq's ``simple_kmeans/learn_kmeans.py``):
one k-means codebook per K fitted on the step-1 features.

:func:`fit_codebooks` learns ``kmeans_<K>.npy`` for every K, every K on the same
fitting set of up to ``1000 * max(K)`` frames (whole utterances, as the authors'
code; :func:`shared_fitting_rows`), or optionally each K on its own ``1000 * K``
randomly sampled frames. The k-means algorithm itself is
:mod:`~speechbrain_ptapt.pseudo_labels.kmeans`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechbrain_ptapt.protocol.experiment import read_json, write_json
from speechbrain_ptapt.protocol.stage_cache import atomic_write, canonical, differences
from speechbrain_ptapt.pseudo_labels.features import FeatureDump
from speechbrain_ptapt.pseudo_labels.kmeans import KMeansSettings, fit_kmeans

logger = logging.getLogger(__name__)

KMEANS_RECORD_FILE = "kmeans.json"
#: The recipes' k-means settings (the authors' code): 20 iterations, uniform seeding,
#: one shared fitting set of up to 1000 * max(K) frames, seed 0.
DEFAULT_KMEANS = KMeansSettings()


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
