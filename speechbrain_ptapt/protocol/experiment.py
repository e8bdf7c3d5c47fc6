"""Running a recipe: command-line parsing, loading the yaml (for the experiment, a
fold's adaptation stages, or one run), run folders and the summary files; the pieces
the recipe scripts call are gathered in :mod:`speechbrain_ptapt.protocol.recipe`.

Every (fold, run) gets its own folder ``<output_folder>/fold_<fold>/seed_<seed>``
holding its checkpoints, log, test predictions and ``result.json``; a run whose
``result.json`` exists is finished and skipped, an interrupted one resumes from
its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.seed import seed_everything
from transformers import Wav2Vec2Config

from speechbrain_ptapt.analysis.naming import METHOD_NAMES, fold_label
from speechbrain_ptapt.data.preparation import write_json_atomic
from speechbrain_ptapt.models.backbone import load_pretrained
from speechbrain_ptapt.protocol.errors import MissingFileError
from speechbrain_ptapt.protocol.hparams_check import (
    parse_overrides,
    unknown_override_error,
    yaml_defaults,
)

logger = logging.getLogger(__name__)


def parse_recipe_arguments(
    argv: Sequence[str], script_file: str
) -> tuple[str, Any, dict[str, Any]]:
    """SpeechBrain's command line, with the hparams file also looked up beside the script.

    Arguments
    ---------
    argv : sequence of str
        ``sys.argv[1:]``: the hparams file, then ``--name=value`` overrides and
        SpeechBrain's run options (``--device``, ``--precision`` ...).
    script_file : str
        The recipe script's ``__file__``: a relative hparams path not found from
        the working directory is resolved against the script's folder.

    Returns
    -------
    hparams_file : str
        Absolute path of the yaml file.
    run_opts : RunOptions
        SpeechBrain's run options.
    overrides : dict
        The yaml overrides as a dict.
    """
    hparams_file, run_opts, overrides_text = sb.parse_arguments(list(argv))
    path = Path(hparams_file)
    if not path.is_file() and not path.is_absolute():
        beside = Path(script_file).resolve().parent / path
        if beside.is_file():
            path = beside
    if not path.is_file():
        raise MissingFileError(
            f"Hyperparameter file '{hparams_file}' not found (looked in {Path.cwd()} and "
            f"beside {script_file})."
        )
    # YAML 1.2, as hyperpyyaml reads the yaml: ``--lr=1e-4`` is a number.
    return str(path.resolve()), run_opts, parse_overrides(overrides_text)


#: The yaml entries of a fine-tuning run that load wav2vec2's weights (``wav2vec2`` and the
#: ``model`` around it) or create the run's folder (``checkpointer``) when built.
RUN_OBJECTS = ("wav2vec2", "model", "checkpointer")


def load_hparams(
    hparams_file: str, overrides: dict[str, Any], run_objects: bool = True
) -> dict[str, Any]:
    """Loads the yaml with overrides.

    With ``run_objects=False`` the fine-tuning run's objects (:data:`RUN_OBJECTS`) are
    not built: hyperpyyaml applies overrides before it builds anything, and these
    entries are overridden with null. What a recipe reads outside the runs (settings,
    folders, the ``!name:`` builders of the adaptation stages) is unchanged; each run
    loads the yaml again, objects included. The backbone is still checked
    (:func:`check_backbone_source`), so a wrong ``wav2vec2_hub`` stops the recipe
    before any preparation or training, as building it would.

    Raises
    ------
    HparamsError
        For an override the yaml does not define (hyperpyyaml's error, with the
        closest keys suggested).
    """
    if not run_objects:
        unbuilt = {key: None for key in RUN_OBJECTS if key in yaml_defaults(hparams_file)}
        hparams = load_hparams(hparams_file, {**overrides, **unbuilt})
        if "wav2vec2" in unbuilt:
            check_backbone_source(hparams)
        return hparams
    with open(hparams_file, encoding="utf-8") as f:
        try:
            return load_hyperpyyaml(f, overrides)
        except KeyError as err:
            unknown = unknown_override_error(hparams_file, overrides, yaml_defaults(hparams_file))
            if unknown is None:
                raise
            raise unknown from err


def check_backbone_source(hparams: dict[str, Any]) -> None:
    """Reads the config of ``wav2vec2_hub`` (at ``wav2vec2_revision``, hub downloads
    cached in ``wav2vec2_folder``), the first thing building the backbone does.

    Raises
    ------
    BackboneLoadError
        When it cannot be reached or is not a wav2vec2 (with what to do instead).
    """
    load_pretrained(
        Wav2Vec2Config,
        str(hparams["wav2vec2_hub"]),
        hparams.get("wav2vec2_folder"),
        hparams.get("wav2vec2_revision"),
    )


def fold_names(folds: Any) -> list[str]:
    """Normalises the ``folds`` option (a fold name, or a list of them) to strings."""
    if isinstance(folds, (str, int)):
        folds = [folds]
    return [str(f) for f in folds]


def run_folder(output_folder: str | Path, fold: str, seed: int) -> Path:
    """Folder of one fine-tuning run."""
    return Path(output_folder) / f"fold_{fold}" / f"seed_{seed}"


def read_json(path: str | Path) -> Any:
    """Reads a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: str | Path, obj: Any) -> None:
    """Writes JSON atomically (a half-written file is never taken as finished)."""
    write_json_atomic(path, obj)


