#!/usr/bin/env python3
"""TAPT on IEMOCAP: task-adaptive pretraining of wav2vec 2.0, then fine-tuning
(Chen & Rudnicky, ICASSP 2022, Sec. 2.2).

For every leave-one-session-out fold in ``folds``: continue wav2vec2's
self-supervised pretraining on the audio of the four training sessions (once
per fold, written to ``<output_folder>/fold_<k>/tapt/adapted_wav2vec2``), then
fine-tune ``runs`` times from the adapted weights and evaluate the last model
on the held-out session. Rerunning the command resumes an interrupted stage or
run and skips finished ones; ``<output_folder>/summary.json`` and ``summary.md``
hold the per-fold and mean UA / WA / macro-F1.

Run (from this folder or from the repository root)::

    python train_tapt.py hparams/tapt.yaml --data_folder=/path/to/IEMOCAP_full_release
    python recipes/IEMOCAP/train_tapt.py hparams/tapt.yaml --data_folder=... --folds=[5] --runs=1

Multi-GPU: ``torchrun --nproc_per_node=4 train_tapt.py hparams/tapt.yaml --data_folder=...``
"""

import sys

import speechbrain as sb
from iemocap_prepare import prepare_iemocap

from speechbrain_ptapt.protocol.recipe import (
    ExperimentResults,
    fine_tuning_runs,
    fold_names,
    load_hparams,
    parse_arguments,
    summary_markdown,
    training_subset,
    user_errors_as_one_line,
)
from speechbrain_ptapt.stages.tapt import run_tapt_stage

if __name__ == "__main__":
    with user_errors_as_one_line():
        # Command line: the yaml (also found beside this script), checked overrides.
        hparams_file, run_opts, overrides = parse_arguments(sys.argv[1:], __file__)
        sb.utils.distributed.ddp_init_group(run_opts)
        # The settings; the fine-tuning objects (wav2vec2 ...) are built by each run.
        hparams = load_hparams(hparams_file, overrides, run_objects=False)
        sb.create_experiment_directory(
            experiment_directory=hparams["output_folder"],
            hyperparams_to_save=hparams_file,
            overrides=overrides,
        )

        # Leave-one-session-out manifests, written by the main process.
        folds = fold_names(hparams["folds"])
        prepare_kwargs = {
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["manifest_folder"],
            "folds": folds,
        }
        sb.utils.distributed.run_on_main(prepare_iemocap, kwargs=prepare_kwargs)
        manifests = prepare_iemocap(**prepare_kwargs)

        # Every run's scores, kept in summary.json / summary.md as the runs end.
        results = ExperimentResults(hparams)
        for fold in folds:
            # Training utterances: all, or a nested subset (train_fraction, Table 4).
            subset = training_subset(hparams, fold, manifests)
            results.add_training_data(fold, subset)
            train, test = subset.manifest, manifests[fold]["test"]
            # Loaded once for the fold's adaptation stage, which never reads `test`.
            fold_hparams = load_hparams(
                hparams_file, {**overrides, "fold": fold}, run_objects=False
            )

            # 1. TAPT: wav2vec2's own pretraining objective on the training audio (Sec. 2.2)
            adapted = run_tapt_stage(fold_hparams, run_opts, train)
            # 2. Fine-tuning runs from the adapted wav2vec2 with the outlier rule (Sec. 3.2)
            run_overrides = {**overrides, "wav2vec2_hub": adapted}
            fine_tuning_runs(hparams_file, run_overrides, run_opts, fold, train, test, results)

        # Per-fold and mean UA / WA / macro-F1 (paper Table 1)
        summary = results.write_summary()
        if sb.utils.distributed.if_main_process():
            print(summary_markdown(summary))
