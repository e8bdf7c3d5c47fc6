#!/usr/bin/env python3
"""P-TAPT on SAVEE: pseudo-label task-adaptive pretraining, then fine-tuning
(Chen & Rudnicky, ICASSP 2022, Sec. 2.3).

For every leave-one-speaker-out fold in ``folds``, on the three training
speakers only: train the frame-level emotion CNN (phase 1), cluster its frame
features into pseudo-labels for every K of ``n_clusters``, continue training
wav2vec2 to predict the pseudo-labels of masked frames (phase 2) and save it in
Hugging Face format; then fine-tune it ``runs`` times as V-FT and evaluate on
the held-out speaker. Every stage is skipped when its outputs exist and match,
and resumed when interrupted; ``<output_folder>/summary.json`` and ``summary.md``
hold the per-fold and mean UA / WA / macro-F1.

Run (from the repository root or this folder)::

    python recipes/SAVEE/train_ptapt.py hparams/ptapt.yaml --data_folder=/path/to/SAVEE

Multi-GPU: ``torchrun --nproc_per_node=4 train_ptapt.py hparams/ptapt.yaml --data_folder=...``
"""

import sys

import speechbrain as sb
from savee_prepare import prepare_savee

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
from speechbrain_ptapt.stages.frame_emotion import run_frame_stage
from speechbrain_ptapt.stages.ptapt import run_pseudo_label_stage, run_ptapt_stage

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

        # Leave-one-speaker-out manifests, written by the main process.
        folds = fold_names(hparams["folds"])
        prepare_kwargs = {
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["manifest_folder"],
            "folds": folds,
        }
        sb.utils.distributed.run_on_main(prepare_savee, kwargs=prepare_kwargs)
        manifests = prepare_savee(**prepare_kwargs)

        # Every run's scores, kept in summary.json / summary.md as the runs end.
        results = ExperimentResults(hparams)
        for fold in folds:
            # Training utterances: all, or a nested subset (train_fraction, Table 4).
            subset = training_subset(hparams, fold, manifests)
            results.add_training_data(fold, subset)
            train, test = subset.manifest, manifests[fold]["test"]
            # Loaded once for the fold's adaptation stages, which never read `test`.
            fold_hparams = load_hparams(
                hparams_file, {**overrides, "fold": fold}, run_objects=False
            )

            # 1. Frame-level emotion model trained on utterance labels (paper Fig. 1a)
            frame_model = run_frame_stage(fold_hparams, run_opts, train)
            # 2. k-means pseudo-labels of its frame features, one per K (Sec. 2.3)
            labels = run_pseudo_label_stage(fold_hparams, run_opts, frame_model, train)
            # 3. P-TAPT objective: wav2vec2 predicts the labels of masked frames (Fig. 1b)
            adapted = run_ptapt_stage(fold_hparams, run_opts, train, frame_model, labels)
            # 4. Fine-tuning runs from the adapted wav2vec2 with the outlier rule (Sec. 3.2)
            run_overrides = {**overrides, "wav2vec2_hub": adapted}
            fine_tuning_runs(hparams_file, run_overrides, run_opts, fold, train, test, results)

        # Per-fold and mean UA / WA / macro-F1 (paper Table 1)
        summary = results.write_summary()
        if sb.utils.distributed.if_main_process():
            print(summary_markdown(summary))
