"""Checking a recipe's command-line overrides against its yaml before anything runs.

Every ``--key=value`` override must name a top-level key of the yaml (hyperpyyaml's
own check, with the closest keys suggested) and have the type of that key's
default (an integer where the yaml has an integer, a number where it has a float,
``true``/``false`` where it has a boolean, a list where it has a list); well-known
settings must also lie in their range (at least one epoch, a positive learning
rate, K of at least 2 ...), and settings of an object that validates its own
arguments (the k-means settings) are given to it. A ``!PLACEHOLDER`` key
(``data_folder``) must be given. Errors are :class:`HparamsError`, whose message
names the key, the value given and what is expected, so a typo costs one line of
output instead of a traceback from inside torch minutes later.

Overrides are read as YAML 1.2, as hyperpyyaml reads the yaml itself (``1e-4``
is a number, not a string).
"""

from __future__ import annotations

import difflib
import io
import math
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from hyperpyyaml.core import recursive_update
from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.error import YAMLError

from speechbrain_ptapt.data.dataio import CROPS
from speechbrain_ptapt.protocol.errors import PtaptError
from speechbrain_ptapt.protocol.repeats import OUTLIER_REFERENCES
from speechbrain_ptapt.pseudo_labels.kmeans import KMeansSettings


class HparamsError(PtaptError, ValueError):
    """A command-line override or hparams value with an unknown name, a wrong type
    or a value out of range; the message names the key and what is expected."""


