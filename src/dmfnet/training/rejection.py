"""Unknown flows: a rejection threshold calibrated on the validation split.

A classifier trained on K classes puts every flow into one of them, also the flows of an
application or a malware family it never saw. A flow whose *score* (how sure the model
is that the flow belongs to a known class) is below a threshold is labelled ``unknown``
instead. Two scores, both higher for flows that look known:

* ``max_softmax``: the largest class probability (Hendrycks & Gimpel, 2017); every model
  that gives probabilities has it, XGBoost included;
* ``energy``: the negative free energy ``logsumexp(logits)`` (Liu et al., 2020, T = 1);
  it keeps the logits' scale, which softmax throws away, and needs real logits: the torch
  models only.

:func:`calibrate_rejection` sets the threshold on the known flows of the validation split,
so that ``accept_rate`` of them (95 % by default) are accepted, and picks the score from a
measurement on the same flows: the one that best separates the validation flows the model
gets right from those it gets wrong (AUROC), since flows of an unseen class are, to the
model, flows it cannot classify. With fewer than :data:`MIN_MISCLASSIFIED` misclassified
validation flows that AUROC is the rank of a handful of flows, not a measurement; the
score is then ``energy`` for the torch models (max softmax saturates near 1 on a model
that makes no validation errors, so it barely ranks flows; docs/open-set.md has the
held-out measurements) and ``max_softmax`` for estimators. ``train`` records the result in ``run.json`` under
``rejection``; ``classify --reject`` reads it back with :func:`run_rejection`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

SCORES = ("max_softmax", "energy")
DEFAULT_ACCEPT_RATE = 0.95
MIN_MISCLASSIFIED = 10  # misclassified validation flows needed to compare the scores
UNKNOWN = "unknown"  # the label of a rejected flow


def check_accept_rate(accept_rate: float) -> float:
    """``accept_rate`` as a float in (0, 1]; anything else is a ValueError naming it."""
    rate = float(accept_rate)
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"accept rate must be in (0, 1], got {accept_rate!r}")
    return rate


def flow_scores(logits: np.ndarray, score: str) -> np.ndarray:
    """The rejection score of each flow from its logits ``(N, K)``; higher looks known."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_total = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))  # logsumexp, stable
    if score == "max_softmax":
        return np.exp(top[:, 0] - log_total)
    if score == "energy":
        return log_total
    raise ValueError(f"rejection score must be one of {', '.join(SCORES)}, not {score!r}")


def available_scores(kind: str) -> tuple[str, ...]:
    """Scores a model of ``kind`` can give: an estimator has probabilities, no logits."""
    return ("max_softmax",) if kind == "estimator" else SCORES


def threshold_for(scores: np.ndarray, accept_rate: float) -> float:
    """The threshold that accepts (score >= threshold) ``accept_rate`` of ``scores``.

    The ``n - ceil(accept_rate * n)`` lowest scores fall below it: on these scores exactly
    ``ceil(accept_rate * n)`` flows are accepted, unless flows tie at the threshold (they
    are then all accepted).
    """
    rate = check_accept_rate(accept_rate)
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    if ordered.size == 0:
        raise ValueError("no flows to calibrate the rejection threshold on")
    accepted = min(math.ceil(round(rate * ordered.size, 9)), ordered.size)
    return float(ordered[ordered.size - accepted])


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Area under the ROC curve of telling ``known`` scores (positives, higher) from
    ``unknown`` ones: the chance that a random known flow scores above a random unknown
    flow (ties count half). NaN when either side is empty."""
    from sklearn.metrics import roc_auc_score

    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if known.size == 0 or unknown.size == 0:
        return math.nan
    truth = np.concatenate([np.ones(known.size), np.zeros(unknown.size)])
    return float(roc_auc_score(truth, np.concatenate([known, unknown])))


@dataclass(frozen=True)
class Rejection:
    """A calibrated rejection rule: flows with ``score`` below ``threshold`` are unknown."""

    score: str
    threshold: float
    accept_rate: float
    validation_flows: int

    def accepts(self, scores: np.ndarray) -> np.ndarray:
        """Boolean per flow: the score reaches the threshold (the flow keeps its class)."""
        return np.asarray(scores) >= self.threshold

    def scores(self, logits: np.ndarray) -> np.ndarray:
        return flow_scores(logits, self.score)


def calibrate_rejection(
    logits: np.ndarray,
    y_true: np.ndarray,
    *,
    kind: str,
    accept_rate: float = DEFAULT_ACCEPT_RATE,
    score: str | None = None,
) -> dict[str, Any]:
    """The ``rejection`` record of ``run.json`` from the validation flows' logits.

    ``score=None`` picks, among :func:`available_scores` of ``kind``, the score with the
    highest AUROC of correct against misclassified validation flows when at least
    :data:`MIN_MISCLASSIFIED` flows are misclassified; with fewer, the last score that
    ``kind`` has (``energy`` for torch models, ``max_softmax`` for an estimator).
    The record holds the score, threshold, accept rate, validation flows and accepted
    flows, and ``score_choice``: each score's AUROC and the flows it was measured on.
    """
    rate = check_accept_rate(accept_rate)
    allowed = available_scores(kind)
    if score is not None and score not in allowed:
        raise ValueError(
            f"rejection score {score!r} is not available for this model (available: "
            f"{', '.join(allowed)})"
        )
    logits = np.asarray(logits, dtype=np.float64)
    y_true = np.asarray(y_true)
    correct = logits.argmax(axis=1) == y_true
    measured = {
        name: auroc(flow_scores(logits[correct], name), flow_scores(logits[~correct], name))
        for name in allowed
    }
    misclassified = int((~correct).sum())
    if score is None and misclassified >= MIN_MISCLASSIFIED and correct.any():
        score = max(allowed, key=lambda name: measured[name])  # ties: max_softmax, first
        chosen_by = "validation AUROC, correct vs misclassified flows"
    elif score is None:
        score = allowed[-1]
        chosen_by = (
            f"default: {misclassified} misclassified validation flows, fewer than "
            f"{MIN_MISCLASSIFIED} to compare the scores on"
        )
    else:
        chosen_by = "given"
    scores = flow_scores(logits, score)
    rule = Rejection(score, threshold_for(scores, rate), rate, int(len(scores)))
    return {
        **asdict(rule),
        "validation_accepted": int(rule.accepts(scores).sum()),
        "score_choice": {
            "chosen_by": chosen_by,
            "auroc_correct_vs_misclassified": {  # None: not measurable (JSON has no NaN)
                name: None if math.isnan(value) else value for name, value in measured.items()
            },
            "misclassified_flows": misclassified,
        },
    }


def run_rejection(info: Mapping[str, Any], run: str = "the run") -> Rejection:
    """The :class:`Rejection` recorded in a run's ``run.json``; a ValueError in one line when
    the run has none (trained before thresholds were calibrated) or it is unreadable."""
    record = info.get("rejection")
    if not record:
        raise ValueError(
            f"{run} has no rejection threshold (run.json has no 'rejection': it was trained "
            "before thresholds were calibrated); train it again to use --reject"
        )
    try:
        rule = Rejection(
            score=str(record["score"]),
            threshold=float(record["threshold"]),
            accept_rate=float(record["accept_rate"]),
            validation_flows=int(record["validation_flows"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{run}: the rejection record of run.json is unreadable: {exc!r}") from None
    if rule.score not in SCORES:
        raise ValueError(f"{run}: unknown rejection score {rule.score!r} in run.json")
    return rule
