#!/usr/bin/env python3
"""V-FT on IEMOCAP: fine-tune wav2vec 2.0 with a mean-pool + ReLU + linear head.

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

from iemocap_prepare import prepare_iemocap

from speechbrain_ptapt.recipe import run_recipe

if __name__ == "__main__":
    run_recipe(sys.argv[1:], __file__, prepare=prepare_iemocap)