class _Derived:
    """Stands for a yaml value built by hyperpyyaml (``!ref``, ``!new:`` ...)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __repr__(self) -> str:
        return f"!{self.tag}"


#: Settings that must be integers of at least 1.
POSITIVE_INTS = frozenset(
    {
        "number_of_epochs",
        "batch_size",
        "test_batch_size",
        "runs",
        "sample_rate",
        "dynamic_batch_buckets",
        "time_mask_length",
        "channel_mask_length",
        "tapt_steps",
        "tapt_batch_size",
        "tapt_num_buckets",
        "frame_steps",
        "frame_batch_size",
        "frame_valid_batch_size",
        "frame_time_mask_length",
        "frame_channel_mask_length",
        "frame_feature_dim",
        "frame_lstm_dim",
        "frame_head_dim",
        "frame_cnn_aggregator_layers",
        "frame_cnn_aggregator_kernel",
        "ptapt_steps",
        "ptapt_num_buckets",
        "frame_num_buckets",
        "ptapt_head_dim",
        "ptapt_time_mask_length",
    }
)

#: Settings that must be integers of at least 0.
NON_NEGATIVE_INTS = frozenset(
    {
        "max_reruns",
        "num_workers",
        "warmup_steps",
        "time_mask_min_masks",
        "channel_mask_min_masks",
        "tapt_num_workers",
        "tapt_ckpt_interval_steps",
        "tapt_log_interval_steps",
        "frame_num_workers",
        "frame_ckpt_interval_steps",
        "frame_time_mask_min_masks",
        "frame_channel_mask_min_masks",
        "ptapt_num_workers",
        "ptapt_ckpt_interval_steps",
        "ptapt_log_interval_steps",
        "ptapt_time_mask_min_masks",
    }
)

#: Settings that must be numbers greater than 0.
POSITIVE_NUMBERS = frozenset(
    {
        "lr",
        "tapt_lr",
        "frame_lr",
        "ptapt_lr",
        "max_train_seconds",
        "tapt_max_seconds",
        "ptapt_max_seconds",
        "dynamic_batch_seconds",
        "ptapt_batch_seconds",
        "tapt_batch_seconds",
        "frame_batch_seconds",
        "frame_max_seconds",
        "outlier_num_std",
    }
)

#: Settings that must be numbers in [0, 1].
FRACTIONS = frozenset(
    {
        "time_mask_prob",
        "channel_mask_prob",
        "frame_time_mask_prob",
        "frame_channel_mask_prob",
        "ptapt_time_mask_prob",
        "tapt_flat_fraction",
        "frame_flat_fraction",
        "ptapt_flat_fraction",
        "frame_valid_ratio",
        "train_fraction",
    }
)

#: Settings that take any number even where the yaml writes an integer default.
NUMBERS = POSITIVE_NUMBERS | FRACTIONS | {"ckpt_interval_minutes"}

#: Settings that may be null (whole utterances instead of crops, batches of a number
#: of utterances instead of a duration budget).
NULLABLE = frozenset(
    {
        "normalize_waveform",
        "max_train_seconds",
        "tapt_max_seconds",
        "ptapt_max_seconds",
        "frame_max_seconds",
        "tapt_batch_seconds",
        "frame_batch_seconds",
    }
)

#: Settings with a fixed set of values.
CHOICES: dict[str, tuple[str, ...]] = {
    "frame_encoder": ("wav2vec1", "w2v2_cnn"),
    "outlier_reference": OUTLIER_REFERENCES,
    "tapt_loss_reduction": ("sum", "mean"),
    "tapt_diversity_scaling": ("unscaled", "per_masked_frame"),
    "frame_select_by": ("valid_loss", "valid_ua"),
    "frame_valid_crop": ("shortest", "none"),
    "train_crop": tuple(CROPS),
    "time_mask_scope": ("batch", "utterance"),
    "ptapt_time_mask_scope": ("batch", "utterance"),
}

#: Settings an object checks itself: yaml key -> (its class, the argument it gives).
CHECKED_BY: dict[str, tuple[type, str]] = {
    "kmeans_iterations": (KMeansSettings, "iterations"),
    "kmeans_init": (KMeansSettings, "init"),
    "kmeans_points_per_cluster": (KMeansSettings, "points_per_cluster"),
    "kmeans_fit_set": (KMeansSettings, "fit_set"),
}

#: Gumbel-softmax temperatures: a number greater than 0, or fairseq's anneal
#: ``[start, end, decay]`` (see
#: :func:`speechbrain_ptapt.models.pretraining.gumbel_temperature_schedule`).
TEMPERATURES = frozenset({"tapt_gumbel_temperature"})

#: List settings that also accept a single value (``--folds=5``).
SCALAR_OR_LIST = frozenset({"folds"})


class _DerivedConstructor(SafeConstructor):
    """Safe constructor turning every tagged node into :class:`_Derived` (registered on
    this subclass only: ruamel's registries are class attributes shared with the
    constructors hyperpyyaml uses)."""


_DerivedConstructor.add_multi_constructor("!", lambda _loader, suffix, _node: _Derived(str(suffix)))


def _yaml_loader(derived: bool) -> YAML:
    """A safe YAML 1.2 loader; with ``derived`` every tagged node becomes :class:`_Derived`."""
    loader = YAML(typ="safe", pure=True)
    if derived:
        loader.Constructor = _DerivedConstructor
    return loader


def parse_overrides(text: str | None) -> dict[str, Any]:
    """Reads SpeechBrain's override text (one ``key: value`` line per ``--key=value``)
    as YAML 1.2. An option given twice keeps its last value, as on most command lines.

    Raises
    ------
    HparamsError
        When an option's value is not valid YAML (e.g. ``--folds=[1,2`` without
        ``]``), naming the option.
    """
    overrides: dict[str, Any] = {}
    loader = _yaml_loader(derived=False)
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        try:
            parsed = loader.load(io.StringIO(line))
        except YAMLError as err:
            problem = " ".join(str(getattr(err, "problem", None) or err).split())
            raise HparamsError(
                f"Cannot read the command-line option {_one_line(line)!r} ({problem}); write "
                "options as --key=value with YAML values, e.g. --folds=[1,2] --lr=1e-4."
            ) from err
        if not isinstance(parsed, dict):
            raise HparamsError(
                f"Cannot read the command-line option {_one_line(line)!r}; write options "
                "as --key=value."
            )
        overrides.update(parsed)
    return overrides


def yaml_defaults(hparams_file: str | Path) -> dict[str, Any]:
    """The top-level entries of a hyperpyyaml file, nothing built: plain values as
    YAML 1.2 reads them, tagged ones (``!ref``, ``!new:``, ``!PLACEHOLDER`` ...)
    as placeholders."""
    with open(hparams_file, encoding="utf-8") as f:
        loaded = _yaml_loader(derived=True).load(f)
    return dict(loaded) if isinstance(loaded, dict) else {}


def _kind(key: str, default: Any) -> str | None:
    """The type an override of ``key`` (default ``default``) must have, or None when
    anything goes."""
    if key in NUMBERS:
        return "number"
    if key in TEMPERATURES:
        return None  # a number or a list: checked by _range_problem
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "number"
    if isinstance(default, list):
        return "list"
    if isinstance(default, dict):
        return "mapping"
    return None  # strings, null, tagged values: checked by their users


_EXPECTED = {
    "bool": "true or false",
    "int": "an integer",
    "number": "a number",
    "list": "a list such as [1, 2]",
    "mapping": "a mapping such as {key: value}",
}


def _is_int(value: Any) -> bool:
    """An integer that is not a boolean."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """An integer or float that is not a boolean."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _matches(kind: str, value: Any) -> bool:
    """Whether ``value`` has the type ``kind`` (a key of ``_EXPECTED``)."""
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return _is_int(value)
    if kind == "number":
        return _is_number(value)
    if kind == "list":
        return isinstance(value, list)
    return isinstance(value, dict)


