"""Emotion recognition metrics: unweighted accuracy (primary), weighted accuracy,
macro-F1 and the confusion matrix, computed with ``sklearn.metrics``."""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score


def classification_metrics(
    targets: Sequence[int], predictions: Sequence[int], n_classes: int
) -> dict:
    """UA, WA, macro-F1 and the confusion matrix of a set of predictions.

    UA is the mean over classes of per-class recall (balanced accuracy), WA the
    overall share of correct predictions. UA and macro-F1 average over the classes
    present in ``targets`` only: a class absent from a test fold has no recall.
    UA is ``recall_score(average="macro")`` over those classes rather than
    ``balanced_accuracy_score``, which takes no ``labels`` and warns when a
    prediction names a class absent from the reference.

    Arguments
    ---------
    targets, predictions : sequence of int
        Class indices in ``range(n_classes)``.
    n_classes : int
        Number of classes (fixes the confusion matrix's size).

    Returns
    -------
    dict
        ``{"ua", "wa", "macro_f1"}`` as fractions in [0, 1] (0 without targets),
        ``"confusion"`` as a nested list (rows reference, columns prediction) and
        ``"n"``.
    """
    confusion = confusion_matrix(targets, predictions, labels=list(range(n_classes)))
    present = sorted({int(t) for t in targets})
    scores = {"ua": 0.0, "wa": 0.0, "macro_f1": 0.0}
    if present:
        averaged = {"labels": present, "average": "macro", "zero_division": 0}
        scores = {
            "ua": recall_score(targets, predictions, **averaged),
            "wa": accuracy_score(targets, predictions),
            "macro_f1": f1_score(targets, predictions, **averaged),
        }
    return {
        **{key: float(value) for key, value in scores.items()},
        "confusion": confusion.tolist(),
        "n": int(confusion.sum()),
    }
