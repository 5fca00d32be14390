"""Run folders: everything needed to reuse, audit and reproduce one trained model.

A run folder (``RUN/``) holds:

* ``model.pt``: the torch model's plain state dict (``torch.save`` of tensors only, read
  back with ``torch.load(weights_only=True)``; no pickled objects), or ``estimator/`` with
  the files an estimator model (XGBoost) saves itself;
* ``run.json``: model name and resolved config, class names, input columns, the resolved
  training configuration, seed, split protocol and sizes, duplicates removed, the rejection
  threshold calibrated on the validation flows (``rejection``,
  :mod:`dmfnet.training.rejection`), the dataset path and card summary, and the versions of
  dmfnet, torch, numpy and python;
* ``history.csv``: one row per epoch (train loss, validation loss/accuracy/macro-F1, seconds);
* ``metrics.json``: the test metrics (:func:`dmfnet.training.metrics.classification_metrics`);
* ``report.md`` with the confusion matrix (CSV, PNG) and the training curve.

:func:`load_run` turns the folder back into a :class:`TrainedModel` that ``evaluate`` and
``classify`` use to score flows.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmfnet import __version__

RUN_FILE = "run.json"
WEIGHTS_FILE = "model.pt"
ESTIMATOR_DIR = "estimator"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
HISTORY_FIELDS = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_f1_macro", "seconds")
RUN_FORMAT = 1  # bump when the folder layout changes incompatibly


def versions() -> dict[str, str]:
    """Versions that decide whether a run can be reproduced bit for bit."""
    return {
        "dmfnet": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def model_logits(output: Any) -> torch.Tensor:
    """The logits of a model's forward output (a tensor, or an object/dict carrying ``logits``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(f"model output {type(output).__name__} is neither a tensor nor has .logits")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON (numpy scalars, paths and devices made plain)."""
    text = json.dumps(data, indent=2, default=_json_default, allow_nan=True)
    Path(path).write_text(text + "\n", encoding="utf-8")


