"""Tests of the chunked torch k-means used for P-TAPT pseudo-labels."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from speechbrain_ptapt.pseudo_labels.kmeans import (
    KMeansResult,
    KMeansSettings,
    _accumulate,
    assign_clusters,
    fit_kmeans,
)


def _blobs(
    n_per: int = 200, n_blobs: int = 5, dim: int = 8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Well separated Gaussian blobs: (N, dim) float32 points and (N,) true labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_blobs, dim)).astype(np.float32) * 20.0
    truth = np.repeat(np.arange(n_blobs), n_per)
    points = centres[truth] + rng.standard_normal((truth.size, dim)).astype(np.float32)
    order = rng.permutation(truth.size)
    return np.ascontiguousarray(points[order]), truth[order]


def _random_points(n: int = 3000, dim: int = 16, seed: int = 1) -> np.ndarray:
    """Unstructured float32 points, shape (n, dim)."""
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _brute_force_sq_dist(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Squared distances in float64, shape (N, K)."""
    p = points.astype(np.float64)
    c = centroids.astype(np.float64)
    return ((p[:, None, :] - c[None, :, :]) ** 2).sum(-1)


def test_recovers_well_separated_blobs() -> None:
    points, truth = _blobs()
    result = fit_kmeans(points, 5, seed=0, device="cpu", init="k-means++")
    assert isinstance(result, KMeansResult)
    assert result.centroids.shape == (5, 8) and result.centroids.dtype == np.float32
    labels = assign_clusters(points, result.centroids, device="cpu")
    assert labels.dtype == np.int64 and labels.shape == truth.shape
    assert adjusted_rand_score(truth, labels) == 1.0
    # Converged well before the pass limit and the inertia is the within-blob spread.
    assert result.n_iter < 20
    expected = _brute_force_sq_dist(points, result.centroids).min(1).sum()
    assert result.inertia == pytest.approx(expected, rel=1e-4)


def test_random_init_on_blobs_uses_every_cluster() -> None:
    points, _ = _blobs(seed=3)
    result = fit_kmeans(points, 5, seed=0, device="cpu")
    labels = assign_clusters(points, result.centroids, device="cpu")
    assert np.isfinite(result.centroids).all()
    # A uniform draw may put two seeds in one blob (no ARI guarantee), but no
    # cluster ends up empty.
    assert len(np.unique(labels)) == 5
    assert result.centroids.shape == (5, 8)


def test_same_seed_gives_identical_result() -> None:
    points = _random_points()
    for init in ("random", "k-means++"):
        first = fit_kmeans(points, 12, seed=7, device="cpu", init=init)
        second = fit_kmeans(points, 12, seed=7, device="cpu", init=init)
        assert np.array_equal(first.centroids, second.centroids)
        assert first.inertia == second.inertia and first.n_iter == second.n_iter
        assert np.array_equal(
            assign_clusters(points, first.centroids, device="cpu"),
            assign_clusters(points, second.centroids, device="cpu"),
        )


def test_different_seeds_may_differ() -> None:
    points = _random_points()
    first = fit_kmeans(points, 12, seed=0, device="cpu")
    second = fit_kmeans(points, 12, seed=1, device="cpu")
    assert not np.array_equal(first.centroids, second.centroids)


def test_memmap_in_small_chunks_equals_in_memory(tmp_path: Path) -> None:
    points = _random_points(n=1000, dim=12)
    path = tmp_path / "frames.npy"
    np.save(path, points)
    mapped = np.load(path, mmap_mode="r")  # read-only memmap
    assert isinstance(mapped, np.memmap)
    kwargs = {"seed": 3, "device": "cpu", "chunk_size": 128, "n_iter": 10}
    in_memory = fit_kmeans(points, 9, **kwargs)
    from_disk = fit_kmeans(mapped, 9, **kwargs)
    as_tensor = fit_kmeans(torch.from_numpy(points), 9, **kwargs)
    assert np.array_equal(in_memory.centroids, from_disk.centroids)
    assert np.array_equal(in_memory.centroids, as_tensor.centroids)
    assert in_memory.inertia == from_disk.inertia
    labels = assign_clusters(points, in_memory.centroids, chunk_size=128, device="cpu")
    assert np.array_equal(
        labels, assign_clusters(mapped, in_memory.centroids, chunk_size=100, device="cpu")
    )
    # Subsampled fits read the same rows from a memmap as from memory.
    sub_mem = fit_kmeans(points, 9, max_points=300, **kwargs)
    sub_disk = fit_kmeans(mapped, 9, max_points=300, **kwargs)
    assert np.array_equal(sub_mem.centroids, sub_disk.centroids)


