#!/usr/bin/env python3
"""P-TAPT on SAVEE: pseudo-label task-adaptive pretraining, then fine-tuning.

For every leave-one-speaker-out fold in ``folds``, on the three training
speakers only: train the frame-level emotion CNN (phase 1), cluster its frame
features into pseudo-labels for every K of ``n_clusters``, continue training
wav2vec2 to predict the pseudo-labels of masked frames (phase 2) and save it in
Hugging Face format; then fine-tune it ``runs`` times as V-FT and evaluate on
the held-out speaker. Every stage is skipped when its outputs exist and match,
and resumed when interrupted.

Run (from the repository root or this folder)::

    python recipes/SAVEE/train_ptapt.py hparams/ptapt.yaml --data_folder=/path/to/SAVEE
"""

import sys

from savee_prepare import prepare_savee

from speechbrain_ptapt.ptapt import run_ptapt_stage
from speechbrain_ptapt.recipe import run_recipe

if __name__ == "__main__":
    run_recipe(sys.argv[1:], __file__, prepare=prepare_savee, adapt=run_ptapt_stage)
