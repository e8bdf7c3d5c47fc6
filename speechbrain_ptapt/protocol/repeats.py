"""Repeated fine-tuning runs of a fold and the outlier rule of Chen & Rudnicky (2022),
Sec. 3.2: "we discard and rerun outlier runs where the performance is outside two
standard deviations from the mean".

The rule, as implemented here
-----------------------------
After the fold's ``runs`` runs (seeds ``seed, seed + 1, ..., seed + runs - 1``):

1. Take the UA of every *kept* run (at first all of them).
2. For each kept run, compute the mean ``m`` and the **sample** standard deviation
   ``s`` (``ddof = 1``) of the reference set. With ``outlier_reference: all`` (the
   default, the paper's wording) the reference set is every kept run, the
   candidate included; with ``outlier_reference: others`` it is every kept run
   except the candidate (leave-one-out).
3. A run is outside when ``|UA - m| > outlier_num_std * s`` (default 2; strict
   inequality, so equal UAs are never outliers). Among the runs outside, the one
   farthest from its mean in units of ``s`` (ties: the earliest run) is discarded
   and a new run is trained with the next unused seed (``seed + runs``,
   ``seed + runs + 1``, ...). The replacement joins the kept runs.
4. Back to 1 with the statistics recomputed on the new kept set, until no run is
   outside or ``max_reruns`` re-runs have been made. One run at a time, because a
   diverged run inflates ``s`` and can hide a second one.
5. When an outlier remains and the re-runs are used up, nothing more is discarded:
   the fold keeps exactly ``runs`` runs, the remaining outlier is kept and marked
   ``"outlier": true`` and the fold is marked ``"reruns_exhausted": true`` (and a
   warning is logged). Every fold mean is thus over the same number of runs.

Why the sample standard deviation: it is the spread the summaries report (the ``±``
of every table), so "outside mean ± 2 std" can be checked against the reported
numbers; it is also the larger of the two, i.e. the more conservative.

A limit of the paper's rule (Samuelson's inequality): when the candidate is part
of its own statistics, no value of ``n`` numbers can lie farther than
``(n - 1) / sqrt(n)`` sample standard deviations from their mean (``sqrt(n - 1)``
population ones). With 5 runs that is 1.79 (2.0): with the default reference the
rule can never discard a run of a 5-run fold (full IEMOCAP), however far off it
is; it acts from 6 runs on (SAVEE and sub-sampled IEMOCAP use 20).
``outlier_reference: others`` acts with 3 runs or more, but the standard deviation
of 4 runs is a noisy estimate: on simulated well-behaved runs (Gaussian UAs, 5 per
fold, 2 std) it discards a run in about 80 % of the folds, so it trims the reported
spread as well as the failed runs. :func:`largest_possible_deviation` gives the
bound; recipes log a warning when the rule cannot act.

Every decision derives from the runs' UAs alone, and every run's result is kept on
disk (``result.json``, also for discarded runs), so running a recipe again replays
the same decisions without training anything.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from speechbrain_ptapt.protocol.errors import PtaptError

logger = logging.getLogger(__name__)

#: Statistics an outlier candidate is compared with: every kept run ("all") or the
#: kept runs except itself ("others").
OUTLIER_REFERENCES = ("all", "others")

#: Absolute tolerance (UA fraction) below which a deviation equals the bound.
_TOLERANCE = 1e-12


class RepeatSettingsError(PtaptError, ValueError):
    """Invalid repeat / outlier settings in a recipe's yaml."""


@dataclass(frozen=True)
class Outlier:
    """A kept run found outside its reference mean ± ``num_std`` × std.

    Attributes
    ----------
    index : int
        Position of the run in the list of kept UAs given to :func:`find_outlier`.
    ua : float
        Its UA (fraction in [0, 1]).
    mean, std : float
        Mean and sample standard deviation (UA fractions) of the reference runs.
    num_std : float
        The rule's number of standard deviations.
    n : int
        Number of runs the mean and std were computed over.
    reference : str
        ``"all"`` or ``"others"``.
    """

    index: int
    ua: float
    mean: float
    std: float
    num_std: float
    n: int
    reference: str

    @property
    def deviation(self) -> float:
        """Distance to the mean in standard deviations (inf when std is 0)."""
        gap = abs(self.ua - self.mean)
        return gap / self.std if self.std > 0 else math.inf

    def reason(self) -> str:
        """One line saying why the run is an outlier, e.g.
        ``UA 0.410 outside mean 0.700 ± 2 × 0.050 (sample std of the 20 kept runs)``."""
        runs = "kept runs" if self.reference == "all" else "other kept runs"
        return (
            f"UA {self.ua:.3f} outside mean {self.mean:.3f} ± {self.num_std:g} × "
            f"{self.std:.3f} (sample std of the {self.n} {runs})"
        )

    def record(self) -> dict[str, Any]:
        """The statistics as a JSON-able dict."""
        return {
            "mean": self.mean,
            "std": self.std,
            "num_std": self.num_std,
            "n": self.n,
            "reference": self.reference,
        }


