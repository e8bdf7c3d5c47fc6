#!/usr/bin/env python3
"""V-FT on SAVEE: fine-tune wav2vec 2.0 with a mean-pool + ReLU + linear head.

For every leave-one-speaker-out fold in ``folds`` and every run in ``runs``:
train on the three other speakers for ``number_of_epochs`` epochs and evaluate
the last model on the held-out speaker. Rerunning the command resumes an
interrupted run and skips finished ones; ``<output_folder>/summary.json`` and
``summary.md`` hold the per-fold and mean UA / WA / macro-F1.

Run (from this folder or from the repository root)::

    python train_vft.py hparams/vft.yaml --data_folder=/path/to/SAVEE
    python recipes/SAVEE/train_vft.py hparams/vft.yaml --data_folder=... --folds=[DC] --runs=1

``--data_folder`` is the folder holding ``AudioData``, ``AudioData`` itself, or
a flat folder of ``<SPK>_<code><NN>.wav`` files (e.g. ``ALL``).

Multi-GPU: ``torchrun --nproc_per_node=4 train_vft.py hparams/vft.yaml --data_folder=...``
"""

import sys

from savee_prepare import prepare_savee

from speechbrain_ptapt.recipe import run_recipe

if __name__ == "__main__":
    run_recipe(sys.argv[1:], __file__, prepare=prepare_savee)
