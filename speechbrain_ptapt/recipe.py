"""The flow every recipe shares: parse the command line, prepare the corpus on the
main process, reduce each fold's training set when asked (data-efficiency sweep),
optionally adapt the backbone once per fold (TAPT, P-TAPT), fine-tune ``runs``
times per fold with the outlier rule (discard and re-run), and write the summary.

A recipe script only names its data preparation (and adaptation stage), so the
IEMOCAP and SAVEE recipes of one method differ only in yaml and preparation.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import speechbrain as sb

from speechbrain_ptapt.errors import PtaptError
from speechbrain_ptapt.experiment import (
    configure_stdout_logging,
    fold_names,
    load_hparams,
    parse_recipe_arguments,
    prepare_on_main,
    read_json,
    run_folder,
    run_hparams,
    setup_logging,
    summarize,
    summary_markdown,
    write_json,
    write_summary,
)
from speechbrain_ptapt.hparams_check import check_overrides
from speechbrain_ptapt.repeats import (
    FoldRuns,
    RepeatSettings,
    largest_possible_deviation,
    repeat_runs,
)
from speechbrain_ptapt.subsets import (
    SubsetOptions,
    TrainingSubset,
    TrainingSubsetError,
    make_training_subset,
)
from speechbrain_ptapt.vft import fine_tune

logger = logging.getLogger(__name__)

#: ``adapt(fold, hparams_file, overrides, run_opts, manifests) -> backbone folder``
AdaptStage = Callable[[str, str, dict, Any, dict], str]


def run_recipe(
    argv: Sequence[str],
    script_file: str,
    prepare: Callable[..., dict],
    adapt: AdaptStage | None = None,
) -> dict[str, Any]:
    """Runs :func:`run_experiment`, reporting errors in the user's data or settings
    (:class:`~speechbrain_ptapt.errors.PtaptError`) as one clear line (exit status 1)
    instead of a traceback; any other exception is a bug and keeps its traceback."""
    try:
        return run_experiment(argv, script_file, prepare, adapt)
    except PtaptError as err:
        message = " ".join(str(err).split())  # one line, whatever the library wrote
        logger.error("%s", message)
        sys.exit(f"error: {message}")


def run_experiment(
    argv: Sequence[str],
    script_file: str,
    prepare: Callable[..., dict],
    adapt: AdaptStage | None = None,
) -> dict[str, Any]:
    """Runs a whole experiment from a recipe's command line.

    For every fold: reduce the training manifest when ``train_fraction`` or
    ``train_hours`` asks for it (:mod:`speechbrain_ptapt.subsets`; the reduced
    manifest is what every later stage reads), adapt the backbone once (TAPT,
    P-TAPT), then make ``runs`` fine-tuning runs and apply the outlier rule
    (:mod:`speechbrain_ptapt.repeats`). The summary is rewritten after every run.

    Arguments
    ---------
    argv : sequence of str
        ``sys.argv[1:]`` (hparams file, ``--key=value`` overrides, run options).
    script_file : str
        The recipe's ``__file__`` (hparams paths are also looked up beside it).
    prepare : callable
        The corpus preparation: ``prepare(data_folder=, save_folder=, folds=)``
        returning ``{fold: {"train": manifest, "test": manifest}}``.
    adapt : callable, optional
        An adaptation stage run once per fold before fine-tuning, given the fold's
        (possibly reduced) manifests; returns the adapted backbone folder, used as
        ``wav2vec2_hub`` by every run of the fold.

    Returns
    -------
    dict
        The summary (also written to ``<output_folder>/summary.json`` and ``.md``).
    """
    configure_stdout_logging()
    hparams_file, run_opts, overrides = parse_recipe_arguments(argv, script_file)
    check_overrides(hparams_file, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    hparams = load_hparams(hparams_file, overrides)
    output_folder = hparams["output_folder"]
    setup_logging(output_folder, hparams_file, overrides)
    folds = fold_names(hparams["folds"])
    manifests = prepare_on_main(
        prepare,
        data_folder=hparams["data_folder"],
        save_folder=hparams["manifest_folder"],
        folds=folds,
    )
    method, dataset = hparams["method"], hparams["dataset"]
    repeats = RepeatSettings.from_hparams(hparams)
    subset_options = SubsetOptions.from_hparams(hparams)
    info: dict[str, Any] = {
        "backbone": str(hparams["wav2vec2_hub"]),
        "classes": list(hparams["classes"]),
        "repeats": repeats.record(),
        "train_data": {
            "train_fraction": subset_options.fraction,
            "train_hours": subset_options.hours,
            "subset_seed": subset_options.seed,
        },
    }
    del hparams  # each run builds its own objects
    if repeats.discard_outliers and repeats.runs > 1 and not repeats.rule_can_act():
        logger.warning(
            "With %d runs per fold no run can lie outside mean ± %g sample std of the runs "
            "(at most %.2f std away): the outlier rule cannot discard anything. Use more "
            "runs or outlier_reference: others.",
            repeats.runs,
            repeats.num_std,
            largest_possible_deviation(repeats.runs, repeats.reference),
        )
    results: dict[str, list[dict]] = {}
    fold_info: dict[str, dict[str, Any]] = {}

    def save() -> dict[str, Any]:
        summary = summarize(results, method, dataset, fold_info=fold_info, **info)
        write_summary(output_folder, summary)
        return summary

    for fold in folds:
        if fold not in manifests:
            raise KeyError(f"Fold '{fold}' was not prepared; available: {sorted(manifests)}")
        subset = prepare_on_main(
            make_training_subset, train_manifest=manifests[fold]["train"], options=subset_options
        )
        check_training_data(output_folder, fold, subset)
        fold_manifests = {**manifests[fold], "train": subset.manifest}
        fold_info[fold] = training_data_record(subset)
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
        fold_overrides = dict(overrides)
        if adapt is not None:
            fold_overrides["wav2vec2_hub"] = adapt(
                fold, hparams_file, overrides, run_opts, fold_manifests
            )

        def record(fold_runs: FoldRuns, fold: str = fold) -> None:
            results[fold] = fold_runs.runs
            fold_info[fold] = {**fold_info[fold], **fold_runs.record()}
            save()
            write_discard_records(output_folder, fold, fold_runs)

        run = fine_tuning_run(hparams_file, fold_overrides, run_opts, fold, fold_manifests)
        repeat_runs(run, repeats, on_change=record)
    summary = save()
    if sb.utils.distributed.if_main_process():
        print(summary_markdown(summary))
    return summary


def fine_tuning_run(
    hparams_file: str, overrides: dict[str, Any], run_opts: Any, fold: str, manifests: dict
) -> Callable[[int], dict[str, Any]]:
    """``run(seed) -> result``: one fine-tuning run of ``fold`` on its (possibly
    reduced) ``manifests``, read back from ``result.json`` when finished."""

    def run(seed: int) -> dict[str, Any]:
        hparams = run_hparams(hparams_file, overrides, fold, seed)
        return fine_tune(hparams, run_opts, manifests["train"], manifests["test"])

    return run


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
