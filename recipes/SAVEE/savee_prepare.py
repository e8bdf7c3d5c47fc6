"""Prepare SAVEE for the emotion recognition recipes in this folder.

Converts the 44.1 kHz wavs once to 16 kHz mono copies
(``SAVE_FOLDER/wav16k/<SPK>/<code><NN>.wav``) and writes leave-one-speaker-out
7-class manifests (ang, dis, fea, hap, neu, sad, sur):
``SAVE_FOLDER/fold_<SPK>/train.json`` and ``SAVE_FOLDER/fold_<SPK>/test.json``
for each speaker DC, JE, JK, KL. Both layouts in circulation are read: the
original ``AudioData/<SPK>/<code><NN>.wav`` (pass the folder holding
``AudioData`` or ``AudioData`` itself) and flat re-packs of
``<SPK>_<code><NN>.wav`` (pass that folder, e.g. ``ALL``). The work lives in
:mod:`speechbrain_ptapt.savee`; this script re-exports ``prepare_savee`` for
the training scripts and runs it from the command line:

    python savee_prepare.py /path/to/SAVEE /path/to/save_folder
    python savee_prepare.py /path/to/ALL /path/to/save_folder --folds DC KL

(with the package installed, e.g. ``pip install -e .`` at the repository root).
"""

from __future__ import annotations

import argparse
import logging
import sys

from speechbrain_ptapt.preparation import DataPreparationError
from speechbrain_ptapt.savee import prepare_savee

__all__ = ["prepare_savee"]


def main(argv: list[str] | None = None) -> int:
    """Run the preparation from command-line arguments; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "data_folder", help="the folder holding AudioData, AudioData itself, or a flat folder"
    )
    parser.add_argument("save_folder", help="where wav16k/ and the fold_<SPK>/ manifests go")
    parser.add_argument(
        "--folds",
        nargs="+",
        default=None,
        help="held-out speakers to prepare (default: every speaker present)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        paths = prepare_savee(args.data_folder, args.save_folder, folds=args.folds)
    except DataPreparationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for fold, fold_paths in paths.items():
        print(f"fold {fold}: train {fold_paths['train']}  test {fold_paths['test']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
