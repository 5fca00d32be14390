"""Classify the flows of new captures with a trained run: ``dmfnet classify``.

Captures go through exactly the ingest of ``dmfnet prepare`` (reader -> flow assembly with
the flow configuration recorded when the run's dataset was prepared -> the paper's
filters), so a flow is seen by the model as it was seen in training. Flows are predicted
and written chunk by chunk as flow assembly emits them: memory stays bounded by the flows
open at once, whatever the capture size, and the output grows while the capture is read.

One output line per kept flow: the capture, protocol, endpoints as seen in the capture
(never anonymised: this is what an analyst looks up), start time, packet count, the
predicted class with its probability, and the top classes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np

from dmfnet.flows.config import FlowConfig
from dmfnet.problems import ProblemLog
from dmfnet.progress import byte_progress

FORMATS = ("csv", "jsonl")
PROTOCOL_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 47: "gre", 50: "esp", 132: "sctp"}
METADATA_COLUMNS = (
    "capture",
    "protocol",
    "client_ip",
    "client_port",
    "server_ip",
    "server_port",
    "start_time",
    "packets",
)
PREDICTION_FIELDS = (*METADATA_COLUMNS, "predicted", "probability", "top")


class ClassifyError(ValueError):
    """``classify`` cannot do its job: bad run folder, missing capture, bad option."""


@dataclass
class ClassifySummary:
    """What one ``classify`` call read and wrote."""

    out: str
    captures: int = 0
    captures_failed: list[str] = field(default_factory=list)
    packets: int = 0
    flows_assembled: int = 0
    flows_classified: int = 0
    removed: Counter = field(default_factory=Counter)  # filter rule -> flows
    predicted: Counter = field(default_factory=Counter)  # class -> flows
    problems: ProblemLog = field(default_factory=ProblemLog)
    seconds: float = 0.0

    @property
    def flows_per_s(self) -> float:
        return self.flows_classified / self.seconds if self.seconds > 0 else 0.0

    def report(self) -> str:
        """The lines printed at the end of ``dmfnet classify``."""
        lines = [
            f"{self.flows_classified} flows classified from {self.captures} capture(s) "
            f"({self.packets} packets, {self.seconds:.1f} s, {self.flows_per_s:.0f} flows/s)"
            f" -> {self.out}"
        ]
        removed = sum(self.removed.values())
        if removed:
            rules = ", ".join(f"{rule} {n}" for rule, n in sorted(self.removed.items()))
            lines.append(f"{removed} flows removed by filters, not classified: {rules}")
        if self.predicted:
            width = max(len(c) for c in self.predicted)
            lines.append("predicted classes:")
            for name, n in self.predicted.most_common():
                lines.append(f"  {name:<{width}}  {n:>8}  {n / self.flows_classified:6.1%}")
        if self.problems.total:
            lines.append(f"{self.problems.total} problem(s) while reading; first ones:")
            lines += [f"  {p}" for p in self.problems.problems[:5]]
        for path in self.captures_failed:
            lines.append(f"could not read {path} at all")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# The run's flow configuration


def run_flow_config(info: Mapping[str, Any]) -> FlowConfig:
    """The :class:`FlowConfig` the run's training dataset was prepared with.

    ``prepare`` records it in the dataset card, which training copies into ``run.json``;
    a run trained on an in-memory dataset has none, and the defaults are used.
    """
    card = (info.get("dataset") or {}).get("card") or {}
    recorded = (card.get("parameters") or {}).get("flow_config") or {}
    known = {f.name for f in dataclasses.fields(FlowConfig)}
    return FlowConfig(**{k: v for k, v in recorded.items() if k in known})


# ------------------------------------------------------------------------------------------
# Output


def output_format(out: str | Path, fmt: str | None = None) -> str:
    """``csv`` or ``jsonl``: given, or from the output file's ending."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ClassifyError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        return fmt
    name = str(out).lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".csv", ".tsv")) or name == "-":
        return "csv"
    raise ClassifyError(f"{out}: cannot tell the format from the name; use .csv or .jsonl")


