#!/usr/bin/env python3
"""TAPT on SAVEE: task-adaptive pretraining of wav2vec 2.0, then fine-tuning.

For every leave-one-speaker-out fold in ``folds``: continue wav2vec2's
self-supervised pretraining on the audio of the three training speakers (once
per fold, written to ``<output_folder>/fold_<SPK>/tapt/adapted_wav2vec2``), then
fine-tune ``runs`` times from the adapted weights and evaluate the last model
on the held-out speaker. Rerunning the command resumes an interrupted stage or
run and skips finished ones; ``<output_folder>/summary.json`` and ``summary.md``
hold the per-fold and mean UA / WA / macro-F1.

Run (from this folder or from the repository root)::

    python train_tapt.py hparams/tapt.yaml --data_folder=/path/to/SAVEE
    python recipes/SAVEE/train_tapt.py hparams/tapt.yaml --data_folder=... --folds=[DC] --runs=1

Multi-GPU: ``torchrun --nproc_per_node=4 train_tapt.py hparams/tapt.yaml --data_folder=...``
"""

import sys

from savee_prepare import prepare_savee

from speechbrain_ptapt.recipe import run_recipe
from speechbrain_ptapt.tapt import run_tapt_stage

if __name__ == "__main__":
    run_recipe(sys.argv[1:], __file__, prepare=prepare_savee, adapt=run_tapt_stage)
