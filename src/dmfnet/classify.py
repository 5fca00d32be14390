"""Classify the flows of new captures with a trained run: ``dmfnet classify``.

Captures go through exactly the ingest of ``dmfnet prepare`` (reader -> flow assembly with
the flow configuration recorded when the run's dataset was prepared -> the paper's
filters), so a flow is seen by the model as it was seen in training. Flows are predicted
and written chunk by chunk as flow assembly emits them: memory stays bounded by the flows
open at once, whatever the capture size, and the output grows while the capture is read.

One output line per kept flow: the capture, the IP protocol number (as in the dataset:
6 TCP, 17 UDP), the endpoints as seen in the capture (never anonymised: this is what an
analyst looks up), the flow's Community ID (the hash that joins it with Zeek's and
Suricata's logs), start and end time, duration, packets, IP bytes per direction, the
predicted class with its probability, and the top classes. With ``--reject`` (``reject=True``)
a flow whose score is below the threshold calibrated when the run was trained
(:mod:`dmfnet.training.rejection`) is predicted ``unknown``; its top classes stay, and a
``score`` field follows. In Python the same records
come from :func:`iter_predictions` (an iterator of dicts) or
``classify_captures(..., as_dataframe=True)`` (a pandas DataFrame).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np

from dmfnet.capture import StopSignal, read_stream
from dmfnet.flows.community_id import community_ids
from dmfnet.flows.config import FlowConfig, recorded_flow_config
from dmfnet.flows.schema import SEQUENCE_COLUMNS
from dmfnet.problems import ProblemLog
from dmfnet.progress import byte_progress
from dmfnet.training.rejection import UNKNOWN

FORMATS = ("csv", "jsonl")
# Dataset columns read for the output (besides the model's inputs).
METADATA_COLUMNS = (
    "capture",
    "protocol",
    "client_ip",
    "client_port",
    "server_ip",
    "server_port",
    "start_time",
    "end_time",
    "packets",
    "ip_bytes_c2s",
    "ip_bytes_s2c",
)
# One output record per flow, in this order. ``protocol`` is the IANA number (as in the
# dataset), ``bytes_c2s``/``bytes_s2c`` the IP bytes of each direction, ``duration``
# seconds from the first packet to the last.
PREDICTION_FIELDS = (
    "capture",
    "protocol",
    "client_ip",
    "client_port",
    "server_ip",
    "server_port",
    "community_id",
    "start_time",
    "end_time",
    "duration",
    "packets",
    "bytes_c2s",
    "bytes_s2c",
    "predicted",
    "probability",
    "top",
)
# Added to each record when flows are decided early (a stream, an interface, or
# ``decide_after``): the packets seen when the flow was decided and the capture time of the
# decision. The flow's fields then describe what the model saw: its first K packets.
EARLY_FIELDS = ("decided_packets", "decision_time")
# Per-flow columns that only the flow's end gives: a model reading one of them is complete
# only then.
WHOLE_FLOW_COLUMNS = frozenset(
    {
        "packets", "packets_c2s", "packets_s2c", "ip_bytes", "ip_bytes_c2s", "ip_bytes_s2c",
        "payload_bytes", "payload_bytes_c2s", "payload_bytes_s2c", "end_time", "syn_seen",
        "handshake_complete", "end_reason",
    }
)  # fmt: skip
# With rejection: the score compared with the run's threshold follows.
REJECTION_FIELDS = (*PREDICTION_FIELDS, "score")


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
    rejection: Any = None  # the run's Rejection when flows below its threshold are unknown
    unknown: int = 0  # flows labelled unknown by the rejection threshold
    problems: ProblemLog = field(default_factory=ProblemLog)
    seconds: float = 0.0

    @property
    def flows_per_s(self) -> float:
        return self.flows_classified / self.seconds if self.seconds > 0 else 0.0

    def report(self, *, problems: bool = True) -> str:
        """The lines printed at the end of ``dmfnet classify`` (``problems=False``: without
        the problems met, which :meth:`problem_report` gives, for stderr)."""
        lines = [
            f"{self.flows_classified} flows classified from {self.captures} capture(s) "
            f"({self.packets} packets, {self.seconds:.1f} s, {self.flows_per_s:.0f} flows/s)"
            f" -> {self.out}"
        ]
        removed = sum(self.removed.values())
        if removed:
            rules = ", ".join(f"{rule} {n}" for rule, n in sorted(self.removed.items()))
            lines.append(f"{removed} flows removed by filters, not classified: {rules}")
        if self.rejection is not None:
            rule = self.rejection
            lines.append(
                f"{self.unknown} flows unknown: {rule.score} score below {rule.threshold:.4g} "
                f"(the run accepts {rule.accept_rate:.0%} of its validation flows)"
            )
        if self.predicted:
            width = max(len(c) for c in self.predicted)
            lines.append("predicted classes:")
            for name, n in self.predicted.most_common():
                lines.append(f"  {name:<{width}}  {n:>8}  {n / self.flows_classified:6.1%}")
        if problems and self.problem_report():
            lines.append(self.problem_report())
        return "\n".join(lines)

    def problem_report(self) -> str:
        """The problems met while reading and the captures not read at all ("" if none)."""
        lines = []
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
    return recorded_flow_config((info.get("dataset") or {}).get("card"))


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

    def __init__(
        self, handle: IO[str], fmt: str, top_k: int, fields: Sequence[str] = PREDICTION_FIELDS
    ) -> None:
        self.handle = handle
        self.fmt = fmt
        self.top_k = top_k
        self.fields = tuple(fields)
        self._csv = None
        if fmt == "csv":
            self._csv = csv.writer(handle, lineterminator="\n")
            self._csv.writerow(fields)
            handle.flush()

    def write(
        self, meta: Mapping[str, np.ndarray], classes: Sequence[str], proba: np.ndarray
    ) -> None:
        rows = prediction_rows(meta, classes, proba, self.top_k)
        if not rows:
            return
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n") if self.fmt == "csv" else None
        for row in rows:
            row["start_time"] = _iso_time(row["start_time"])
            row["end_time"] = _iso_time(row["end_time"])
            if "decision_time" in row:
                row["decision_time"] = _iso_time(row["decision_time"])
            if writer is not None:
                row["top"] = ";".join(f"{c}:{p:.4f}" for c, p in row["top"])
                writer.writerow([row[name] for name in self.fields])
            else:
                row["top"] = [{"class": c, "probability": round(p, 4)} for c, p in row["top"]]
                buf.write(json.dumps({name: row[name] for name in self.fields}) + "\n")
        self.handle.write(buf.getvalue())
        self.handle.flush()


def prediction_rows(
    meta: Mapping[str, np.ndarray], classes: Sequence[str], proba: np.ndarray, top_k: int
) -> list[dict[str, Any]]:
    """One dict per flow, keys :data:`PREDICTION_FIELDS`: plain Python values, times in
    epoch seconds, ``top`` a list of ``(class, probability)`` best first. When ``meta``
    holds ``score`` and ``unknown`` (:func:`predict_chunk` with a rejection rule), the keys
    are :data:`REJECTION_FIELDS` and a rejected flow is predicted ``unknown``."""
    n = len(proba)
    if n == 0:
        return []
    k = min(top_k, proba.shape[1])
    top = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    top_p = np.take_along_axis(proba, top, axis=1)
    names = np.asarray(classes, dtype=object)
    predicted = names[top[:, 0]]
    if "unknown" in meta:
        predicted = np.where(meta["unknown"], UNKNOWN, predicted)
    start, end = meta["start_time"].tolist(), meta["end_time"].tolist()
    protocol = meta["protocol"].tolist()
    client_ip, server_ip = meta["client_ip"].tolist(), meta["server_ip"].tolist()
    client_port, server_port = meta["client_port"].tolist(), meta["server_port"].tolist()
    ids = community_ids(protocol, client_ip, client_port, server_ip, server_port)
    columns = zip(
        meta["capture"].tolist(),
        protocol,
        client_ip,
        client_port,
        server_ip,
        server_port,
        ids,
        start,
        end,
        [round(e - s, 6) for s, e in zip(start, end, strict=True)],
        meta["packets"].tolist(),
        meta["ip_bytes_c2s"].tolist(),
        meta["ip_bytes_s2c"].tolist(),
        predicted.tolist(),
        [round(p, 4) for p in top_p[:, 0].tolist()],
        [
            list(zip(c, p, strict=True))
            for c, p in zip(names[top].tolist(), top_p.tolist(), strict=True)
        ],
        strict=True,
    )
    rows = [dict(zip(PREDICTION_FIELDS, values, strict=True)) for values in columns]
    if "decision_time" in meta:
        for row, packets, when in zip(
            rows, meta["decided_packets"].tolist(), meta["decision_time"].tolist(), strict=True
        ):
            row["decided_packets"] = packets
            row["decision_time"] = when
    if "score" in meta:
        for row, score in zip(rows, meta["score"].tolist(), strict=True):
            row["score"] = round(score, 4)
    return rows


def _iso_time(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="microseconds")[:-6] + "Z"
    )


# ------------------------------------------------------------------------------------------
# Classification


def predict_chunk(
    trained: Any, chunk: Mapping[str, np.ndarray], rejection: Any = None
) -> tuple[dict, np.ndarray]:
    """Kept flows of one flow chunk -> (their metadata columns, class probabilities).

    Uses the data layer's conversion from flow chunks to model inputs, so classification
    sees the same arrays as training. With a :class:`~dmfnet.training.rejection.Rejection`
    the metadata also holds each flow's ``score`` and whether it is ``unknown``.
    """
    from dmfnet.data.dataset import flows_to_dataset

    wanted = list(dict.fromkeys([*METADATA_COLUMNS, *trained.inputs]))
    flows = flows_to_dataset(chunk, columns=wanted, kept_only=True)
    meta = {c: flows.columns[c] for c in METADATA_COLUMNS}
    if "decision_time" in chunk:
        kept = np.asarray(chunk["filter_reason"]).astype(str) == ""
        meta.update({c: np.asarray(chunk[c])[kept] for c in EARLY_FIELDS})
    if rejection is not None:
        meta["score"] = np.zeros(len(flows))
        meta["unknown"] = np.zeros(len(flows), dtype=bool)
    if len(flows) == 0:
        return meta, np.zeros((0, len(trained.classes)), dtype=np.float32)
    inputs = {c: flows.columns[c] for c in trained.inputs}
    if rejection is None:
        return meta, trained.predict_proba(inputs)
    logits = trained.predict_logits(inputs).astype(np.float64)  # one pass: scores and classes
    meta["score"] = rejection.scores(logits)
    meta["unknown"] = ~rejection.accepts(meta["score"])
    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    return meta, (proba / proba.sum(axis=1, keepdims=True)).astype(np.float32)


def classify_captures(
    run: str | Path | Any,
    captures: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    fmt: str | None = None,
    top_k: int = 3,
    config: FlowConfig | None = None,
    progress: bool = True,
    chunk_bytes: int = 64 << 20,
    on_chunk: Callable[[int], None] | None = None,
    as_dataframe: bool = False,
    decide_after: int | None = None,
    engine: str = "auto",
    reject: bool = False,
) -> Any:
    """Classify every kept flow of ``captures`` with the run ``run``; write ``out``.

    ``run`` is a run folder or an already loaded :class:`~dmfnet.training.runs.TrainedModel`.
    ``captures`` are files or folders (walked like ``prepare`` walks them). ``out`` is a
    ``.csv`` or ``.jsonl`` path, or ``-`` for CSV on stdout. A capture that is partly
    broken is reported and its readable part kept; one that cannot be read at all is
    listed in ``captures_failed``. Raises :class:`ClassifyError` for a bad run folder,
    a missing input or a bad option. ``chunk_bytes`` bounds the capture bytes read at
    once; ``on_chunk(n)`` is called after each chunk of ``n`` flows is written.
    ``decide_after=K`` decides each flow on its first K packets, as a stream is decided
    (see :func:`classify_stream`); by default a flow is decided on all of it, at its end.

    Returns the :class:`ClassifySummary`; with ``as_dataframe`` (pandas needed) a pandas
    DataFrame of the predictions instead, one row per flow with the columns
    :data:`PREDICTION_FIELDS` (times as UTC timestamps, ``top`` as a list of
    ``{"class", "probability"}``) and the summary in ``df.attrs["summary"]``; ``out`` is
    then optional (given, the file is written too). :func:`iter_predictions` gives the
    same records one at a time, without holding them.

    ``engine`` scores the flows with ``torch``, ``onnx`` (onnxruntime) or ``auto``
    (:func:`dmfnet.export.scoring_engine`: onnxruntime when the run folder holds a current
    ``model.onnx`` from ``dmfnet export`` and onnxruntime is faster for the model).
    ``reject`` labels ``unknown`` the flows whose score is below the rejection threshold
    recorded in the run (a run without one is a :class:`ClassifyError`); the records then
    have the fields :data:`REJECTION_FIELDS` and the summary counts the unknown flows.
    """
    if out is None and not as_dataframe:
        raise ClassifyError("give an output file (out) or as_dataframe=True")
    if as_dataframe:
        try:
            import pandas as pd
        except ImportError:
            raise ClassifyError("as_dataframe needs pandas (pip install pandas)") from None
    if out is not None:
        fmt = output_format(out, fmt)
    trained, files, config = _prepare_inputs(run, captures, top_k, config, engine)
    _check_decide_after(decide_after, config)
    rejection = _rejection(trained, run) if reject else None
    early = decide_after is not None
    fields = _fields(reject, early)

    summary = ClassifySummary(out=str(out) if out is not None else "(DataFrame)")
    summary.rejection = rejection
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    handle = _open_output(out) if out is not None else None
    summary.rejection = rejection
    writer = PredictionWriter(handle, fmt, top_k, fields) if handle is not None else None
    bar = byte_progress(sum(_size(p) for p in files), "classify", enabled=progress)
    sources = [(str(p), _file_packets(p, chunk_bytes, bar.update)) for p in files]
    chunks = _predicted_chunks(trained, sources, config, summary, decide_after, early, rejection)
    try:
        for meta, proba in chunks:
            if as_dataframe:
                records += _python_records(prediction_rows(meta, trained.classes, proba, top_k))
            if writer is not None:
                writer.write(meta, trained.classes, proba)
            if on_chunk is not None:
                on_chunk(len(proba))
    finally:
        chunks.close()
        bar.close()  # at once also when writing failed
        if handle is not None and handle is not sys.stdout:
            handle.close()
    summary.seconds = time.perf_counter() - started
    if not as_dataframe:
        return summary
    frame = pd.DataFrame.from_records(records, columns=list(fields))
    for name in ("start_time", "end_time", "decision_time"):
        if name in frame:
            frame[name] = pd.to_datetime(frame[name], utc=True)
    frame.attrs["summary"] = summary
    return frame


def classify_stream(
    run: str | Path | Any,
    out: str | Path,
    *,
    source: int | IO[bytes] | None = None,
    interface: str | None = None,
    capture_filter: str | None = None,
    fmt: str | None = None,
    top_k: int = 3,
    config: FlowConfig | None = None,
    decide_after: int | None = None,
    chunk_bytes: int = 4 << 20,
    on_chunk: Callable[[int], None] | None = None,
    handle_signals: bool = True,
    engine: str = "auto",
    reject: bool = False,
) -> ClassifySummary:
    """Classify traffic as it arrives: a pcap/pcapng stream (``source``, e.g. standard
    input fed by ``tcpdump -U -w -``) or a network interface (``interface``, captured by
    ``tcpdump``). One line per flow is written and flushed as soon as the flow is decided.

    A flow is decided once the model's inputs are complete (:func:`packets_needed`: its
    first 60 packets for DMF, whose length modality reads the first 30 that carry payload;
    the end of the flow for a model of whole-flow statistics), or after its first
    ``decide_after`` packets when given, or at its end when that comes
    first; a TCP flow is decided at its close (FIN both ways or RST) without waiting for
    the idle timeout. Each line adds :data:`EARLY_FIELDS`; its packet and byte counts,
    end time and duration are those of the packets the model saw. Timeouts follow the
    capture's clock. At the end of the stream, or on SIGINT/SIGTERM (``handle_signals``,
    in the main thread), the open flows are decided and written and the function
    returns. Memory stays bounded: a decided flow keeps only its counters until it ends.
    ``capture_filter`` is a BPF filter for ``interface``. Raises :class:`ClassifyError`
    for a bad run or option, or when ``tcpdump`` is missing or cannot capture.
    """
    if (source is None) == (interface is None):
        raise ClassifyError("give either a stream (source) or an interface, not both")
    if capture_filter and interface is None:
        raise ClassifyError("a capture filter needs an interface")
    fmt = output_format(out, fmt)
    if top_k < 1:
        raise ClassifyError(f"top must be at least 1, not {top_k}")
    trained = _scoring_engine(_load(run), run, engine)
    config = _model_flow_config(trained, config)
    _check_decide_after(decide_after, config)
    if decide_after is None:
        decide_after = packets_needed(trained, config)

    summary = ClassifySummary(out=str(out))
    started = time.perf_counter()
    stop = StopSignal()
    rejection = _rejection(trained, run) if reject else None
    summary.rejection = rejection
    fd = _fileno(source) if source is not None else -1
    handle = _open_output(out)  # every check before tcpdump starts: nothing left running
    capture = None
    if interface is not None:
        try:
            capture = _Tcpdump(interface, capture_filter)
        except BaseException:
            if handle is not sys.stdout:
                handle.close()
            raise
        fd = capture.fd
    name = f"interface {interface}" if interface is not None else "-"
    sources = [(name, lambda problems: read_stream(fd, problems, name=name,
                                                   chunk_bytes=chunk_bytes, stop=stop))]  # fmt: skip
    writer = PredictionWriter(handle, fmt, top_k, _fields(reject, early=True))
    chunks = _predicted_chunks(trained, sources, config, summary, decide_after, True, rejection)
    ask_stop = capture.stop if capture is not None else stop.request
    try:
        with _stop_on_signals(ask_stop, enabled=handle_signals):
            for meta, proba in chunks:
                writer.write(meta, trained.classes, proba)
                if on_chunk is not None:
                    on_chunk(len(proba))
    finally:
        chunks.close()
        if handle is not sys.stdout:
            handle.close()
        if capture is not None:
            capture.close()
    summary.seconds = time.perf_counter() - started
    if capture is not None and summary.packets == 0 and capture.failed():
        raise ClassifyError(capture.error())
    return summary


def packets_needed(trained: Any, config: FlowConfig | None = None) -> int | None:
    """After how many packets the model's inputs are complete; None: only at the flow's end.

    Models of whole-flow statistics (XGBoost, ACID) need the end; the per-packet columns
    and the heads hold the first ``m_packets`` packets; ``bytes`` alone the first
    ``n_packets``.
    """
    config = config or run_flow_config(trained.info)
    inputs = set(trained.inputs)
    if inputs & WHOLE_FLOW_COLUMNS:
        return None
    if inputs & (set(SEQUENCE_COLUMNS) - {"bytes"}):
        return config.m_packets
    return config.n_packets if "bytes" in inputs else 1


def iter_predictions(
    run: str | Path | Any,
    captures: Sequence[str | Path],
    *,
    top_k: int = 3,
    config: FlowConfig | None = None,
    progress: bool = False,
    chunk_bytes: int = 64 << 20,
    summary: ClassifySummary | None = None,
    decide_after: int | None = None,
    engine: str = "auto",
    reject: bool = False,
) -> Iterator[dict[str, Any]]:
    """The predictions of :func:`classify_captures`, one dict per flow, as flows complete.

    Keys are :data:`PREDICTION_FIELDS` (and :data:`EARLY_FIELDS` with ``decide_after``,
    ``score`` with ``reject``); ``start_time`` and ``end_time`` are timezone-aware UTC
    datetimes, ``top`` a list of ``{"class", "probability"}`` best first. Nothing is held
    beyond the flows of one chunk, so captures of any size can be streamed. Pass a
    :class:`ClassifySummary` as ``summary`` to have it filled (counts, filters, problems)
    as the captures are read. A bad run, capture or option raises :class:`ClassifyError`
    here, before the iterator is returned. ``engine`` and ``reject`` as in
    :func:`classify_captures`.
    """
    trained, files, config = _prepare_inputs(run, captures, top_k, config, engine)
    _check_decide_after(decide_after, config)
    rejection = _rejection(trained, run) if reject else None
    summary = summary if summary is not None else ClassifySummary(out="(iterator)")
    summary.rejection = rejection
    bar = byte_progress(sum(_size(p) for p in files), "classify", enabled=progress)
    sources = [(str(p), _file_packets(p, chunk_bytes, bar.update)) for p in files]
    chunks = _predicted_chunks(
        trained, sources, config, summary, decide_after, decide_after is not None, rejection
    )

    def records() -> Iterator[dict[str, Any]]:
        started = time.perf_counter()
        try:
            with contextlib.closing(chunks):
                for meta, proba in chunks:
                    yield from _python_records(
                        prediction_rows(meta, trained.classes, proba, top_k)
                    )
                    summary.seconds = time.perf_counter() - started
        finally:
            bar.close()

    return records()


def _python_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of :func:`prediction_rows` with datetimes and ``top`` as in the JSON output."""
    for row in rows:
        row["start_time"] = datetime.fromtimestamp(row["start_time"], tz=timezone.utc)
        row["end_time"] = datetime.fromtimestamp(row["end_time"], tz=timezone.utc)
        if "decision_time" in row:
            row["decision_time"] = datetime.fromtimestamp(row["decision_time"], tz=timezone.utc)
        row["top"] = [{"class": c, "probability": round(p, 4)} for c, p in row["top"]]
    return rows