class PredictionWriter:
    """Writes prediction rows as CSV (``top`` as ``class:prob;...``) or JSON lines."""

    def __init__(self, handle: IO[str], fmt: str, top_k: int) -> None:
        self.handle = handle
        self.fmt = fmt
        self.top_k = top_k
        self._csv = None
        if fmt == "csv":
            self._csv = csv.writer(handle, lineterminator="\n")
            self._csv.writerow(PREDICTION_FIELDS)

    def write(
        self, meta: Mapping[str, np.ndarray], classes: Sequence[str], proba: np.ndarray
    ) -> None:
        n = len(proba)
        if n == 0:
            return
        k = min(self.top_k, proba.shape[1])
        top = np.argsort(-proba, axis=1, kind="stable")[:, :k]
        top_p = np.take_along_axis(proba, top, axis=1)
        names = np.asarray(classes, dtype=object)
        start = [_iso_time(t) for t in meta["start_time"].tolist()]
        protocol = [PROTOCOL_NAMES.get(p, str(p)) for p in meta["protocol"].tolist()]
        captures = meta["capture"].tolist()
        client_ip, server_ip = meta["client_ip"].tolist(), meta["server_ip"].tolist()
        client_port, server_port = meta["client_port"].tolist(), meta["server_port"].tolist()
        packets = meta["packets"].tolist()
        top_names, top_values = names[top].tolist(), top_p.tolist()
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n") if self.fmt == "csv" else None
        for i in range(n):
            row = [
                captures[i],
                protocol[i],
                client_ip[i],
                client_port[i],
                server_ip[i],
                server_port[i],
                start[i],
                packets[i],
                top_names[i][0],
                round(top_values[i][0], 4),
            ]
            if writer is not None:
                ranked = ";".join(
                    f"{c}:{p:.4f}" for c, p in zip(top_names[i], top_values[i], strict=True)
                )
                writer.writerow([*row, ranked])
            else:
                ranked = [
                    {"class": c, "probability": round(p, 4)}
                    for c, p in zip(top_names[i], top_values[i], strict=True)
                ]
                record = dict(zip(PREDICTION_FIELDS, [*row, ranked], strict=True))
                buf.write(json.dumps(record) + "\n")
        self.handle.write(buf.getvalue())
        self.handle.flush()


def _iso_time(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="microseconds")[:-6] + "Z"
    )


# ------------------------------------------------------------------------------------------
# Classification


def predict_chunk(trained: Any, chunk: Mapping[str, np.ndarray]) -> tuple[dict, np.ndarray]:
    """Kept flows of one flow chunk -> (their metadata columns, class probabilities).

    Uses the data layer's conversion from flow chunks to model inputs, so classification
    sees the same arrays as training.
    """
    from dmfnet.data.dataset import flows_to_dataset

    wanted = list(dict.fromkeys([*METADATA_COLUMNS, *trained.inputs]))
    flows = flows_to_dataset(chunk, columns=wanted, kept_only=True)
    meta = {c: flows.columns[c] for c in METADATA_COLUMNS}
    if len(flows) == 0:
        return meta, np.zeros((0, len(trained.classes)), dtype=np.float32)
    proba = trained.predict_proba({c: flows.columns[c] for c in trained.inputs})
    return meta, proba


