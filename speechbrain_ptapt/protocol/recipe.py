"""What the recipe scripts share, so that each script reads as its method.

A script (``recipes/<Dataset>/train_<method>.py``) runs SpeechBrain's prologue
(:func:`parse_arguments`, ``ddp_init_group``, :func:`load_hparams`,
``create_experiment_directory``, the corpus preparation on the main process), then
for every fold: the fold's training data (:func:`training_subset`), the method's
adaptation stages one call each, and :func:`fine_tuning_runs`, which records every
run in :class:`ExperimentResults` (the summary files). The script's body runs inside
:func:`user_errors_as_one_line`.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import speechbrain as sb
import torch

from speechbrain_ptapt.data.subsets import (
    SubsetOptions,
    TrainingSubset,
    TrainingSubsetError,
    make_training_subset,
)
from speechbrain_ptapt.protocol.errors import PtaptError
from speechbrain_ptapt.protocol.experiment import (
    configure_stdout_logging,
    fold_names,
    load_hparams,
    parse_recipe_arguments,
    prepare_on_main,
    read_json,
    run_folder,
    run_hparams,
    summarize,
    summary_markdown,
    write_json,
    write_summary,
)
from speechbrain_ptapt.protocol.hparams_check import check_overrides
from speechbrain_ptapt.protocol.repeats import (
    FoldRuns,
    RepeatSettings,
    largest_possible_deviation,
    repeat_runs,
)
from speechbrain_ptapt.stages.vft import fine_tune

__all__ = [
    "ExperimentResults",
    "fine_tuning_runs",
    "fold_names",
    "load_hparams",
    "parse_arguments",
    "summary_markdown",
    "training_subset",
    "user_errors_as_one_line",
]

logger = logging.getLogger(__name__)


@contextmanager
def user_errors_as_one_line() -> Iterator[None]:
    """Runs a recipe's body, reporting an error in the user's data or settings
    (:class:`~speechbrain_ptapt.protocol.errors.PtaptError`) as one clear line (exit status 1)
    instead of a traceback; any other exception is a bug and keeps its traceback.
    Until SpeechBrain sets up logging, this package's INFO logs go to the console."""
    configure_stdout_logging()
    try:
        yield
    except PtaptError as err:
        message = " ".join(str(err).split())  # one line, whatever the library wrote
        logger.error("%s", message)
        sys.exit(f"error: {message}")
    finally:
        # Under torchrun, leave the process group before the interpreter tears down
        # the communication threads.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def parse_arguments(argv: Sequence[str], script_file: str) -> tuple[str, Any, dict[str, Any]]:
    """``sb.parse_arguments``, with the hparams file also looked up beside the script
    and every ``--key=value`` override checked against the yaml (name, type, range)
    before anything runs.

    Arguments
    ---------
    argv : sequence of str
        ``sys.argv[1:]``: the hparams file, overrides and SpeechBrain's run options.
    script_file : str
        The recipe's ``__file__``.

    Returns
    -------
    hparams_file : str
        Absolute path of the yaml.
    run_opts : RunOptions
        SpeechBrain's run options (``--device``, ``--precision`` ...).
    overrides : dict
        The yaml overrides.
    """
    hparams_file, run_opts, overrides = parse_recipe_arguments(argv, script_file)
    check_overrides(hparams_file, overrides)
    return hparams_file, run_opts, overrides


def training_subset(
    hparams: Mapping[str, Any], fold: str, manifests: Mapping[str, Mapping[str, Any]]
) -> TrainingSubset:
    """The training utterances of ``fold``: all of them, or the nested random subset
    that ``train_fraction`` / ``train_hours`` ask for (data-efficiency sweep, paper
    Table 4), written beside the fold's manifest by the main process.

    Every stage of the fold trains on ``subset.manifest``. A fold whose output folder
    holds runs trained on other data is refused (:func:`check_training_data`).

    Arguments
    ---------
    hparams : mapping
        ``output_folder``, ``train_fraction``, ``train_hours``, ``subset_seed``.
    fold : str
        The held-out session or speaker.
    manifests : mapping
        The preparation's ``{fold: {"train": manifest, "test": manifest}}``.
    """
    if fold not in manifests:
        raise KeyError(f"Fold '{fold}' was not prepared; available: {sorted(manifests)}")
    subset = prepare_on_main(
        make_training_subset,
        train_manifest=manifests[fold]["train"],
        options=SubsetOptions.from_hparams(hparams),
    )
    check_training_data(hparams["output_folder"], fold, subset)
    logger.info(
        "Fold %s trains on %d of %d utterances (%.2f h of %.2f h, fraction %g): %s",
        fold,
        subset.utterances,
        subset.full_utterances,
        subset.hours,
        subset.full_hours,
        subset.fraction,
        subset.manifest,
    )
    return subset