def _prepare_inputs(
    run: str | Path | Any,
    captures: Sequence[str | Path] | str | Path,
    top_k: int,
    config: FlowConfig | None,
    engine: str = "auto",
) -> tuple[Any, list[Path], FlowConfig]:
    """The loaded run, the capture files and the flow configuration; bad input raises."""
    from dmfnet.data.prepare import PrepareError, find_captures

    if top_k < 1:
        raise ClassifyError(f"top must be at least 1, not {top_k}")
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
    trained = _scoring_engine(_load(run), run, engine)
    return trained, files, _model_flow_config(trained, config)


def _model_flow_config(trained: Any, config: FlowConfig | None) -> FlowConfig:
    """The run's flow configuration (or ``config``), assembling the optional columns that
    the model reads, and only those."""
    if config is None:
        config = run_flow_config(trained.info)
    return dataclasses.replace(
        config, payload_packet_bytes="payload_packet_bytes" in trained.inputs
    )


def _check_decide_after(decide_after: int | None, config: FlowConfig) -> None:
    if decide_after is not None and not 1 <= decide_after <= config.m_packets:
        raise ClassifyError(
            f"--decide-after must be between 1 and {config.m_packets} packets "
            f"(the packets a flow record holds), not {decide_after}"
        )


PacketSource = tuple[str, Callable[[ProblemLog], Iterable[Any]]]