def largest_possible_deviation(n: int, reference: str = "all") -> float:
    """The largest distance, in sample standard deviations, that one of ``n`` kept
    runs can have from its reference mean: ``(n - 1) / sqrt(n)`` when it is part of
    the statistics (Samuelson's inequality), unbounded (inf) for the leave-one-out
    reference with ``n >= 3``, 0 when the rule cannot be evaluated (too few runs)."""
    if reference == "all":
        return (n - 1) / math.sqrt(n) if n >= 2 else 0.0
    return math.inf if n >= 3 else 0.0


def find_outlier(
    uas: Sequence[float], num_std: float = 2.0, reference: str = "all"
) -> Outlier | None:
    """The kept run lying farthest outside mean ± ``num_std`` × sample std, if any.

    Arguments
    ---------
    uas : sequence of float
        UAs (fractions in [0, 1]) of the fold's kept runs, in run order.
    num_std : float
        Width of the accepted band in standard deviations (paper: 2).
    reference : str
        ``"all"``: mean and std over every kept run, the candidate included;
        ``"others"``: over the kept runs except the candidate.

    Returns
    -------
    Outlier or None
        The run farthest from its mean relative to the std (ties: the earliest),
        or None when no run is outside (always None with fewer than 2 runs for
        ``"all"``, 3 for ``"others"``).
    """
    if reference not in OUTLIER_REFERENCES:
        raise RepeatSettingsError(
            f"outlier_reference must be one of {OUTLIER_REFERENCES}, got {reference!r}."
        )
    values = [float(u) for u in uas]
    if len(values) < (2 if reference == "all" else 3):
        return None
    best: Outlier | None = None
    for index, ua in enumerate(values):
        pool = values if reference == "all" else values[:index] + values[index + 1 :]
        mean = statistics.fmean(pool)
        std = statistics.stdev(pool)
        if abs(ua - mean) <= num_std * std + _TOLERANCE:
            continue
        candidate = Outlier(index, ua, mean, std, float(num_std), len(pool), reference)
        if best is None or candidate.deviation > best.deviation:
            best = candidate
    return best


@dataclass(frozen=True)
class RepeatSettings:
    """How many runs a fold gets and how outliers are handled.

    Attributes
    ----------
    runs : int
        Runs kept per fold (paper: 5 on full IEMOCAP, 20 on SAVEE and sub-sampled
        IEMOCAP).
    first_seed : int
        Seed of the first run; run ``r`` uses ``first_seed + r`` and re-run ``k``
        (1-based) uses ``first_seed + runs + k - 1``.
    discard_outliers : bool
        Apply the outlier rule.
    max_reruns : int
        Re-runs allowed per fold.
    num_std : float
        Width of the accepted band in sample standard deviations.
    reference : str
        ``"all"`` or ``"others"`` (see :func:`find_outlier`).
    """

    runs: int
    first_seed: int
    discard_outliers: bool = True
    max_reruns: int = 5
    num_std: float = 2.0
    reference: str = "all"

    def __post_init__(self) -> None:
        if int(self.runs) < 1:
            raise RepeatSettingsError(f"'runs' must be at least 1, got {self.runs}.")
        if int(self.max_reruns) < 0:
            raise RepeatSettingsError(f"'max_reruns' must be 0 or more, got {self.max_reruns}.")
        if not float(self.num_std) > 0:
            raise RepeatSettingsError(f"'outlier_num_std' must be positive, got {self.num_std}.")
        if self.reference not in OUTLIER_REFERENCES:
            raise RepeatSettingsError(
                f"'outlier_reference' must be one of {OUTLIER_REFERENCES}, got {self.reference!r}."
            )

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> RepeatSettings:
        """Reads ``runs``, ``seed``, ``discard_outliers`` (default True),
        ``max_reruns`` (5), ``outlier_num_std`` (2.0), ``outlier_reference`` ("all")."""
        return cls(
            runs=int(hparams["runs"]),
            first_seed=int(hparams["seed"]),
            discard_outliers=bool(hparams.get("discard_outliers", True)),
            max_reruns=int(hparams.get("max_reruns", 5)),
            num_std=float(hparams.get("outlier_num_std", 2.0)),
            reference=str(hparams.get("outlier_reference", "all")),
        )

    def initial_seeds(self) -> list[int]:
        """Seeds of the fold's first ``runs`` runs."""
        return [self.first_seed + i for i in range(self.runs)]

    def rerun_seed(self, k: int) -> int:
        """Seed of the ``k``-th re-run of a fold (``k`` from 1): the next unused one."""
        return self.first_seed + self.runs + k - 1

    def record(self) -> dict[str, Any]:
        """The settings as a JSON-able dict (for the summary)."""
        return {
            "runs": self.runs,
            "first_seed": self.first_seed,
            "discard_outliers": self.discard_outliers,
            "max_reruns": self.max_reruns,
            "outlier_num_std": self.num_std,
            "outlier_reference": self.reference,
            "std": "sample (ddof=1)",
            "rule_can_act": self.rule_can_act(),
        }

    def rule_can_act(self) -> bool:
        """False when the outlier rule can never discard a run with these settings
        (too few runs for ``num_std``, see :func:`largest_possible_deviation`)."""
        bound = largest_possible_deviation(self.runs, self.reference)
        return self.discard_outliers and bound > self.num_std


