"""Test-set metrics in the paper's terms (§5.1(3)): accuracy, macro precision/recall/FPR/F1.

Every figure comes from one confusion matrix, so the per-class table, the macro averages
and the confusion matrix written to the report can never disagree.

Definitions (one-vs-rest for class ``c``; TP, FP, FN, TN counted over the test flows):

* precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2PR / (P + R),
  FPR = FP / (FP + TN); a ratio whose denominator is 0 is 0 (scikit-learn's
  ``zero_division=0``).
* Macro averages are taken over the classes **present in the true labels** (support > 0).
  A class the model knows but the test set lacks has no recall to speak of; averaging its
  zeros in would punish the model for the split, not for its errors. Wrong predictions of
  such a class still count: they are false negatives of the true class. This equals
  ``sklearn.metrics.precision_recall_fscore_support(..., labels=present, average="macro",
  zero_division=0)`` with ``present`` the classes of ``y_true``.
* ``per_class`` lists every class in ``class_names`` (absent ones with support 0).
* ``confusion[i][j]`` counts flows of true class ``i`` predicted as class ``j``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRIC_NAMES = ("accuracy", "precision_macro", "recall_macro", "fpr_macro", "f1_macro")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts, rows = true class, columns = predicted."""
    idx = y_true.astype(np.int64) * num_classes + y_pred.astype(np.int64)
    counts = np.bincount(idx, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
) -> dict:
    """Accuracy, macro precision/recall/FPR/F1, a per-class table and the confusion matrix.

    ``y_true`` and ``y_pred`` are class indices into ``class_names``. The result holds
    plain Python numbers and lists only, so it can be written to JSON as is.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    names = [str(n) for n in class_names]
    k = len(names)
    if y_true.ndim != 1 or y_pred.ndim != 1:
        raise ValueError(
            f"y_true and y_pred must be 1-D, got shapes {y_true.shape}, {y_pred.shape}"
        )
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("cannot compute metrics on an empty test set")
    if k < 1:
        raise ValueError("class_names is empty")
    for what, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{what} must hold integer class indices, got dtype {arr.dtype}")
        bad = arr[(arr < 0) | (arr >= k)]
        if bad.size:
            raise ValueError(f"{what} holds class index {int(bad[0])}, outside 0..{k - 1}")

    cm = confusion_matrix(y_true, y_pred, k)
    n = int(cm.sum())
    tp = np.diag(cm)
    support = cm.sum(axis=1)  # true flows per class
    predicted = cm.sum(axis=0)  # predicted flows per class
    fp = predicted - tp
    fn = support - tp
    tn = n - tp - fp - fn

    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * precision * recall, precision + recall)
    fpr = _ratio(fp, fp + tn)

    present = support > 0
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "fpr": float(fpr[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    return {
        "accuracy": float(tp.sum() / n),
        "precision_macro": float(precision[present].mean()),
        "recall_macro": float(recall[present].mean()),
        "fpr_macro": float(fpr[present].mean()),
        "f1_macro": float(f1[present].mean()),
        "num_flows": n,
        "classes_in_test": int(present.sum()),
        "per_class": per_class,
        "confusion": cm.tolist(),
        "class_names": names,
    }


# Which epoch a torch model keeps (the trainer's early stopping and the run report agree).


def improves(f1: float, loss: float, best_f1: float, best_loss: float) -> bool:
    """Whether an epoch with validation macro-F1 ``f1`` and loss ``loss`` beats the best so far.

    Higher macro-F1 wins; equal macro-F1 (the same validation errors, common once a small or
    easy validation split is scored perfectly) goes to the lower validation loss. Keeping the
    first of equal epochs instead kept a model that had trained for a few epochs only and
    stopped training ``patience`` epochs later, however much the loss was still falling.
    """
    return f1 > best_f1 or (f1 == best_f1 and loss < best_loss)


def best_history_index(history: Sequence[dict]) -> int | None:
    """Index of the row of ``history`` (per-epoch ``val_f1_macro``, ``val_loss``) that
    :func:`improves` keeps; None when no row has a validation macro-F1."""
    best, best_f1, best_loss = None, -np.inf, np.inf
    for i, row in enumerate(history):
        f1, loss = row.get("val_f1_macro"), row.get("val_loss")
        if f1 is None or not np.isfinite(float(f1)):
            continue
        loss = float(loss) if loss is not None and np.isfinite(float(loss)) else np.inf
        if improves(float(f1), loss, best_f1, best_loss):
            best, best_f1, best_loss = i, float(f1), loss
    return best