def _file_packets(
    path: Path, chunk_bytes: int, progress: Callable[[int], None]
) -> Callable[[ProblemLog], Iterable[Any]]:
    from dmfnet.capture import read_packets

    def packets(problems: ProblemLog) -> Iterable[Any]:
        return read_packets(path, problems, chunk_bytes=chunk_bytes, progress=progress)

    return packets


def _predicted_chunks(
    trained: Any,
    sources: Sequence[PacketSource],
    config: FlowConfig,
    summary: ClassifySummary,
    decide_after: int | None,
    decide_early: bool,
    rejection: Any = None,
) -> Iterator[tuple[dict, np.ndarray]]:
    """(metadata columns, probabilities) of each flow chunk of the sources, in order;
    ``summary`` counts captures, packets, flows, filters, predictions (unknown flows as
    ``unknown``) and problems."""
    from dmfnet.flows import assemble_flows

    summary.captures = len(sources)
    for name, read in sources:
        problems = ProblemLog()
        packets = _count_packets(read(problems), summary)
        before = summary.packets
        try:
            flows = assemble_flows(
                packets, config, capture=name, decide_after=decide_after, decide_early=decide_early
            )
            for chunk in flows:
                _count_filtered(chunk, summary)
                meta, proba = predict_chunk(trained, chunk, rejection)
                summary.flows_classified += len(proba)
                if len(proba):
                    predicted = np.asarray(trained.classes)[proba.argmax(axis=1)]
                    if rejection is not None:
                        predicted = np.where(meta["unknown"], UNKNOWN, predicted)
                        summary.unknown += int(meta["unknown"].sum())
                    summary.predicted.update(predicted.tolist())
                yield meta, proba
        except (MemoryError, OSError):
            raise
        except Exception as exc:  # one capture must not take the others down
            if os.environ.get("DMFNET_DEBUG"):
                raise
            problems.add(name, -1, f"cannot read: {type(exc).__name__}: {exc}")
        if summary.packets == before and problems.total:
            summary.captures_failed.append(name)
        summary.problems.extend(problems)


