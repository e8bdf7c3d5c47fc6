"""Running a recipe: command-line parsing, per-run hyperparameters, the fold x run
loop with resume/skip, and the summary files.

Every (fold, run) gets its own folder ``<output_folder>/fold_<fold>/seed_<seed>``
holding its checkpoints, log, test predictions and ``result.json``; a run whose
``result.json`` exists is finished and skipped, an interrupted one resumes from
its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import speechbrain as sb
import yaml
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.seed import seed_everything

logger = logging.getLogger(__name__)

METHOD_NAMES = {"vft": "V-FT", "tapt": "TAPT", "ptapt": "P-TAPT"}


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
        raise FileNotFoundError(
            f"Hyperparameter file '{hparams_file}' not found (looked in {Path.cwd()} and "
            f"beside {script_file})."
        )
    overrides = yaml.safe_load(overrides_text) if overrides_text else {}
    return str(path.resolve()), run_opts, overrides or {}


def load_hparams(hparams_file: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Loads the yaml with overrides, explaining an override the yaml does not define."""
    with open(hparams_file, encoding="utf-8") as f:
        try:
            return load_hyperpyyaml(f, overrides)
        except KeyError as err:
            if "Override" in str(err):
                raise KeyError(
                    f"{err.args[0]} (in {hparams_file}): check the spelling of the command "
                    "line option; every option must be a key of the yaml file."
                ) from err
            raise


def fold_names(folds: Any) -> list[str]:
    """Normalises the ``folds`` option (a fold name, or a list of them) to strings."""
    if isinstance(folds, (str, int)):
        folds = [folds]
    return [str(f) for f in folds]


def run_seeds(seed: int, runs: int) -> list[int]:
    """Seeds of the repeated runs of a fold: ``seed, seed + 1, ...``."""
    if runs < 1:
        raise ValueError(f"'runs' must be at least 1, got {runs}.")
    return [int(seed) + i for i in range(int(runs))]


def run_folder(output_folder: str | Path, fold: str, seed: int) -> Path:
    """Folder of one fine-tuning run."""
    return Path(output_folder) / f"fold_{fold}" / f"seed_{seed}"


def read_json(path: str | Path) -> Any:
    """Reads a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: str | Path, obj: Any) -> None:
    """Writes JSON atomically (a half-written file is never taken as finished)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


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
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def summarize(
    results: dict[str, list[dict[str, Any]]], method: str, dataset: str, **info: Any
) -> dict[str, Any]:
    """The summary of an experiment.

    Arguments
    ---------
    results : dict
        fold name -> list of run results (each with ``seed``, ``ua``, ``wa``,
        ``macro_f1``).
    method, dataset : str
        E.g. ``"vft"``, ``"IEMOCAP"``.
    **info
        Extra top-level entries (backbone, classes ...).

    Returns
    -------
    dict
        ``{"method", "dataset", "folds": {fold: {"ua", "wa", "macro_f1", "ua_std",
        ..., "runs": [...]}}, "mean": {"ua", "wa", "macro_f1"}}``; fold values are
        means over runs, ``mean`` is the mean over folds (fractions in [0, 1]).
    """
    folds: dict[str, Any] = {}
    for fold, runs in results.items():
        if not runs:
            continue
        entry: dict[str, Any] = {}
        for key in ("ua", "wa", "macro_f1"):
            entry[key], entry[f"{key}_std"] = _mean_std([r[key] for r in runs])
        entry["runs"] = [
            {k: r[k] for k in ("seed", "ua", "wa", "macro_f1", "confusion") if k in r} for r in runs
        ]
        folds[fold] = entry
    mean = {}
    if folds:
        for key in ("ua", "wa", "macro_f1"):
            mean[key], mean[f"{key}_std"] = _mean_std([f[key] for f in folds.values()])
    return {"method": method, "dataset": dataset, **info, "folds": folds, "mean": mean}


def summary_markdown(summary: dict[str, Any]) -> str:
    """A table shaped like the paper's Table 1: one column per fold and the mean,
    one row per metric, in percent (mean over runs, ± std when several runs)."""
    folds = list(summary["folds"])
    name = METHOD_NAMES.get(summary["method"], summary["method"])
    fold_label = "Session" if summary["dataset"].upper() == "IEMOCAP" else "Fold"
    lines = [
        f"# {name} on {summary['dataset']}",
        "",
        f"| {name} | " + " | ".join(f"{fold_label} {f}" for f in folds) + " | Mean |",
        "|---" * (len(folds) + 2) + "|",
    ]
    for key, label in (("ua", "UA (%)"), ("wa", "WA (%)"), ("macro_f1", "macro-F1 (%)")):
        cells = []
        for fold in folds:
            entry = summary["folds"][fold]
            cell = f"{100 * entry[key]:.1f}"
            if len(entry["runs"]) > 1:
                cell += f" ± {100 * entry[f'{key}_std']:.1f}"
            cells.append(cell)
        cells.append(f"{100 * summary['mean'][key]:.1f}" if summary["mean"] else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    runs = {len(f["runs"]) for f in summary["folds"].values()}
    lines += [
        "",
        f"Runs per fold: {', '.join(str(r) for r in sorted(runs))}. UA = unweighted accuracy "
        "(mean per-class recall), WA = overall accuracy. Fold values are means over runs; "
        "Mean is the mean over folds.",
    ]
    return "\n".join(lines) + "\n"


def write_summary(output_folder: str | Path, summary: dict[str, Any]) -> Path:
    """Writes ``summary.json`` and ``summary.md`` (main process only); returns the json path."""
    output_folder = Path(output_folder)
    if if_main_process():
        write_json(output_folder / "summary.json", summary)
        (output_folder / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    return output_folder / "summary.json"


def setup_logging(output_folder: str | Path, hparams_file: str, overrides: dict) -> None:
    """SpeechBrain's experiment folder: a copy of the yaml, the log file, the environment."""
    sb.create_experiment_directory(
        experiment_directory=str(output_folder),
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )


def configure_stdout_logging() -> None:
    """Shows INFO logs of this package on the console when no handler is set."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
