"""A trained run as an ONNX model, and the onnxruntime engine that scores flows with it.

``dmfnet export RUN`` writes ``RUN/model.onnx`` (or ``-o FILE``): a sensor, a Zeek or
Suricata script host or any ONNX runtime can then score flows without torch or dmfnet.

* **Inputs** are the dataset columns the model reads (``payload_packet_bytes``,
  ``lengths``, ``directions`` for DMF), named as in the dataset and in its raw dtypes
  (uint8 bytes, int32 lengths, int8 directions, ...), each ``(batch, width)`` or
  ``(batch,)`` with a dynamic batch dimension. The input scaling (DMF's learned byte and
  length values, the direction sign) is part of every registered model's ``forward``, so
  it is inside the graph: nothing is scaled outside.
* **Output** ``probabilities``: ``(batch, classes)`` float32, the softmax of the logits,
  columns in the order of the class names.
* **Metadata** (``metadata_props``, strings): ``dmfnet.classes`` (JSON list),
  ``dmfnet.inputs`` (JSON list), ``dmfnet.model``, ``dmfnet.weights_sha256`` (what the
  torch weights were), ``dmfnet.version``, and ``dmfnet.rejection`` (JSON) when the run
  holds a rejection threshold.

The graph comes from torch's TorchScript exporter (``torch.onnx.export(dynamo=False)``):
it traces every registered torch model in well under a second, and records the branches
that the trained weights take (ACID's forward branches on whether its clusters were
fitted). Its successor, the dynamo exporter (``torch.export`` + ``onnxscript``), gave the
same probabilities and speed but took 5-30 s for DMF on the 2-core development machine, so
it is the fallback for a forward the tracer cannot follow. Either way the export is checked
before it is written: onnxruntime
and torch must give the same probabilities within :data:`TOLERANCE` at batch 1 and at a
larger batch. XGBoost runs are refused: trees are not a torch graph, and converting a
booster needs another converter (onnxmltools) and drops the flow-statistics code.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dmfnet import __version__
from dmfnet.flows.schema import SCALAR_COLUMNS, SEQUENCE_COLUMNS

ONNX_FILE = "model.onnx"  # in a run folder: reused by `classify --engine onnx`
OUTPUT_NAME = "probabilities"
OPSET = 18
TOLERANCE = 1e-4  # largest probability difference between onnxruntime and torch accepted
ENGINES = ("auto", "torch", "onnx")
# Models for which `--engine auto` picks onnxruntime when it is installed: where it scored
# flows faster than torch on CPU at every batch size measured (benchmarks/inference_speed.py,
# docs/deploy.md). Elsewhere auto keeps torch, which needs no export.
ONNX_FASTER = frozenset({"dmf", "dmf-paper", "dmf-no-lengths", "dmf-no-bytes", "dmf-late"})
INSTALL_HINT = "pip install 'dmfnet[onnx]' (onnx, onnxruntime, onnxscript)"


class ExportError(ValueError):
    """The run cannot be exported, or its export does not match torch: one line."""


def onnxruntime_available() -> bool:
    """Whether the optional onnxruntime engine can be used (``dmfnet[onnx]`` installed)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _require_onnx(exporting: bool = False) -> None:
    """Scoring needs onnxruntime; exporting needs ``onnx`` too (not imported to score: it
    costs ``classify`` half a second of start-up)."""
    missing = not onnxruntime_available()
    if exporting and not missing:
        try:
            import onnx  # noqa: F401
        except ImportError:
            missing = True
    if missing:
        raise ExportError(f"onnx and onnxruntime are not installed: {INSTALL_HINT}")


# ------------------------------------------------------------------------------------------
# Export


def _probabilities_module(model: Any) -> Any:
    """The model with its softmax: what the ONNX graph computes, ``(B, classes)`` float32."""
    import torch

    from dmfnet.training.runs import model_logits

    class ClassProbabilities(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, *columns: torch.Tensor) -> torch.Tensor:
            return torch.softmax(model_logits(self.model(*columns)).float(), dim=1)

    return ClassProbabilities(model).eval()