def test_assign_clusters_matches_brute_force() -> None:
    rng = np.random.default_rng(5)
    points = rng.standard_normal((2000, 16)).astype(np.float32)
    centroids = rng.standard_normal((37, 16)).astype(np.float32)
    sq = _brute_force_sq_dist(points, centroids)
    expected = sq.argmin(1)
    for features in (points, torch.from_numpy(points)):
        labels = assign_clusters(features, centroids, chunk_size=300, device="cpu")
        assert labels.shape == (2000,) and labels.dtype == np.int64
        mismatch = labels != expected
        if mismatch.any():  # only float32 near-ties may differ
            rows = np.nonzero(mismatch)[0]
            gap = sq[rows, labels[rows]] - sq[rows, expected[rows]]
            assert (gap <= 1e-4 * sq[rows].min(1).clip(min=1.0)).all()
        assert mismatch.mean() < 1e-3
    torch_centroids = torch.from_numpy(centroids)
    assert np.array_equal(
        assign_clusters(points, torch_centroids, device="cpu"),
        assign_clusters(points, centroids, device="cpu"),
    )


def test_inertia_bounds_the_final_centroids() -> None:
    points = _random_points(n=1500, dim=8)
    result = fit_kmeans(points, 10, seed=2, device="cpu", n_iter=5)
    final = _brute_force_sq_dist(points, result.centroids).min(1).sum()
    assert final <= result.inertia * (1 + 1e-5)
    assert result.n_iter == 5


@pytest.mark.parametrize(("n_points", "n_clusters"), [(60, 55), (40, 40)])
def test_k_close_to_n_leaves_no_empty_cluster(n_points: int, n_clusters: int) -> None:
    points = np.random.default_rng(11).uniform(size=(n_points, 2)).astype(np.float32)
    for seed in range(3):
        result = fit_kmeans(points, n_clusters, seed=seed, device="cpu")
        assert np.isfinite(result.centroids).all()
        labels = assign_clusters(points, result.centroids, device="cpu")
        assert len(np.unique(labels)) == n_clusters


def test_duplicated_points_give_finite_centroids() -> None:
    rng = np.random.default_rng(4)
    distinct = rng.standard_normal((10, 6)).astype(np.float32)
    points = np.repeat(distinct, 20, axis=0)[rng.permutation(200)]
    result = fit_kmeans(points, 15, seed=0, device="cpu")
    assert np.isfinite(result.centroids).all()
    labels = assign_clusters(points, result.centroids, device="cpu")
    # Only 10 distinct points: 10 clusters can be used, and each point sits on a centroid.
    assert len(np.unique(labels)) == 10
    # Zero up to the float32 cancellation of ||x||^2 - 2 x.c + ||c||^2.
    assert result.inertia == pytest.approx(0.0, abs=1e-3)


def test_empty_clusters_are_reseeded_from_far_points(caplog: pytest.LogCaptureFixture) -> None:
    # Twenty identical points and two far ones: most initial centroids coincide,
    # so all but one of their clusters start empty and must be re-seeded.
    points = np.zeros((22, 3), dtype=np.float32)
    points[20] = [10.0, 0.0, 0.0]
    points[21] = [0.0, 10.0, 0.0]
    with caplog.at_level(logging.INFO, logger="speechbrain_ptapt.pseudo_labels.kmeans"):
        result = fit_kmeans(points, 3, seed=0, device="cpu", verbose=True)
    assert np.isfinite(result.centroids).all()
    labels = assign_clusters(points, result.centroids, device="cpu")
    assert len(np.unique(labels)) == 3
    assert result.inertia == pytest.approx(0.0, abs=1e-6)
    messages = [r.getMessage() for r in caplog.records]
    assert any("pass 1/" in m and "inertia" in m for m in messages)


def test_max_points_subsampling_is_reproducible() -> None:
    points = _random_points(n=4000, dim=8)
    first = fit_kmeans(points, 8, max_points=500, seed=9, device="cpu")
    second = fit_kmeans(points, 8, max_points=500, seed=9, device="cpu")
    other = fit_kmeans(points, 8, max_points=500, seed=10, device="cpu")
    full = fit_kmeans(points, 8, seed=9, device="cpu")
    assert np.array_equal(first.centroids, second.centroids)
    assert not np.array_equal(first.centroids, other.centroids)
    assert not np.array_equal(first.centroids, full.centroids)
    # The inertia is over the 500 fitted rows only.
    assert first.inertia < 0.25 * full.inertia
    # A subsample larger than the data is the full data.
    assert np.array_equal(
        fit_kmeans(points, 8, max_points=10**6, seed=9, device="cpu").centroids, full.centroids
    )