class ExperimentResults:
    """The runs of every fold, and ``summary.json`` / ``summary.md`` in
    ``output_folder``, rewritten after every run (main process only).

    Arguments
    ---------
    hparams : mapping
        The experiment's hparams: ``output_folder``, ``method``, ``dataset``,
        ``wav2vec2_hub``, ``classes``, the outlier-rule settings
        (:class:`~speechbrain_ptapt.protocol.repeats.RepeatSettings`) and the training-subset
        settings (:class:`~speechbrain_ptapt.data.subsets.SubsetOptions`), both checked here.
    """

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        self.output_folder = Path(hparams["output_folder"])
        self.method, self.dataset = hparams["method"], hparams["dataset"]
        self.repeats = RepeatSettings.from_hparams(hparams)
        subset_options = SubsetOptions.from_hparams(hparams)
        self.info: dict[str, Any] = {
            "backbone": str(hparams["wav2vec2_hub"]),
            "classes": list(hparams["classes"]),
            "repeats": self.repeats.record(),
            "train_data": {
                "train_fraction": subset_options.fraction,
                "train_hours": subset_options.hours,
                "subset_seed": subset_options.seed,
            },
        }
        self.runs: dict[str, list[dict[str, Any]]] = {}
        self.fold_info: dict[str, dict[str, Any]] = {}
        warn_if_the_outlier_rule_cannot_act(self.repeats)

    def add_training_data(self, fold: str, subset: TrainingSubset) -> None:
        """Records the fold's training data (amount, subset manifest) for the summary."""
        self.fold_info[fold] = training_data_record(subset)

    def record_runs(self, fold: str, fold_runs: FoldRuns) -> None:
        """Records the fold's runs so far (with the outlier rule's decisions), rewrites
        the summary and the fold's ``repeats.json`` and marks discarded runs."""
        self.runs[fold] = fold_runs.runs
        self.fold_info[fold] = {**self.fold_info.get(fold, {}), **fold_runs.record()}
        self.write_summary()
        write_discard_records(self.output_folder, fold, fold_runs)

    def write_summary(self) -> dict[str, Any]:
        """Writes ``summary.json`` and ``summary.md``; returns the summary."""
        summary = summarize(
            self.runs, self.method, self.dataset, fold_info=self.fold_info, **self.info
        )
        write_summary(self.output_folder, summary)
        return summary


def fine_tuning_runs(
    hparams_file: str,
    overrides: dict[str, Any],
    run_opts: Any,
    fold: str,
    train_manifest: str | Path,
    test_manifest: str | Path,
    results: ExperimentResults,
) -> FoldRuns:
    """The ``runs`` fine-tuning runs of one fold with the paper's outlier rule (Sec. 3.2).

    Run ``r`` uses seed ``seed + r``; once the fold has its runs, a run whose UA lies
    too far from the others is discarded and replaced by a run with the next unused
    seed (:func:`~speechbrain_ptapt.protocol.repeats.repeat_runs`). Each run trains on
    ``train_manifest`` and evaluates its last model on ``test_manifest``
    (:func:`~speechbrain_ptapt.stages.vft.fine_tune`) in
    ``<output_folder>/fold_<fold>/seed_<seed>``; a finished run is read back from its
    ``result.json``, an interrupted one resumes.
    ``results`` records each run as it ends.

    Arguments
    ---------
    hparams_file : str
        The recipe's yaml.
    overrides : dict
        The user's overrides; TAPT and P-TAPT set ``wav2vec2_hub`` to the fold's
        adapted backbone.
    run_opts : RunOptions or dict
        SpeechBrain's run options.
    fold : str
        The held-out session or speaker.
    train_manifest, test_manifest : str or Path
        The fold's (possibly reduced) training manifest and its test manifest.
    results : ExperimentResults
        Receives the runs; holds the outlier-rule settings.

    Returns
    -------
    FoldRuns
        Every run of the fold, discarded ones included.
    """

    def run(seed: int) -> dict[str, Any]:
        # Each run loads the yaml again: its objects (wav2vec2 from wav2vec2_hub, the
        # head, the masks, the checkpointer of its own folder) are built fresh after
        # seeding with the run's seed, so no run inherits trained weights or random
        # state from the runs before it, and each reproduces alone.
        hparams = run_hparams(hparams_file, overrides, fold, seed)
        return fine_tune(hparams, run_opts, train_manifest, test_manifest)

    on_change: Callable[[FoldRuns], None] = functools.partial(results.record_runs, fold)
    return repeat_runs(run, results.repeats, on_change=on_change)


