"""Captures -> labelled flow dataset on disk: ``dmfnet prepare``.

Each capture is streamed (packets -> flows -> labels -> Parquet) by a worker process,
so memory stays bounded whatever the capture size and captures are processed in
parallel. A large capture's flows are shared out into buckets by a hash of their key;
when there are more cores than captures, several processes read one large capture, each
assembling the flows of some of its buckets. Its rows come bucket by bucket, the same
however many processes shared it. Every worker writes its own part files; when all are
done the optional per-class sample is applied and ``_dataset.json`` records how the
dataset was made.

Part files are written into ``OUT/_unfinished/`` (which Parquet readers pass over) and
moved up into ``OUT`` when all are done, just before the card is written: a run that is
interrupted or fails leaves no part file that a reader would take for the dataset, and
removes what it wrote (see :mod:`dmfnet.outputs`). Worker processes ignore Ctrl-C (the
parent stops them) and, on Linux, are killed when the parent dies, however it dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import itertools
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dmfnet import __version__, outputs
from dmfnet.background import run_ahead
from dmfnet.capture import read_packets
from dmfnet.data.addresses import AddressPolicy
from dmfnet.data.card import class_warnings, format_summary, warning_lines, write_card
from dmfnet.data.dataset import (
    LABEL_COLUMN,
    ROW_GROUP_ROWS,
    PartWriter,
    open_parquet_writer,
    part_stem,
    take_rows,
)
from dmfnet.data.labels import UNLABELLED, Labeller, make_labeller
from dmfnet.flows import Buckets, assemble_flows
from dmfnet.flows.config import FlowConfig
from dmfnet.problems import ProblemLog
from dmfnet.progress import byte_progress

# First bytes of the files taken from input folders (pcap both orders, µs/ns; pcapng; gzip).
CAPTURE_MAGICS = (
    b"\xd4\xc3\xb2\xa1",
    b"\xa1\xb2\xc3\xd4",
    b"\x4d\x3c\xb2\xa1",
    b"\xa1\xb2\x3c\x4d",
    b"\x34\xcd\xb2\xa1",
    b"\xa1\xb2\xcd\x34",
    b"\x0a\x0d\x0d\x0a",
    b"\x1f\x8b",
)
# Files with these endings are always taken from folders, so a broken or empty capture is
# reported rather than passed over.
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz", ".cap.gz")
PROGRESS_STEP = 1 << 20  # workers report progress every MiB read
# Parts of fewer flows (about 5 MB) are merged with their neighbours into larger files; a
# capture with more flows keeps its own part (rewriting it would cost as much as writing).
SMALL_PART_ROWS = 1024
PROBLEMS_LISTED = 10_000  # problems listed in full in the card (all are counted)
# A capture of at least SPLIT_MIN_BYTES has its flows in BUCKETS buckets (rows bucket by
# bucket), so that up to BUCKETS processes can share it. Both are fixed, not taken from the
# number of cores: the dataset must not depend on the machine that made it.
BUCKETS = 8
SPLIT_MIN_BYTES = 64 << 20


class PrepareError(ValueError):
    """``prepare`` cannot do its job (no input, nothing readable, output in the way)."""


class OutputError(RuntimeError):
    """The dataset cannot be written (disk full, no permission): fatal for the whole run."""


@dataclass
class CaptureResult:
    """What one capture (or some buckets of it) gave: counts, problems, part files."""

    index: int
    path: str
    size: int
    buckets: Buckets = Buckets()
    packets: int = 0
    flows: int = 0  # assembled, before filters
    kept: Counter = field(default_factory=Counter)  # flows written, per label
    removed: dict[str, Counter] = field(default_factory=dict)  # rule -> label -> flows
    unlabelled: int = 0  # flows that passed the filters without a label
    non_ip: Counter = field(default_factory=Counter)  # packets outside any flow, by kind
    problems: ProblemLog = field(default_factory=ProblemLog)
    parts: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Nothing could be read from this capture, and something went wrong."""
        return self.packets == 0 and self.problems.total > 0


@dataclass
class PrepareSummary:
    """The outcome of :func:`prepare`: the output folder and its dataset card."""

    out: Path
    card: dict

    @property
    def classes(self) -> dict[str, int]:
        """Flows written per class."""
        return {k: v["flows"] for k, v in self.card["classes"].items()}

    @property
    def flows(self) -> int:
        return int(self.card["totals"]["flows_written"])

    @property
    def warnings(self) -> list[str]:
        return list(self.card["warnings"])

    def __str__(self) -> str:
        return format_summary(self.card)

    def print_warnings(self) -> None:
        """Warnings about (nearly) empty classes and unreadable captures, to stderr."""
        for line in warning_lines(self.card["warnings"]):
            print(f"dmfnet prepare: {line}", file=sys.stderr)

    def report(self, *, warnings: bool = True) -> str:
        """The summary printed at the end of ``dmfnet prepare``."""
        return format_summary(self.card, warnings=warnings)