# ------------------------------------------------------------------------------------------
# Live input


class _Tcpdump:
    """``tcpdump -i IFACE -U -w -``: a live capture as a pcap stream on a pipe.

    tcpdump is the capture tool a sensor host has, and it keeps capture privileges out of
    this process. ``stop`` asks it to end (SIGTERM: it flushes what it captured, then
    closes the pipe, which ends the stream).
    """

    def __init__(self, interface: str, capture_filter: str | None) -> None:
        tool = shutil.which("tcpdump")
        if tool is None:
            raise ClassifyError(
                "--interface needs tcpdump, which is not installed (e.g. apt install "
                "tcpdump); or pipe a capture in: tcpdump -i IFACE -U -w - | dmfnet classify RUN -"
            )
        command = [tool, "-i", interface, "-U", "-w", "-", "--immediate-mode", "-s", "0"]
        if capture_filter:
            command.append(capture_filter)
        self.errors = tempfile.TemporaryFile()  # tcpdump's messages, read if it fails
        self.process = subprocess.Popen(  # noqa: S603 - a fixed tool, arguments as a list
            command, stdout=subprocess.PIPE, stderr=self.errors, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches dmfnet, which stops tcpdump itself
        )  # fmt: skip
        self.fd = self.process.stdout.fileno()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()

    def close(self) -> None:
        self.stop()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()

    def failed(self) -> bool:
        return self.process.returncode not in (0, -signal.SIGTERM)

    def error(self) -> str:
        self.errors.seek(0)
        lines = self.errors.read().decode(errors="replace").strip().splitlines()
        said = [line for line in lines if line.startswith("tcpdump:")] or lines
        reason = said[-1] if said else f"tcpdump ended with exit status {self.process.returncode}"
        return f"cannot capture: {reason}"