@dataclass
class FoldRuns:
    """Every run of a fold, in the order they were made.

    Attributes
    ----------
    runs : list of dict
        Run results (``seed``, ``ua``, ...) with ``"discarded"`` (bool) added; a
        discarded run also has ``"reason"`` and ``"outlier_test"`` (the statistics);
        a replacement has ``"replaces"`` (the discarded seed); an outlier kept because
        the re-runs were used up has ``"outlier": true`` and a ``"reason"``.
    reruns : int
        Re-runs made.
    reruns_exhausted : bool
        True when an outlier remained after ``max_reruns`` re-runs.
    """

    runs: list[dict[str, Any]] = field(default_factory=list)
    reruns: int = 0
    reruns_exhausted: bool = False

    @property
    def kept(self) -> list[dict[str, Any]]:
        """The runs that count (not discarded), in run order."""
        return [r for r in self.runs if not r.get("discarded")]

    @property
    def discarded(self) -> list[dict[str, Any]]:
        """The discarded runs, in run order."""
        return [r for r in self.runs if r.get("discarded")]

    def record(self) -> dict[str, Any]:
        """Fold-level counts for the summary."""
        return {
            "kept_runs": len(self.kept),
            "discarded_runs": len(self.discarded),
            "reruns": self.reruns,
            "reruns_exhausted": self.reruns_exhausted,
        }


def repeat_runs(
    run: Callable[[int], Mapping[str, Any]],
    settings: RepeatSettings,
    on_change: Callable[[FoldRuns], None] | None = None,
) -> FoldRuns:
    """Makes a fold's runs and applies the outlier rule (see the module docstring).

    Arguments
    ---------
    run : callable
        ``run(seed) -> result`` with at least ``"seed"`` and ``"ua"``; trains the
        run, or reads it back when it is finished.
    settings : RepeatSettings
        Runs, seeds and outlier options.
    on_change : callable, optional
        Called with the current :class:`FoldRuns` after every run and every decision
        (e.g. to rewrite the summary).

    Returns
    -------
    FoldRuns
        Every run made, annotated with the decisions.
    """
    fold = FoldRuns()

    def add(seed: int, **extra: Any) -> None:
        result = {**dict(run(seed)), "discarded": False, **extra}
        fold.runs.append(result)
        if on_change is not None:
            on_change(fold)

    for seed in settings.initial_seeds():
        add(seed)
    if not settings.discard_outliers:
        return fold
    while True:
        kept = fold.kept
        outlier = find_outlier([r["ua"] for r in kept], settings.num_std, settings.reference)
        if outlier is None:
            break
        victim = kept[outlier.index]
        if fold.reruns >= settings.max_reruns:
            fold.reruns_exhausted = True
            victim["outlier"] = True
            victim["reason"] = (
                f"{outlier.reason()}; kept because the fold's {settings.max_reruns} "
                "re-runs are used up"
            )
            victim["outlier_test"] = outlier.record()
            logger.warning(
                "Seed %s: %s. Re-runs exhausted (%d): the run is kept.",
                victim["seed"],
                outlier.reason(),
                settings.max_reruns,
            )
            if on_change is not None:
                on_change(fold)
            break
        victim["discarded"] = True
        victim["reason"] = outlier.reason()
        victim["outlier_test"] = outlier.record()
        fold.reruns += 1
        new_seed = settings.rerun_seed(fold.reruns)
        logger.info(
            "Seed %s discarded: %s. Re-run %d/%d with seed %d.",
            victim["seed"],
            outlier.reason(),
            fold.reruns,
            settings.max_reruns,
            new_seed,
        )
        add(new_seed, replaces=int(victim["seed"]))
    return fold