def classify_captures(
    run: str | Path | Any,
    captures: Sequence[str | Path],
    out: str | Path,
    *,
    fmt: str | None = None,
    top_k: int = 3,
    config: FlowConfig | None = None,
    progress: bool = True,
    chunk_bytes: int = 64 << 20,
    on_chunk: Callable[[int], None] | None = None,
) -> ClassifySummary:
    """Classify every kept flow of ``captures`` with the run ``run``; write ``out``.

    ``run`` is a run folder or an already loaded :class:`~dmfnet.training.runs.TrainedModel`.
    ``captures`` are files or folders (walked like ``prepare`` walks them). ``out`` is a
    ``.csv`` or ``.jsonl`` path, or ``-`` for CSV on stdout. A capture that is partly
    broken is reported and its readable part kept; one that cannot be read at all is
    listed in ``captures_failed``. Raises :class:`ClassifyError` for a bad run folder,
    a missing input or a bad option. ``chunk_bytes`` bounds the capture bytes read at
    once; ``on_chunk(n)`` is called after each chunk of ``n`` flows is written.
    """
    from dmfnet.capture import read_packets
    from dmfnet.data.prepare import PrepareError, find_captures
    from dmfnet.flows import assemble_flows

    if top_k < 1:
        raise ClassifyError(f"top must be at least 1, not {top_k}")
    fmt = output_format(out, fmt)
    if isinstance(captures, (str, Path)):
        captures = [captures]
    if not captures:
        raise ClassifyError("no capture given")
    try:
        files, _skipped = find_captures(captures)
    except PrepareError as exc:
        raise ClassifyError(str(exc)) from None
    if not files:
        raise ClassifyError(f"no capture file among {len(captures)} input(s)")
    trained = _load(run)
    if config is None:
        config = run_flow_config(trained.info)
    # The optional columns that the model reads, and only those, are assembled.
    config = dataclasses.replace(
        config, payload_packet_bytes="payload_packet_bytes" in trained.inputs
    )

    summary = ClassifySummary(out=str(out), captures=len(files))
    sizes = [_size(p) for p in files]
    started = time.perf_counter()
    handle = _open_output(out)
    writer = PredictionWriter(handle, fmt, top_k)

    bar = byte_progress(sum(sizes), "classify", enabled=progress)
    try:
        for path in files:
            problems = ProblemLog()
            packets = _count_packets(
                read_packets(path, problems, chunk_bytes=chunk_bytes, progress=bar.update), summary
            )
            before = summary.packets
            try:
                for chunk in assemble_flows(packets, config, capture=str(path)):
                    _count_filtered(chunk, summary)
                    meta, proba = predict_chunk(trained, chunk)
                    writer.write(meta, trained.classes, proba)
                    summary.flows_classified += len(proba)
                    if len(proba):
                        summary.predicted.update(
                            np.asarray(trained.classes)[proba.argmax(axis=1)].tolist()
                        )
                    if on_chunk is not None:
                        on_chunk(len(proba))
            except (MemoryError, OSError):
                raise
            except Exception as exc:  # one capture must not take the others down
                if os.environ.get("DMFNET_DEBUG"):
                    raise
                problems.add(str(path), -1, f"cannot read: {type(exc).__name__}: {exc}")
            if summary.packets == before and problems.total:
                summary.captures_failed.append(str(path))
            summary.problems.extend(problems)
    finally:
        bar.close()
        if handle is not sys.stdout:
            handle.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _load(run: str | Path | Any) -> Any:
    from dmfnet.training.runs import load_run

    if not isinstance(run, (str, Path)):
        return run
    try:
        return load_run(run)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise ClassifyError(str(msg)) from None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _open_output(out: str | Path) -> IO[str]:
    if str(out) == "-":
        return sys.stdout
    path = Path(out)
    if path.is_dir():
        raise ClassifyError(f"{path}: is a folder; give a .csv or .jsonl file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed by caller
    except OSError as exc:
        raise ClassifyError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _count_packets(batches: Iterable, summary: ClassifySummary) -> Iterable:
    for batch in batches:
        summary.packets += len(batch)
        yield batch


def _count_filtered(chunk: Mapping[str, np.ndarray], summary: ClassifySummary) -> None:
    reasons = chunk.get("filter_reason")
    n = len(chunk["protocol"])
    summary.flows_assembled += n
    if reasons is None:
        return
    reasons = np.asarray(reasons).astype(str)
    removed = reasons[reasons != ""]
    if len(removed):
        summary.removed.update(removed.tolist())
