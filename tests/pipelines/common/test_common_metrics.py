"""Classification metrics: closed-form values, NaN rules, validation, and agreement with the ECG evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from pipelines.common import metrics as m


def _col(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)[:, None]


# --- AUROC / AUPRC -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("y", "p", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),  # perfectly separated
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0),  # reversed
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),  # 3 of 4 positive/negative pairs ordered
        ([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.9], 0.875),  # one tied pair counts 1/2: (3 + 0.5) / 4
    ],
)
def test_per_class_auroc_closed_form(y: list[int], p: list[float], expected: float) -> None:
    out = m.per_class_auroc(_col(*y), _col(*p))
    assert out.shape == (1,)
    assert out[0] == pytest.approx(expected)


def test_auroc_nan_for_classes_without_both_kinds_and_excluded_from_macro() -> None:
    y = np.array([[0, 1, 0], [0, 1, 1], [1, 1, 0], [1, 1, 0]], dtype=np.float32)  # class 1: no negatives
    p = np.array([[0.1, 0.3, 0.9], [0.4, 0.2, 0.1], [0.35, 0.1, 0.8], [0.8, 0.4, 0.7]], dtype=np.float32)
    per = m.per_class_auroc(y, p)
    assert per[0] == pytest.approx(0.75)
    assert math.isnan(per[1])
    assert per[2] == pytest.approx(0.0)  # the single positive scores lowest
    assert m.macro_auroc(y, p) == pytest.approx((0.75 + 0.0) / 2)


def test_macro_auroc_nan_when_no_class_is_scorable() -> None:
    y = np.array([[1, 0], [1, 0]], dtype=np.float32)
    assert math.isnan(m.macro_auroc(y, np.array([[0.2, 0.3], [0.4, 0.5]])))


@pytest.mark.parametrize(
    ("y", "p", "expected"),
    [
        ([1, 0, 1], [0.9, 0.8, 0.7], (1 + 2 / 3) / 2),  # precision 1 at recall 1/2, 2/3 at recall 1
        ([0, 1, 1], [0.1, 0.8, 0.7], 1.0),  # positives ranked first
        ([1, 0, 0, 0], [0.1, 0.8, 0.7, 0.6], 0.25),  # the positive ranked last of four
        ([1, 1, 1], [0.1, 0.5, 0.9], 1.0),  # no negatives: AP is still defined
    ],
)
def test_per_class_auprc_closed_form(y: list[int], p: list[float], expected: float) -> None:
    assert m.per_class_auprc(_col(*y), _col(*p))[0] == pytest.approx(expected)


def test_auprc_nan_without_positives_and_excluded_from_macro() -> None:
    y = np.array([[1, 0], [0, 0], [1, 0]], dtype=np.float32)
    p = np.array([[0.9, 0.5], [0.8, 0.4], [0.7, 0.3]], dtype=np.float32)
    per = m.per_class_auprc(y, p)
    assert per[0] == pytest.approx(5 / 6)
    assert math.isnan(per[1])
    assert m.macro_auprc(y, p) == pytest.approx(5 / 6)
    assert math.isnan(m.macro_auprc(y[:, 1:], p[:, 1:]))


# --- F1 ------------------------------------------------------------------------------------------------------------

# Hand-worked table (columns are classes):
#   class 0: y 1 1 0 1, d 1 0 1 1 -> tp 2 fp 1 fn 1 -> F1 4/6
#   class 1: y 0 1 0 0, d 0 1 0 0 -> tp 1            -> F1 1
#   class 2: y 1 0 0 0, d 0 0 0 0 -> fn 1            -> F1 0
#   class 3: all zero in both     -> undefined        -> NaN, skipped by the macro mean
#   pooled: tp 3 fp 1 fn 2 -> micro F1 6/9
F1_Y = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=np.float32)
F1_D = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=np.float32)


def test_f1_family_on_hand_worked_table() -> None:
    per = m.per_class_f1(F1_Y, F1_D)
    np.testing.assert_allclose(per[:3], [2 / 3, 1.0, 0.0])
    assert math.isnan(per[3])
    assert m.macro_f1(F1_Y, F1_D) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m.micro_f1(F1_Y, F1_D) == pytest.approx(6 / 9)
    assert m.micro_f1(F1_Y, F1_D.astype(bool)) == pytest.approx(6 / 9)  # boolean decisions work too


def test_f1_undefined_is_nan() -> None:
    zeros = np.zeros((3, 2), dtype=np.float32)
    assert math.isnan(m.micro_f1(zeros, zeros))
    assert math.isnan(m.macro_f1(zeros, zeros))
    assert np.isnan(m.per_class_f1(zeros, zeros)).all()


def test_fmax_picks_the_best_global_threshold() -> None:
    # Positives 0.9 0.65 0.45, negatives 0.55 0.25 0.15. For t in (0.25, 0.45]: tp 3 fp 1 -> 6/7, the best;
    # t = 0.5 gives 4/6, t <= 0.15 gives 6/9, t in (0.55, 0.65] gives 4/5.
    y = np.array([[1, 0], [1, 0], [1, 0]], dtype=np.float32)
    p = np.array([[0.9, 0.55], [0.65, 0.25], [0.45, 0.15]], dtype=np.float32)
    assert m.fmax(y, p) == pytest.approx(6 / 7)
    assert m.micro_f1(y, (p >= 0.5).astype(np.float32)) == pytest.approx(4 / 6)  # so fmax really searched


@pytest.mark.parametrize("default", [0.5, 0.25])
def test_best_thresholds_lowest_separating_and_default(default: float) -> None:
    y = np.array([[1, 0, 1], [1, 0, 1], [0, 0, 1], [0, 0, 1]], dtype=np.float32)
    # class 0: positives 0.8 0.7, negatives 0.305 0.2 -> F1 1 from 0.31 (0.30 still admits 0.305) to 0.70
    # class 1: no positives -> default
    # class 2: all positive, lowest 0.5 -> F1 1 for every t <= 0.5, so the lowest grid point 0.01
    p = np.array([[0.8, 0.9, 0.5], [0.7, 0.1, 0.6], [0.305, 0.6, 0.9], [0.2, 0.3, 0.7]], dtype=np.float32)
    np.testing.assert_allclose(m.best_thresholds(y, p, default=default), [0.31, default, 0.01])


def test_per_class_rows_hand_worked() -> None:
    # A: y 1 0 1 0, p 0.9 0.6 0.4 0.1, t 0.5 -> decisions 1 1 0 0: tp 1 fp 1 fn 1; AUROC 3/4
    # B: no positives, nothing above 0.5 -> every ratio undefined
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], dtype=np.float32)
    p = np.array([[0.9, 0.1], [0.6, 0.2], [0.4, 0.3], [0.1, 0.4]], dtype=np.float32)
    rows = m.per_class_rows(y, p, np.array([0.5, 0.5]), ["A", "B"])
    keys = ["label", "positives", "negatives", "auroc", "threshold", "f1", "precision", "recall"]
    assert [list(r) for r in rows] == [keys, keys]
    a, b = rows
    assert (a["label"], a["positives"], a["negatives"], a["threshold"]) == ("A", 2, 2, 0.5)
    assert a["auroc"] == pytest.approx(0.75)
    assert (a["f1"], a["precision"], a["recall"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (b["label"], b["positives"], b["negatives"]) == ("B", 0, 4)
    assert all(math.isnan(b[k]) for k in ("auroc", "f1", "precision", "recall"))


# --- Single-label --------------------------------------------------------------------------------------------------


def test_confusion_matrix_balanced_accuracy_accuracy_three_classes() -> None:
    # class 2 never occurs in y_true but is predicted once
    y_true = np.array([0, 0, 1, 1, 1])
    y_pred = np.array([0, 1, 1, 1, 2])
    cm = m.confusion_matrix(y_true, y_pred, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 1], [0, 0, 0]])
    assert m.balanced_accuracy(y_true, y_pred, 3) == pytest.approx((1 / 2 + 2 / 3) / 2)  # class 2 not averaged
    assert m.accuracy(y_true, y_pred) == pytest.approx(3 / 5)


def test_single_label_empty_inputs() -> None:
    empty = np.array([], dtype=np.int64)
    np.testing.assert_array_equal(m.confusion_matrix(empty, empty, 2), np.zeros((2, 2)))
    assert math.isnan(m.balanced_accuracy(empty, empty, 2))
    assert math.isnan(m.accuracy(empty, empty))


def test_class_indices_given_as_whole_floats_are_accepted() -> None:
    cm = m.confusion_matrix(np.array([0.0, 1.0]), np.array([1.0, 1.0]), 2)
    np.testing.assert_array_equal(cm, [[0, 1], [0, 1]])


@pytest.mark.parametrize(
    ("y_true", "probs", "expected"),
    [
        # class 0: positives 0.7 0.3 vs negatives 0.4 0.1 -> 3/4; class 1: 0.5 0.8 vs 0.2 0.1 -> 1;
        # class 2 absent from y_true -> skipped
        ([0, 0, 1, 1], [[0.7, 0.2, 0.1], [0.3, 0.1, 0.6], [0.4, 0.5, 0.1], [0.1, 0.8, 0.1]], (0.75 + 1.0) / 2),
        # binary softmax: both one-vs-rest AUROCs equal the positive-class AUROC 3/4
        ([0, 1, 1, 0], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.4, 0.6]], 0.75),
        ([1, 1], [[0.3, 0.7], [0.6, 0.4]], math.nan),  # only one class present
    ],
)
def test_multiclass_auroc(y_true: list[int], probs: list[list[float]], expected: float) -> None:
    got = m.multiclass_auroc(np.array(y_true), np.array(probs))
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected)


# --- Validation ----------------------------------------------------------------------------------------------------

Y = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
P = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.7]], dtype=np.float32)
IDX = np.array([0, 1, 2])


@pytest.mark.parametrize(
    ("fn", "args", "match"),
    [
        (m.per_class_auroc, (Y, P[:, :1]), "p shape"),
        (m.per_class_auroc, (Y[:, 0], P[:, 0]), "y must be a 2-D"),
        (m.macro_auroc, (Y * 2, P), "y must hold only 0 and 1"),
        (m.per_class_auprc, (Y, P[:2]), "p shape"),
        (m.macro_auprc, (Y, P.T), "p shape"),
        (m.micro_f1, (Y, Y[:2]), "decisions shape"),
        (m.micro_f1, (Y, P), "decisions must hold only 0 and 1"),
        (m.per_class_f1, (Y, Y[:, :1]), "decisions shape"),
        (m.macro_f1, (Y, Y.T), "decisions shape"),
        (m.fmax, (Y, P[:, :1]), "p shape"),
        (m.best_thresholds, (Y, P[:2]), "p shape"),
        (m.per_class_rows, (Y, P, [0.5], ["a", "b"]), "thresholds"),
        (m.per_class_rows, (Y, P, [0.5, 0.5], ["a"]), "labels"),
        (m.per_class_rows, (Y, P[:, :1], [0.5, 0.5], ["a", "b"]), "p shape"),
        (m.confusion_matrix, (IDX, IDX[:2], 3), "y_pred length"),
        (m.confusion_matrix, (IDX, np.array([0, 1, 3]), 3), "y_pred holds class index 3"),
        (m.confusion_matrix, (np.array([0, -1, 2]), IDX, 3), "y_true holds a negative"),
        (m.confusion_matrix, (np.array([0.0, 0.5, 2.0]), IDX, 3), "y_true must hold integer"),
        (m.confusion_matrix, (IDX[:, None], IDX[:, None], 3), "y_true must be a 1-D"),
        (m.confusion_matrix, (IDX, IDX, 0), "num_classes"),
        (m.confusion_matrix, (IDX, IDX, 2.5), "num_classes"),
        (m.balanced_accuracy, (IDX, IDX, 2), "y_true holds class index 2"),
        (m.accuracy, (IDX, IDX[:1]), "y_pred length"),
        (m.multiclass_auroc, (IDX, P[:, 0]), "probs must be a 2-D"),
        (m.multiclass_auroc, (IDX[:2], P), "y_true length"),
        (m.multiclass_auroc, (IDX, P), "y_true holds class index 2"),
    ],
)
def test_bad_arguments_raise(fn: Callable[..., Any], args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn(*args)


# --- Agreement with independent references ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("constant", [0.0, 1.0])
def test_agrees_with_independent_references(seed: int, constant: float) -> None:
    """sklearn for AUROC, AP and F1; plain loops over the grids for Fmax and the per-class thresholds."""
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    rng = np.random.default_rng(seed)
    y = (rng.random((50, 7)) < 0.3).astype(np.float32)
    y[:, 3] = constant  # a class without positives (or without negatives)
    # Rounded to 2 decimals so scores sit on and tie at the threshold grids.
    p = np.round(rng.random((50, 7)), 2).astype(np.float32)
    decisions = (p >= 0.5).astype(np.float32)

    aucs = m.per_class_auroc(y, p)
    assert math.isnan(aucs[3])
    for c in (0, 1, 2, 4, 5, 6):
        assert aucs[c] == pytest.approx(roc_auc_score(y[:, c], p[:, c]), abs=1e-12)
        if y[:, c].any():
            assert m.per_class_auprc(y, p)[c] == pytest.approx(average_precision_score(y[:, c], p[:, c]))
    assert m.macro_auroc(y, p) == pytest.approx(np.mean(aucs[[0, 1, 2, 4, 5, 6]]))
    assert m.micro_f1(y, decisions) == pytest.approx(f1_score(y, decisions, average="micro"))
    best_global = max(f1_score(y, (p >= t).astype(np.float32), average="micro", zero_division=0.0)
                      for t in np.linspace(0, 1, 101))  # fmt: skip
    assert m.fmax(y, p) == pytest.approx(best_global)
    for default in (0.5, 0.3):
        thr = m.best_thresholds(y, p, default)
        for c in range(7):
            if not y[:, c].any():
                assert thr[c] == default
                continue
            scores = [f1_score(y[:, c], (p[:, c] >= t).astype(np.float32)) for t in np.linspace(0.01, 0.99, 99)]
            assert thr[c] == pytest.approx(np.linspace(0.01, 0.99, 99)[int(np.argmax(scores))])

    thr = m.best_thresholds(y, p)
    rows = m.per_class_rows(y, p, thr, [f"c{c}" for c in range(7)])
    for c, row in enumerate(rows):
        dc = (p[:, c] >= thr[c]).astype(np.float32)
        assert row["threshold"] == thr[c]
        assert row["label"] == f"c{c}"
        assert row["positives"] + row["negatives"] == 50
        assert row["positives"] == int(y[:, c].sum())
        if y[:, c].any():
            assert row["f1"] == pytest.approx(f1_score(y[:, c], dc))