def test_large_subsample_is_read_chunk_by_chunk() -> None:
    # More than a quarter of the rows: gathered chunk by chunk at every pass.
    points = _random_points(n=2000, dim=8)
    a = fit_kmeans(points, 6, max_points=1500, seed=1, device="cpu", chunk_size=256)
    b = fit_kmeans(
        torch.from_numpy(points), 6, max_points=1500, seed=1, device="cpu", chunk_size=256
    )
    assert np.array_equal(a.centroids, b.centroids)


def test_given_rows_are_the_fitting_set(tmp_path: Path) -> None:
    points = _random_points(n=2000, dim=8)
    np.save(tmp_path / "points.npy", points)
    mapped = np.load(tmp_path / "points.npy", mmap_mode="r")
    rng = np.random.default_rng(0)
    for size in (300, 1500):  # gathered once / chunk by chunk at every pass (> 1/4 of rows)
        rows = np.sort(rng.choice(2000, size=size, replace=False))
        subset = fit_kmeans(points[rows], 6, seed=1, device="cpu", chunk_size=256)
        # order and repeats of the ids do not matter; a memmap is read in place
        shuffled = np.concatenate([rows[::-1], rows[:10]])
        given = fit_kmeans(mapped, 6, seed=1, device="cpu", chunk_size=256, rows=shuffled)
        assert np.array_equal(given.centroids, subset.centroids), size
        assert given.inertia == subset.inertia
    every = fit_kmeans(points, 6, seed=1, device="cpu", rows=torch.arange(2000))
    assert np.array_equal(every.centroids, fit_kmeans(points, 6, seed=1, device="cpu").centroids)
    with pytest.raises(ValueError, match="not both"):
        fit_kmeans(points, 6, device="cpu", rows=rows, max_points=100)
    with pytest.raises(ValueError, match="row ids"):
        fit_kmeans(points, 6, device="cpu", rows=np.array([0, 2000]))


def test_one_hot_accumulation_matches_index_add() -> None:
    generator = torch.Generator().manual_seed(0)
    chunk = torch.randn(500, 7, generator=generator)
    labels = torch.randint(0, 11, (500,), generator=generator)
    buffer = torch.empty(500, 11)
    by_index = torch.zeros(11, 7)
    by_matmul = torch.zeros(11, 7)
    _accumulate(by_index, chunk, labels, buffer, one_hot=False)
    _accumulate(by_matmul, chunk, labels, buffer, one_hot=True)
    torch.testing.assert_close(by_index, by_matmul, rtol=1e-5, atol=1e-5)


def test_default_device_is_the_cpu_without_a_gpu(monkeypatch) -> None:
    """``device=None`` uses the GPU when one is present, else the CPU; without one it
    gives exactly the CPU result (the GPU path runs in benchmarks/bench_kmeans.py)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    points, truth = _blobs()
    default = fit_kmeans(points, 5, seed=0, device=None, init="k-means++")
    on_cpu = fit_kmeans(points, 5, seed=0, device="cpu", init="k-means++")
    assert np.array_equal(default.centroids, on_cpu.centroids)
    assert adjusted_rand_score(truth, assign_clusters(points, default.centroids)) == 1.0


def test_invalid_arguments() -> None:
    points = _random_points(n=10, dim=3)
    with pytest.raises(ValueError):
        fit_kmeans(points, 11, device="cpu")
    with pytest.raises(ValueError):
        fit_kmeans(points[0], 2, device="cpu")
    with pytest.raises(ValueError):
        fit_kmeans(points, 2, device="cpu", init="kmeans||")
    with pytest.raises(ValueError):
        assign_clusters(points, np.zeros((2, 4), dtype=np.float32), device="cpu")
    with pytest.raises(TypeError):
        fit_kmeans(points.tolist(), 2, device="cpu")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [("iterations", 0), ("points_per_cluster", 0), ("init", "kmeans++"), ("fit_set", "each")],
)
def test_kmeans_settings_refuse_invalid_values(field, value):
    with pytest.raises(ValueError, match=field.replace("_", ".")):
        KMeansSettings(**{field: value})