def write_history(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    """``history.csv``: one row per epoch, columns :data:`HISTORY_FIELDS`."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: _csv_value(row.get(k)) for k in HISTORY_FIELDS})


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


def read_history(path: Path) -> list[dict[str, float]]:
    """Read ``history.csv`` back (empty cells become NaN)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rows.append(
                {
                    k: (int(v) if k == "epoch" else float(v) if v else math.nan)
                    for k, v in row.items()
                }
            )
    return rows


class TrainedModel:
    """A trained model with the class names and input columns it needs to score flows.

    ``predict_proba`` takes a dict of numpy arrays keyed by the input column names (as
    :func:`dmfnet.data.load_dataset` or the capture reader produce them) and returns
    ``(N, len(classes))`` probabilities; rows are scored in batches, in eval mode, without
    gradients, so memory stays bounded whatever ``N`` is.
    """

    def __init__(
        self,
        model: Any,
        *,
        name: str,
        kind: str,
        classes: Sequence[str],
        inputs: Sequence[str],
        device: torch.device | str = "cpu",
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.name = name
        self.kind = kind
        self.classes = [str(c) for c in classes]
        self.inputs = tuple(inputs)
        self.device = torch.device(device)
        self.info = dict(info or {})

    def __repr__(self) -> str:
        return f"TrainedModel({self.name!r}, classes={self.classes}, inputs={self.inputs})"

    def _check(self, arrays: Mapping[str, np.ndarray]) -> int:
        missing = [c for c in self.inputs if c not in arrays]
        if missing:
            raise KeyError(
                f"input column(s) {', '.join(missing)} missing; model reads {self.inputs}"
            )
        sizes = {c: len(arrays[c]) for c in self.inputs}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"input columns have different row counts: {sizes}")
        return next(iter(sizes.values())) if sizes else 0

    def predict_proba(self, arrays: Mapping[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
        """Class probabilities ``(N, len(classes))`` as float32, columns in ``classes`` order."""
        if self.kind == "estimator":
            return self._estimator_proba(arrays, batch_size)
        return self._torch_outputs(arrays, batch_size, probabilities=True)

    def predict_logits(self, arrays: Mapping[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
        """Logits ``(N, len(classes))`` as float32: what the rejection scores are computed
        from (:mod:`dmfnet.training.rejection`). An estimator gives probabilities only; its
        logits are their logarithms, so that softmax gives the probabilities back."""
        if self.kind == "estimator":
            proba = self._estimator_proba(arrays, batch_size)
            return np.log(np.maximum(proba, np.finfo(np.float32).tiny))
        return self._torch_outputs(arrays, batch_size, probabilities=False)

    def _estimator_proba(self, arrays: Mapping[str, np.ndarray], batch_size: int) -> np.ndarray:
        n = self._check(arrays)
        out = np.empty((n, len(self.classes)), dtype=np.float32)
        for start in range(0, n, batch_size):
            batch = {c: arrays[c][start : start + batch_size] for c in self.inputs}
            out[start : start + batch_size] = self.model.predict_proba(batch)
        return out

    def _torch_outputs(
        self, arrays: Mapping[str, np.ndarray], batch_size: int, *, probabilities: bool
    ) -> np.ndarray:
        n = self._check(arrays)
        out = np.empty((n, len(self.classes)), dtype=np.float32)
        if n == 0:
            return out
        tensors = [_as_tensor(arrays[c]) for c in self.inputs]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, n, batch_size):
                    batch = [t[start : start + batch_size].to(self.device) for t in tensors]
                    logits = model_logits(self.model(*batch)).float()
                    if probabilities:
                        logits = torch.softmax(logits, 1)
                    out[start : start + len(logits)] = logits.cpu().numpy()
        finally:
            self.model.train(was_training)
        return out

    def predict(self, arrays: Mapping[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
        """Predicted class names (``str`` array of length N)."""
        proba = self.predict_proba(arrays, batch_size=batch_size)
        return np.asarray(self.classes, dtype=object)[proba.argmax(axis=1)].astype(str)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor of a column in its raw dtype (copied only if not writable/contiguous)."""
    array = np.require(array, requirements=["C_CONTIGUOUS", "WRITEABLE"])
    return torch.from_numpy(array)


def save_weights(path: Path, model: torch.nn.Module) -> None:
    """Save a plain state dict (tensors only), readable with ``weights_only=True``."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, path)


def load_run(run_dir: str | Path, device: str | torch.device | None = None) -> TrainedModel:
    """Rebuild the trained model of a run folder written by :func:`dmfnet.training.train`.

    Raises ``FileNotFoundError`` when the folder or its files are missing and ``ValueError``
    when they cannot be read, each with one line naming the file.
    """
    from dmfnet.models import create_model, get_entry

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    run_file = run_dir / RUN_FILE
    if not run_file.is_file():
        raise FileNotFoundError(f"{run_file} is missing: {run_dir} is not a dmfnet run folder")
    try:
        info = json.loads(run_file.read_text(encoding="utf-8"))
        name = str(info["model"])
        classes = [str(c) for c in info["classes"]]
        inputs = tuple(info["inputs"])
        config = dict(info.get("model_config") or {})
        config.pop("num_classes", None)  # given by the class list
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{run_file} is corrupt or incomplete: {exc!r}") from None
    try:
        entry = get_entry(name)
    except KeyError as exc:
        raise ValueError(f"{run_file}: {exc.args[0]}") from None
    kind = info.get("kind", entry.kind)
    dev = torch.device("cpu" if device is None else device)
    try:
        model = create_model(name, len(classes), **config)
    except (TypeError, ValueError) as exc:  # ValueError: a value the model cannot take
        raise ValueError(f"{run_file}: model config does not fit model {name!r}: {exc}") from None

    if kind == "estimator":
        folder = run_dir / ESTIMATOR_DIR
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is missing: the run holds no trained estimator")
        try:
            loaded = model.load(folder)
        except Exception as exc:  # corrupt or foreign files: one line, not a traceback
            raise ValueError(f"{folder} cannot be loaded: {str(exc).splitlines()[0]}") from None
        if loaded is not None:
            model = loaded
    else:
        weights = run_dir / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing: the run holds no trained weights")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # corrupt file, wrong tensors: one line, not a traceback
            raise ValueError(f"{weights} cannot be loaded: {str(exc).splitlines()[0]}") from None
        model.to(dev).eval()
    return TrainedModel(
        model, name=name, kind=kind, classes=classes, inputs=inputs, device=dev, info=info
    )
