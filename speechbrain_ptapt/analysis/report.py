"""Comparison report of several experiments (methods x datasets x amounts of training
data), shaped like Chen & Rudnicky (2022), Tables 1, 2 and 4.

    python -m speechbrain_ptapt.analysis.report results/IEMOCAP/vft results/IEMOCAP/tapt \\
        results/IEMOCAP/ptapt --out report/

Each argument is a ``summary.json``, a folder holding one, or a folder searched
recursively for them (e.g. a whole data-efficiency sweep). ``report/report.md`` and
``report/report.json`` get:

- per dataset and amount of training data, one table per metric (UA, WA,
  macro-F1): rows = methods, columns = folds + mean; a cell is the mean ± sample
  std over the fold's kept runs (discarded outlier runs are left out), the mean is
  over folds (the paper's "Mean");
- a bootstrap 95 % confidence interval of each method's mean UA
  (``scipy.stats.bootstrap``, percentile method): the kept runs of every fold are
  resampled with replacement (as many as the fold has), the fold means averaged
  over folds, ``--resamples`` times (default 10 000) with a generator seeded by
  ``--seed`` (default 0, the same seed for every method); the bounds are the 2.5
  and 97.5 percentiles (linear interpolation). It measures the run-to-run (seed)
  uncertainty of the mean for these folds;
- a paired comparison of every two methods over their common folds: per-fold
  differences of the mean UA, their mean, the bootstrap 95 % CI of the mean
  difference (runs resampled within folds for both methods), an exact two-sided
  sign-flip permutation test over folds (``scipy.stats.permutation_test``, all
  ``2**F`` sign patterns; with 5 folds the smallest possible p is 2/32 = 0.0625,
  with 4 it is 0.125) and a two-sided paired t-test over folds
  (``scipy.stats.ttest_rel``, ``F - 1`` degrees of freedom);
- the summed confusion matrices (over folds and kept runs);
- when a dataset has several amounts of training data (``train_fraction`` /
  ``train_hours``), the data-efficiency table (Table 4) on the folds common to all
  its cells, with the ratio ``(TAPT - V-FT) / (P-TAPT - V-FT) x 100 %``;
- PNG figures (UA per fold, confusion matrices, UA vs training hours) when
  matplotlib is installed (``pip install speechbrain-ptapt[report]``); without it
  the tables are still written and the report says the figures were skipped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from speechbrain_ptapt.analysis.naming import METHOD_NAMES, fold_label

#: Row order of known methods.
METHOD_ORDER = ("vft", "tapt", "ptapt")
METRIC_NAMES = {"ua": "UA", "wa": "WA", "macro_f1": "macro-F1"}
#: Largest number of folds for which the sign-flip test enumerates every pattern.
EXACT_SIGN_FLIP_FOLDS = 20


# ----------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof = 1``; 0 for one value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def bootstrap_ci(
    fold_values: Mapping[str, Sequence[float]],
    resamples: int = 10000,
    seed: int = 0,
    level: float = 0.95,
    minus: Mapping[str, Sequence[float]] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap ``level`` interval of the mean over folds of the fold means
    (minus the same mean of ``minus``), resampling the runs within each fold.

    ``scipy.stats.bootstrap`` with one sample per fold (``paired=False``) resamples
    every fold's runs independently with replacement, as many as it has; the bounds
    are the linear-interpolated quantiles of its bootstrap distribution. scipy needs
    at least two values per sample, so folds whose runs are all equal (one run, or
    no spread) enter as the constant they are.

    Arguments
    ---------
    fold_values : mapping
        fold -> values of its kept runs (e.g. UA fractions).
    resamples : int
        Number of bootstrap resamples.
    seed : int
        Seed of the ``numpy.random.default_rng`` that draws every resample.
    level : float
        Confidence level.
    minus : mapping, optional
        A second method's fold -> values, resampled likewise, for the interval of the
        difference of the two means over folds.

    Returns
    -------
    tuple of float
        ``(low, high)``.
    """
    constant, samples, weights = 0.0, [], []
    for sign, folds in ((1.0, fold_values), (-1.0, minus or {})):
        for values in folds.values():
            v = np.asarray(values, dtype=float)
            if v.size > 1 and np.ptp(v) > 0:
                samples.append(v)
                weights.append(sign / len(folds))
            else:
                constant += sign * float(v.mean()) / len(folds)
    if not samples:
        return constant, constant

    def mean_over_folds(*resampled: np.ndarray, axis: int = -1) -> np.ndarray:
        return constant + sum(w * s.mean(axis=axis) for w, s in zip(weights, resampled))

    result = stats.bootstrap(
        tuple(samples),
        mean_over_folds,
        n_resamples=resamples,
        vectorized=True,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def sign_flip_test(differences: Sequence[float], resamples: int = 100000, seed: int = 0) -> float:
    """Two-sided paired permutation test of a zero mean difference over folds
    (``scipy.stats.permutation_test`` of one sample with ``permutation_type='samples'``,
    which flips the signs of the per-fold differences).

    Exact (all ``2**F`` sign patterns) up to ``EXACT_SIGN_FLIP_FOLDS`` folds, else
    ``resamples`` random patterns drawn with ``seed``.

    Arguments
    ---------
    differences : sequence of float
        Per-fold differences between two methods.

    Returns
    -------
    float
        The p-value (1 when every difference is 0; NaN without differences).
    """
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        return float("nan")
    result = stats.permutation_test(
        (d,),
        np.mean,
        permutation_type="samples",
        vectorized=True,
        n_resamples=np.inf if d.size <= EXACT_SIGN_FLIP_FOLDS else resamples,
        rng=np.random.default_rng(seed),
    )
    return float(result.pvalue)


def paired_t_test(b: Sequence[float], a: Sequence[float]) -> tuple[float, float] | None:
    """Two-sided paired t-test over folds of ``b`` against ``a`` (``scipy.stats.ttest_rel``).

    Returns ``(t, p)``, or None with fewer than 2 folds. Equal differences, for which
    scipy's t is undefined, give ``t = ±inf, p = 0`` (``t = 0, p = 1`` when they are 0).
    """
    if len(b) < 2:
        return None
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        mean = float(d.mean())
        return (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
    result = stats.ttest_rel(b, a)
    return float(result.statistic), float(result.pvalue)


def improvement_ratio(vft: float, tapt: float, ptapt: float) -> float | None:
    """Table 4's ratio, in percent: ``(TAPT - V-FT) / (P-TAPT - V-FT) x 100`` (lower:
    P-TAPT's gain over V-FT is the larger); None when P-TAPT equals V-FT."""
    gain = ptapt - vft
    if abs(gain) < 1e-12:
        return None
    return 100.0 * (tapt - vft) / gain


# ----------------------------------------------------------------------------
# Reading summaries
# ----------------------------------------------------------------------------


@dataclass
class Experiment:
    """One summary, reduced to what the report needs.

    Attributes
    ----------
    method, dataset : str
        E.g. ``"tapt"``, ``"IEMOCAP"``.
    source : str
        The summary file.
    folds : dict
        fold -> kept run results (``ua``, ``wa``, ``macro_f1``, maybe ``confusion``).
    discarded : list of dict
        ``{"fold", "seed", "ua", "reason"}`` of every discarded run.
    amount : tuple
        Grouping key of the training data: ``("fraction", f)`` or ``("hours", h)``.
    hours : dict
        fold -> hours of training audio, when recorded.
    classes : list of str
        Class names, when recorded.
    label : str
        Row label (method name, plus the folder when two rows would share it).
    """

    method: str
    dataset: str
    source: str
    folds: dict[str, list[dict[str, Any]]]
    discarded: list[dict[str, Any]] = field(default_factory=list)
    amount: tuple[str, float] = ("fraction", 1.0)
    hours: dict[str, float] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    label: str = ""

    def fold_means(self, key: str = "ua") -> dict[str, float]:
        """fold -> mean over kept runs of ``key``."""
        return {f: mean_std([r[key] for r in runs])[0] for f, runs in self.folds.items()}

    def values(self, key: str = "ua", folds: Sequence[str] | None = None) -> dict[str, list]:
        """fold -> ``key`` of every kept run, for ``folds`` (default all)."""
        folds = list(self.folds) if folds is None else folds
        return {f: [float(r[key]) for r in self.folds[f]] for f in folds}


def find_summaries(paths: Sequence[str | Path]) -> list[Path]:
    """The summary files named by the command line (see the module docstring)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif (path / "summary.json").is_file():
            found.append(path / "summary.json")
        elif path.is_dir():
            nested = sorted(path.rglob("summary.json"))
            if not nested:
                raise FileNotFoundError(f"No summary.json in {path} or below it.")
            found.extend(nested)
        else:
            raise FileNotFoundError(f"{path} does not exist.")
    unique: list[Path] = []
    for path in found:
        if path.resolve() not in {p.resolve() for p in unique}:
            unique.append(path)
    return unique


def _amount(summary: Mapping[str, Any]) -> tuple[str, float]:
    fractions = {
        float(f["train_fraction"]) for f in summary["folds"].values() if "train_fraction" in f
    }
    train = summary.get("train_data") or {}
    if len(fractions) > 1 and train.get("train_hours") is not None:
        return ("hours", float(train["train_hours"]))
    if fractions:
        return ("fraction", fractions.pop())
    return ("fraction", float(train.get("train_fraction") or 1.0))


def experiment_from_summary(summary: Mapping[str, Any], source: str) -> Experiment:
    """An :class:`Experiment` from a summary dict as
    :func:`speechbrain_ptapt.protocol.experiment.summarize` writes it."""
    folds, discarded, hours = {}, [], {}
    for fold, entry in summary["folds"].items():
        kept = []
        for run in entry["runs"]:
            if run.get("discarded"):
                discarded.append(
                    {
                        "fold": fold,
                        "seed": run.get("seed"),
                        "ua": run.get("ua"),
                        "reason": run.get("reason", ""),
                    }
                )
            else:
                kept.append(run)
        if kept:
            folds[str(fold)] = kept
        if "train_hours" in entry:
            hours[str(fold)] = float(entry["train_hours"])
    return Experiment(
        method=str(summary["method"]),
        dataset=str(summary["dataset"]),
        source=source,
        folds=folds,
        discarded=discarded,
        amount=_amount(summary),
        hours=hours,
        classes=list(summary.get("classes") or []),
    )


def load_experiments(paths: Sequence[str | Path]) -> list[Experiment]:
    """Reads every summary; labels rows by method name, adding the summary's folder
    when two experiments of one dataset and amount of data share a method."""
    experiments = []
    for path in find_summaries(paths):
        with open(path, encoding="utf-8") as f:
            experiments.append(experiment_from_summary(json.load(f), str(path)))
    counts: dict[tuple, int] = {}
    for e in experiments:
        key = (e.dataset, e.amount, e.method)
        counts[key] = counts.get(key, 0) + 1
    for e in experiments:
        name = METHOD_NAMES.get(e.method, e.method)
        duplicated = counts[(e.dataset, e.amount, e.method)] > 1
        e.label = f"{name} ({Path(e.source).parent.name})" if duplicated else name
    return experiments


# ----------------------------------------------------------------------------
# The report's numbers
# ----------------------------------------------------------------------------


def _method_order(method: str) -> tuple[int, str]:
    """Sort key of a method: V-FT, TAPT, P-TAPT, then others by name."""
    known = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return known, method


def _order(e: Experiment) -> tuple:
    return (*_method_order(e.method), e.label)


def _amount_order(amount: tuple[str, float]) -> tuple[int, float]:
    """Sort key of amounts of data: fractions from all to least, then hour targets."""
    kind, value = amount
    return (0, -value) if kind == "fraction" else (1, -value)


def _amount_label(amount: tuple[str, float], hours: float | None) -> str:
    kind, value = amount
    if kind == "hours":
        text = f"target {value:g} h"
    elif value == 1.0:
        text = "all training data"
    else:
        level = -math.log2(value)
        text = f"1/{2 ** round(level)}" if abs(level - round(level)) < 1e-9 else f"{value:g}"
        text += " of the training data"
    return text if hours is None else f"{text}, {hours:.2f} h"


def _mean_hours(experiments: Sequence[Experiment], folds: Sequence[str]) -> float | None:
    values = [e.hours[f] for e in experiments for f in folds if f in e.hours]
    return statistics.fmean(values) if values else None


def summed_confusion(e: Experiment) -> list[list[int]] | None:
    """The confusion matrix summed over folds and kept runs (None if not recorded)."""
    matrices = [r["confusion"] for runs in e.folds.values() for r in runs if "confusion" in r]
    if not matrices:
        return None
    return np.sum(np.asarray(matrices, dtype=np.int64), axis=0).tolist()


def method_entry(e: Experiment, resamples: int, seed: int) -> dict[str, Any]:
    """One table row: per-fold mean ± std of every metric, the mean over folds, the
    bootstrap CI of the mean UA, run counts, discards and the summed confusion."""
    folds = {}
    for fold, runs in e.folds.items():
        entry: dict[str, Any] = {"kept_runs": len(runs)}
        for key in METRIC_NAMES:
            entry[key], entry[f"{key}_std"] = mean_std([r[key] for r in runs])
        if fold in e.hours:
            entry["train_hours"] = e.hours[fold]
        folds[fold] = entry
    mean = {key: statistics.fmean(f[key] for f in folds.values()) for key in METRIC_NAMES}
    for key in METRIC_NAMES:
        mean[f"{key}_run_std"] = math.sqrt(
            statistics.fmean(f[f"{key}_std"] ** 2 for f in folds.values())
        )
    return {
        "label": e.label,
        "method": e.method,
        "source": e.source,
        "classes": e.classes,
        "folds": folds,
        "mean": mean,
        "ua_ci95": list(bootstrap_ci(e.values("ua"), resamples, seed)),
        "discarded": e.discarded,
        "confusion": summed_confusion(e),
    }


def compare(a: Experiment, b: Experiment, resamples: int, seed: int) -> dict[str, Any] | None:
    """Paired comparison of ``b`` against ``a`` over their common folds (UA), or None
    when they share no fold."""
    folds = [f for f in a.folds if f in b.folds]
    if not folds:
        return None
    ma, mb = a.fold_means("ua"), b.fold_means("ua")
    differences = [mb[f] - ma[f] for f in folds]
    ci = bootstrap_ci(b.values("ua", folds), resamples, seed, minus=a.values("ua", folds))
    t_test = paired_t_test([mb[f] for f in folds], [ma[f] for f in folds])
    over_folds = len(folds) >= 2
    return {
        "a": a.label,
        "b": b.label,
        "folds": folds,
        "differences": dict(zip(folds, differences)),
        "mean_difference": statistics.fmean(differences),
        "ci95": list(ci),
        "sign_flip_p": sign_flip_test(differences, seed=seed) if over_folds else None,
        "t": None if t_test is None else t_test[0],
        "t_p": None if t_test is None else t_test[1],
    }


def _ratio(entries: Mapping[str, float]) -> float | None:
    if all(m in entries for m in METHOD_ORDER):
        return improvement_ratio(entries["vft"], entries["tapt"], entries["ptapt"])
    return None


def _unique_methods(experiments: Sequence[Experiment]) -> dict[str, Experiment] | None:
    by_method: dict[str, Experiment] = {}
    for e in experiments:
        if e.method in by_method:
            return None
        by_method[e.method] = e
    return by_method


def build_report(
    experiments: Sequence[Experiment], resamples: int = 10000, seed: int = 0
) -> dict[str, Any]:
    """Every number of the report (fractions in [0, 1]; the ratio in percent).

    Arguments
    ---------
    experiments : sequence of Experiment
        From :func:`load_experiments`.
    resamples : int
        Bootstrap resamples.
    seed : int
        Bootstrap / permutation seed.

    Returns
    -------
    dict
        ``{"bootstrap", "groups": [...], "data_efficiency": [...]}`` (see report.json).
    """
    groups: dict[tuple, list[Experiment]] = {}
    for e in experiments:
        groups.setdefault((e.dataset, e.amount), []).append(e)
    report: dict[str, Any] = {
        "bootstrap": {
            "resamples": resamples,
            "seed": seed,
            "level": 0.95,
            "scheme": "kept runs resampled with replacement within each fold; mean over "
            "folds of the fold means; 2.5 and 97.5 percentiles",
        },
        "groups": [],
        "data_efficiency": [],
    }
    datasets = list(dict.fromkeys(e.dataset for e in experiments))
    ordered = sorted(
        groups.items(), key=lambda item: (datasets.index(item[0][0]), _amount_order(item[0][1]))
    )
    for (dataset, amount), members in ordered:
        members = sorted(members, key=_order)
        folds: list[str] = []
        for e in members:
            folds += [f for f in e.folds if f not in folds]
        rows = [method_entry(e, resamples, seed) for e in members]
        comparisons = [
            c
            for a, b in itertools.combinations(members, 2)
            if (c := compare(a, b, resamples, seed)) is not None
        ]
        means = (
            {e.method: row["mean"]["ua"] for e, row in zip(members, rows)}
            if _unique_methods(members)
            else {}
        )
        hours = _mean_hours(members, folds)
        report["groups"].append(
            {
                "dataset": dataset,
                "amount": {
                    "kind": amount[0],
                    "value": amount[1],
                    "hours": hours,
                    "label": _amount_label(amount, hours),
                },
                "folds": folds,
                "methods": rows,
                "comparisons": comparisons,
                "improvement_ratio": _ratio(means),
            }
        )
    for dataset in dict.fromkeys(e.dataset for e in experiments):
        entry = data_efficiency([e for e in experiments if e.dataset == dataset], dataset)
        if entry is not None:
            report["data_efficiency"].append(entry)
    return report


def data_efficiency(experiments: Sequence[Experiment], dataset: str) -> dict[str, Any] | None:
    """Table 4 for one dataset: mean UA of each method at each amount of training
    data, on the folds common to every cell, and the improvement ratio per amount.
    None when the dataset has a single amount of data."""
    amounts: dict[tuple, list[Experiment]] = {}
    for e in experiments:
        amounts.setdefault(e.amount, []).append(e)
    if len(amounts) < 2:
        return None
    entry: dict[str, Any] = {"dataset": dataset}
    by_amount = {a: _unique_methods(m) for a, m in amounts.items()}
    clashes = [a for a, m in by_amount.items() if m is None]
    if clashes:
        entry["skipped"] = (
            "several summaries of one method at the same amount of data: "
            + "; ".join(", ".join(e.source for e in amounts[a]) for a in clashes)
        )
        return entry
    common = None
    for members in amounts.values():
        for e in members:
            common = [f for f in (common if common is not None else e.folds) if f in e.folds]
    if not common:
        entry["skipped"] = "no fold is common to every method and amount of data"
        return entry
    columns = []
    for amount, members in amounts.items():
        hours = _mean_hours(members, common)
        ua = {
            m: statistics.fmean(e.fold_means("ua")[f] for f in common)
            for m, e in by_amount[amount].items()
        }
        columns.append(
            {
                "kind": amount[0],
                "value": amount[1],
                "hours": hours,
                "label": f"~{hours:.1f} h" if hours is not None else _amount_label(amount, None),
                "ua": ua,
                "ratio": _ratio(ua),
            }
        )
    columns.sort(key=lambda c: (c["hours"] if c["hours"] is not None else math.inf, c["value"]))
    methods = sorted({m for c in columns for m in c["ua"]}, key=_method_order)
    entry.update({"folds": common, "methods": methods, "columns": columns})
    return entry


# ----------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def _p(p: float | None) -> str:
    return "-" if p is None or math.isnan(p) else f"{p:.3f}"


def group_markdown(group: Mapping[str, Any], key: str) -> list[str]:
    """One metric's table of a group: methods x (folds + mean)."""
    label = fold_label(group["dataset"])
    folds = group["folds"]
    with_ci = key == "ua"
    header = ["Method", *[f"{label}{f}" for f in folds], "Mean"]
    if with_ci:
        header.append("95 % CI of mean")
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in group["methods"]:
        cells = [row["label"]]
        for fold in folds:
            entry = row["folds"].get(fold)
            if entry is None:
                cells.append("-")
            elif entry["kept_runs"] > 1:
                cells.append(f"{_pct(entry[key])} ± {_pct(entry[f'{key}_std'])}")
            else:
                cells.append(_pct(entry[key]))
        cells.append(_pct(row["mean"][key]))
        if with_ci:
            low, high = row["ua_ci95"]
            cells.append(f"[{_pct(low)}, {_pct(high)}]")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def comparisons_markdown(group: Mapping[str, Any]) -> list[str]:
    """The paired comparisons of a group, one line per pair of methods."""
    if not group["comparisons"]:
        return []
    label = fold_label(group["dataset"])
    lines = [
        "| B − A | per-fold difference (UA %) | mean | 95 % CI (runs) | sign-flip p | t-test p |",
        "|---|---|---|---|---|---|",
    ]
    for c in group["comparisons"]:
        per_fold = ", ".join(f"{label}{f}: {100 * d:+.1f}" for f, d in c["differences"].items())
        t = "-" if c["t"] is None else f"{_p(c['t_p'])} (t = {c['t']:.2f})"
        lines.append(
            f"| {c['b']} − {c['a']} | {per_fold} | {100 * c['mean_difference']:+.1f} | "
            f"[{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}] | "
            f"{_p(c['sign_flip_p'])} | {t} |"
        )
    folds = sorted({len(c["folds"]) for c in group["comparisons"]} - {1})
    notes = (
        "Differences are of the per-fold mean UA (B minus A); the CI resamples the kept runs "
        "within folds (the seed-to-seed uncertainty on these folds)."
    )
    if folds:
        smallest = ", ".join(f"{2 / 2**n:.4g} with {n} folds" for n in folds)
        notes += (
            " The sign-flip test is exact over folds (smallest possible p: "
            f"{smallest}); the t-test is a paired two-sided t-test over folds."
        )
    else:
        notes += " With a single fold there is no test over folds."
    return [*lines, "", notes]


def confusion_markdown(row: Mapping[str, Any]) -> list[str]:
    """The summed confusion matrix of a method (counts, and recall per class)."""
    matrix = row["confusion"]
    if matrix is None:
        return []
    classes = row["classes"] or [str(i) for i in range(len(matrix))]
    lines = [
        f"**{row['label']}** (counts summed over folds and kept runs; rows: reference)",
        "",
        "| reference \\ predicted | " + " | ".join(classes) + " | recall (%) |",
        "|---" * (len(classes) + 2) + "|",
    ]
    for name, counts in zip(classes, matrix):
        total = sum(counts)
        recall = _pct(counts[classes.index(name)] / total) if total else "-"
        lines.append(f"| {name} | " + " | ".join(str(c) for c in counts) + f" | {recall} |")
    return lines + [""]


def data_efficiency_markdown(entry: Mapping[str, Any]) -> list[str]:
    """Table 4: UA (%) per method and amount of training data, and the ratio row."""
    label = fold_label(entry["dataset"])
    lines = [f"## Data efficiency on {entry['dataset']} (UA %, Table 4)", ""]
    if "skipped" in entry:
        return lines + [f"Not shown: {entry['skipped']}.", ""]
    columns = entry["columns"]
    lines += [
        "| Training data | " + " | ".join(c["label"] for c in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for method in entry["methods"]:
        name = METHOD_NAMES.get(method, method)
        lines.append(f"| {name} | " + " | ".join(_pct(c["ua"].get(method)) for c in columns) + " |")
    if any(c["ratio"] is not None for c in columns):
        lines.append(
            "| Ratio (%) | "
            + " | ".join("-" if c["ratio"] is None else f"{c['ratio']:.1f}" for c in columns)
            + " |"
        )
    folds = ", ".join(f"{label}{f}" for f in entry["folds"])
    lines += [
        "",
        f"Mean UA over the folds common to every cell ({folds}); hours are the recorded "
        "training audio. Ratio = (TAPT − V-FT) / (P-TAPT − V-FT) × 100 %: lower means "
        "P-TAPT's gain over V-FT is the larger.",
        "",
    ]
    return lines


def report_markdown(report: Mapping[str, Any]) -> str:
    """The whole ``report.md``."""
    boot = report["bootstrap"]
    lines = [
        "# Comparison of fine-tuning methods",
        "",
        "Cells: mean ± sample std over the kept runs of a fold (%); Mean: mean over folds. "
        "UA = unweighted accuracy (mean per-class recall, the paper's metric); "
        "WA = overall accuracy. Discarded outlier runs are left out of every number. "
        f"95 % CI: bootstrap over runs within folds ({boot['resamples']} resamples, "
        f"seed {boot['seed']}).",
        "",
    ]
    for group in report["groups"]:
        title = f"{group['dataset']}, {group['amount']['label']}"
        lines += [f"## {title}", ""]
        for key, name in METRIC_NAMES.items():
            lines += [f"### {name} (%)", "", *group_markdown(group, key), ""]
        if group["improvement_ratio"] is not None:
            lines += [
                f"Ratio (TAPT − V-FT) / (P-TAPT − V-FT): {group['improvement_ratio']:.1f} %.",
                "",
            ]
        if group["comparisons"]:
            lines += ["### Paired comparisons (UA)", "", *comparisons_markdown(group), ""]
        discarded = [(r["label"], d) for r in group["methods"] for d in r["discarded"]]
        if discarded:
            lines += ["### Discarded outlier runs", ""]
            label = fold_label(group["dataset"])
            lines += [
                f"- {name}, {label}{d['fold']}, seed {d['seed']}: {d['reason']}"
                for name, d in discarded
            ]
            lines.append("")
        if any(r["confusion"] is not None for r in group["methods"]):
            lines += ["### Confusion matrices", ""]
            for row in group["methods"]:
                lines += confusion_markdown(row)
    for entry in report["data_efficiency"]:
        lines += data_efficiency_markdown(entry)
    figures = report.get("figures")
    if figures is None:
        lines += [
            "Figures not drawn: matplotlib is not installed "
            "(`pip install speechbrain-ptapt[report]`).",
            "",
        ]
    elif figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------


def _pyplot():
    """matplotlib.pyplot with the Agg backend, or None when not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _slug(group: Mapping[str, Any]) -> str:
    amount = group["amount"]
    tag = (
        "all"
        if amount["kind"] == "fraction" and amount["value"] == 1.0
        else (f"{amount['kind']}{amount['value']:g}")
    )
    return f"{group['dataset'].lower()}_{tag}"


def draw_figures(report: Mapping[str, Any], out: Path) -> list[str] | None:
    """Writes the PNGs into ``out``; returns their names, or None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    names = []
    for group in report["groups"]:
        slug = _slug(group)
        folds, rows = group["folds"], group["methods"]
        width = max(4.5, 2.5 + 0.45 * len(folds) * max(len(rows), 1))
        fig, ax = plt.subplots(figsize=(width, 3.5))
        width = 0.8 / max(len(rows), 1)
        for i, row in enumerate(rows):
            x = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(folds))]
            ys = [100 * row["folds"][f]["ua"] if f in row["folds"] else np.nan for f in folds]
            err = [100 * row["folds"][f]["ua_std"] if f in row["folds"] else 0 for f in folds]
            ax.bar(x, ys, width, yerr=err, capsize=2, label=row["label"])
        ax.set_xticks(range(len(folds)))
        ax.set_xticklabels([f"{fold_label(group['dataset'])}{f}" for f in folds])
        ax.set_ylabel("UA (%)")
        ax.set_title(f"{group['dataset']}, {group['amount']['label']}", fontsize="medium")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        name = f"ua_by_fold_{slug}.png"
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        names.append(name)
        with_matrix = [r for r in rows if r["confusion"] is not None]
        if with_matrix:
            fig, axes = plt.subplots(1, len(with_matrix), figsize=(3.6 * len(with_matrix), 3.4))
            for ax, row in zip(np.atleast_1d(axes), with_matrix):
                counts = np.asarray(row["confusion"], dtype=float)
                recall = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
                classes = row["classes"] or [str(i) for i in range(len(counts))]
                ax.imshow(recall, vmin=0, vmax=1, cmap="Blues")
                for (i, j), value in np.ndenumerate(counts):
                    color = "white" if recall[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        f"{int(value)}",
                        ha="center",
                        va="center",
                        color=color,
                        fontsize="small",
                    )
                ax.set_xticks(range(len(classes)), classes)
                ax.set_yticks(range(len(classes)), classes)
                ax.set_xlabel("predicted")
                ax.set_ylabel("reference")
                ax.set_title(row["label"])
            fig.tight_layout()
            name = f"confusion_{slug}.png"
            fig.savefig(out / name, dpi=120)
            plt.close(fig)
            names.append(name)
    for entry in report["data_efficiency"]:
        if "skipped" in entry:
            continue
        columns = [c for c in entry["columns"] if c["hours"] is not None]
        if not columns:
            continue
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        for method in entry["methods"]:
            points = [(c["hours"], 100 * c["ua"][method]) for c in columns if method in c["ua"]]
            ax.plot(*zip(*points), marker="o", label=METHOD_NAMES.get(method, method))
        ax.set_xscale("log")
        ax.set_xticks([c["hours"] for c in columns], [f"{c['hours']:.2g}" for c in columns])
        ax.minorticks_off()
        ax.set_xlabel("training audio (h)")
        ax.set_ylabel("UA (%)")
        ax.set_title(f"Data efficiency, {entry['dataset']}")
        ax.legend(fontsize="small")
        fig.tight_layout()
        name = f"data_efficiency_{entry['dataset'].lower()}.png"
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        names.append(name)
    return names


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------


def write_report(
    paths: Sequence[str | Path], out: str | Path, resamples: int = 10000, seed: int = 0
) -> dict[str, Any]:
    """Reads the summaries, writes ``report.md``, ``report.json`` and the figures into
    ``out``; returns the report dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    experiments = load_experiments(paths)
    report = build_report(experiments, resamples, seed)
    report["inputs"] = [e.source for e in experiments]
    report["figures"] = draw_figures(report, out)
    (out / "report.md").write_text(report_markdown(report), encoding="utf-8")
    with open(out / "report.json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_ptapt.analysis.report",
        description="Compare experiment summaries (tables like the paper's Tables 1, 2, 4).",
    )
    parser.add_argument(
        "summaries", nargs="+", help="summary.json files or folders holding them (searched)"
    )
    parser.add_argument("--out", required=True, help="output folder (report.md, report.json)")
    parser.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap and permutation seed")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.summaries, args.out, args.resamples, args.seed)
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as err:
        parser.exit(1, f"error: {err}\n")
    print(Path(args.out) / "report.md")
    if report["figures"] is None:
        print("matplotlib is not installed: tables only, no figures.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