def prepare_on_main(prepare: Callable[..., Any], **kwargs: Any) -> Any:
    """Runs a data preparation on the main process, then returns its (now cached)
    result on every process."""
    run_on_main(prepare, kwargs=kwargs)
    return prepare(**kwargs)


def run_hparams(
    hparams_file: str, overrides: dict[str, Any], fold: str, seed: int, **extra: Any
) -> dict[str, Any]:
    """The hyperparameters of one run: the yaml with the user's overrides plus the
    run's ``fold`` and ``run_seed``; every object is built fresh after seeding."""
    seed_everything(seed)
    return load_hparams(hparams_file, {**overrides, "fold": fold, "run_seed": seed, **extra})


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof = 1``; 0 for a single value)."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


#: Entries of a run result copied into the summary.
RUN_KEYS = (
    "seed",
    "ua",
    "wa",
    "macro_f1",
    "confusion",
    "discarded",
    "reason",
    "outlier",
    "outlier_test",
    "replaces",
)

METRICS = ("ua", "wa", "macro_f1")


def summarize(
    results: dict[str, list[dict[str, Any]]],
    method: str,
    dataset: str,
    fold_info: dict[str, dict[str, Any]] | None = None,
    **info: Any,
) -> dict[str, Any]:
    """The summary of an experiment.

    Arguments
    ---------
    results : dict
        fold name -> every run result of the fold in run order (each with ``seed``,
        ``ua``, ``wa``, ``macro_f1``, optionally ``confusion``, and ``discarded``,
        ``reason`` ... as set by :func:`speechbrain_ptapt.protocol.repeats.repeat_runs`).
    method, dataset : str
        E.g. ``"vft"``, ``"IEMOCAP"``.
    fold_info : dict, optional
        fold name -> extra entries of the fold (re-run counts, training subset ...).
    **info
        Extra top-level entries (backbone, classes, repeats, train_data ...).

    Returns
    -------
    dict
        ``{"method", "dataset", ..., "folds": {fold: {"ua", "ua_std", "wa", ...,
        "runs": [...]}}, "mean": {...}}``. Every run is listed, discarded ones with
        ``"discarded": true`` and their ``"reason"``. Fold values are the mean and
        sample std over the fold's *kept* runs; ``mean`` holds the mean over folds
        of the fold means (the paper's "Mean" column), ``<metric>_std`` the sample
        std of the fold means across folds and ``<metric>_run_std`` the pooled
        within-fold std over runs (root mean square of the fold stds). Metrics are
        fractions in [0, 1].
    """
    fold_info = fold_info or {}
    folds: dict[str, Any] = {}
    for fold, runs in results.items():
        kept = [r for r in runs if not r.get("discarded")]
        if not kept:
            continue
        entry: dict[str, Any] = {}
        for key in METRICS:
            entry[key], entry[f"{key}_std"] = _mean_std([r[key] for r in kept])
        entry["kept_runs"] = len(kept)
        entry["discarded_runs"] = len(runs) - len(kept)
        entry.update(fold_info.get(fold, {}))
        entry["runs"] = [{k: r[k] for k in RUN_KEYS if k in r} for r in runs]
        folds[fold] = entry
    mean = {}
    if folds:
        for key in METRICS:
            mean[key], mean[f"{key}_std"] = _mean_std([f[key] for f in folds.values()])
            mean[f"{key}_run_std"] = math.sqrt(
                statistics.fmean([f[f"{key}_std"] ** 2 for f in folds.values()])
            )
    return {"method": method, "dataset": dataset, **info, "folds": folds, "mean": mean}