def _is_temperature(value: Any) -> bool:
    """A finite number greater than 0, or ``[start, end, decay]`` with
    ``start >= end > 0`` (finite) and ``0 < decay <= 1``."""
    if _is_number(value):
        return 0 < value < math.inf
    if not (isinstance(value, list) and len(value) == 3 and all(map(_is_number, value))):
        return False
    start, end, decay = value
    return math.isfinite(start) and start >= end > 0 and 0 < decay <= 1


def _range_problem(key: str, value: Any) -> str | None:
    """What is wrong with the value of a well-known setting (what is expected, or the
    message of the object that checks it), or None."""
    if value is None and key in NULLABLE:
        return None
    if key in CHECKED_BY:
        cls, argument = CHECKED_BY[key]
        try:
            cls(**{argument: value})
        except (TypeError, ValueError) as err:
            return str(err)
    if key in POSITIVE_INTS and not (_is_int(value) and value >= 1):
        return "an integer of at least 1"
    if key in NON_NEGATIVE_INTS and not (_is_int(value) and value >= 0):
        return "an integer of at least 0"
    if key in POSITIVE_NUMBERS and not (_is_number(value) and value > 0 and math.isfinite(value)):
        return "a finite number greater than 0"
    if key in FRACTIONS and not (_is_number(value) and 0 <= value <= 1):
        return "a number between 0 and 1"
    if key in CHOICES and value not in CHOICES[key]:
        return "one of " + ", ".join(CHOICES[key])
    if key in TEMPERATURES and not _is_temperature(value):
        return (
            "a finite number greater than 0, or [start, end, decay] with start >= end > 0 "
            "and 0 < decay <= 1 (e.g. [2.0, 0.5, 0.999995])"
        )
    if key == "n_clusters":
        if not isinstance(value, list) or not value:
            return "a non-empty list of cluster counts K, e.g. [64, 512, 4096]"
        if not all(_is_int(k) and k >= 2 for k in value):
            return "a list of integers K of at least 2, e.g. [64, 512, 4096]"
        if len(set(value)) != len(value):
            return "a list of distinct K, e.g. [64, 512, 4096]"
    if key == "frame_valid_every" and value != "epoch" and not (_is_int(value) and value >= 1):
        return "epoch or an integer of at least 1 (optimizer steps)"
    if key in SCALAR_OR_LIST and isinstance(value, list) and not value:
        return "at least one fold"
    revision_ok = value is None or (isinstance(value, str) and value.strip() != "")
    if key == "wav2vec2_revision" and not revision_ok:
        return "a hub revision (branch, tag or commit hash), or null for the latest"
    return None


