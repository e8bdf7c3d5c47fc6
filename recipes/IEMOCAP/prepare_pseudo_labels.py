#!/usr/bin/env python3
"""P-TAPT pseudo-labels for one IEMOCAP fold: phase-1 frame features, k-means
codebooks for each K, and cluster-id sequences aligned to wav2vec2's frames.

Writes into ``--out``: ``labels.npy`` + ``index.json`` (read by
``speechbrain_ptapt.pseudo_labels.labels.PseudoLabelStore``), ``kmeans_<K>.npy``,
``diagnostics.json`` / ``diagnostics.md`` (cluster usage, purity, NMI against
emotion), ``fingerprint.json`` and the feature dump in ``features/``. Rerunning
with the same inputs does nothing; a changed manifest, phase-1 checkpoint, K
list, seed, k-means setting or backbone geometry recomputes what depends on it, and an
interrupted feature dump resumes.

Run (once per fold, on the fold's training manifest)::

    python prepare_pseudo_labels.py \\
        --frame_model results/IEMOCAP/ptapt/fold_1/frame_emotion/final \\
        --manifest results/IEMOCAP/ptapt/manifests/fold_1/train.json \\
        --wav2vec2_hub facebook/wav2vec2-base \\
        --out results/IEMOCAP/ptapt/fold_1/pseudo_labels \\
        --n_clusters 64 512 4096 --device cuda
"""

from __future__ import annotations

import argparse
import sys

import torch
from transformers import Wav2Vec2Config

from speechbrain_ptapt.models.backbone import load_pretrained
from speechbrain_ptapt.protocol.errors import PtaptError
from speechbrain_ptapt.protocol.experiment import configure_stdout_logging
from speechbrain_ptapt.pseudo_labels.kmeans import KMEANS_FIT_SETS, KMEANS_INITS, KMeansSettings
from speechbrain_ptapt.pseudo_labels.labels import prepare_pseudo_labels


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--frame_model",
        required=True,
        help="final folder of the phase-1 model (frame_model.ckpt, frame_model.json)",
    )
    parser.add_argument("--manifest", required=True, help="JSON manifest of the utterances")
    parser.add_argument(
        "--wav2vec2_hub", required=True, help="hub id or folder of the phase-2 wav2vec2"
    )
    parser.add_argument("--out", required=True, help="the pseudo-label folder")
    parser.add_argument("--n_clusters", type=int, nargs="+", default=[64, 512, 4096])
    parser.add_argument("--seed", type=int, default=0, help="k-means seed")
    parser.add_argument("--n_iter", type=int, default=20, help="k-means iterations")
    parser.add_argument(
        "--init",
        default="random",
        choices=KMEANS_INITS,
        help="k-means seeding (random: as faiss in the authors' code)",
    )
    parser.add_argument(
        "--max_points_per_cluster",
        type=int,
        default=1000,
        help="k-means fitting frames per centroid (of the largest K with --fit_set shared)",
    )
    parser.add_argument(
        "--fit_set",
        default="shared",
        choices=KMEANS_FIT_SETS,
        help="k-means fitting frames: shared, one set of whole utterances of up to "
        "max_points_per_cluster * max(K) frames for every K (the authors' cluster.py); "
        "per_k, max_points_per_cluster * K random frames for each K",
    )
    parser.add_argument("--batch_size", type=int, default=1, help="utterances per forward pass")
    parser.add_argument(
        "--device",
        default="cuda:0" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda, cuda:1 ... (default: the GPU when one is present)",
    )
    parser.add_argument("--sample_rate", type=int, default=16000, help="Hz")
    parser.add_argument(
        "--drop_features", action="store_true", help="delete the feature dump at the end"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    """Prepares (or reuses) the pseudo-labels and prints their folder; an error in the
    user's files or settings exits with one ``error:`` line."""
    args = parse_arguments(argv)
    configure_stdout_logging()
    try:
        config = load_pretrained(Wav2Vec2Config, args.wav2vec2_hub)
        kmeans = KMeansSettings(
            iterations=args.n_iter,
            init=args.init,
            points_per_cluster=args.max_points_per_cluster,
            fit_set=args.fit_set,
            seed=args.seed,
        )
        folder = prepare_pseudo_labels(
            args.frame_model,
            args.manifest,
            args.out,
            n_clusters=args.n_clusters,
            wav2vec2_config=config,
            kmeans=kmeans,
            batch_size=args.batch_size,
            device=args.device,
            sample_rate=args.sample_rate,
            keep_features=not args.drop_features,
        )
    except PtaptError as err:
        sys.exit(f"error: {' '.join(str(err).split())}")
    print(folder)


if __name__ == "__main__":
    main(sys.argv[1:])