def example_flows(inputs: Sequence[str], n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` flows of valid values for the columns ``inputs``, in the dataset's dtypes.

    Valid is what the model may meet: bytes 0-255, lengths up to the IP maximum, directions
    -1/0/+1, times in epoch seconds. They trace the graph and check the export; the values
    do not need to look like traffic.
    """
    rng = np.random.default_rng(seed)
    flows: dict[str, np.ndarray] = {}
    for name in inputs:
        if name in SEQUENCE_COLUMNS:
            dtype, width = SEQUENCE_COLUMNS[name]
            shape: tuple[int, ...] = (n, width)
        elif name in SCALAR_COLUMNS and SCALAR_COLUMNS[name] != "str":
            dtype, shape = SCALAR_COLUMNS[name], (n,)
        else:
            raise ExportError(f"input column {name!r} is not a numeric dataset column")
        if name == "directions":
            values = rng.choice(np.array([-1, 0, 1]), shape)
        elif name in ("start_time", "end_time"):
            values = 1.7e9 + rng.random(shape) * 100
        elif dtype.startswith("float"):
            values = rng.random(shape)
        elif dtype == "bool":
            values = rng.random(shape) < 0.5
        elif dtype == "uint8":
            values = rng.integers(0, 256, shape)
        else:  # lengths, counts, ports, windows: int32/int64 columns
            values = rng.integers(0, 3000, shape)
        flows[name] = np.ascontiguousarray(values, dtype=dtype)
    return flows


def weights_sha256(model: Any) -> str:
    """Digest of a torch model's state dict: tells whether an ONNX file was exported from
    these very weights (a stale ``model.onnx`` after retraining is not reused)."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def export_onnx(trained: Any, out: str | Path | None = None, *, check: bool = True) -> bytes:
    """The ONNX model (serialised bytes) of a loaded run; written to ``out`` when given.

    ``trained`` is a :class:`~dmfnet.training.runs.TrainedModel`. With ``check`` the export
    is run with onnxruntime on :func:`example_flows` at batch 1 and 7 and compared with
    torch; a difference above :data:`TOLERANCE` raises :class:`ExportError`, as do an
    estimator run and missing packages.
    """
    _require_onnx(exporting=True)
    import onnx

    if trained.kind != "torch":
        raise ExportError(
            f"{trained.name} is a {trained.kind} model, not a torch graph: only torch models "
            "are exported to ONNX (classify it with --engine torch)"
        )
    model = trained.model.cpu().eval()
    proto = _trace(_probabilities_module(model), trained.inputs)
    metadata = {
        "dmfnet.classes": json.dumps(trained.classes),
        "dmfnet.inputs": json.dumps(list(trained.inputs)),
        "dmfnet.model": trained.name,
        "dmfnet.weights_sha256": weights_sha256(model),
        "dmfnet.version": __version__,
    }
    rejection = trained.info.get("rejection")
    if rejection is not None:
        metadata["dmfnet.rejection"] = json.dumps(rejection)
    onnx.helper.set_model_props(proto, metadata)
    proto.producer_name, proto.producer_version = "dmfnet", __version__
    model_bytes = proto.SerializeToString()
    if check:
        check_export(model_bytes, trained)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(model_bytes)
    return model_bytes


def _trace(module: Any, inputs: Sequence[str]) -> Any:
    """ONNX ModelProto of ``module`` on the columns ``inputs``, batch dimension dynamic."""
    import onnx
    import torch

    # Batch 4 to trace: torch.export would specialise a batch of 1 to a constant.
    example = example_flows(inputs, 4)
    args = tuple(torch.from_numpy(example[c]) for c in inputs)
    names = list(inputs)
    buffer = io.BytesIO()
    try:
        with _quiet():
            torch.onnx.export(
                module,
                args,
                buffer,
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes={name: {0: "batch"} for name in [*names, OUTPUT_NAME]},
                opset_version=OPSET,
                dynamo=False,
            )
        return onnx.load_from_string(buffer.getvalue())
    except Exception as script_error:  # a forward the tracer cannot follow: torch.export
        try:
            batch = torch.export.Dim("batch")
            with _quiet():
                program = torch.onnx.export(
                    module,
                    args,
                    input_names=names,
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes=(tuple({0: batch} for _ in inputs),),  # forward(*columns)
                    opset_version=OPSET,
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                )
            return program.model_proto
        except Exception as dynamo_error:
            raise ExportError(
                f"cannot export to ONNX: {_first_line(script_error)}; the dynamo exporter: "
                f"{_first_line(dynamo_error)}"
            ) from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress and warn about traced shapes: not the user's business."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def check_export(model_bytes: bytes, trained: Any) -> float:
    """Largest probability difference between onnxruntime and torch at batch 1 and 7;
    raises :class:`ExportError` above :data:`TOLERANCE`."""
    engine = OnnxModel(model_bytes, threads=1)
    worst = 0.0
    for n, seed in ((1, 1), (7, 2)):
        flows = example_flows(trained.inputs, n, seed)
        diff = float(np.abs(engine.predict_proba(flows) - trained.predict_proba(flows)).max())
        worst = max(worst, diff)
    if not worst <= TOLERANCE:
        raise ExportError(
            f"the ONNX export of {trained.name} differs from torch by {worst:.2g} "
            f"(more than {TOLERANCE:g}): not written"
        )
    return worst


# ------------------------------------------------------------------------------------------
# The onnxruntime engine


def read_metadata(model: bytes | str | Path) -> dict[str, Any]:
    """The dmfnet metadata of an exported model: ``classes``, ``inputs`` (lists), ``model``,
    ``weights_sha256``, ``version`` and ``rejection`` when present (JSON decoded)."""
    _require_onnx(exporting=True)
    import onnx

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    return _decoded({p.key: p.value for p in proto.metadata_props})


def _decoded(props: Mapping[str, str]) -> dict[str, Any]:
    """dmfnet's ``metadata_props`` without the ``dmfnet.`` prefix, JSON values decoded."""
    meta: dict[str, Any] = {
        k.removeprefix("dmfnet."): v for k, v in props.items() if k.startswith("dmfnet.")
    }
    for key in ("classes", "inputs", "rejection"):
        if key in meta:
            meta[key] = json.loads(meta[key])
    return meta


class OnnxModel:
    """An exported run scored by onnxruntime, with :class:`TrainedModel`'s scoring interface
    (``classes``, ``inputs``, ``predict_proba``, ``predict``) so ``classify`` takes either.

    ``threads`` is onnxruntime's intra-op thread count (default: torch's, which
    ``dmfnet classify --threads`` sets, so one option governs both engines).
    """

    kind = "onnx"

    def __init__(
        self,
        model: bytes | str | Path,
        *,
        threads: int | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        _require_onnx()
        import onnxruntime as ort

        if threads is None:
            import torch

            threads = torch.get_num_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: on a busy sensor host spinning workers
        # steal the cores that read the capture.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        meta = _decoded(self.session.get_modelmeta().custom_metadata_map)
        self.name = str(meta.get("model", "onnx"))
        self.classes = [str(c) for c in meta["classes"]]
        self.inputs = tuple(i.name for i in self.session.get_inputs())
        self.weights_sha256 = meta.get("weights_sha256")
        self.info = dict(info or {})
        self._dtypes = {i.name: _numpy_dtype(i.type) for i in self.session.get_inputs()}

    def __repr__(self) -> str:
        return f"OnnxModel({self.name!r}, classes={self.classes}, inputs={self.inputs})"

    def predict_proba(self, arrays: Mapping[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
        """Class probabilities ``(N, len(classes))`` float32, as ``TrainedModel.predict_proba``."""
        missing = [c for c in self.inputs if c not in arrays]
        if missing:
            raise KeyError(
                f"input column(s) {', '.join(missing)} missing; model reads {self.inputs}"
            )
        # Columns already in the dataset dtype and contiguous are passed without a copy.
        feed = {c: np.ascontiguousarray(arrays[c], dtype=self._dtypes[c]) for c in self.inputs}
        sizes = {len(v) for v in feed.values()}
        if len(sizes) > 1:
            raise ValueError(f"input columns have different row counts: {sorted(sizes)}")
        n = sizes.pop() if sizes else 0
        if n <= batch_size:
            if n == 0:
                return np.zeros((0, len(self.classes)), dtype=np.float32)
            return self.session.run(None, feed)[0]
        out = np.empty((n, len(self.classes)), dtype=np.float32)
        for start in range(0, n, batch_size):
            batch = {c: v[start : start + batch_size] for c, v in feed.items()}
            out[start : start + batch_size] = self.session.run(None, batch)[0]
        return out

    def predict(self, arrays: Mapping[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
        """Predicted class names (``str`` array of length N)."""
        proba = self.predict_proba(arrays, batch_size=batch_size)
        return np.asarray(self.classes, dtype=object)[proba.argmax(axis=1)].astype(str)


_ORT_TYPES = {
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(bool)": np.bool_,
}


def _numpy_dtype(ort_type: str) -> np.dtype:
    if ort_type not in _ORT_TYPES:
        raise ExportError(f"ONNX input type {ort_type} is not a dataset column type")
    return np.dtype(_ORT_TYPES[ort_type])


def cached_engine(trained: Any, run_dir: str | Path | None) -> OnnxModel | None:
    """onnxruntime on ``RUN/model.onnx`` when it exists and was exported from the weights
    of ``trained``; None otherwise (a stale file after retraining is never used)."""
    if run_dir is None or trained.kind != "torch":
        return None
    cached = Path(run_dir) / ONNX_FILE
    if not cached.is_file():
        return None
    try:
        engine = OnnxModel(cached, info=trained.info)
    except Exception:  # unreadable or not an ONNX file: export afresh
        return None
    return engine if engine.weights_sha256 == weights_sha256(trained.model) else None


def scoring_engine(trained: Any, engine: str = "auto", run_dir: str | Path | None = None) -> Any:
    """What scores the flows of a loaded run for ``classify --engine``.

    * ``torch``: the run's torch model (``trained`` itself);
    * ``onnx``: onnxruntime on ``RUN/model.onnx`` when ``dmfnet export RUN`` wrote it from
      these weights, otherwise on an export made in memory (1-2 s for DMF; nothing
      is written into the run folder); without onnxruntime, or for an estimator run,
      :class:`ExportError`;
    * ``auto``: onnxruntime when it is installed, ``RUN/model.onnx`` is current and the
      model is one onnxruntime scores faster (:data:`ONNX_FASTER`); torch otherwise. An
      export in memory costs DMF 1-2 s, which onnxruntime's lead at batch 256 on a quiet
      2-core machine wins back only after some 80,000 flows, so auto never exports by itself.
    """
    if engine not in ENGINES:
        raise ExportError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    # Any object with classes, inputs and predict_proba may be given in Python; only a
    # loaded torch run can be exported.
    kind = getattr(trained, "kind", None)
    if kind == "onnx":  # an OnnxModel: it is its own engine
        if engine == "torch":
            raise ExportError("an ONNX model runs on onnxruntime only: use engine onnx or auto")
        return trained
    if engine == "torch":
        return trained
    name = getattr(trained, "name", type(trained).__name__)
    if engine == "onnx":
        _require_onnx()
        if kind != "torch":
            raise ExportError(
                f"{name} is a {kind or 'Python'} model, not exported to ONNX: use --engine torch"
            )
        cached = cached_engine(trained, run_dir)
        return cached or OnnxModel(export_onnx(trained), info=trained.info)
    if kind == "torch" and name in ONNX_FASTER and onnxruntime_available():
        return cached_engine(trained, run_dir) or trained
    return trained