def summary_markdown(summary: dict[str, Any]) -> str:
    """A table shaped like the paper's Table 1: one column per fold and the mean,
    one row per metric, in percent (mean over kept runs, ± sample std when several),
    followed by the discarded runs and the training data used."""
    folds = list(summary["folds"])
    name = METHOD_NAMES.get(summary["method"], summary["method"])
    label = fold_label(summary["dataset"])
    lines = [
        f"# {name} on {summary['dataset']}",
        "",
        f"| {name} | " + " | ".join(f"{label}{f}" for f in folds) + " | Mean |",
        "|---" * (len(folds) + 2) + "|",
    ]
    for key, row in (("ua", "UA (%)"), ("wa", "WA (%)"), ("macro_f1", "macro-F1 (%)")):
        cells = []
        for fold in folds:
            entry = summary["folds"][fold]
            cell = f"{100 * entry[key]:.1f}"
            if entry["kept_runs"] > 1:
                cell += f" ± {100 * entry[f'{key}_std']:.1f}"
            cells.append(cell)
        cells.append(f"{100 * summary['mean'][key]:.1f}" if summary["mean"] else "-")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    runs = {f["kept_runs"] for f in summary["folds"].values()}
    lines += [
        "",
        f"Runs per fold: {', '.join(str(r) for r in sorted(runs))}. UA = unweighted accuracy "
        "(mean per-class recall), WA = overall accuracy. Fold values are means over the "
        "kept runs (± sample std); Mean is the mean over folds.",
    ]
    notes = []
    for fold in folds:
        for run in summary["folds"][fold]["runs"]:
            if run.get("discarded"):
                notes.append(f"- {label}{fold}, seed {run['seed']}: discarded, {run['reason']}.")
            elif run.get("outlier"):
                notes.append(f"- {label}{fold}, seed {run['seed']}: {run['reason']}.")
    repeats = summary.get("repeats") or {}
    if notes:
        lines += ["", "Outlier runs (mean ± 2 std rule):", "", *notes]
    elif (
        repeats.get("discard_outliers")
        and repeats.get("runs", 0) > 1
        and repeats.get("rule_can_act") is False
    ):
        lines += [
            "",
            f"Outlier rule inactive: with {repeats['runs']} runs per fold no run can lie "
            f"outside mean ± {repeats['outlier_num_std']:g} sample std of runs it belongs to.",
        ]
    train = summary.get("train_data")
    if train and any(f.get("train_fraction", 1.0) != 1.0 for f in summary["folds"].values()):
        parts = [
            f"{label}{fold}: {100 * e['train_fraction']:g} % of the training utterances "
            f"({e['train_utterances']}, {e['train_hours']:.2f} h)"
            for fold, e in summary["folds"].items()
            if "train_fraction" in e
        ]
        lines += ["", "Training data: " + "; ".join(parts) + "."]
    return "\n".join(lines) + "\n"


def write_summary(output_folder: str | Path, summary: dict[str, Any]) -> Path:
    """Writes ``summary.json`` and ``summary.md`` (main process only); returns the json path."""
    output_folder = Path(output_folder)
    if if_main_process():
        write_json(output_folder / "summary.json", summary)
        (output_folder / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    return output_folder / "summary.json"


def configure_stdout_logging() -> None:
    """Shows INFO logs of this package on the console when no handler is set."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
