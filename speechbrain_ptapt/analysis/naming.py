"""What methods and folds are called in tables and figures (the paper's words)."""

from __future__ import annotations

#: Method keys of the recipes (``method`` in the yaml) -> the paper's names.
METHOD_NAMES = {"vft": "V-FT", "tapt": "TAPT", "ptapt": "P-TAPT"}


def fold_label(dataset: str) -> str:
    """Prefix of a fold's name in tables: ``"Session "`` for IEMOCAP (folds are the
    held-out session numbers), nothing otherwise (SAVEE folds are speaker names)."""
    return "Session " if dataset.upper() == "IEMOCAP" else ""