def warn_if_the_outlier_rule_cannot_act(repeats: RepeatSettings) -> None:
    """Warns when with ``runs`` runs per fold no run can be an outlier."""
    if repeats.discard_outliers and repeats.runs > 1 and not repeats.rule_can_act():
        logger.warning(
            "With %d runs per fold no run can lie outside mean ± %g sample std of the runs "
            "(at most %.2f std away): the outlier rule cannot discard anything. Use more "
            "runs or outlier_reference: others.",
            repeats.runs,
            repeats.num_std,
            largest_possible_deviation(repeats.runs, repeats.reference),
        )


def check_training_data(output_folder: str | Path, fold: str, subset: TrainingSubset) -> None:
    """Refuses to mix runs trained on different training data in one output folder.

    ``<output_folder>/fold_<fold>/train_data.json`` records the fold's training
    subset (fraction, seed, ids digest) the first time; a later command with another
    ``train_fraction`` / ``train_hours`` / ``subset_seed`` (whose finished runs would
    otherwise be taken as its own) raises :class:`TrainingSubsetError`.
    """
    path = Path(output_folder) / f"fold_{fold}" / "train_data.json"
    record = {
        "fraction": subset.fraction,
        "seed": subset.seed,
        "utterances": subset.utterances,
        "digest": subset.digest,
    }
    if path.is_file():
        recorded = read_json(path)
        if recorded.get("digest") != subset.digest:
            raise TrainingSubsetError(
                f"{path.parent} holds runs trained on other training data (fraction "
                f"{recorded.get('fraction')}, subset_seed {recorded.get('seed')}, "
                f"{recorded.get('utterances')} utterances) than this command asks for "
                f"(fraction {subset.fraction:g}, subset_seed {subset.seed}, "
                f"{subset.utterances} utterances). Use one output_folder per amount of "
                "training data."
            )
    elif sb.utils.distributed.if_main_process():
        write_json(path, record)


def training_data_record(subset: TrainingSubset) -> dict[str, Any]:
    """The fold entries of the summary describing its training data."""
    return {
        "train_fraction": subset.fraction,
        "train_halvings": subset.halvings,
        "train_utterances": subset.utterances,
        "train_hours": subset.hours,
        "full_train_utterances": subset.full_utterances,
        "full_train_hours": subset.full_hours,
        "train_manifest": subset.manifest,
    }


def write_discard_records(output_folder: str | Path, fold: str, fold_runs: FoldRuns) -> None:
    """Writes ``<output_folder>/fold_<fold>/repeats.json`` (every run's seed, UA and
    decision) and a ``discarded.json`` with the reason in each discarded run's
    folder (main process only)."""
    if not sb.utils.distributed.if_main_process():
        return
    keys = ("seed", "ua", "discarded", "reason", "outlier", "outlier_test", "replaces")
    write_json(
        Path(output_folder) / f"fold_{fold}" / "repeats.json",
        {
            "fold": fold,
            **fold_runs.record(),
            "runs": [{k: r[k] for k in keys if k in r} for r in fold_runs.runs],
        },
    )
    for r in fold_runs.discarded:
        marker = run_folder(output_folder, fold, r["seed"]) / "discarded.json"
        if not marker.is_file():
            write_json(marker, {k: r[k] for k in keys if k in r})