# ------------------------------------------------------------------------------------------
# Inputs


def is_capture_file(path: Path) -> bool:
    """A file to take from a folder: capture suffix, or pcap/pcapng/gzip first bytes."""
    if path.name.lower().endswith(CAPTURE_SUFFIXES):
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return True  # unreadable: taken, so that the failure is reported
    return any(head.startswith(m) for m in CAPTURE_MAGICS)


def find_captures(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """Files to read (explicit files, capture files found in folders) and files skipped.

    Folders are walked recursively in sorted order; a path given twice is read once.
    """
    captures: list[Path] = []
    skipped: list[Path] = []
    seen: set[Path] = set()

    def take(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            captures.append(path)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    file = Path(root) / name
                    if not file.is_file():
                        continue
                    if is_capture_file(file):
                        take(file)
                    else:
                        skipped.append(file)
        elif path.exists():
            take(path)
        else:
            raise PrepareError(f"{path}: no such file or folder")
    return captures, skipped


# ------------------------------------------------------------------------------------------
# One capture (runs in a worker process)

_WORKER: dict = {}


def _init_worker(
    labeller: Labeller,
    config: FlowConfig,
    keep_unlabelled: bool,
    out: str,
    ahead: bool,
    addresses: AddressPolicy,
    queue,
    parent: int | None = None,
) -> None:
    """Runs once in each worker process: what every capture task needs."""
    if parent is not None:
        _die_with_parent(parent)
    _WORKER.update(
        labeller=labeller,
        config=config,
        keep_unlabelled=keep_unlabelled,
        out=out,
        ahead=ahead,
        addresses=addresses,
        queue=queue,
    )


PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent ends


def _die_with_parent(parent: int) -> None:
    """A worker ignores Ctrl-C (the parent, which gets it too, stops the workers) and, on
    Linux, is killed by the kernel when the parent ends, however it ends (killed, or an
    exit that skips the pool's shutdown): no worker outlives the command."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent ended before the request above took effect
        os._exit(1)


def _worker_task(index: int, path: str, size: int, buckets: Buckets) -> CaptureResult:
    queue = _WORKER["queue"]
    return prepare_capture(
        index,
        path,
        size,
        buckets=buckets,
        out=_WORKER["out"],
        labeller=_WORKER["labeller"],
        config=_WORKER["config"],
        keep_unlabelled=_WORKER["keep_unlabelled"],
        progress=queue.put if queue is not None else None,
        ahead=_WORKER["ahead"],
        addresses=_WORKER["addresses"],
    )


class _ProgressRelay:
    """Batches the reader's byte increments: sent at most every MiB, never past the size.

    Each of the processes sharing a file's ``buckets`` reports its share of what it
    reads, so that their reports add up to the file's size.
    """

    def __init__(
        self, send: Callable[[int], None] | None, size: int, buckets: Buckets = Buckets()
    ) -> None:
        self.send = send
        self.width, self.count = buckets.hi - buckets.lo, buckets.count
        self.size = size * buckets.hi // self.count - size * buckets.lo // self.count
        self.read = 0
        self.sent = 0

    def __call__(self, consumed: int) -> None:
        # The reader reports bytes of the file consumed since its previous call.
        self.read += max(int(consumed), 0)
        if self.send is not None and self._due() - self.sent >= PROGRESS_STEP:
            self.flush()

    def _due(self) -> int:
        return min(self.read * self.width // self.count, self.size)

    def flush(self) -> None:
        step = self._due() - self.sent
        if self.send is not None and step > 0:
            self.send(step)
        self.sent += max(step, 0)

    def finish(self) -> None:
        """Report the rest of the share, read or not, so the bar ends at 100 %."""
        step = self.size - self.sent
        if self.send is not None and step > 0:
            self.send(step)
        self.sent = self.size


def _count_packets(batches: Iterable, result: CaptureResult) -> Iterator:
    for batch in batches:
        result.packets += len(batch)
        yield batch


def _count_non_ip(flows, result: CaptureResult) -> None:
    """Add the assembler's counts of packets that entered no flow."""
    stats = getattr(flows, "stats", None)
    for name in ("non_ip", "unplaced_fragments"):
        value = getattr(stats, name, None)
        if isinstance(value, (int, np.integer)):
            result.non_ip[name] += int(value)


def prepare_capture(
    index: int,
    path: str | Path,
    size: int,
    *,
    out: str | Path,
    labeller: Labeller,
    config: FlowConfig,
    keep_unlabelled: bool = False,
    progress: Callable[[int], None] | None = None,
    ahead: bool = False,
    buckets: Buckets = Buckets(),
    addresses: AddressPolicy = AddressPolicy(),
) -> CaptureResult:
    """Stream one capture (the flows of ``buckets``) into part files of ``out``.

    Never raises for bad input: a problem reading the capture is recorded (file, offset,
    reason) and what was read before it is kept. Of the readers of one capture, the one
    holding bucket 0 records the reader's problems and counts packets. ``addresses``
    rewrites the address columns after labelling (:mod:`dmfnet.data.addresses`).
    """
    path = str(path)
    result = CaptureResult(index=index, path=path, size=size, buckets=buckets)
    relay = _ProgressRelay(progress, size, buckets)
    writers = _bucket_writers(out, index, buckets, ahead)
    try:
        log = result.problems if buckets.primary else ProblemLog()  # others: seen by primary
        packets = read_packets(path, log, progress=relay, read_ahead=ahead)
        if buckets.primary:
            packets = _count_packets(packets, result)
        packets = run_ahead(packets, depth=1 if ahead else 0, name="dmfnet-read")
        flows = assemble_flows(packets, config, capture=path, buckets=buckets)
        for chunk in flows:
            _add_chunk(chunk, path, labeller, keep_unlabelled, writers, result, addresses)
        _count_non_ip(flows, result)
    except OutputError:
        raise
    except MemoryError:
        result.problems.add(path, -1, "out of memory while reading; rest of capture skipped")
    except Exception as exc:  # a capture must never take the whole run down
        if os.environ.get("DMFNET_DEBUG"):
            raise
        result.problems.add(path, -1, f"cannot read: {type(exc).__name__}: {exc}")
    finally:
        relay.finish()
        try:
            result.parts = [p.name for w in writers.values() for p in w.close()]
        except OSError as exc:
            raise OutputError(f"cannot write flows to {out}: {exc}") from None
    return result


def _bucket_writers(
    out: str | Path, index: int, buckets: Buckets, background: bool
) -> dict[int, PartWriter]:
    """A writer for each bucket (one for a capture not split); bucket files have smaller
    row groups, so that the buckets of one process buffer no more than one writer would."""
    if buckets.count == 1:
        return {0: PartWriter(out, index, background=background)}
    rows = max(ROW_GROUP_ROWS // BUCKETS, 1)
    return {
        b: PartWriter(out, index, bucket=b, row_group_rows=rows, background=background)
        for b in range(buckets.lo, buckets.hi)
    }


def _add_chunk(
    chunk: dict,
    path: str,
    labeller: Labeller,
    keep_unlabelled: bool,
    writers: dict[int, PartWriter],
    result: CaptureResult,
    addresses: AddressPolicy = AddressPolicy(),
) -> None:
    labels = labeller.label_chunk(chunk, path)  # on the addresses as captured
    n = len(labels)
    result.flows += n
    if n == 0:
        return
    reasons = np.asarray(chunk.get("filter_reason", np.full(n, "", dtype=object))).astype(str)
    kept = reasons == ""
    named = np.where(labels == "", UNLABELLED, labels)
    if not kept.all():
        pairs = np.stack([reasons[~kept], named[~kept].astype(str)], axis=1)
        found, counts = np.unique(pairs, axis=0, return_counts=True)
        for (reason, label), count in zip(found.tolist(), counts.tolist(), strict=True):
            result.removed.setdefault(reason, Counter())[label] += count
    unlabelled = kept & (labels == "")
    result.unlabelled += int(unlabelled.sum())
    if keep_unlabelled:
        labels = named
    else:
        kept &= ~unlabelled
    if kept.any():
        try:
            _write_buckets(addresses.apply(chunk), labels, kept, writers)
        except OSError as exc:
            folder = next(iter(writers.values())).folder
            raise OutputError(f"cannot write flows to {folder}: {exc}") from None
        result.kept.update(labels[kept].tolist())


def _write_buckets(
    chunk: dict, labels: np.ndarray, kept: np.ndarray, writers: dict[int, PartWriter]
) -> None:
    """Write the kept flows of a chunk, each to the writer of its bucket."""
    if len(writers) == 1:
        writer = next(iter(writers.values()))
        if kept.all():  # the usual case: no copy of the chunk
            writer.write(chunk, labels)
        else:
            writer.write(take_rows(chunk, kept), labels[kept])
        return
    rows = np.flatnonzero(kept)
    rows = rows[np.argsort(chunk["bucket"][rows], kind="stable")]  # file order kept within
    bucket = chunk["bucket"][rows]
    names = sorted(writers)
    edges = np.searchsorted(bucket, [*names, names[-1] + 1])
    for name, lo, hi in zip(names, edges[:-1], edges[1:], strict=True):
        if hi > lo:
            writers[name].write(chunk, labels, rows[lo:hi])


# ------------------------------------------------------------------------------------------
# All captures


class _WorkerPool:
    """Worker processes for the captures, started before any thread of this process.

    Processes are forked at start (before the progress bar's and the queue reader's
    threads exist); workers send bytes read through a queue that feeds the bar.
    """

    def __init__(self, workers: int, init_args: tuple) -> None:
        """``init_args``: :func:`_init_worker`'s arguments but the queue."""
        self.ctx = mp.get_context("fork") if sys.platform == "linux" else mp.get_context()
        self.init_args = init_args
        self.out = Path(init_args[3])
        self.workers = workers
        self.queue = self.ctx.Queue()
        self._retries: set[ProcessPoolExecutor] = set()  # pools of tasks run again, alone
        self._stopping = False
        self._lock = threading.Lock()
        # The workers' garbage collections leave what exists now (modules, mostly) alone:
        # they neither walk it nor write to its pages, which fork shares with this process.
        gc.freeze()
        try:
            self.pool = self._pool(workers, self.queue)
            self.pool.submit(int).result()  # launches the worker processes now
        finally:
            gc.unfreeze()  # this process collects as before

    def _pool(self, workers: int, queue) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=workers,
            mp_context=self.ctx,
            initializer=_init_worker,
            initargs=(*self.init_args, queue, os.getpid()),
        )

    def stop(self) -> None:
        """End every worker process now, their tasks abandoned (Ctrl-C, an error): the
        workers ignore SIGINT and would otherwise finish their captures first."""
        with self._lock:
            self._stopping = True
            pools = [self.pool, *self._retries]
        for pool in pools:
            processes = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                with contextlib.suppress(OSError, ValueError):
                    process.kill()
            for process in processes:
                with contextlib.suppress(OSError, ValueError, AssertionError):
                    process.join(timeout=10)

    def run(self, tasks: list[_Task], bar) -> list[CaptureResult]:
        """Run the tasks, most bytes per process first; a dead worker fails only its task.

        A worker that dies (killed for memory, say) breaks the whole pool, and every task
        not finished fails with it; those tasks are run again, each alone in a fresh
        process (as many at once as there are workers), so that only a task that kills its
        process again is lost. A lost task's part files (perhaps unfinished) are removed.
        """

        def drain() -> None:
            while True:
                item = self.queue.get()
                if isinstance(item, str):  # the stop signal
                    return
                bar.update(item)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        results: list[CaptureResult] = []
        broken: list[_Task] = []
        try:
            order = sorted(
                tasks, key=lambda t: -t.size * (t.buckets.hi - t.buckets.lo) / t.buckets.count
            )
            futures = {self.pool.submit(_worker_task, *t): t for t in order}
            for future in as_completed(futures):
                try:
                    results.append(future.result())
                except BrokenProcessPool:
                    broken.append(futures[future])
        except BaseException:
            self.stop()
            raise
        finally:
            self.pool.shutdown(wait=True)
            self.queue.put("stop")
            reader.join(timeout=5)
        if broken:  # each in a process of its own, as many at once as there were workers
            broken.sort(key=lambda t: (t.index, t.buckets.lo))
            retry = ThreadPoolExecutor(self.workers, thread_name_prefix="dmfnet-retry")
            try:
                results += list(retry.map(self._run_alone, broken))
            except BaseException:
                self.stop()
                retry.shutdown(wait=True, cancel_futures=True)
                raise
            retry.shutdown(wait=True)
        if broken:  # the bar counted the broken tasks' bytes in part; retries count none
            bar.update(max((bar.total or 0) - bar.n, 0))
        return results

    def _run_alone(self, task: _Task) -> CaptureResult:
        failed = CaptureResult(task.index, task.path, task.size, task.buckets)
        with self._lock:
            if self._stopping:
                return failed
            pool = self._pool(1, None)
            self._retries.add(pool)
        _remove_parts(self.out, task)
        try:
            return pool.submit(_worker_task, *task).result()
        except BrokenProcessPool:
            failed.problems.add(task.path, -1, "worker process died (out of memory?)")
            _remove_parts(self.out, task)
            return failed
        finally:
            pool.shutdown(wait=True)
            self._retries.discard(pool)


def _remove_parts(out: Path, task: _Task) -> None:
    """Remove the part files a task may have written (it wrote them under its buckets)."""
    index, buckets = task.index, task.buckets
    if buckets.count == 1:
        patterns = [f"{part_stem(index)}-[0-9]*.parquet"]
    else:
        patterns = [f"{part_stem(index, b)}-*.parquet" for b in range(buckets.lo, buckets.hi)]
    for pattern in patterns:
        for path in out.glob(pattern):
            path.unlink(missing_ok=True)


class _Task(NamedTuple):
    """A worker's job: the flows of ``buckets`` of one capture."""

    index: int
    path: str
    size: int
    buckets: Buckets


def _plan(captures: list[tuple[int, str, int]], cores: int) -> list[_Task]:
    """The tasks for ``cores`` processes: one a capture, and a large capture's buckets
    shared among several processes while there are more cores than tasks (each such
    process reads all of the capture, so sharing pays only for otherwise idle cores)."""
    count = [BUCKETS if size >= SPLIT_MIN_BYTES else 1 for _, _, size in captures]
    shares = [1] * len(captures)
    for _ in range(cores - len(captures)):
        can = [i for i in range(len(captures)) if shares[i] < count[i]]
        if not can:
            break
        i = max(can, key=lambda i: (captures[i][2] / shares[i], -i))  # most bytes a process
        shares[i] += 1
    tasks = []
    for (index, path, size), n, k in zip(captures, count, shares, strict=True):
        bounds = [n * j // k for j in range(k + 1)]
        tasks += [
            _Task(index, path, size, Buckets(n, lo, hi)) for lo, hi in itertools.pairwise(bounds)
        ]
    return tasks


def _join_buckets(results: list[CaptureResult]) -> list[CaptureResult]:
    """One result a capture, from the results of the processes that shared it.

    Parts come bucket by bucket; the reader's problems and packet counts come from the
    process holding bucket 0, and other problems (a failure in one process) are added
    once each.
    """
    joined: list[CaptureResult] = []
    for r in sorted(results, key=lambda r: (r.index, r.buckets.lo)):
        if not joined or joined[-1].index != r.index:
            joined.append(r)
            continue
        into = joined[-1]
        into.packets += r.packets
        into.flows += r.flows
        into.kept.update(r.kept)
        for rule, per_class in r.removed.items():
            into.removed.setdefault(rule, Counter()).update(per_class)
        into.unlabelled += r.unlabelled
        into.non_ip.update(r.non_ip)
        seen = set(into.problems.problems)
        for problem in r.problems.problems:
            if problem not in seen:
                into.problems.add(problem.file, problem.offset, problem.reason)
        into.parts += r.parts
    return joined


def _sample_per_class(
    out: Path, parts: list[str], max_flows: int, seed: int
) -> tuple[dict[str, int], list[str]]:
    """Keep at most ``max_flows`` flows of each class (seeded), rewriting the part files.

    The sample depends only on the seed and the flows in file order, not on the number
    of workers that wrote them.
    """
    labels = [pq.ParquetFile(out / p).read([LABEL_COLUMN]).column(0).to_numpy() for p in parts]
    sizes = [len(x) for x in labels]
    every = np.concatenate(labels).astype(str) if labels else np.zeros(0, dtype=str)
    keep = np.ones(len(every), dtype=bool)
    rng = np.random.default_rng(seed)
    classes, codes = np.unique(every, return_inverse=True)
    for c in range(len(classes)):
        rows = np.flatnonzero(codes == c)
        if len(rows) > max_flows:
            keep[rows] = False
            keep[rng.choice(rows, size=max_flows, replace=False)] = True
    kept_parts = []
    start = 0
    for part, n in zip(parts, sizes, strict=True):
        mask = keep[start : start + n]
        start += n
        path = out / part
        if mask.all():
            kept_parts.append(part)
            continue
        if not mask.any():
            path.unlink()
            continue
        tmp = path.with_suffix(".tmp")
        source = pq.ParquetFile(path)
        writer = open_parquet_writer(tmp, source.schema_arrow)
        offset = 0
        for batch in source.iter_batches(batch_size=ROW_GROUP_ROWS):
            piece = mask[offset : offset + batch.num_rows]
            offset += batch.num_rows
            if piece.any():
                writer.write_batch(batch.filter(piece), row_group_size=ROW_GROUP_ROWS)
        writer.close()
        source.close()
        tmp.replace(path)
        kept_parts.append(part)
    counts = Counter(every[keep].tolist())
    return dict(counts), kept_parts


def _merge_small_parts(
    out: Path,
    parts: list[str],
    target_rows: int = ROW_GROUP_ROWS,
    small_rows: int = SMALL_PART_ROWS,
) -> list[str]:
    """Merge runs of consecutive small part files (many small captures) into larger ones.

    Thousands of tiny Parquet files are slow to open; consecutive parts of fewer than
    ``small_rows`` flows are rewritten into files of up to ``target_rows`` flows, each
    named after its first part, keeping row order. Larger parts are left untouched, so
    big captures cost nothing.
    """
    rows = {p: pq.ParquetFile(out / p).metadata.num_rows for p in parts}
    limit = min(small_rows, target_rows)
    groups: list[list[str]] = []
    for part in parts:
        small = rows[part] < limit
        if (
            small
            and groups
            and len(groups[-1])
            and _group_open(groups[-1], rows, limit, target_rows)
        ):
            groups[-1].append(part)
        else:
            groups.append([part])
    merged = []
    for group in groups:
        merged.append(group[0])
        if len(group) == 1:
            continue
        tables = [pq.ParquetFile(out / p).read() for p in group]  # read_table imports pandas
        schema = tables[0].schema
        if any(t.schema != schema for t in tables):  # differing widths: leave as they are
            merged.extend(group[1:])
            continue
        tmp = out / (group[0] + ".tmp")
        with open_parquet_writer(tmp, schema) as writer:
            writer.write_table(pa.concat_tables(tables), row_group_size=ROW_GROUP_ROWS)
        for p in group:
            (out / p).unlink()
        tmp.replace(out / group[0])
    return merged


def _group_open(group: list[str], rows: dict[str, int], limit: int, target_rows: int) -> bool:
    """A group still takes small parts: it holds only parts under ``limit`` and has room."""
    return all(rows[p] < limit for p in group) and sum(rows[p] for p in group) < target_rows


def _describe_labels(labeller: Labeller, keep_unlabelled: bool) -> dict:
    description = labeller.describe()
    description["keep_unlabelled"] = keep_unlabelled
    return description


def prepare(
    inputs: Sequence[str | Path] | str | Path,
    out: str | Path,
    *,
    labels: str | Path = "folder",
    workers: int | None = None,
    config: FlowConfig = FlowConfig(),
    max_flows_per_class: int | None = None,
    seed: int = 0,
    keep_unlabelled: bool = False,
    progress: bool = True,
    force: bool = False,
    warn: bool = True,
    addresses: str = "keep",
    address_key: str | bytes | None = None,
    cluster: Any = None,
) -> PrepareSummary:
    """Turn captures (files or folders) into a labelled Parquet flow dataset in ``out``.

    ``labels``: ``"folder"`` (parent folder name), ``"file"`` (file name without part
    suffix) or the path of a CSV of flows. ``workers``: cores to use (default: all);
    captures go to ``min(workers, captures)`` processes (this one when that is one), cores
    left over share the captures of at least ``SPLIT_MIN_BYTES`` by flow buckets, and a
    process with a second core to spare reads its capture one chunk ahead in a thread.
    The files written do not depend on ``workers``. ``addresses``: what the
    ``client_ip``/``server_ip`` columns hold, ``"keep"`` (as captured: anonymisation
    covers the byte columns only), ``"hash"`` (a keyed hash, HMAC-SHA256 with
    ``address_key`` or a random key that is not stored) or ``"drop"`` (empty); see
    :mod:`dmfnet.data.addresses`. Labels are found on the addresses as captured.
    Warnings go to stderr unless ``warn`` is off. Raises :class:`PrepareError` when
    nothing could be read or kept, or when ``out`` may not be written (see
    :mod:`dmfnet.outputs`: a folder that is not empty needs ``force``, and a finished
    dataset is replaced only with it). A run that fails or is interrupted leaves no
    dataset behind: no card and no part file in ``out``.

    ``cluster`` runs the same tasks on a Dask cluster instead of local processes
    (:mod:`dmfnet.data.cluster`): ``"local:N"`` for N worker processes on this machine, a
    scheduler address (``"tcp://HOST:8786"``), or a ``distributed.Client``; the captures
    and ``out`` must then be on storage every worker sees. The files written are the same.
    """
    started = time.monotonic()
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs:
        raise PrepareError("no input given")
    if max_flows_per_class is not None and max_flows_per_class < 1:
        raise PrepareError(f"max_flows_per_class must be at least 1, not {max_flows_per_class}")
    if workers is not None and workers < 1:
        raise PrepareError(f"workers must be at least 1, not {workers}")
    if cluster is not None:
        if workers is not None:
            raise PrepareError("give workers or a cluster, not both")
        from dmfnet.data import cluster as dask_cluster  # Dask: an optional extra

        dask_cluster.check_installed(cluster)
    try:
        address_policy = AddressPolicy.create(addresses, address_key)
    except ValueError as exc:
        raise PrepareError(str(exc)) from None
    labeller = make_labeller(labels)
    captures, skipped = find_captures(inputs)
    if not captures:
        raise PrepareError(
            f"no capture file among {len(inputs)} input(s)"
            + (f" ({len(skipped)} other file(s) skipped)" if skipped else "")
        )
    out = Path(out)
    try:
        output = outputs.open_output(out, outputs.DATASET, force=force)
    except outputs.OutputError as exc:
        raise PrepareError(str(exc)) from None
    stage = output.staging  # the parts are written here, and moved up when all are done
    pool = None
    stack = contextlib.ExitStack()  # the cluster client, when there is one
    try:
        sizes = []
        for path in captures:
            try:
                sizes.append(path.stat().st_size)
            except OSError:
                sizes.append(0)
        client = None
        if cluster is not None:
            client = stack.enter_context(dask_cluster.connect(cluster))
            cores = dask_cluster.worker_threads(client)
            relative = any(not p.is_absolute() for p in captures)
            dask_cluster.check_workers(client, stage.resolve(), relative)
        else:
            cores = workers or os.cpu_count() or 1
        tasks = _plan(
            [(i, str(p), s) for i, (p, s) in enumerate(zip(captures, sizes, strict=True))], cores
        )
        n_workers = min(cores, len(tasks))
        # A core to spare for each worker: reading runs one chunk ahead in a thread.
        ahead = cores >= 2 * n_workers and client is None

        if n_workers > 1 and client is None:
            pool = _WorkerPool(
                n_workers,
                (labeller, config, keep_unlabelled, str(stage), ahead, address_policy),
            )
        bar = byte_progress(sum(sizes), "prepare", enabled=progress)
        try:
            if client is not None:
                settings = (labeller, config, keep_unlabelled, str(stage.resolve()), address_policy)
                results = dask_cluster.run_tasks(client, tasks, settings, bar)
            elif pool is not None:
                results = pool.run(tasks, bar)
            else:
                results = [
                    prepare_capture(
                        t.index,
                        t.path,
                        t.size,
                        out=stage,
                        labeller=labeller,
                        config=config,
                        keep_unlabelled=keep_unlabelled,
                        progress=bar.update,
                        ahead=ahead,
                        buckets=t.buckets,
                        addresses=address_policy,
                    )
                    for t in tasks
                ]
        except OutputError as exc:
            raise PrepareError(str(exc)) from None
        finally:
            bar.close()
        stack.close()  # a local cluster's workers end here, before the parts are merged
        results = _join_buckets(results)

        card = _build_card(results, skipped, inputs, out, labeller, config, keep_unlabelled)
        card["parameters"].update(
            max_flows_per_class=max_flows_per_class,
            seed=seed,
            flow_buckets={"count": BUCKETS, "captures_from_bytes": SPLIT_MIN_BYTES},
            addresses=address_policy.describe(),
        )
        parts = [p for r in results for p in r.parts]
        written = {k: v["flows"] for k, v in card["classes"].items()}
        if max_flows_per_class is not None and parts:
            written, parts = _sample_per_class(stage, parts, max_flows_per_class, seed)
        parts = _merge_small_parts(stage, parts)
        for label, entry in card["classes"].items():
            entry["flows"] = int(written.get(label, 0))
        card["files"] = parts
        card["totals"]["flows_written"] = int(sum(written.values()))
        _raise_if_empty(results, card)
        card["elapsed_s"] = round(time.monotonic() - started, 3)
        with _interrupts_deferred():  # the dataset appears whole, or not at all
            for part in parts:
                (stage / part).replace(out / part)
            write_card(out, card)
            output.finish()
    except BaseException:
        if pool is not None:
            pool.stop()  # normally done already: the workers must end before the clean-up
        stack.close()  # the cluster's tasks are cancelled, a local cluster's workers end
        output.fail()
        raise
    summary = PrepareSummary(out=out, card=card)
    if warn:
        summary.print_warnings()
    return summary


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM (in the main thread) until the block is done, then deliver
    them: the few renames and the card that make the dataset are not cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if caught:
            signal.raise_signal(caught[0])


def _build_card(
    results: list[CaptureResult],
    skipped: list[Path],
    inputs: Sequence[str | Path],
    out: Path,
    labeller: Labeller,
    config: FlowConfig,
    keep_unlabelled: bool,
) -> dict:
    kept: Counter = Counter()
    removed: dict[str, Counter] = {}
    non_ip: Counter = Counter()
    problems = ProblemLog(limit=PROBLEMS_LISTED)
    for r in results:
        kept.update(r.kept)
        for rule, per_class in r.removed.items():
            removed.setdefault(rule, Counter()).update(per_class)
        non_ip.update(r.non_ip)
        problems.extend(r.problems)
    unlabelled = sum(r.unlabelled for r in results)
    ignore = () if keep_unlabelled else (UNLABELLED,)
    warnings = class_warnings(kept, removed, ignore=ignore)
    if unlabelled and not keep_unlabelled and unlabelled > sum(kept.values()):
        warnings.append(
            f"{unlabelled} flows matched no row of the label CSV and were left out "
            f"(more than the {sum(kept.values())} labelled ones)"
        )
    warnings += labeller.warnings()  # rows of a label CSV skipped as malformed
    failed = [r for r in results if r.failed]
    if failed:
        warnings.append(f"{len(failed)} of {len(results)} capture(s) could not be read at all")
    labels_seen = sorted(set(kept) | {lab for c in removed.values() for lab in c} - set(ignore))
    removed_total = sum(sum(c.values()) for c in removed.values())
    return {
        "format": "dmfnet-flow-dataset",
        "format_version": 1,
        "tool": {"name": "dmfnet", "version": __version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "parameters": {
            "flow_config": dataclasses.asdict(config),
            "labels": _describe_labels(labeller, keep_unlabelled),
        },
        "inputs": [str(p) for p in inputs],
        "captures": [
            {
                "path": r.path,
                "bytes": r.size,
                "packets": r.packets,
                "flow_buckets": r.buckets.count,
                "flows_assembled": r.flows,
                "flows_removed": int(sum(sum(c.values()) for c in r.removed.values())),
                "flows_kept": int(sum(r.kept.values())),
                "problems": r.problems.total,
            }
            for r in results
        ],
        "skipped_files": {"count": len(skipped), "first": [str(p) for p in skipped[:20]]},
        "classes": {
            label: {"flows": int(kept.get(label, 0)), "before_sampling": int(kept.get(label, 0))}
            for label in labels_seen
        },
        "removed": {rule: dict(sorted(c.items())) for rule, c in sorted(removed.items())},
        "unlabelled": {"flows": int(unlabelled), "kept": bool(keep_unlabelled)},
        "non_ip_packets": {
            "total": int(non_ip.get("non_ip", 0)),
            "unplaced_fragments": int(non_ip.get("unplaced_fragments", 0)),
        },
        "problems": problems.to_json(),
        "totals": {
            "captures": len(results),
            "captures_failed": len(failed),
            "bytes": int(sum(r.size for r in results)),
            "packets": int(sum(r.packets for r in results)),
            "flows_assembled": int(sum(r.flows for r in results)),
            "flows_removed": int(removed_total),
            "flows_unlabelled": int(unlabelled),
            "flows_kept": int(sum(kept.values())),
            "flows_written": int(sum(kept.values())),
        },
        "warnings": warnings,
    }


def _raise_if_empty(results: list[CaptureResult], card: dict) -> None:
    """One clear line when the run produced nothing usable."""
    n = len(results)
    totals = card["totals"]
    if totals["flows_written"] > 0:
        return
    if all(r.failed for r in results):
        first = next(str(p) for r in results for p in r.problems.problems[:1])
        raise PrepareError(f"no readable capture among {n} input(s): {first}")
    if totals["packets"] == 0:
        raise PrepareError(f"no packets in {n} capture(s) (all empty or unreadable)")
    removed = ", ".join(
        f"{rule} {sum(c.values())}" for rule, c in card["removed"].items() if sum(c.values())
    )
    why = f"{totals['flows_assembled']} flow(s) assembled"
    if removed:
        why += f", removed by filters: {removed}"
    if totals["flows_unlabelled"] and not card["unlabelled"]["kept"]:
        why += f", {totals['flows_unlabelled']} unlabelled (left out)"
    first = next((str(p) for r in results for p in r.problems.problems[:1]), None)
    if first:
        why += f"; first problem: {first}"
    raise PrepareError(f"no flows kept from {n} capture(s): {why}")
