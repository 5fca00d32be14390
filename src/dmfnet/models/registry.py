"""One registry for DMF, its ablations and the baselines (timm-style ``create_model``).

Two kinds of model are registered:

* ``torch``: a ``torch.nn.Module``. Its ``forward`` takes the tensors named by the
  entry's ``inputs`` (dataset columns, raw dtypes: bytes as uint8, lengths as int, ...;
  each model scales its own inputs) and returns either a logits tensor ``(B, classes)``
  or an object with a ``.logits`` attribute. If the module has a ``loss(output, target)``
  method the training loop uses it, otherwise cross-entropy on the logits. If it has a
  ``post_fit(batches)`` method, the loop calls it once after restoring the best
  checkpoint, with an iterable of ``(inputs_tuple, targets)`` training batches (ACID fits
  its clusters there; state it creates must live in buffers so it is saved).
* ``estimator``: an object with ``fit(train, y_train, val, y_val)``,
  ``predict_proba(inputs) -> (N, classes)``, ``save(folder)`` and ``load(folder)``;
  ``train``/``val``/``inputs`` are dicts of numpy arrays keyed by the entry's ``inputs``.

Inputs are dataset columns (:mod:`dmfnet.flows.schema`): sequence columns arrive as
``(B, width)`` arrays/tensors, scalar columns as ``(B,)``.

``group`` places the model in the paper's tables: ``non-multimodal`` and ``multimodal``
(Tables 2-3), ``ablation`` (Tables 4-5; DMF itself appears in both).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., Any]  # builder(num_classes, **config) -> model
    inputs: tuple[str, ...]  # dataset columns the model reads, in forward's order
    kind: str  # "torch" or "estimator"
    group: str  # "non-multimodal", "multimodal" or "ablation"
    description: str
    # inputs_for(config) -> the columns a model of that configuration reads, for models
    # whose inputs follow their configuration (DMF's byte column, its length direction).
    inputs_for: Callable[[dict[str, Any]], tuple[str, ...]] | None = None
    # The configuration dataclass: its fields are the keys a user may set (checked by
    # check_model_config before the builder runs).
    config: type | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    inputs: tuple[str, ...],
    kind: str = "torch",
    group: str,
    description: str = "",
    inputs_for: Callable[[dict[str, Any]], tuple[str, ...]] | None = None,
    config: type | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``builder(num_classes, **config)`` under ``name``.

    ``inputs`` are the columns of the default configuration; ``inputs_for(config)``, when
    given, says which columns a configuration with those overrides reads. ``config`` is
    the model's configuration dataclass, whose fields are the keys a user may set.
    """
    if kind not in ("torch", "estimator"):
        raise ValueError(f"kind must be 'torch' or 'estimator', not {kind!r}")

    def wrap(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(
            name, builder, tuple(inputs), kind, group, description, inputs_for, config
        )
        return builder

    return wrap


def _load_all() -> None:
    # Importing the model modules registers them.
    from dmfnet.models import baselines, dmf  # noqa: F401


def get_entry(name: str) -> ModelEntry:
    _load_all()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown model {name!r}; known models: {known}")
    return _REGISTRY[name]


def model_inputs(name: str, config: dict[str, Any] | None = None) -> tuple[str, ...]:
    """Dataset columns the model ``name`` reads with the configuration overrides ``config``."""
    entry = get_entry(name)
    if entry.inputs_for is None or not config:
        return entry.inputs
    check_model_config(name, {k: v for k, v in config.items() if k != "num_classes"})
    return tuple(entry.inputs_for(dict(config)))


def check_model_config(name: str, config: dict[str, Any]) -> None:
    """Raise :class:`~dmfnet.models.config.ConfigError` (a ValueError naming the key and
    the value) when ``config`` holds a key the model ``name`` does not know or a value it
    cannot take. Cheap: nothing is built."""
    entry = get_entry(name)
    if entry.config is None:
        return
    from dmfnet.models.config import check_keys

    check_keys(entry.config, config)
    entry.config(**config)  # its __post_init__ checks types and ranges


def create_model(name: str, num_classes: int, **config: Any) -> Any:
    """Build the registered model ``name`` for ``num_classes`` classes.

    A configuration key or value the model cannot take raises
    :class:`~dmfnet.models.config.ConfigError`, naming both.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    check_model_config(name, {k: v for k, v in config.items() if k != "num_classes"})
    return get_entry(name).builder(num_classes, **config)


def available_models() -> list[str]:
    _load_all()
    return list(_REGISTRY)
