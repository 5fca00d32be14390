"""Model cost on the machine at hand (paper §5.4): parameters, FLOPs, latency, throughput, memory.

What is measured, so the numbers can be compared and repeated:

* **parameters**: ``sum(p.numel())`` over the module's parameters (buffers not counted).
* **FLOPs per flow**: :class:`torch.utils.flop_counter.FlopCounterMode` over one forward
  pass of a batch, divided by the batch size. It counts matrix products and convolutions
  (2 FLOPs per multiply-add, recurrent layers included through their matrix products) and
  ignores element-wise work (activations, normalisation, pooling), as FLOP tables usually do.
  Tree models have no FLOPs in this sense: their trees and nodes are reported instead.
* **latency**: wall time of ``predict`` on one batch (default 256 flows) and on a single
  flow, inputs already in memory, eval mode, no gradients; median and best of ``repeats``
  runs after ``warmup`` runs, with ``torch.set_num_threads`` set to the machine's cores.
  **Throughput** = batch size / median batch latency.
* **peak memory**, torch models: the most tensor memory held at once by one forward
  pass of the batch (activations and temporaries, the output included), over the inputs
  and weights already held: PyTorch's profiler records every allocation and free of the
  pass, in order, and the peak of their running sum is taken (:func:`tensor_peak_bytes`).
  It does not depend on what the allocator kept from earlier passes, as the process's RSS
  does (freed memory is reused: an RSS measure after a first pass reads about zero).
  Weights are reported apart (``weights_mib``). Estimators (XGBoost), whose memory torch
  does not see: the growth of the resident set size (RSS) while scoring batches, over the
  RSS with the model and inputs loaded, the larger of the sampled RSS (every 0.5 ms from
  ``/proc/self/statm``) and the kernel's high-water mark (``ru_maxrss``).
  ``memory_method`` says which. The 1-minute load average is recorded: on a busy machine
  latencies are inflated. :func:`measure_isolated` runs each model in a fresh process.

Inputs are synthetic flows of the right dtypes and widths (:func:`synthetic_inputs`);
cost does not depend on the values, except for tree models, whose size does: give a
trained run folder (``run_dir``) to measure the trees actually trained.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dmfnet.flows.schema import SCALAR_COLUMNS, SEQUENCE_COLUMNS

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def synthetic_inputs(columns: Sequence[str], n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` made-up flows with the dtypes and widths of the dataset columns ``columns``."""
    rng = np.random.default_rng(seed)
    packets = rng.integers(2, 31, n)  # packets per flow, up to the M = 30 kept
    out: dict[str, np.ndarray] = {}
    for name in columns:
        if name in SEQUENCE_COLUMNS:
            dtype, width = SEQUENCE_COLUMNS[name]
            pad = np.arange(width)[None, :] >= packets[:, None]
            if name == "lengths":
                arr = rng.integers(40, 1501, (n, width))
            elif name == "payload_lengths":
                arr = rng.integers(0, 1461, (n, width))
            elif name == "directions":
                arr = rng.choice(np.array([-1, 1]), (n, width))
            elif name == "iat":
                arr = rng.exponential(0.05, (n, width))
            elif name == "tcp_windows":
                arr = rng.integers(0, 65536, (n, width))
            else:  # byte columns: every byte may be set
                arr = rng.integers(0, 256, (n, width))
                pad = np.zeros_like(pad)
            arr = np.where(pad, 0, arr)
            out[name] = np.ascontiguousarray(arr.astype(dtype))
        elif name in SCALAR_COLUMNS:
            dtype = SCALAR_COLUMNS[name]
            if dtype == "str":
                out[name] = np.array([f"{name}-{i % 7}" for i in range(n)], dtype=object)
            elif dtype == "bool":
                out[name] = rng.random(n) < 0.9
            elif dtype.startswith("float"):
                out[name] = rng.exponential(10.0, n).astype(dtype)
            elif name in ("packets", "packets_c2s", "packets_s2c"):
                out[name] = packets.astype(dtype)
            else:
                out[name] = rng.integers(1, 60_000, n).astype(dtype)
        else:
            raise KeyError(f"no synthetic values for column {name!r}: not in the flow schema")
    return out


def _max_rss_bytes() -> int:
    """The kernel's high-water mark of this process's RSS (exact, no sampling)."""
    import resource

    scale = 1 if os.uname().sysname == "Darwin" else 1024  # macOS reports bytes, Linux KiB
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the lifetime peak (a coarser figure)
        return _max_rss_bytes()