@contextlib.contextmanager
def _stop_on_signals(stop: Callable[[], None], *, enabled: bool) -> Iterator[None]:
    """SIGINT and SIGTERM call ``stop`` (the stream ends, open flows are decided) instead of
    killing the process; the previous handlers come back after."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: stop())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fileno(source: int | IO[bytes]) -> int:
    if isinstance(source, int):
        return source
    try:
        return source.fileno()
    except (AttributeError, OSError, ValueError):
        raise ClassifyError("the stream must be a file descriptor or an open file") from None


def _load(run: str | Path | Any) -> Any:
    from dmfnet.training.runs import load_run

    if not isinstance(run, (str, Path)):
        return run
    try:
        return load_run(run)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise ClassifyError(str(msg)) from None


def _scoring_engine(trained: Any, run: str | Path | Any, engine: str) -> Any:
    """The run's model, or its ONNX export on onnxruntime (:func:`dmfnet.export.scoring_engine`)."""
    from dmfnet.export import ExportError, scoring_engine

    run_dir = run if isinstance(run, (str, Path)) else None
    try:
        return scoring_engine(trained, engine, run_dir)
    except ExportError as exc:
        raise ClassifyError(str(exc)) from None


def _fields(reject: bool, early: bool) -> tuple[str, ...]:
    """The fields of each output record."""
    return (
        PREDICTION_FIELDS + (("score",) if reject else ()) + (EARLY_FIELDS if early else ())
    )


def _rejection(trained: Any, run: str | Path | Any) -> Any:
    """The run's calibrated rejection rule; a :class:`ClassifyError` when it has none."""
    from dmfnet.training.rejection import run_rejection

    if not hasattr(trained, "predict_logits"):
        raise ClassifyError("--reject needs the torch engine (--engine torch)")
    if UNKNOWN in trained.classes:
        raise ClassifyError(
            f"the run has a class named {UNKNOWN!r}: rejected flows could not be told from it"
        )
    name = str(run) if isinstance(run, (str, Path)) else "the run"
    try:
        return run_rejection(trained.info, name)
    except ValueError as exc:
        raise ClassifyError(str(exc)) from None


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
