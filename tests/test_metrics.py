from fractions import Fraction as F

import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from dmfnet.training.metrics import classification_metrics

# 10 test flows, 3 classes. Confusion (rows = true):
#   A: [2, 1, 1]   B: [1, 2, 0]   C: [0, 1, 2]
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]
NAMES = ["A", "B", "C"]


def test_three_class_example_against_hand_values():
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    assert m["confusion"] == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    assert m["accuracy"] == pytest.approx(0.6)
    # precision: 2/3, 2/4, 2/3; recall: 2/4, 2/3, 2/3
    assert m["precision_macro"] == pytest.approx(float(F(11, 18)))
    assert m["recall_macro"] == pytest.approx(float(F(11, 18)))
    # FP = 1, 2, 1 ; TN = 5, 5, 6  ->  FPR = 1/6, 2/7, 1/7
    assert m["fpr_macro"] == pytest.approx(float((F(1, 6) + F(2, 7) + F(1, 7)) / 3))
    # F1 = 4/7, 4/7, 2/3
    assert m["f1_macro"] == pytest.approx(float((F(4, 7) + F(4, 7) + F(2, 3)) / 3))
    a, b, c = (m["per_class"][n] for n in NAMES)
    assert (a["precision"], a["recall"], a["fpr"], a["support"]) == pytest.approx(
        (2 / 3, 0.5, 1 / 6, 4)
    )
    assert (b["precision"], b["recall"], b["fpr"], b["support"]) == pytest.approx(
        (0.5, 2 / 3, 2 / 7, 3)
    )
    assert (c["f1"], c["fpr"], c["support"]) == pytest.approx((2 / 3, 1 / 7, 3))
    assert m["num_flows"] == 10


def test_macro_matches_sklearn_on_present_classes():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 400)
    y_pred = np.where(rng.random(400) < 0.7, y_true, rng.integers(0, 6, 400))
    m = classification_metrics(y_true, y_pred, list("abcdef"))  # class f never true
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(5)), average="macro", zero_division=0
    )
    assert (m["precision_macro"], m["recall_macro"], m["f1_macro"]) == pytest.approx((p, r, f))
    assert m["classes_in_test"] == 5


def test_class_absent_from_test_set_is_listed_but_not_averaged():
    m3 = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    m4 = classification_metrics(Y_TRUE, Y_PRED, [*NAMES, "D"])
    for key in ("accuracy", "precision_macro", "recall_macro", "fpr_macro", "f1_macro"):
        assert m4[key] == pytest.approx(m3[key])
    assert m4["per_class"]["D"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "fpr": 0.0,
        "support": 0,
    }
    assert m4["confusion"][3] == [0, 0, 0, 0]


def test_predicting_an_absent_class_still_costs_recall():
    pred = list(Y_PRED)
    pred[0] = 3  # one A flow predicted as D, a class not in the test set
    m = classification_metrics(Y_TRUE, pred, [*NAMES, "D"])
    assert m["per_class"]["A"]["recall"] == pytest.approx(0.25)
    assert m["per_class"]["D"]["fpr"] == pytest.approx(0.1)  # 1 FP among 10 negatives
    assert m["accuracy"] == pytest.approx(0.5)


def test_perfect_and_single_class():
    m = classification_metrics([0, 1, 1], [0, 1, 1], ["x", "y"])
    assert (m["accuracy"], m["f1_macro"], m["fpr_macro"]) == (1.0, 1.0, 0.0)
    m = classification_metrics([1, 1], [1, 0], ["x", "y"])  # only y in test
    assert m["recall_macro"] == pytest.approx(0.5)
    assert m["fpr_macro"] == 0.0  # y has no negatives: 0/0 -> 0


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([0, 1], [0], "2 labels"),
        ([], [], "empty"),
        ([0, 3], [0, 1], "class index 3"),
        ([0, -1], [0, 1], "class index -1"),
        ([0.0, 1.0], [0, 1], "integer"),
    ],
)
def test_bad_input_names_the_problem(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(np.asarray(y_true), np.asarray(y_pred), ["a", "b", "c"])
