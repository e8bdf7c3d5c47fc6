"""Prepare IEMOCAP for the emotion recognition recipes in this folder.

Writes leave-one-session-out 4-class manifests (neu, hap+exc, sad, ang):
``SAVE_FOLDER/fold_<k>/train.json`` and ``SAVE_FOLDER/fold_<k>/test.json``
for each session ``k``, from the released ``IEMOCAP_full_release`` folder.
The work lives in :mod:`speechbrain_ptapt.data.iemocap`; this script re-exports
``prepare_iemocap`` for the training scripts and runs it from the command line:

    python iemocap_prepare.py /path/to/IEMOCAP_full_release /path/to/save_folder
    python iemocap_prepare.py /path/to/IEMOCAP_full_release /path/to/save_folder --folds 1 5

(with the package installed, e.g. ``pip install -e .`` at the repository root).
"""

from __future__ import annotations

import sys

from speechbrain_ptapt.data.iemocap import prepare_iemocap
from speechbrain_ptapt.data.preparation import preparation_command

__all__ = ["prepare_iemocap"]


def main(argv: list[str] | None = None) -> int:
    """Run the preparation from command-line arguments; return the exit status."""
    return preparation_command(
        prepare_iemocap,
        argv,
        __doc__.splitlines()[0],
        data_help="the IEMOCAP_full_release folder",
        save_help="where the fold_<k>/ manifests are written",
        folds_help="held-out sessions to prepare (default: every session present)",
    )


if __name__ == "__main__":
    sys.exit(main())
