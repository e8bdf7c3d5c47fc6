"""Reproducible, nested subsets of a fold's training manifest, for the data-efficiency
experiment of Chen & Rudnicky (2022), Table 4 ("gradually halve the amount of
training examples in the remaining four sessions by random selection").

Selection: the training utterances of each emotion class are shuffled once, with a
generator seeded by ``(subset_seed, crc32(class name))``; the subset of fraction
``f`` keeps the first ``ceil(f * n_c)`` utterances of every class ``c``. Taking a
prefix of one random order is the same as halving at random again and again
(``ceil(ceil(x) / 2) = ceil(x / 2)``, so fraction ``2**-L`` is exactly ``L``
successive random halvings, rounding up), and it makes the subsets nested: for one
``subset_seed`` the 1/4 subset lies inside the 1/2 subset, whatever the fraction.
Sampling within each class keeps the class proportions and never loses a class.

``train_hours`` picks the halving level instead: among the fractions ``1, 1/2,
1/4, ...`` (down to one utterance per class), the one whose total duration is
nearest the target on a log scale (smallest ``|ln(hours / target)|``; ties: the
larger subset). Halving levels are geometric, so "nearest" is measured as a ratio:
with 5.5 h of training audio, targets 7, 3, 1, 0.5 h give 5.5, 2.8, 1.4, 0.7 h, four
successive halvings, as in the paper's "~7 h, ~3 h, ~1 h, ~0.5 h".
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from speechbrain_ptapt.protocol.errors import PtaptError

#: Key of an entry's class label in the manifests.
LABEL_KEY = "emo"


class TrainingSubsetError(PtaptError, ValueError):
    """Invalid ``train_fraction`` / ``train_hours`` settings, or a manifest without
    the durations they need."""


@dataclass(frozen=True)
class SubsetOptions:
    """How a fold's training set is reduced.

    Attributes
    ----------
    fraction : float
        Share of the utterances of each class kept, in (0, 1]; 1 keeps everything.
    hours : float or None
        Target amount of training audio in hours; when set, the halving level with
        the nearest duration is used (``fraction`` must then be 1).
    seed : int
        ``subset_seed``: same seed, same (nested) subsets.
    """

    fraction: float = 1.0
    hours: float | None = None
    seed: int = 1986

    def __post_init__(self) -> None:
        if not 0.0 < float(self.fraction) <= 1.0:
            raise TrainingSubsetError(f"train_fraction must be in (0, 1], got {self.fraction}.")
        if self.hours is not None:
            if not float(self.hours) > 0:
                raise TrainingSubsetError(f"train_hours must be positive, got {self.hours}.")
            if float(self.fraction) != 1.0:
                raise TrainingSubsetError(
                    f"Set train_fraction ({self.fraction}) or train_hours ({self.hours}), not both."
                )

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> SubsetOptions:
        """Reads ``train_fraction`` (default 1.0), ``train_hours`` (None) and
        ``subset_seed`` (default: ``seed``)."""
        hours = hparams.get("train_hours")
        return cls(
            fraction=float(hparams.get("train_fraction", 1.0)),
            hours=None if hours is None else float(hours),
            seed=int(hparams.get("subset_seed", hparams.get("seed", 1986))),
        )


@dataclass(frozen=True)
class TrainingSubset:
    """A fold's training manifest as used by every stage.

    Attributes
    ----------
    manifest : str
        Path of the manifest every stage reads (the original one for fraction 1).
    fraction : float
        Fraction used (the halving level's for ``train_hours``).
    halvings : int or None
        ``L`` when ``fraction == 2**-L``, else None.
    hours_target : float or None
        The ``train_hours`` setting.
    seed : int
        ``subset_seed``.
    utterances, hours : int, float
        Size of the subset (hours of audio).
    full_utterances, full_hours : int, float
        Size of the fold's whole training set.
    digest : str
        SHA-256 of the sorted utterance ids of the subset.
    """

    manifest: str
    fraction: float
    halvings: int | None
    hours_target: float | None
    seed: int
    utterances: int
    hours: float
    full_utterances: int
    full_hours: float
    digest: str

    def record(self) -> dict[str, Any]:
        """JSON-able description (for the summary)."""
        return asdict(self)


def _class_orders(data: Mapping[str, Mapping[str, Any]], seed: int) -> dict[str, list[str]]:
    """Every class's utterance ids in the subset's random order."""
    by_class: dict[str, list[str]] = {}
    for utt_id in sorted(data):
        by_class.setdefault(str(data[utt_id].get(LABEL_KEY, "")), []).append(utt_id)
    orders = {}
    for label, ids in sorted(by_class.items()):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(label.encode("utf-8"))])
        orders[label] = [ids[i] for i in rng.permutation(len(ids))]
    return orders


def subset_ids(data: Mapping[str, Mapping[str, Any]], fraction: float, seed: int) -> list[str]:
    """Ids of the subset of a manifest keeping ``fraction`` of every class.

    Arguments
    ---------
    data : mapping
        A SpeechBrain JSON manifest (id -> entry with ``emo``).
    fraction : float
        In (0, 1]: ``ceil(fraction * n_c)`` utterances of each class ``c`` are kept.
    seed : int
        ``subset_seed``.

    Returns
    -------
    list of str
        The kept ids, in the manifest's order.
    """
    if not 0.0 < fraction <= 1.0:
        raise TrainingSubsetError(f"train_fraction must be in (0, 1], got {fraction}.")
    keep: set[str] = set()
    for ids in _class_orders(data, seed).values():
        keep.update(ids[: math.ceil(fraction * len(ids) - 1e-9)])
    return [utt_id for utt_id in data if utt_id in keep]


def total_hours(data: Mapping[str, Mapping[str, Any]], ids: list[str] | None = None) -> float:
    """Total ``duration`` (seconds in the manifest) of ``ids`` (default all), in hours."""
    ids = list(data) if ids is None else ids
    try:
        return sum(float(data[i]["duration"]) for i in ids) / 3600.0
    except KeyError as err:
        raise TrainingSubsetError(
            f"Utterance {err} has no 'duration' in the training manifest: the training "
            "hours cannot be measured."
        ) from err


def halving_level_for_hours(
    data: Mapping[str, Mapping[str, Any]], target_hours: float, seed: int
) -> int:
    """The number of halvings ``L`` whose subset's duration is nearest ``target_hours``
    on a log scale (ties: the smaller ``L``, i.e. more data)."""
    if not target_hours > 0:
        raise TrainingSubsetError(f"train_hours must be positive, got {target_hours}.")
    best_level, best_gap, previous_size = 0, math.inf, None
    level = 0
    while True:
        ids = subset_ids(data, 0.5**level, seed)
        if len(ids) == previous_size:  # one utterance per class: no smaller subset
            break
        hours = total_hours(data, ids)
        gap = abs(math.log(hours / target_hours)) if hours > 0 else math.inf
        if gap < best_gap - 1e-12:
            best_level, best_gap = level, gap
        previous_size = len(ids)
        level += 1
    return best_level


def _halvings(fraction: float) -> int | None:
    level = -math.log2(fraction)
    return int(round(level)) if abs(level - round(level)) < 1e-9 else None


def subset_manifest_name(fraction: float, seed: int) -> str:
    """File name of a subset manifest, e.g. ``train_fraction0.25_seed1986.json``."""
    return f"train_fraction{fraction:g}_seed{seed}.json"


def make_training_subset(train_manifest: str | Path, options: SubsetOptions) -> TrainingSubset:
    """The training manifest every stage of a fold reads.

    For fraction 1 (and no ``train_hours``) that is ``train_manifest`` itself. Else the
    subset is written beside it as ``train_fraction<f>_seed<s>.json`` (rewritten only
    when its content differs), e.g. ``<output_folder>/manifests/fold_5/
    train_fraction0.25_seed1986.json``.

    Arguments
    ---------
    train_manifest : str or Path
        The fold's full training manifest (``duration`` in seconds per entry).
    options : SubsetOptions
        Fraction or target hours, and the seed.

    Returns
    -------
    TrainingSubset
        The manifest to read and its size.
    """
    train_manifest = Path(train_manifest)
    with open(train_manifest, encoding="utf-8") as f:
        data = json.load(f)
    full_hours = total_hours(data)
    if options.hours is not None:
        fraction = 0.5 ** halving_level_for_hours(data, float(options.hours), options.seed)
    else:
        fraction = float(options.fraction)
    if fraction == 1.0:
        ids, path = list(data), train_manifest
    else:
        ids = subset_ids(data, fraction, options.seed)
        path = train_manifest.with_name(subset_manifest_name(fraction, options.seed))
        subset = {utt_id: data[utt_id] for utt_id in ids}
        if not path.is_file() or _read(path) != subset:
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(subset, f, indent=2)
            tmp.replace(path)
    return TrainingSubset(
        manifest=str(path),
        fraction=fraction,
        halvings=_halvings(fraction),
        hours_target=options.hours,
        seed=int(options.seed),
        utterances=len(ids),
        hours=total_hours(data, ids),
        full_utterances=len(data),
        full_hours=full_hours,
        digest=hashlib.sha256(json.dumps(sorted(ids)).encode("utf-8")).hexdigest(),
    )


def _read(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
