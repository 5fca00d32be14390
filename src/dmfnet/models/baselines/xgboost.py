"""XGBoost baseline: gradient-boosted trees on flow statistics.

The DMF paper cites Wang et al. [35] for XGBoost without a feature list; the
established reading (and the one SPEC §Baselines asks for) is a CICFlowMeter-style
feature vector: packets, IP bytes and payload bytes per direction, duration, protocol,
and over the first 30 packets, per direction, the count and mean/std/min/max of IP
length and inter-arrival time, plus the first 30 lengths signed by direction
(:func:`dmfnet.models.blocks.flow_statistics`, shared with ACID).

Choices left open, settled here:

* Chen & Guestrin's ``xgboost`` package, ``multi:softprob`` objective over all classes
  (so a class absent from training still gets a probability column), ``hist`` tree
  method, depth 6, learning rate 0.1, up to 500 rounds with early stopping after 20
  rounds without a better validation log-loss; the best iteration is kept;
* ``n_jobs`` = the CPU cores this process may use;
* saved as the booster's own JSON plus a small JSON of the configuration: no pickle.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmfnet.models.blocks import FLOW_STATISTICS_INPUTS, flow_statistics, flow_statistics_names
from dmfnet.models.config import check_types, fraction, non_negative, positive
from dmfnet.models.registry import register_model

BOOSTER_FILE = "booster.json"
CONFIG_FILE = "xgboost_config.json"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class XGBoostConfig:
    num_classes: int = 2
    max_depth: int = 6  # xgboost's default depth
    learning_rate: float = 0.1
    n_estimators: int = 500  # upper bound; early stopping picks the number
    early_stopping_rounds: int = 20
    subsample: float = 1.0
    colsample_bytree: float = 1.0
    min_child_weight: float = 1.0
    n_jobs: int = 0  # 0: every core this process may use
    seed: int = 0

    def __post_init__(self) -> None:
        check_types(self)
        positive(self, "num_classes", "learning_rate", "n_estimators", "early_stopping_rounds")
        non_negative(self, "max_depth", "min_child_weight", "n_jobs", "seed")
        fraction(self, "subsample", "colsample_bytree", closed=True)


class XGBoostFlowClassifier:
    """Boosted trees over :func:`flow_statistics`; the registry's ``estimator`` contract."""

    inputs = FLOW_STATISTICS_INPUTS

    def __init__(self, config: XGBoostConfig) -> None:
        self.config = config
        self.booster: Any = None

    @staticmethod
    def features(columns: dict[str, np.ndarray]) -> np.ndarray:
        """The flow-statistics matrix ``(N, F)`` of a dict of dataset columns."""
        missing = [c for c in FLOW_STATISTICS_INPUTS if c not in columns]
        if missing:
            raise KeyError(f"xgboost needs dataset columns {missing}")
        tensors = [torch.from_numpy(np.asarray(columns[c])) for c in FLOW_STATISTICS_INPUTS]
        return flow_statistics(*tensors).numpy()

    def _params(self) -> dict[str, Any]:
        c = self.config
        return {
            "objective": "multi:softprob",
            "num_class": c.num_classes,
            "eval_metric": "mlogloss",
            "tree_method": "hist",
            "max_depth": c.max_depth,
            "eta": c.learning_rate,
            "subsample": c.subsample,
            "colsample_bytree": c.colsample_bytree,
            "min_child_weight": c.min_child_weight,
            "nthread": c.n_jobs or _cores(),
            "seed": c.seed,
        }

    def _matrix(self, columns: dict[str, np.ndarray], y: np.ndarray | None = None) -> Any:
        import xgboost as xgb

        names = flow_statistics_names(np.asarray(columns["lengths"]).shape[1])
        return xgb.DMatrix(self.features(columns), label=y, feature_names=names)

    def fit(
        self,
        train: dict[str, np.ndarray],
        y_train: np.ndarray,
        val: dict[str, np.ndarray] | None = None,
        y_val: np.ndarray | None = None,
    ) -> XGBoostFlowClassifier:
        """Train on ``train``; early-stop on ``val`` when it is given and not empty."""
        import xgboost as xgb

        y_train = np.asarray(y_train)
        if y_train.size == 0:
            raise ValueError("xgboost: the training set is empty")
        if y_train.min() < 0 or y_train.max() >= self.config.num_classes:
            raise ValueError(
                f"xgboost: labels must be in 0..{self.config.num_classes - 1}, "
                f"got {y_train.min()}..{y_train.max()}"
            )
        dtrain = self._matrix(train, y_train)
        evals, stopping = [(dtrain, "train")], None
        if val is not None and y_val is not None and len(y_val) > 0:
            evals.append((self._matrix(val, np.asarray(y_val)), "validation"))
            stopping = self.config.early_stopping_rounds
        self.booster = xgb.train(
            self._params(),
            dtrain,
            num_boost_round=self.config.n_estimators,
            evals=evals,
            early_stopping_rounds=stopping,
            verbose_eval=False,
        )
        return self

    def predict_proba(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Class probabilities ``(N, classes)``, using the trees up to the best iteration."""
        if self.booster is None:
            raise RuntimeError("xgboost: predict_proba before fit or load")
        dmatrix = self._matrix(inputs)
        best = getattr(self.booster, "best_iteration", None)
        limit = (0, best + 1) if best is not None else (0, 0)
        proba = self.booster.predict(dmatrix, iteration_range=limit)
        return np.asarray(proba, dtype=np.float32).reshape(-1, self.config.num_classes)

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.predict_proba(inputs).argmax(axis=1)

    def save(self, folder: str | Path) -> None:
        """Write the booster (xgboost JSON) and the configuration into ``folder``."""
        if self.booster is None:
            raise RuntimeError("xgboost: nothing to save before fit")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(folder / BOOSTER_FILE)
        best = getattr(self.booster, "best_iteration", None)
        meta = {"config": asdict(self.config), "best_iteration": best}
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    def load(self, folder: str | Path) -> XGBoostFlowClassifier:
        """Read back what :meth:`save` wrote; returns ``self``."""
        import xgboost as xgb

        folder = Path(folder)
        path = folder / BOOSTER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: no saved xgboost model in {folder}")
        booster = xgb.Booster()
        booster.load_model(path)
        meta_path = folder / CONFIG_FILE
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            saved_classes = meta.get("config", {}).get("num_classes")
            if saved_classes is not None and saved_classes != self.config.num_classes:
                raise ValueError(
                    f"{path} was trained for {saved_classes} classes, not {self.config.num_classes}"
                )
        self.booster = booster
        return self


@register_model(
    "xgboost",
    inputs=FLOW_STATISTICS_INPUTS,
    kind="estimator",
    group="non-multimodal",
    description="XGBoost on flow statistics (counts, bytes, duration, length/IAT summaries)",
    config=XGBoostConfig,
)
def xgboost(num_classes: int, **config) -> XGBoostFlowClassifier:
    return XGBoostFlowClassifier(XGBoostConfig(num_classes=num_classes, **config))
