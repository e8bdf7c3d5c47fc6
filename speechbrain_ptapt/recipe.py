"""The flow every recipe shares: parse the command line, prepare the corpus on the
main process, optionally adapt the backbone once per fold (TAPT, P-TAPT), fine-tune
``runs`` times per fold, and write the summary.

A recipe script only names its data preparation (and adaptation stage), so the
IEMOCAP and SAVEE recipes of one method differ only in yaml and preparation.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import speechbrain as sb

from speechbrain_ptapt.audio import AudioError
from speechbrain_ptapt.backbone import BackboneLoadError
from speechbrain_ptapt.dataio import UnknownLabelError
from speechbrain_ptapt.experiment import (
    configure_stdout_logging,
    fold_names,
    load_hparams,
    parse_recipe_arguments,
    prepare_on_main,
    run_hparams,
    run_seeds,
    setup_logging,
    summarize,
    summary_markdown,
    write_summary,
)
from speechbrain_ptapt.preparation import DataPreparationError
from speechbrain_ptapt.tapt import TAPTSettingsError
from speechbrain_ptapt.vft import fine_tune

logger = logging.getLogger(__name__)

#: ``adapt(fold, hparams_file, overrides, run_opts, manifests) -> backbone folder``
AdaptStage = Callable[[str, str, dict, Any, dict], str]


#: Errors caused by the user's data or settings: reported as one message, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    DataPreparationError,
    BackboneLoadError,
    UnknownLabelError,
    AudioError,
    FileNotFoundError,
    TAPTSettingsError,
)


def run_recipe(
    argv: Sequence[str],
    script_file: str,
    prepare: Callable[..., dict],
    adapt: AdaptStage | None = None,
) -> dict[str, Any]:
    """Runs :func:`run_experiment`, reporting errors in the user's data or settings
    as one clear message (exit status 1) instead of a traceback."""
    try:
        return run_experiment(argv, script_file, prepare, adapt)
    except USER_ERRORS as err:
        logger.error("%s", err)
        sys.exit(f"error: {err}")


def run_experiment(
    argv: Sequence[str],
    script_file: str,
    prepare: Callable[..., dict],
    adapt: AdaptStage | None = None,
) -> dict[str, Any]:
    """Runs a whole experiment from a recipe's command line.

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
        An adaptation stage run once per fold before fine-tuning; returns the
        adapted backbone folder, used as ``wav2vec2_hub`` by every run of the fold.

    Returns
    -------
    dict
        The summary (also written to ``<output_folder>/summary.json`` and ``.md``).
    """
    configure_stdout_logging()
    hparams_file, run_opts, overrides = parse_recipe_arguments(argv, script_file)
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
    info = {"backbone": str(hparams["wav2vec2_hub"]), "classes": list(hparams["classes"])}
    seeds = run_seeds(hparams["seed"], hparams["runs"])
    del hparams  # each run builds its own objects
    results: dict[str, list[dict]] = {}
    for fold in folds:
        if fold not in manifests:
            raise KeyError(f"Fold '{fold}' was not prepared; available: {sorted(manifests)}")
        fold_overrides = dict(overrides)
        if adapt is not None:
            fold_overrides["wav2vec2_hub"] = adapt(
                fold, hparams_file, overrides, run_opts, manifests[fold]
            )
        for seed in seeds:
            run = run_hparams(hparams_file, fold_overrides, fold, seed)
            result = fine_tune(run, run_opts, manifests[fold]["train"], manifests[fold]["test"])
            results.setdefault(fold, []).append(result)
            write_summary(output_folder, summarize(results, method, dataset, **info))
    summary = summarize(results, method, dataset, **info)
    write_summary(output_folder, summary)
    if sb.utils.distributed.if_main_process():
        print(summary_markdown(summary))
    return summary
