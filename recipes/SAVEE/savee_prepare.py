"""Prepare SAVEE for the emotion recognition recipes in this folder.

Converts the 44.1 kHz wavs once to 16 kHz mono copies
(``SAVE_FOLDER/wav16k/<SPK>/<code><NN>.wav``) and writes leave-one-speaker-out
7-class manifests (ang, dis, fea, hap, neu, sad, sur):
``SAVE_FOLDER/fold_<SPK>/train.json`` and ``SAVE_FOLDER/fold_<SPK>/test.json``
for each speaker DC, JE, JK, KL. Both layouts in circulation are read: the
original ``AudioData/<SPK>/<code><NN>.wav`` (pass the folder holding
``AudioData`` or ``AudioData`` itself) and flat re-packs of
``<SPK>_<code><NN>.wav`` (pass that folder, e.g. ``ALL``). The work lives in
:mod:`speechbrain_ptapt.data.savee`; this script re-exports ``prepare_savee`` for
the training scripts and runs it from the command line:

    python savee_prepare.py /path/to/SAVEE /path/to/save_folder
    python savee_prepare.py /path/to/ALL /path/to/save_folder --folds DC KL

(with the package installed, e.g. ``pip install -e .`` at the repository root).
"""

from __future__ import annotations

import sys

from speechbrain_ptapt.data.preparation import preparation_command
from speechbrain_ptapt.data.savee import prepare_savee

__all__ = ["prepare_savee"]


def main(argv: list[str] | None = None) -> int:
    """Run the preparation from command-line arguments; return the exit status."""
    return preparation_command(
        prepare_savee,
        argv,
        __doc__.splitlines()[0],
        data_help="the folder holding AudioData, AudioData itself, or a flat folder",
        save_help="where wav16k/ and the fold_<SPK>/ manifests go",
        folds_help="held-out speakers to prepare (default: every speaker present)",
    )


if __name__ == "__main__":
    sys.exit(main())