def unknown_override_error(
    hparams_file: str | Path, overrides: Mapping[str, Any], keys: Collection[str]
) -> HparamsError | None:
    """The error for an override that is not a top-level key of the yaml, naming the
    closest keys; None when every override is a key.

    Arguments
    ---------
    hparams_file : str or Path
        The yaml (its name goes into the message).
    overrides : mapping
        ``--key=value`` overrides.
    keys : collection of str
        The yaml's top-level keys.
    """
    unknown = [key for key in overrides if key not in keys]
    if not unknown:
        return None
    key = unknown[0]
    close = difflib.get_close_matches(str(key), list(keys), n=3)
    hint = f" Did you mean {', '.join('--' + c for c in close)}?" if close else ""
    return HparamsError(
        f"Unknown option --{key}: it is not a key of {Path(hparams_file).name}.{hint} Every "
        "--key=value option must be a top-level key of the hparams yaml (SpeechBrain run "
        "options such as --device and --precision excepted)."
    )


def check_overrides(hparams_file: str | Path, overrides: Mapping[str, Any]) -> None:
    """Checks command-line overrides against the yaml's keys, types and ranges.

    Arguments
    ---------
    hparams_file : str or Path
        The recipe's yaml.
    overrides : mapping
        ``--key=value`` overrides as read by :func:`parse_overrides`.

    Raises
    ------
    HparamsError
        For an override that is not a key of the yaml (with the closest keys), a
        value whose type differs from the key's default (``--number_of_epochs=abc``),
        a value out of range (``--runs=0``, ``--n_clusters=[0]``), or a
        ``!PLACEHOLDER`` key left unset (``--data_folder``).
    """
    defaults = yaml_defaults(hparams_file)
    name = Path(hparams_file).name
    try:  # the check load_hyperpyyaml makes, on the top-level keys
        recursive_update(dict.fromkeys(defaults), dict.fromkeys(overrides), must_match=True)
    except KeyError as err:
        raise unknown_override_error(hparams_file, overrides, list(defaults)) from err
    for key, value in overrides.items():
        default = defaults[key]
        kind = _kind(str(key), default)
        scalar_fold = key in SCALAR_OR_LIST and isinstance(value, (str, int))
        nulled = value is None and key in NULLABLE
        if kind is not None and not scalar_fold and not nulled and not _matches(kind, value):
            raise HparamsError(
                f"Option --{key}={_show(value)} has the wrong type: expected {_EXPECTED[kind]} "
                f"(the default in {name} is {_show(default)})."
            )
        problem = _range_problem(str(key), value)
        if problem is not None:
            problem = problem if key in CHECKED_BY else f"expected {problem}"
            raise HparamsError(
                f"Option --{key}={_show(value)} is invalid: {problem} "
                f"(the default in {name} is {_show(default)})."
            )
    for key, default in defaults.items():
        given = overrides.get(key)
        if (
            isinstance(default, _Derived)
            and default.tag == "PLACEHOLDER"
            and (given is None or str(given).strip() == "")
        ):
            raise HparamsError(
                f"--{key} is required: {name} leaves it to the command line "
                f"(e.g. --{key}=/path/to/the/corpus)."
            )


def _one_line(text: str) -> str:
    """The override text as the options were typed (``key: value`` lines joined)."""
    return " ".join(f"--{line.replace(': ', '=', 1)}" for line in text.splitlines() if line)


def _show(value: Any) -> str:
    """A value as it would be typed on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)
