#!/usr/bin/env python3
"""The data-efficiency sweep of Chen & Rudnicky (2022), Table 4, on IEMOCAP.

Session 5 is the test set; the four other sessions are halved at random again and
again (nested subsets, drawn per class, the same for every method: ``subset_seed``),
and V-FT, TAPT and P-TAPT are each run on every amount of data, every stage (TAPT,
P-TAPT phase 1, k-means, phase 2, fine-tuning) on the reduced training set. Each
(method, amount) gets its own output folder ``<output_root>/<method>/<amount>``;
then the report with the Table 4 rows and ratio is written to
``<output_root>/report``. Rerunning the command skips everything finished.

    python recipes/IEMOCAP/data_efficiency.py --data_folder=/path/to/IEMOCAP_full_release
    python recipes/IEMOCAP/data_efficiency.py --data_folder=... --device=cuda:0
    python recipes/IEMOCAP/data_efficiency.py --data_folder=... --hours 7 3 1 0.5
    python recipes/IEMOCAP/data_efficiency.py --data_folder=... --dry_run

Defaults: ``train_fraction`` 1, 1/2, 1/4 and 1/8 (the four training sessions hold
about 5.4 h of 4-class audio: about 5.4, 2.7, 1.4 and 0.7 h, the paper's "~7 h,
~3 h, ~1 h, ~0.5 h" columns), 20 runs per amount (paper: 20 on sub-sampled IEMOCAP),
all three methods. ``--hours`` gives ``train_hours`` targets instead (each picks the
halving level nearest on a log scale). Any other ``--key=value`` is passed to every
recipe (yaml overrides and SpeechBrain run options).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = ("vft", "tapt", "ptapt")


def sweep_commands(
    data_folder: str,
    output_root: str,
    methods: Sequence[str] = METHODS,
    hours: Sequence[float] | None = None,
    fractions: Sequence[float] | None = (1.0, 0.5, 0.25, 0.125),
    runs: int = 20,
    fold: str = "5",
    extra: Sequence[str] = (),
) -> list[list[str]]:
    """The recipe command lines of the sweep (run from this folder), amounts of data
    outermost, then methods, followed by the report command.

    Arguments
    ---------
    data_folder : str
        The ``IEMOCAP_full_release`` folder.
    output_root : str
        Parent of every output folder.
    methods : sequence of str
        Among ``vft``, ``tapt``, ``ptapt``.
    hours, fractions : sequence of float
        Amounts of training data: ``train_hours`` targets, or ``train_fraction``
        values (give exactly one of the two).
    runs : int
        Fine-tuning runs per amount.
    fold : str
        The held-out session.
    extra : sequence of str
        ``--key=value`` arguments passed to every recipe.
    """
    if (hours is None) == (fractions is None):
        raise ValueError("Give either hours or fractions.")
    root = Path(output_root).resolve()
    amounts = (
        [(f"--train_hours={h:g}", f"{h:g}h") for h in hours]
        if hours is not None
        else [(f"--train_fraction={f:g}", f"fraction{f:g}") for f in fractions]
    )
    commands = []
    for option, name in amounts:
        for method in methods:
            if method not in METHODS:
                raise ValueError(f"Unknown method {method!r}; choose among {METHODS}.")
            commands.append(
                [
                    sys.executable,
                    f"train_{method}.py",
                    f"hparams/{method}.yaml",
                    f"--data_folder={data_folder}",
                    f"--output_folder={root / method / name}",
                    f"--folds=[{fold}]",
                    f"--runs={runs}",
                    option,
                    *extra,
                ]
            )
    commands.append(
        [
            sys.executable, "-m", "speechbrain_ptapt.analysis.report",
            str(root), "--out", str(root / "report"),
        ]
    )
    return commands


def main(argv: Sequence[str] | None = None) -> int:
    """Runs (or prints, with ``--dry_run``) the sweep; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_folder", required=True, help="the IEMOCAP_full_release folder")
    parser.add_argument(
        "--output_root", default="results/IEMOCAP_data_efficiency", help="parent output folder"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    amounts = parser.add_mutually_exclusive_group()
    amounts.add_argument("--hours", nargs="+", type=float, help="train_hours targets")
    amounts.add_argument("--fractions", nargs="+", type=float, help="train_fraction values")
    parser.add_argument("--runs", type=int, default=20, help="fine-tuning runs per amount")
    parser.add_argument("--fold", default="5", help="held-out session")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    args, extra = parser.parse_known_args(argv)
    fractions = args.fractions or (None if args.hours else [1.0, 0.5, 0.25, 0.125])
    commands = sweep_commands(
        str(Path(args.data_folder).resolve()),
        args.output_root,
        args.methods,
        hours=args.hours,
        fractions=fractions,
        runs=args.runs,
        fold=args.fold,
        extra=extra,
    )
    for command in commands:
        print(shlex.join(command), flush=True)
        if not args.dry_run:
            status = subprocess.run(command, cwd=HERE).returncode
            if status != 0:
                return status
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