class _PeakRSS:
    """Samples the RSS in a thread while the block runs; ``peak`` is the largest value."""

    def __init__(self, interval: float = 0.0005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> _PeakRSS:
        self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


@contextlib.contextmanager
def _profiler_lines_dropped() -> Iterator[None]:
    """Drop the two lines PyTorch's profiler (kineto) prints on stderr at each start and
    stop ("USDT: ... profiler_start"); anything else written to stderr meanwhile is
    passed on."""
    fd = 2  # where the C++ side writes, whatever Python's sys.stderr is
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(fd)
    except OSError:  # no file descriptor 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            if sys.stderr is not None:
                sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            kept = [
                line
                for line in sink.read().splitlines(keepends=True)
                if not (line.startswith(b"USDT:") and b"Profiler" in line)
            ]
            if kept:
                os.write(fd, b"".join(kept))


def tensor_peak_bytes(fn: Callable[[], Any]) -> int | None:
    """The most tensor memory held at once while ``fn()`` runs, over what was held before.

    PyTorch's profiler (``profile_memory``) records each allocation (+bytes) and free
    (-bytes) of CPU tensors with its time; the peak of their running sum, in time order,
    is the answer. ``None`` when this PyTorch gives no such records.
    """
    from torch.profiler import ProfilerActivity, profile

    with _profiler_lines_dropped():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    try:
        events = prof.profiler.kineto_results.events()
        records = [(e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"]
    except AttributeError:  # the profiler's results have another shape in this version
        return None
    if not records:
        return None
    records.sort(key=lambda r: r[0])  # stable: records of one instant keep their order
    held = peak = 0
    for _, nbytes in records:
        held += nbytes
        peak = max(peak, held)
    return int(peak)


def _find_booster(obj: Any) -> Any:
    """The xgboost Booster inside an estimator wrapper (or None)."""
    try:
        import xgboost
    except ImportError:  # pragma: no cover - xgboost is a dependency
        return None
    candidates = [obj, *vars(obj).values()] if hasattr(obj, "__dict__") else [obj]
    for c in candidates:
        if isinstance(c, xgboost.Booster):
            return c
        if isinstance(c, xgboost.XGBModel):
            try:
                return c.get_booster()
            except Exception:  # not fitted
                return None
    return None


def _fit_estimator_on_synthetic(model: Any, inputs: Sequence[str], num_classes: int) -> Any:
    n = 50 * num_classes
    data = synthetic_inputs(inputs, n, seed=1)
    y = np.arange(n) % num_classes
    # Make the classes separable so early stopping does not end after one round.
    for name, arr in data.items():
        if arr.dtype.kind in "iuf" and arr.ndim >= 1:
            shift = (y * 37).reshape((n,) + (1,) * (arr.ndim - 1))
            data[name] = (arr + shift).astype(arr.dtype)
            break
    half = n // 2
    fitted = model.fit(
        {c: a[:half] for c, a in data.items()},
        y[:half],
        {c: a[half:] for c, a in data.items()},
        y[half:],
    )
    return model if fitted is None else fitted


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(model: Any, tensors: Sequence[Any]) -> int:
    """FLOPs of one forward pass of ``model(*tensors)`` (matrix products and convolutions).

    Gradients stay enabled while counting: in eval mode without them PyTorch runs
    ``nn.TransformerEncoderLayer`` as one fused kernel that the counter cannot see into.
    The CPU attention kernel is counted with PyTorch's own attention formula.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        custom[cpu_sdpa] = _sdpa_cpu_flops
    counter = FlopCounterMode(display=False, custom_mapping=custom)
    with torch.enable_grad(), counter:
        model(*tensors)
    return int(counter.get_total_flops())


def _model_to_measure(
    name: str, kind: str, num_classes: int, config: dict[str, Any], run_dir: str | Path | None
) -> tuple[Any, str]:
    """The model whose cost is measured, and a note saying what it is.

    Torch models are built afresh (cost does not depend on the weights) with the run's
    configuration when a run is given; estimators are loaded from the run (their size
    depends on training). A run that cannot be read falls back to a fresh model, said so.
    """
    import json

    from dmfnet.models import create_model
    from dmfnet.training.runs import load_run

    note = ""
    if run_dir is not None:
        run_dir = Path(run_dir)
        if kind == "estimator":
            try:
                return load_run(run_dir).model, f"trained run {run_dir}"
            except (OSError, ValueError, KeyError, TypeError) as exc:
                note = f"run {run_dir} unreadable ({str(exc).splitlines()[0]}); "
        else:
            try:
                info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
                run_config = {**dict(info.get("model_config") or {}), **config}
                run_config.pop("num_classes", None)  # given by the run's class list
                model = create_model(name, num_classes, **run_config)
                return model, f"configuration of {run_dir}, fresh weights"
            except (OSError, ValueError, KeyError, TypeError) as exc:
                note = f"run {run_dir} unusable ({str(exc).splitlines()[0]}); "
    model = create_model(name, num_classes, **config)
    return model, note + ("default configuration, " if not config else "") + (
        "fresh weights" if kind == "torch" else ""
    )


def _timed_seconds(fn: Any, repeats: int, warmup: int) -> tuple[float, float]:
    """(median, best) wall seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs.

    On a shared machine the best run is the closest to the model's own cost and the median
    says what a caller typically waits; both are reported.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def measure(
    model_name: str,
    num_classes: int,
    *,
    batch_size: int = 256,
    repeats: int = 7,
    warmup: int = 2,
    threads: int | None = None,
    model_config: Mapping[str, Any] | None = None,
    run_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Cost of one registered model on this CPU (see the module docstring for definitions).

    ``run_dir``: a trained run of this model to measure (needed for tree models, whose
    size depends on training); otherwise a freshly built model (torch) or one fitted on
    synthetic flows (estimators) is measured.
    """
    import torch

    from dmfnet.models import get_entry
    from dmfnet.training.runs import model_logits

    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError("batch_size and repeats must be at least 1, warmup at least 0")
    entry = get_entry(model_name)
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)

    model, source = _model_to_measure(
        model_name, entry.kind, num_classes, dict(model_config or {}), run_dir
    )
    inputs = tuple(getattr(model, "inputs", None) or entry.inputs)  # DMF's follow its config
    data = synthetic_inputs(inputs, batch_size)
    one = {c: a[:1] for c, a in data.items()}
    result: dict[str, Any] = {
        "model": model_name,
        "kind": entry.kind,
        "group": entry.group,
        "num_classes": num_classes,
        "batch_size": batch_size,
        "threads": threads,
        "source": source,
        "params": None,
        "flops_per_flow": None,
        "trees": None,
        "tree_nodes": None,
        "weights_mib": None,
    }

    if entry.kind == "torch":
        model.eval()
        result["params"] = int(sum(p.numel() for p in model.parameters()))
        state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        result["weights_mib"] = state_bytes / 2**20
        tensors = [torch.from_numpy(np.ascontiguousarray(data[c])) for c in inputs]
        single = [t[:1] for t in tensors]

        result["flops_per_flow"] = count_flops(model, tensors) / batch_size

        def run_batch() -> None:
            with torch.inference_mode():
                model_logits(model(*tensors))

        def run_single() -> None:
            with torch.inference_mode():
                model_logits(model(*single))
    else:
        if not source.startswith("trained"):
            model = _fit_estimator_on_synthetic(model, inputs, num_classes)
            source += "fitted on synthetic flows (tree count depends on the data)"
            result["source"] = source
        booster = _find_booster(model)
        if booster is not None:
            dumps = booster.get_dump()
            result["trees"] = len(dumps)
            result["tree_nodes"] = int(sum(1 for d in dumps for line in d.splitlines() if line))
            result["weights_mib"] = len(booster.save_raw("ubj")) / 2**20

        def run_batch() -> None:
            model.predict_proba(data)

        def run_single() -> None:
            model.predict_proba(one)

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    max_rss_before = _max_rss_bytes()
    with _PeakRSS() as rss:
        base = rss.peak
        batch_s, batch_best = _timed_seconds(run_batch, repeats, warmup)
    # Sampling can miss a short peak; the kernel's high-water mark cannot, but it only
    # moves when the peak tops everything before: take the larger of the two growths.
    growth = max(rss.peak - base, _max_rss_bytes() - max_rss_before, 0)
    single_s, single_best = _timed_seconds(run_single, repeats, warmup)
    method = "rss"
    if entry.kind == "torch":
        tensors_peak = tensor_peak_bytes(run_batch)
        if tensors_peak is not None:
            growth, method = tensors_peak, "tensor"
    result.update(
        batch_latency_ms=1000 * batch_s,
        single_flow_latency_ms=1000 * single_s,
        batch_latency_best_ms=1000 * batch_best,
        single_flow_latency_best_ms=1000 * single_best,
        throughput_flows_per_s=batch_size / batch_s if batch_s > 0 else float("inf"),
        peak_memory_mib=growth / 2**20,
        memory_method=method,
        rss_mib=max(rss.peak, _max_rss_bytes()) / 2**20,
        load_average=load_before,
    )
    return result


def _measure_child(args: tuple[str, int, dict[str, Any]]) -> dict[str, Any]:
    name, num_classes, kwargs = args
    return measure(name, num_classes, **kwargs)


def measure_isolated(model_name: str, num_classes: int, **kwargs: Any) -> dict[str, Any]:
    """:func:`measure` in a fresh spawned process, so memory figures of models do not mix."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_measure_child, ((model_name, num_classes, kwargs),))


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _flops(value: float | None) -> str:
    if value is None:
        return "n/a"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def complexity_table(results: Sequence[Mapping[str, Any]]) -> str:
    """The §5.4 table: one row per model, in the order given."""
    lines = [
        "| Model | Parameters | FLOPs / flow | Trees (nodes) | Weights (MiB) | "
        "Latency, batch: median (best), ms | Latency, 1 flow: median (best), ms | "
        "Throughput (flows/s) | Peak memory (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        trees = "n/a" if r.get("trees") is None else f"{r['trees']:,} ({r['tree_nodes']:,})"
        lines.append(
            f"| {r['model']} | {_num(r.get('params'))} | {_flops(r.get('flops_per_flow'))} | "
            f"{trees} | {_num(r.get('weights_mib'), 2)} | {_num(r['batch_latency_ms'], 1)} "
            f"({_num(r.get('batch_latency_best_ms'), 1)}) | "
            f"{_num(r['single_flow_latency_ms'], 2)} ({_num(r.get('single_flow_latency_best_ms'), 2)}) | "
            f"{_num(r['throughput_flows_per_s'])} | "
            f"{_num(r['peak_memory_mib'], 1)} |"
        )
    return "\n".join(lines)


def write_complexity(
    results: Sequence[Mapping[str, Any]], path: str | Path, info: Mapping[str, Any] | None = None
) -> None:
    """Write complexity.md: the table, the machine, and what each column measures."""
    import platform

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = results[0] if results else {}
    cpu = platform.processor() or platform.machine()
    lines = ["# Model complexity (paper §5.4)", ""]
    for key, value in (info or {}).items():
        lines.append(f"- **{key.replace('_', ' ').capitalize()}:** {value}")
    loads = [r["load_average"] for r in results if r.get("load_average") is not None]
    busy = ""
    if loads:
        busy = f"; 1-minute load average {min(loads):.1f}-{max(loads):.1f} while measuring"
        if max(loads) > (os.cpu_count() or 1):
            busy += " (other work shared the CPU: latencies are inflated)"
    lines += [
        f"- **Machine:** {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        f"{first.get('threads', '?')} threads{busy}",
        f"- **Batch:** {first.get('batch_size', '?')} synthetic flows, "
        f"{first.get('num_classes', '?')} classes",
        "",
        complexity_table(results),
        "",
        "Parameters: `sum(p.numel())` of the model's parameters. FLOPs: counted by "
        "`torch.utils.flop_counter.FlopCounterMode` on one batch divided by its size (matrix "
        "products and convolutions, 2 per multiply-add; element-wise work not counted); "
        "tree models report trees and nodes instead. Latency: median and best of repeated "
        "`predict` calls after warm-up, inputs in memory, no gradients. Throughput: batch size "
        "/ median batch latency. Peak memory: for torch models the most tensor memory one "
        "forward pass of the batch holds at once (activations and temporaries, from PyTorch's "
        "profiler: allocations and frees in order; inputs and weights, the Weights column, "
        "not counted); for tree models the growth of the resident set size while scoring "
        "batches. Each model is measured in a fresh process.",
        "",
    ]
    lines += ["What was measured:", ""]
    lines += [f"- {r['model']}: {r.get('source', '')}" for r in results]
    lines.append("")
    path.write_text("\n".join(lines))
