"""Emotion recognition metrics: unweighted accuracy (primary), weighted accuracy,
macro-F1 and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score


def unweighted_accuracy(confusion: np.ndarray) -> float:
    """UA: the mean over classes of per-class recall.

    Classes absent from the reference (an all-zero row) are left out of the mean.

    Arguments
    ---------
    confusion : np.ndarray
        (classes, classes) counts, rows = reference, columns = prediction.
    """
    support = confusion.sum(axis=1)
    present = support > 0
    recall = np.diag(confusion)[present] / support[present]
    return float(recall.mean()) if recall.size else 0.0


def weighted_accuracy(confusion: np.ndarray) -> float:
    """WA: the overall share of correct predictions."""
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else 0.0


def classification_metrics(
    targets: Sequence[int], predictions: Sequence[int], n_classes: int
) -> dict:
    """UA, WA, macro-F1 and the confusion matrix of a set of predictions.

    Arguments
    ---------
    targets, predictions : sequence of int
        Class indices in ``range(n_classes)``.
    n_classes : int
        Number of classes (fixes the confusion matrix's size).

    Returns
    -------
    dict
        ``{"ua", "wa", "macro_f1"}`` as fractions in [0, 1], ``"confusion"`` as a
        nested list (rows reference, columns prediction) and ``"n"``.
    """
    labels = list(range(n_classes))
    confusion = confusion_matrix(targets, predictions, labels=labels)
    present = sorted(set(int(t) for t in targets))
    macro_f1 = (
        f1_score(targets, predictions, labels=present, average="macro", zero_division=0)
        if present
        else 0.0
    )
    return {
        "ua": unweighted_accuracy(confusion),
        "wa": weighted_accuracy(confusion),
        "macro_f1": float(macro_f1),
        "confusion": confusion.tolist(),
        "n": int(confusion.sum()),
    }
