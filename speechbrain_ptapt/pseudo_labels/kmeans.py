"""Deterministic, chunked Lloyd k-means in torch for frame-level pseudo-labels.

P-TAPT clusters the 512-dim frame features of the phase-1 emotion model with
k-means for several K (64, 512, 4096) and uses the cluster ids as frame
pseudo-labels. At IEMOCAP scale that is about 1.26 M frames x 512 float32
(2.4 GiB), so this implementation:

* never holds an (N, K) distance matrix: points are processed in chunks of
  rows, each chunk's squared distances come from one matrix product
  ``||x||^2 - 2 x.c + ||c||^2`` into a reused (chunk, K) buffer, followed by
  an arg-min;
* never copies the whole feature matrix: a ``np.memmap``, an in-memory array
  or a tensor is read chunk by chunk; only a fitting subset (``max_points``
  random rows or the caller's ``rows``) may be gathered once, and only when it
  is small compared with the data;
* is deterministic: the subsample, the initial centroids (a seeded random
  sample of distinct points, as faiss does, or optionally greedy k-means++ on
  a subsample) and the re-seeding of empty clusters (the points farthest from
  their centroid, as scikit-learn does) depend only on ``seed`` and the data;
  centroid sums use an order-fixed ``index_add_`` on CPU and a one-hot matrix
  product on GPU (whose atomics-based ``index_add_`` is not reproducible);
* runs where torch runs: ``device=None`` picks CUDA when available; on CPU it
  uses torch's intra-op thread count (``torch.get_num_threads()``) unchanged;
  on GPU the matrix products follow torch's float32 matmul precision setting
  (full float32 unless TF32 has been enabled).

Same data, seed, chunk size, device and thread count give bit-identical
centroids and labels.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from speechbrain_ptapt.protocol.errors import InputError

__all__ = [
    "KMEANS_FIT_SETS",
    "KMEANS_INITS",
    "KMeansResult",
    "KMeansSettings",
    "assign_clusters",
    "fit_kmeans",
]

logger = logging.getLogger(__name__)

#: Target number of float32 elements in one (chunk, K) distance block when the
#: chunk size is chosen automatically: 2**25 elements = 128 MiB.
_AUTO_BLOCK_ELEMENTS = 1 << 25
_AUTO_MIN_ROWS = 1024
_AUTO_MAX_ROWS = 65536
#: A subsample of at most this fraction of the rows is gathered once into a
#: contiguous array; a larger one is gathered chunk by chunk at every pass so
#: that memory stays close to the size of the data itself.
_GATHER_ONCE_FRACTION = 0.25
#: On a GPU the fitting set is copied to device memory once when it takes at
#: most this fraction of the free device memory; otherwise chunks are streamed.
_DEVICE_RESIDENT_FRACTION = 0.5

FeatureArray = np.ndarray | torch.Tensor

#: Seeding of the centroids (:func:`fit_kmeans`'s ``init``).
KMEANS_INITS = ("random", "k-means++")
#: Fitting frames of the pseudo-label codebooks (yaml ``kmeans_fit_set``):
#: ``"shared"``, one set for every K as the authors' code; ``"per_k"``, each K on its
#: own random frames (see :func:`speechbrain_ptapt.pseudo_labels.codebooks.fit_codebooks`).
KMEANS_FIT_SETS = ("shared", "per_k")


@dataclass(frozen=True)
class KMeansSettings:
    """The k-means settings of the P-TAPT pseudo-labels: everything that decides the
    codebooks besides the features and K (all of it enters their fingerprints).

    Where k-means runs is not a setting: it is the device of the whole pseudo-label
    preparation, and it changes the codebooks by float rounding at most.

    Attributes
    ----------
    iterations : int
        Maximum Lloyd passes (yaml ``kmeans_iterations``; 20, faiss' default in the
        authors' code).
    init : str
        Centroid seeding, one of :data:`KMEANS_INITS` (yaml ``kmeans_init``).
    points_per_cluster : int
        Fitting frames per centroid (of the largest K with the shared fitting set;
        yaml ``kmeans_points_per_cluster``).
    fit_set : str
        One of :data:`KMEANS_FIT_SETS` (yaml ``kmeans_fit_set``).
    seed : int
        Seed of the fitting set and of the seeding (yaml ``kmeans_seed``).
    """

    iterations: int = 20
    init: str = "random"
    points_per_cluster: int = 1000
    fit_set: str = "shared"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("iterations", "points_per_cluster"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(
                    f"k-means {name}: expected an integer of at least 1, got {value!r}"
                )
        for name, choices in (("init", KMEANS_INITS), ("fit_set", KMEANS_FIT_SETS)):
            if getattr(self, name) not in choices:
                raise InputError(
                    f"k-means {name}: expected one of {', '.join(choices)}, "
                    f"got {getattr(self, name)!r}"
                )


@dataclass
class KMeansResult:
    """Outcome of :func:`fit_kmeans`.

    Attributes
    ----------
    centroids : np.ndarray
        Cluster centres, shape (K, D), float32, on the host.
    inertia : float
        Sum over the fitted points of the squared Euclidean distance to the
        centroid they were assigned to in the last assignment pass (the
        centroids of that pass, i.e. before the final mean update; the
        returned centroids can only lower it). Units: squared feature units.
    n_iter : int
        Number of assignment passes run (at most ``n_iter``; fewer when the
        assignment stopped changing, which makes further passes no-ops).
    """

    centroids: np.ndarray
    inertia: float
    n_iter: int


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """Return ``device`` as a ``torch.device``; None means CUDA if available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _auto_chunk_rows(n_clusters: int) -> int:
    """Rows per chunk so that a (rows, K) float32 block holds about 2**25 elements."""
    rows = _AUTO_BLOCK_ELEMENTS // max(n_clusters, 1)
    return int(min(max(rows, _AUTO_MIN_ROWS), _AUTO_MAX_ROWS))


def _shape_of(features: FeatureArray) -> tuple[int, int]:
    """Check that ``features`` is a 2-D array or tensor and return (N, D)."""
    if not isinstance(features, (np.ndarray, torch.Tensor)):
        raise TypeError(
            f"features must be a numpy array, np.memmap or torch.Tensor, got {type(features)}"
        )
    if features.ndim != 2:
        raise ValueError(f"features must have shape (N, D), got {tuple(features.shape)}")
    n, d = features.shape
    return int(n), int(d)


def _as_tensor_view(array: np.ndarray) -> torch.Tensor | None:
    """Zero-copy float32 tensor view of a C-contiguous float32 array (memmaps included).

    Returns None for other dtypes or layouts. The view is only ever read, so
    read-only arrays (e.g. a memmap opened with ``mode="r"``) are viewed too.
    """
    array = np.asarray(array)  # a memmap becomes a plain ndarray view, no copy
    if array.dtype != np.float32 or not array.flags.c_contiguous:
        return None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


class _RowSource:
    """Chunked, read-only access to the rows used for fitting or assignment.

    Wraps the caller's features (array, memmap or tensor) and an optional
    sorted set of row indices (the subsample). Chunks come out as contiguous
    float32 tensors of shape (rows, D) on ``device``; in-memory CPU inputs are
    passed as views without copying.
    """

    def __init__(
        self,
        features: FeatureArray,
        device: torch.device,
        chunk_rows: int,
        indices: torch.Tensor | None = None,
    ) -> None:
        self.features: FeatureArray = features
        self.device = device
        self.chunk_rows = chunk_rows
        self.indices = indices  # sorted int64 row ids into ``features``, CPU
        n_total, self.dim = _shape_of(features)
        self.n_rows = n_total if indices is None else int(indices.numel())
        self._resident: torch.Tensor | None = None

        if indices is not None and self.n_rows <= _GATHER_ONCE_FRACTION * n_total:
            self._resident = self._gather(indices)
            self.indices = None
        if device.type == "cuda" and self._fits_on_device():
            self._make_resident()

    def _fits_on_device(self) -> bool:
        """Whether the fitting set fits comfortably in free device memory."""
        if self._resident is not None and self._resident.device == self.device:
            return False
        if isinstance(self.features, torch.Tensor) and self.features.device == self.device:
            return False
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.n_rows * self.dim * 4 <= _DEVICE_RESIDENT_FRACTION * free

    def _make_resident(self) -> None:
        """Copy the fitting set to the device once, chunk by chunk."""
        out = torch.empty((self.n_rows, self.dim), dtype=torch.float32, device=self.device)
        for start, chunk in self.chunks():
            out[start : start + chunk.shape[0]].copy_(chunk)
        self._resident = out
        self.indices = None

    def _to_tensor(self, block: FeatureArray) -> torch.Tensor:
        """Turn a (rows, D) block into a contiguous float32 tensor on ``device``."""
        if isinstance(block, np.ndarray):
            tensor = _as_tensor_view(block)
            if tensor is None:
                # Strided or non-float32 blocks are copied (one chunk at a time).
                tensor = torch.from_numpy(np.array(block, dtype=np.float32, order="C"))
        else:
            tensor = block
        return tensor.to(device=self.device, dtype=torch.float32).contiguous()

    def _gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows ``rows`` (int64 ids into the caller's features) as a (len, D) tensor."""
        if isinstance(self.features, torch.Tensor):
            ids = rows.to(self.features.device)
            return self._to_tensor(self.features.index_select(0, ids))
        view = _as_tensor_view(self.features)
        if view is not None:  # multi-threaded gather straight from the array's memory
            return self._to_tensor(view.index_select(0, rows))
        return self._to_tensor(self.features[rows.numpy()])

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (offset, chunk) with ``chunk`` of shape (rows, D), float32, on ``device``.

        ``offset`` is the position of the chunk's first row within the fitting
        set (the subsample when one is used).
        """
        step = self.chunk_rows
        if self._resident is not None:
            src = self._resident
            for start in range(0, self.n_rows, step):
                yield start, self._to_tensor(src[start : start + step])
            return
        for start in range(0, self.n_rows, step):
            stop = min(start + step, self.n_rows)
            if self.indices is None:
                yield start, self._to_tensor(self.features[start:stop])
            else:
                yield start, self._gather(self.indices[start:stop])

    def rows(self, positions: torch.Tensor) -> torch.Tensor:
        """Rows at ``positions`` of the fitting set, shape (len, D), float32, on ``device``."""
        positions = positions.cpu()
        if self._resident is not None:
            return self._resident.index_select(0, positions.to(self._resident.device)).to(
                self.device
            )
        if self.indices is not None:
            positions = self.indices.index_select(0, positions)
        return self._gather(positions)


def _scores_into(
    chunk: torch.Tensor,
    centroids_x2_t: torch.Tensor,
    centroid_sqnorms: torch.Tensor,
    buffer: torch.Tensor,
    best: torch.Tensor,
    labels: torch.Tensor,
) -> None:
    """Nearest centroid of every row of ``chunk``, written into ``best`` and ``labels``.

    Parameters
    ----------
    chunk : torch.Tensor
        Points, shape (n, D), float32.
    centroids_x2_t : torch.Tensor
        Twice the centroids, transposed: shape (D, K), float32.
    centroid_sqnorms : torch.Tensor
        Squared L2 norms of the centroids, shape (K,), float32.
    buffer : torch.Tensor
        Work space of shape (>= n, K), float32; overwritten.
    best : torch.Tensor
        Output, shape (n,), float32: ``max_k 2 x.c_k - ||c_k||^2``, i.e.
        ``||x||^2`` minus the squared distance to the nearest centroid.
    labels : torch.Tensor
        Output, shape (n,), int64: index of the nearest centroid (the first
        one on ties).
    """
    scores = buffer[: chunk.shape[0]]
    # argmax of 2 x.c - ||c||^2 is the argmin of ||x||^2 - 2 x.c + ||c||^2.
    torch.mm(chunk, centroids_x2_t, out=scores)
    scores.sub_(centroid_sqnorms)
    torch.max(scores, dim=1, out=(best, labels))


def _prepare_centroids(centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (2 C^T of shape (D, K), ||c||^2 of shape (K,)) for :func:`_scores_into`."""
    return (2.0 * centroids).t().contiguous(), centroids.square().sum(dim=1)


def _accumulate(
    sums: torch.Tensor,
    chunk: torch.Tensor,
    labels: torch.Tensor,
    buffer: torch.Tensor,
    one_hot: bool,
) -> None:
    """Add each row of ``chunk`` (n, D) to ``sums[labels[row]]`` ((K, D) float32, in place).

    With ``one_hot`` the sums come from a matrix product with a one-hot
    (n, K) matrix written into ``buffer`` (deterministic on GPUs, where
    ``index_add_`` uses atomics); otherwise from ``index_add_``, whose CPU
    kernel adds in a fixed order.
    """
    if one_hot:
        onehot = buffer[: chunk.shape[0]]
        onehot.zero_()
        onehot.scatter_(1, labels.unsqueeze(1), 1.0)
        sums.addmm_(onehot.t(), chunk)
    else:
        sums.index_add_(0, labels, chunk)


def _reseed_empty(
    sums: torch.Tensor,
    counts: torch.Tensor,
    sq_dist: torch.Tensor,
    labels: torch.Tensor,
    source: _RowSource,
) -> int:
    """Move the points farthest from their centroid into empty clusters.

    Parameters
    ----------
    sums, counts : torch.Tensor
        Per-cluster sums (K, D) float32 and counts (K,) int64 of the last
        assignment; updated in place.
    sq_dist, labels : torch.Tensor
        Squared distance to the assigned centroid (n_fit,) and the assigned
        cluster (n_fit,) of every fitting point.
    source : _RowSource
        Gives the rows of the chosen points.

    Each empty cluster, in index order, receives the next farthest point
    (distance descending, then position ascending) whose distance is positive
    and whose cluster keeps at least one other point; the point's contribution
    moves from its old cluster's sum and count to the empty one. Clusters left
    empty (e.g. fewer distinct points than K) keep their previous centroid.

    Returns
    -------
    int
        Number of clusters re-seeded.
    """
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if not empty:
        return 0
    n_fit = sq_dist.numel()
    counts_host = counts.tolist()
    n_cand = min(n_fit, 2 * len(empty) + 16)
    while True:
        # Stable sort of the top candidates makes ties resolve by position.
        top_d, top_pos = torch.topk(sq_dist, n_cand)
        order = torch.argsort(top_pos)
        order = order[torch.argsort(top_d.index_select(0, order), descending=True, stable=True)]
        cand_pos = top_pos.index_select(0, order)
        cand_d = top_d.index_select(0, order).tolist()
        cand_lab = labels.index_select(0, cand_pos).tolist()
        remaining = list(counts_host)
        chosen: list[tuple[int, int, int]] = []  # (empty cluster, candidate rank, old label)
        rank = 0
        for cluster in empty:
            while rank < n_cand and (cand_d[rank] <= 0.0 or remaining[cand_lab[rank]] <= 1):
                rank += 1
            if rank >= n_cand:
                break
            remaining[cand_lab[rank]] -= 1
            remaining[cluster] = 1
            chosen.append((cluster, rank, cand_lab[rank]))
            rank += 1
        if len(chosen) == len(empty) or n_cand == n_fit:
            break
        n_cand = min(n_fit, 4 * n_cand)
    if not chosen:
        return 0
    ranks = torch.tensor([r for _, r, _ in chosen], device=cand_pos.device)
    picked = source.rows(cand_pos.index_select(0, ranks))
    for row, (cluster, _, old) in enumerate(chosen):
        sums[old].sub_(picked[row])
        sums[cluster].copy_(picked[row])
    counts.copy_(torch.tensor(remaining, dtype=counts.dtype))
    return len(chosen)


def _fitting_rows(n_rows: int, rows: np.ndarray | torch.Tensor) -> torch.Tensor | None:
    """The caller's fitting rows as sorted, distinct int64 ids (CPU), or None when they
    are every row."""
    ids = torch.as_tensor(np.asarray(rows), dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise ValueError("rows must name at least one row")
    ids = torch.unique(ids)  # sorted
    if int(ids[0]) < 0 or int(ids[-1]) >= n_rows:
        raise ValueError(f"rows must be row ids in [0, {n_rows}), got {ids.min()}..{ids.max()}")
    return None if ids.numel() == n_rows else ids


def _subsample(
    n_rows: int, max_points: int | None, generator: torch.Generator
) -> torch.Tensor | None:
    """Sorted int64 ids of ``max_points`` distinct rows, or None to use all rows."""
    if max_points is None or max_points >= n_rows:
        return None
    if max_points < 1:
        raise ValueError(f"max_points must be positive, got {max_points}")
    ids = torch.randperm(n_rows, generator=generator)[:max_points]
    return torch.sort(ids).values


def _kmeans_plusplus(
    points: torch.Tensor, n_clusters: int, generator: torch.Generator
) -> torch.Tensor:
    """Greedy k-means++ seeding on ``points``.

    Each new centre is the best (lowest resulting potential) of
    ``2 + floor(ln K)`` candidates drawn with probability proportional to the
    squared distance to the nearest centre chosen so far.

    Parameters
    ----------
    points : torch.Tensor
        Candidate and scoring points, shape (m, D), float32, m >= K.
    n_clusters : int
        K.
    generator : torch.Generator
        CPU generator for the draws (the only source of randomness).

    Returns
    -------
    torch.Tensor
        Initial centroids, shape (K, D), float32, on ``points.device``.
    """
    m = points.shape[0]
    dev = points.device
    n_trials = 2 + int(math.log(n_clusters))
    sqnorms = points.square().sum(dim=1)
    first = int(torch.randint(m, (1,), generator=generator))
    chosen = [first]
    closest = (sqnorms - 2.0 * (points @ points[first]) + sqnorms[first]).clamp_(min=0.0)
    for _ in range(1, n_clusters):
        cumulative = torch.cumsum(closest, dim=0, dtype=torch.float64)
        total = cumulative[-1]
        draws = torch.rand(n_trials, generator=generator, dtype=torch.float64).to(dev) * total
        cand = torch.searchsorted(cumulative, draws).clamp_(max=m - 1)
        dist = torch.addmm(
            sqnorms.unsqueeze(0), points.index_select(0, cand), points.t(), alpha=-2.0
        )
        dist.add_(sqnorms.index_select(0, cand).unsqueeze(1)).clamp_(min=0.0)
        torch.minimum(dist, closest.unsqueeze(0), out=dist)
        best = int(torch.argmin(dist.sum(dim=1, dtype=torch.float64)))
        closest = dist[best].clone()
        chosen.append(int(cand[best]))
    return points.index_select(0, torch.tensor(chosen, device=dev))


@torch.no_grad()
def fit_kmeans(
    features: FeatureArray,
    n_clusters: int,
    n_iter: int = 20,
    max_points: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
    verbose: bool = False,
    init: str = "random",
    rows: np.ndarray | torch.Tensor | None = None,
) -> KMeansResult:
    """Fit k-means (Lloyd's algorithm) to the rows of ``features``.

    Parameters
    ----------
    features : np.ndarray | np.memmap | torch.Tensor
        Points, shape (N, D), ideally float32 (other dtypes are converted chunk
        by chunk). A memmap is read chunk by chunk and never loaded whole.
    n_clusters : int
        K, the number of clusters.
    n_iter : int
        Maximum number of assignment passes (each followed by a mean update);
        20 as in the original faiss setup. Stops earlier once an assignment
        pass changes no label and leaves no cluster empty.
    max_points : int | None
        Fit on at most this many rows, drawn without replacement from ``seed``.
        None fits on all rows (or on ``rows``).
    seed : int
        Seed of the subsample and of the initial centroids (K distinct rows of
        the fitting set drawn uniformly).
    device : str | torch.device | None
        Where to compute; None picks CUDA when available, else CPU.
    chunk_size : int | None
        Rows per chunk; None chooses about 2**25 / K rows (1024..65536), so
        that the (rows, K) float32 distance block stays near 128 MiB.
    verbose : bool
        Log the inertia and elapsed time of every pass at INFO level.
    init : str
        ``"random"`` (default, as faiss): K distinct rows of the fitting set
        drawn uniformly. ``"k-means++"``: greedy k-means++ on
        ``min(n_fit, max(8 K, 32768))`` distinct rows of the fitting set, which
        costs about K small matrix products but avoids the merged or split
        clusters a uniform draw tends to leave when clusters are few and far
        apart.
    rows : np.ndarray | torch.Tensor | None
        Fit on these rows of ``features`` only (int row ids; order and repeats
        do not matter), e.g. one fitting set shared by several K. Not together
        with ``max_points``. A set of at most a quarter of the rows is gathered
        into memory once; a larger one is gathered chunk by chunk at every pass.

    Returns
    -------
    KMeansResult
        Centroids (K, D) float32, the inertia of the last assignment pass and
        the number of passes run.
    """
    n_total, dim = _shape_of(features)
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be positive, got {n_clusters}")
    if n_iter < 1:
        raise ValueError(f"n_iter must be positive, got {n_iter}")
    if init not in KMEANS_INITS:
        raise ValueError(f"init must be one of {KMEANS_INITS}, got {init!r}")
    dev = _resolve_device(device)
    chunk_rows = int(chunk_size) if chunk_size else _auto_chunk_rows(n_clusters)
    if chunk_rows < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")

    if rows is not None and max_points is not None:
        raise ValueError("give either max_points or rows, not both")
    generator = torch.Generator().manual_seed(int(seed))
    if rows is not None:
        indices = _fitting_rows(n_total, rows)
    else:
        indices = _subsample(n_total, max_points, generator)
    source = _RowSource(features, dev, chunk_rows, indices)
    n_fit = source.n_rows
    if n_clusters > n_fit:
        raise ValueError(f"n_clusters={n_clusters} exceeds the number of points ({n_fit})")

    if init == "random":
        init_pos = torch.randperm(n_fit, generator=generator)[:n_clusters]
        centroids = source.rows(init_pos).clone()
    else:
        n_seed = min(n_fit, max(8 * n_clusters, 32768))
        seed_pos = torch.sort(torch.randperm(n_fit, generator=generator)[:n_seed]).values
        centroids = _kmeans_plusplus(source.rows(seed_pos), n_clusters, generator)
    if verbose:
        logger.info("k-means K=%d: %s initialisation on %d points", n_clusters, init, n_fit)

    one_hot = dev.type != "cpu"
    buffer = torch.empty((min(chunk_rows, n_fit), n_clusters), dtype=torch.float32, device=dev)
    sums = torch.empty((n_clusters, dim), dtype=torch.float32, device=dev)
    sqnorms = torch.empty(n_fit, dtype=torch.float32, device=dev)  # ||x||^2, first pass
    best = torch.empty(n_fit, dtype=torch.float32, device=dev)
    labels = torch.empty(n_fit, dtype=torch.long, device=dev)
    previous = torch.full((n_fit,), -1, dtype=torch.long, device=dev)

    inertia = math.inf
    start_time = time.perf_counter()
    passes = 0
    for it in range(n_iter):
        passes = it + 1
        c2t, cnorm = _prepare_centroids(centroids)
        sums.zero_()
        for offset, chunk in source.chunks():
            rows = slice(offset, offset + chunk.shape[0])
            _scores_into(chunk, c2t, cnorm, buffer, best[rows], labels[rows])
            if it == 0:
                sqnorms[rows] = torch.linalg.vector_norm(chunk, dim=1).square_()
            _accumulate(sums, chunk, labels[rows], buffer, one_hot)
        # best <- squared distance to the assigned centroid.
        torch.sub(sqnorms, best, out=best).clamp_(min=0.0)
        inertia = float(best.sum(dtype=torch.float64))
        counts = torch.bincount(labels, minlength=n_clusters)
        n_changed = int((labels != previous).sum())
        n_reseeded = _reseed_empty(sums, counts, best, labels, source)
        nonempty = counts > 0
        means = sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)
        centroids = torch.where(nonempty.unsqueeze(1), means, centroids)
        labels, previous = previous, labels
        if verbose:
            logger.info(
                "k-means K=%d pass %d/%d: inertia %.6g, %d labels changed, "
                "%d empty clusters re-seeded, %.1f s",
                n_clusters,
                passes,
                n_iter,
                inertia,
                n_changed,
                n_reseeded,
                time.perf_counter() - start_time,
            )
        if n_changed == 0 and n_reseeded == 0 and bool(nonempty.all()):
            break

    return KMeansResult(
        centroids=centroids.float().cpu().numpy().copy(), inertia=inertia, n_iter=passes
    )


@torch.no_grad()
def assign_clusters(
    features: FeatureArray,
    centroids: FeatureArray,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Label every row of ``features`` with the index of its nearest centroid.

    Parameters
    ----------
    features : np.ndarray | np.memmap | torch.Tensor
        Points, shape (N, D); read chunk by chunk.
    centroids : np.ndarray | torch.Tensor
        Cluster centres, shape (K, D).
    chunk_size : int | None
        Rows per chunk; None chooses about 2**25 / K rows.
    device : str | torch.device | None
        Where to compute; None picks CUDA when available, else CPU.

    Returns
    -------
    np.ndarray
        Labels in [0, K), shape (N,), int64 (squared Euclidean distance; ties
        go to the lowest centroid index).
    """
    n_total, dim = _shape_of(features)
    dev = _resolve_device(device)
    cent = torch.as_tensor(centroids)
    cent = cent.to(device=dev, dtype=torch.float32)
    if cent.ndim != 2 or cent.shape[1] != dim:
        raise ValueError(f"centroids must have shape (K, {dim}), got {tuple(cent.shape)}")
    n_clusters = int(cent.shape[0])
    chunk_rows = int(chunk_size) if chunk_size else _auto_chunk_rows(n_clusters)
    out = np.empty(n_total, dtype=np.int64)
    if n_total == 0:
        return out
    source = _RowSource(features, dev, chunk_rows)
    c2t, cnorm = _prepare_centroids(cent)
    buffer = torch.empty((min(chunk_rows, n_total), n_clusters), dtype=torch.float32, device=dev)
    best = torch.empty(min(chunk_rows, n_total), dtype=torch.float32, device=dev)
    labels = torch.empty(min(chunk_rows, n_total), dtype=torch.long, device=dev)
    for offset, chunk in source.chunks():
        n = chunk.shape[0]
        _scores_into(chunk, c2t, cnorm, buffer, best[:n], labels[:n])
        out[offset : offset + n] = labels[:n].cpu().numpy()
    return out
