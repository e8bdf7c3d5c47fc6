"""Benchmark of the frame k-means used for P-TAPT pseudo-labels.

Compares, on the same synthetic IEMOCAP-scale frame matrix and for each K:

* ``ours``: :func:`speechbrain_ptapt.pseudo_labels.kmeans.fit_kmeans` (torch, Lloyd,
  uniform random initialisation as faiss; ``--ours-init`` adds more rows,
  e.g. ``k-means++``);
* ``faiss``: ``faiss.Kmeans`` from faiss-cpu, when importable (it is not a
  dependency of the package; the row reads "absent" without it);
* ``sklearn-mbk``: scikit-learn ``MiniBatchKMeans`` set up to be as fast as
  it goes per epoch (see below);
* ``mbk-fairseq``: ``MiniBatchKMeans`` as fairseq's HuBERT ``simple_kmeans``
  (``learn_kmeans.py``) runs it, the k-means most speech pipelines use for
  pseudo-labels: ``init="k-means++"``, ``n_init=20``, ``batch_size=10000``,
  ``reassignment_ratio=0``, ``tol=0``; only ``max_iter`` is set to
  ``--iters`` and early stopping is off so that it does the same number of
  epochs as the others.

Data. ``--frames`` rows x ``--dim`` columns of float32 (default 1 260 000 x
512, about 7 h of audio at 50 frames/s, 2.4 GiB), drawn reproducibly from
``--seed``: a Gaussian mixture of ``--components`` components (Dirichlet
weights, N(0, I) means, per-component isotropic standard deviations in
[0.3, 0.8]) with 5 % of the rows replaced by broad N(0, 4 I) background noise.
The matrix is written once to a ``.npy`` file (reused while its parameters do
not change) and every method reads that file.

Same work for every method. All methods fit on the same number of rows,
``min(frames, max_points_per_centroid * K)`` (P-TAPT: 1000 * K, the faiss
setup of the original code), each drawing its own subsample from the seed:
``max_points`` for ours, ``max_points_per_centroid`` for faiss, a seeded
uniform draw (inside the timed region) for MiniBatchKMeans. ``--iters``
iterations means: Lloyd passes for ours and faiss; epochs (full passes over the
fitting rows) for MiniBatchKMeans, i.e. ``max_iter=iters`` with
``tol=0, max_no_improvement=None``, so every method computes the same number of
point-to-centroid distance blocks. MiniBatchKMeans uses ``init="random"`` like
the others (``--mbk-init k-means++`` restores the library default, whose
seeding alone costs minutes at K=4096),
``n_init=1``, ``compute_labels=False`` and ``--mbk-batch-size`` (default 4096,
faster per epoch here than the library default of 1024).

Measurements. Each (method, K) runs in a fresh subprocess that imports its
library, loads the frames into RAM, resets the kernel's RSS high-water mark
(``/proc/self/clear_refs``), then fits. *fit s* is the wall time of the fit
call alone and *cpu s* the process's user + system CPU time during it (less
sensitive than wall time when other jobs share the cores; *load* is the 1-min
load average when the fit started). *peak+ MiB* is the RSS high-water mark
during the fit minus the RSS just before it (the memory the method needs on
top of the loaded frames, its own libraries and interpreter). *mem/frames* is
``(frames + peak+) / frames``.
*inertia* is computed afterwards by one shared function for every method: the
sum over ALL frames (not only the fitting rows) of the squared distance to the
nearest returned centroid (float32 matrix product for the arg-min, float64 for
the exact distance of the chosen centroid).

Usage::

    python benchmarks/bench_kmeans.py --frames 200000            # quick
    python benchmarks/bench_kmeans.py | tee benchmarks/results/kmeans_cpu.txt
    python benchmarks/bench_kmeans.py --device cuda              # ours on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
GEN_CHUNK_ROWS = 65536
OUTLIER_FRACTION = 0.05


# --------------------------------------------------------------------- data
def make_frames(path: Path, n_frames: int, dim: int, n_components: int, seed: int) -> None:
    """Write synthetic clustered frames to ``path`` (.npy, shape (n_frames, dim), float32).

    Generated in blocks of ``GEN_CHUNK_ROWS`` rows from one ``np.random.Generator``
    seeded with ``seed``, so the content depends only on the arguments.
    """
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_components, dim), dtype=np.float32)
    weights = rng.dirichlet(np.ones(n_components))
    sigmas = rng.uniform(0.3, 0.8, n_components).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_frames, dim))
    for start in range(0, n_frames, GEN_CHUNK_ROWS):
        rows = min(GEN_CHUNK_ROWS, n_frames - start)
        comp = rng.choice(n_components, size=rows, p=weights)
        block = rng.standard_normal((rows, dim), dtype=np.float32)
        block *= sigmas[comp, None]
        block += means[comp]
        outlier = rng.random(rows) < OUTLIER_FRACTION
        block[outlier] = 2.0 * rng.standard_normal((int(outlier.sum()), dim), dtype=np.float32)
        out[start : start + rows] = block
    out.flush()
    del out


def shared_inertia(frames: np.ndarray, centroids: np.ndarray, chunk_rows: int = 8192) -> float:
    """Sum over all rows of ``frames`` (N, D) of the squared distance to the nearest centroid.

    The nearest centroid (of ``centroids``, (K, D)) is found with a float32
    matrix product; its squared distance is then recomputed exactly in
    float64. Returns squared feature units.
    """
    import torch

    cent = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))
    cent64 = cent.double()
    cnorm = cent.square().sum(1)
    total = 0.0
    for start in range(0, frames.shape[0], chunk_rows):
        x = torch.from_numpy(np.array(frames[start : start + chunk_rows], dtype=np.float32))
        labels = torch.addmm(cnorm.unsqueeze(0), x, cent.t(), alpha=-2.0).argmin(dim=1)
        diff = x.double() - cent64.index_select(0, labels)
        total += float(diff.square().sum())
    return total


# ------------------------------------------------------------------ workers
def _rss_kib(field: str) -> int:
    """Value of ``field`` (e.g. VmRSS, VmHWM) in /proc/self/status, KiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset this process's RSS high-water mark; False when the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def run_worker(spec: dict) -> dict:
    """Fit one method on the frames in ``spec["data"]``; return timings and memory.

    Runs in a fresh process. Centroids are written to ``spec["centroids_out"]``.
    """
    method: str = spec["method"]
    threads: int = spec["threads"]
    k: int = spec["k"]
    iters: int = spec["iters"]
    n_fit: int = spec["n_fit"]
    seed: int = spec["seed"]
    info: dict = {}

    if method.startswith("ours"):
        import torch

        sys.path.insert(0, str(REPO_ROOT))
        from speechbrain_ptapt.pseudo_labels.kmeans import fit_kmeans

        torch.set_num_threads(threads)
    elif method == "faiss":
        import faiss

        faiss.omp_set_num_threads(threads)
    elif method in ("sklearn-mbk", "mbk-fairseq"):
        from sklearn.cluster import MiniBatchKMeans
        from threadpoolctl import threadpool_limits
    else:
        raise ValueError(method)

    frames = np.load(spec["data"])
    n_frames, dim = frames.shape
    reset_ok = _reset_peak()
    base = _rss_kib("VmRSS")

    load_before = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if method.startswith("ours"):
        result = fit_kmeans(
            frames,
            k,
            n_iter=iters,
            max_points=n_fit,
            seed=seed,
            device=spec["device"],
            init=spec["init"],
        )
        centroids = result.centroids
        info["passes"] = result.n_iter
    elif method == "faiss":
        km = faiss.Kmeans(
            dim,
            k,
            niter=iters,
            seed=seed,
            max_points_per_centroid=spec["max_points_per_centroid"],
            verbose=False,
        )
        km.train(frames)
        centroids = np.array(km.centroids, dtype=np.float32)
        info["passes"] = iters
    else:
        with threadpool_limits(limits=threads):
            if n_fit < n_frames:
                rng = np.random.default_rng(seed)
                rows = np.sort(rng.choice(n_frames, size=n_fit, replace=False))
                fit_rows = frames[rows]
            else:
                fit_rows = frames
            if method == "mbk-fairseq":
                settings = {"init": "k-means++", "n_init": 20, "batch_size": 10000}
                settings["reassignment_ratio"] = 0.0
            else:
                settings = {"init": spec["mbk_init"], "n_init": 1}
                settings["batch_size"] = spec["mbk_batch_size"]
            mbk = MiniBatchKMeans(
                n_clusters=k,
                max_iter=iters,
                tol=0.0,
                max_no_improvement=None,
                compute_labels=False,
                random_state=seed,
                **settings,
            )
            mbk.fit(fit_rows)
        centroids = mbk.cluster_centers_.astype(np.float32)
        info["passes"] = f"{mbk.n_steps_} steps"
    fit_s = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)

    peak = _rss_kib("VmHWM")
    np.save(spec["centroids_out"], centroids)
    info.update(
        fit_s=fit_s,
        cpu_s=cpu_s,
        load=load_before,
        peak_extra_mib=max(peak - base, 0) / 1024.0,
        peak_reset=reset_ok,
        frames_mib=frames.nbytes / 2**20,
    )
    return info


