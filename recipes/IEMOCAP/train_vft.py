#!/usr/bin/env python3
"""V-FT on IEMOCAP: fine-tune wav2vec 2.0 with a mean-pool + ReLU + linear head
(Chen & Rudnicky, ICASSP 2022, Sec. 2.2).

For every leave-one-session-out fold in ``folds`` and every run in ``runs``:
train on the four other sessions for ``number_of_epochs`` epochs and evaluate the
last model on the held-out session. Rerunning the command resumes an interrupted
run and skips finished ones; ``<output_folder>/summary.json`` and ``summary.md``
hold the per-fold and mean UA / WA / macro-F1.

Run (from this folder or from the repository root)::

    python train_vft.py hparams/vft.yaml --data_folder=/path/to/IEMOCAP_full_release
    python recipes/IEMOCAP/train_vft.py hparams/vft.yaml --data_folder=... --folds=[5] --runs=1

Multi-GPU: ``torchrun --nproc_per_node=4 train_vft.py hparams/vft.yaml --data_folder=...``
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

            # Fine-tuning runs from the pretrained wav2vec2 with the outlier rule (Sec. 3.2)
            fine_tuning_runs(hparams_file, overrides, run_opts, fold, train, test, results)

        # Per-fold and mean UA / WA / macro-F1 (paper Table 1)
        summary = results.write_summary()
        if sb.utils.distributed.if_main_process():
            print(summary_markdown(summary))
