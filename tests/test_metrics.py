"""UA, WA, macro-F1 and the confusion matrix against hand-computed values."""

import pytest

from speechbrain_ptapt.analysis.metrics import classification_metrics


def test_unweighted_accuracy_is_mean_per_class_recall():
    # confusion (rows: reference) [[8, 2, 0], [1, 1, 0], [0, 0, 4]]
    targets = [0] * 10 + [1] * 2 + [2] * 4
    preds = [0] * 8 + [1] * 2 + [0, 1] + [2] * 4
    m = classification_metrics(targets, preds, n_classes=3)
    assert m["confusion"] == [[8, 2, 0], [1, 1, 0], [0, 0, 4]]
    # recalls 0.8, 0.5, 1.0 -> UA 0.7667; WA = 13 / 16
    assert m["ua"] == pytest.approx((0.8 + 0.5 + 1.0) / 3)
    assert m["wa"] == pytest.approx(13 / 16)


def test_classes_absent_from_the_reference_are_left_out_of_ua_and_macro_f1():
    # class 1 is never the reference but is predicted once; class 3 never appears
    targets = [0, 0, 0, 0, 2, 2]
    preds = [0, 0, 0, 1, 0, 2]
    m = classification_metrics(targets, preds, n_classes=4)
    assert m["confusion"] == [[3, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert m["ua"] == pytest.approx((0.75 + 0.5) / 2)
    # F1: class 0 p=3/4 r=3/4; class 2 p=1 r=1/2
    assert m["macro_f1"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert m["wa"] == pytest.approx(4 / 6)


def test_classification_metrics_matches_hand_computed_confusion():
    targets = [0, 0, 0, 1, 1, 2, 2, 2, 3]
    preds = [0, 0, 1, 1, 0, 2, 2, 3, 3]
    m = classification_metrics(targets, preds, n_classes=4)
    assert m["confusion"] == [
        [2, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 2, 1],
        [0, 0, 0, 1],
    ]
    assert m["n"] == 9
    assert m["wa"] == pytest.approx(6 / 9)
    assert m["ua"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3 + 1) / 4)
    # per-class F1: c0 p=2/3 r=2/3; c1 p=1/2 r=1/2; c2 p=1 r=2/3; c3 p=1/2 r=1
    f1 = [2 / 3, 1 / 2, 0.8, 2 / 3]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 4)


def test_unweighted_and_weighted_accuracy_differ_on_imbalanced_data():
    # A majority-class predictor: high WA, chance-level UA.
    targets = [0] * 90 + [1] * 10
    m = classification_metrics(targets, [0] * 100, n_classes=2)
    assert m["wa"] == pytest.approx(0.9)
    assert m["ua"] == pytest.approx(0.5)