def launch(spec: dict, threads: int) -> dict:
    """Run :func:`run_worker` for ``spec`` in a fresh interpreter and parse its result."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": "no result printed"}


# ------------------------------------------------------------------- driver
def faiss_available() -> str | None:
    """faiss version string when faiss can be imported in a subprocess, else None."""
    proc = subprocess.run(
        [sys.executable, "-c", "import faiss; print(faiss.__version__)"],
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def _verdict(wall_ok: bool, cpu_ok: bool) -> str:
    """'ok', 'MISSED' or a split verdict for a target checked on wall and CPU time."""
    if wall_ok and cpu_ok:
        return "ok"
    if not wall_ok and not cpu_ok:
        return "MISSED"
    return "ok on cpu time only" if cpu_ok else "ok on wall time only"


def _fmt_ratio(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, build the frames, run every method for every K, print tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_260_000, help="rows N")
    parser.add_argument("--dim", type=int, default=512, help="columns D")
    parser.add_argument("--components", type=int, default=3000, help="mixture components")
    parser.add_argument("--ks", type=int, nargs="+", default=[64, 512, 4096])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--max-points-per-centroid", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="device of ours: cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's count")
    parser.add_argument(
        "--methods", nargs="+", default=["ours", "faiss", "sklearn-mbk", "mbk-fairseq"]
    )
    parser.add_argument(
        "--ours-init", nargs="+", default=["random"], help="init modes of ours to time"
    )
    parser.add_argument("--mbk-batch-size", type=int, default=4096)
    parser.add_argument(
        "--mbk-init",
        default="random",
        choices=["random", "k-means++"],
        help="MiniBatchKMeans init (its library default is k-means++)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where the .npy goes")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        print(json.dumps(run_worker(json.loads(args.worker))), flush=True)
        return

    import sklearn
    import torch

    threads = args.threads or torch.get_num_threads()
    device = None if args.device == "auto" else args.device
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    faiss_version = faiss_available()

    workdir = args.workdir or Path(tempfile.gettempdir()) / "bench_kmeans"
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / (f"frames_n{args.frames}_d{args.dim}_c{args.components}_s{args.seed}.npy")
    if not data.exists():
        t0 = time.perf_counter()
        tmp = data.with_suffix(".tmp.npy")
        make_frames(tmp, args.frames, args.dim, args.components, args.seed)
        tmp.rename(data)
        print(f"# synthesized {data.name} in {time.perf_counter() - t0:.1f} s", flush=True)
    frames = np.load(data, mmap_mode="r")
    frames_mib = frames.nbytes / 2**20

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(
        f"# k-means benchmark: {args.frames} frames x {args.dim} float32 ({frames_mib:.0f} MiB), "
        f"{args.components}-component mixture + {OUTLIER_FRACTION:.0%} noise, seed {args.seed}"
    )
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{threads} threads for every method; GPU: {gpu}; ours on {device}"
    )
    print(
        f"# python {platform.python_version()}, torch {torch.__version__}, "
        f"scikit-learn {sklearn.__version__}, numpy {np.__version__}, "
        f"faiss-cpu {faiss_version or 'absent (pip install faiss-cpu to compare)'}"
    )
    print(
        f"# {args.iters} iterations = Lloyd passes (ours, faiss) = epochs over the fitting rows "
        f"(MiniBatchKMeans, batch {args.mbk_batch_size}, init {args.mbk_init}); fitting rows = "
        f"min(N, {args.max_points_per_centroid} * K)"
    )
    print(
        "# fit s / cpu s: wall / user+sys CPU time of the fit call (load: 1-min load average at "
        "its start; other jobs sharing the cores inflate wall time); peak+ MiB: RSS high-water "
        "mark during the fit minus RSS before it, fresh process with the frames loaded in RAM; "
        "mem/frames = (frames + peak+) / frames; inertia: same function for all, over ALL frames"
    )
    print(flush=True)

    methods: list[tuple[str, str]] = []  # (label, worker method)
    for name in args.methods:
        if name == "ours":
            for init in args.ours_init:
                label = "ours" if init == "random" else f"ours ({init})"
                methods.append((label, "ours:" + init))
        else:
            methods.append((name, name))

    for k in args.ks:
        n_fit = min(args.frames, args.max_points_per_centroid * k)
        rows: dict[str, dict] = {}
        for label, method in methods:
            if method == "faiss" and faiss_version is None:
                rows[label] = {"absent": True}
                continue
            out = workdir / f"centroids_{method.replace(':', '_')}_k{k}.npy"
            spec = {
                "method": method.split(":")[0] if method.startswith("ours") else method,
                "init": method.split(":")[1] if method.startswith("ours") else "random",
                "data": str(data),
                "k": k,
                "iters": args.iters,
                "n_fit": n_fit,
                "seed": args.seed,
                "device": device,
                "threads": threads,
                "max_points_per_centroid": args.max_points_per_centroid,
                "mbk_batch_size": args.mbk_batch_size,
                "mbk_init": args.mbk_init,
                "centroids_out": str(out),
            }
            res = launch(spec, threads)
            if "error" not in res:
                res["inertia"] = shared_inertia(frames, np.load(out))
            rows[label] = res
            status = res.get("error") or f"{res['fit_s']:.1f} s"
            print(f"# K={k} {label}: {status}", file=sys.stderr, flush=True)

        ref = rows.get("faiss", {})
        mbk = rows.get("sklearn-mbk", {})
        mbk_fs = rows.get("mbk-fairseq", {})
        print(
            f"K={k}: fit on {n_fit} of {args.frames} frames, {args.iters} iterations, "
            f"frame matrix {frames_mib:.0f} MiB"
        )
        header = (
            f"{'method':<20}{'fit s':>8}{'cpu s':>8}{'load':>6}{'passes':>12}{'peak+ MiB':>10}"
            f"{'mem/frames':>11}{'inertia (all frames)':>21}{'inertia/faiss':>14}"
            f"{'time/faiss':>11}{'cpu/faiss':>10}{'MBK time/this':>14}{'MBK cpu/this':>13}"
            f"{'MBK-fs time/this':>17}{'MBK-fs cpu/this':>16}"
        )
        print(header)
        print("-" * len(header))
        for label, res in rows.items():
            if res.get("absent"):
                print(f"{label:<20}{'absent (faiss-cpu not importable)':>40}")
                continue
            if "error" in res:
                print(f"{label:<20} failed: {res['error']}")
                continue
            ratios: dict[str, float | None] = dict.fromkeys(
                ("inertia", "time", "cpu", "mt", "mc", "ft", "fc")
            )
            if "inertia" in ref:
                ratios["inertia"] = res["inertia"] / ref["inertia"]
                ratios["time"] = res["fit_s"] / ref["fit_s"]
                ratios["cpu"] = res["cpu_s"] / ref["cpu_s"]
            if "fit_s" in mbk:
                ratios["mt"] = mbk["fit_s"] / res["fit_s"]
                ratios["mc"] = mbk["cpu_s"] / res["cpu_s"]
            if "fit_s" in mbk_fs:
                ratios["ft"] = mbk_fs["fit_s"] / res["fit_s"]
                ratios["fc"] = mbk_fs["cpu_s"] / res["cpu_s"]
            mem_ratio = (frames_mib + res["peak_extra_mib"]) / frames_mib
            print(
                f"{label:<20}{res['fit_s']:>8.1f}{res['cpu_s']:>8.1f}{res['load']:>6.1f}"
                f"{str(res['passes']):>12}{res['peak_extra_mib']:>10.0f}{mem_ratio:>11.2f}"
                f"{res['inertia']:>21.6e}{_fmt_ratio(ratios['inertia'], 4):>14}"
                f"{_fmt_ratio(ratios['time']):>11}{_fmt_ratio(ratios['cpu']):>10}"
                f"{_fmt_ratio(ratios['mt'], 1):>14}{_fmt_ratio(ratios['mc'], 1):>13}"
                f"{_fmt_ratio(ratios['ft'], 1):>17}{_fmt_ratio(ratios['fc'], 1):>16}"
            )
        ours = rows.get("ours", {})
        if "fit_s" in ours:
            checks = []
            if "fit_s" in ref:
                t = ours["fit_s"] / ref["fit_s"]
                c = ours["cpu_s"] / ref["cpu_s"]
                e = ours["inertia"] / ref["inertia"] - 1.0
                checks.append(
                    f"time/faiss {t:.2f} wall, {c:.2f} cpu (<= 1.5: {_verdict(t <= 1.5, c <= 1.5)})"
                )
                checks.append(
                    f"inertia vs faiss {e:+.2%} (<= +1 %: {_verdict(e <= 0.01, e <= 0.01)})"
                )
            if "fit_s" in mbk:
                t = mbk["fit_s"] / ours["fit_s"]
                c = mbk["cpu_s"] / ours["cpu_s"]
                checks.append(
                    f"MBK/ours {t:.1f}x wall, {c:.1f}x cpu (>= 5: {_verdict(t >= 5, c >= 5)})"
                )
            if "fit_s" in mbk_fs:
                t = mbk_fs["fit_s"] / ours["fit_s"]
                c = mbk_fs["cpu_s"] / ours["cpu_s"]
                checks.append(
                    f"MBK-fairseq/ours {t:.1f}x wall, {c:.1f}x cpu "
                    f"(>= 5: {_verdict(t >= 5, c >= 5)})"
                )
            m = (frames_mib + ours["peak_extra_mib"]) / frames_mib
            checks.append(f"mem/frames {m:.2f} (<= 1.5: {_verdict(m <= 1.5, m <= 1.5)})")
            if not ours.get("peak_reset", True):
                checks.append("(RSS peak could not be reset: peak+ includes loading)")
            print("targets: " + "; ".join(checks))
        print(flush=True)


if __name__ == "__main__":
    main()
