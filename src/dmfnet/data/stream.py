"""A prepared dataset read as it is needed: training on datasets larger than memory.

:func:`~dmfnet.data.dataset.load_dataset` reads every flow into memory; a dataset of tens
of millions of flows (1.6 kB of bytes each) does not fit. :func:`open_streamed` reads only
the key columns (the label, and the capture for a split by file), so splits, class
statistics and class selection work as they do in memory; the model inputs stay in the
Parquet files and are read a row group at a time:

- :meth:`StreamedDataset.digests` hashes the inputs row group by row group, so that test
  flows duplicating a training flow are found with 16 bytes a flow in memory;
- :meth:`StreamedDataset.epoch_order` shuffles a split across row groups (their order)
  and within a buffer (the flows of consecutive row groups, ``buffer_flows`` at least):
  every flow once an epoch, the same order for the same random generator state. When the
  buffer holds the whole split the order is the in-memory path's permutation, draw for
  draw, so a small dataset trains the same way on both paths;
- :meth:`StreamedDataset.read` yields the inputs of a sequence of flows in that order,
  one buffer of row groups decoded at a time, the next one read ahead in a thread.

Memory then grows with the buffer and the key columns (about 25 bytes a flow), not with
the byte columns.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dmfnet.background import run_ahead
from dmfnet.data.dataset import (
    LABEL_COLUMN,
    _strings_to_numpy,
    column_to_numpy,
    dataset_files,
    schema_widths,
)
from dmfnet.flows.schema import SCALAR_COLUMNS, SEQUENCE_COLUMNS

BUFFER_FLOWS = 65_536  # flows shuffled together: about 110 MB of DMF's inputs
LOADERS = ("auto", "memory", "stream")
# ``auto`` streams when the model inputs would take more than this share of the machine's
# memory: the in-memory path holds them, and copies the test flows (and a class subset).
STREAM_ABOVE_MEMORY_SHARE = 0.25


@dataclass
class StreamedDataset:
    """The flows of a prepared dataset, key columns in memory, inputs on disk.

    Indexed like a :class:`~dmfnet.data.dataset.FlowDataset`: flow ``i`` of this view is
    row ``rows[i]`` of the dataset's files (in file order); ``take`` gives a view of some
    flows without reading anything. ``groups`` lists every row group: file index, group
    index within the file, first row and row count.
    """

    files: list[Path]
    groups: np.ndarray  # (G, 4) int64: file, group in file, first row, rows
    rows: np.ndarray  # (N,) int64 rows of the files, increasing
    labels: np.ndarray  # (N,) str
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # key columns only
    classes: list[str] = field(default_factory=list)
    y: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    card: dict = field(default_factory=dict)
    path: str = ""

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def take(self, rows: np.ndarray) -> StreamedDataset:
        """The flows at ``rows`` (increasing); class names and codes stay the dataset's."""
        rows = np.asarray(rows)
        return StreamedDataset(
            files=self.files,
            groups=self.groups,
            rows=self.rows[rows],
            labels=self.labels[rows],
            columns={k: v[rows] for k, v in self.columns.items()},
            classes=list(self.classes),
            y=self.y[rows],
            card=self.card,
            path=self.path,
        )

    def group_of(self, flows: np.ndarray) -> np.ndarray:
        """The row group (index into ``groups``) holding each of ``flows``."""
        return np.searchsorted(self.groups[:, 2], self.rows[flows], side="right") - 1

    # ------------------------------------------------------------------ reading inputs

    def read(
        self,
        flows: np.ndarray,
        columns: Sequence[str],
        *,
        windows: np.ndarray | None = None,
        ahead: int = 1,
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """``(flows, inputs)`` pieces covering ``flows`` in order: one piece a buffer.

        ``windows`` (from :meth:`epoch_order`) says which flows are read together: a new
        piece starts where it changes; without it, flows are cut where they leave a
        ``BUFFER_FLOWS`` run of row groups. Each piece's row groups are decoded once;
        with ``ahead`` the next piece is read in a thread while the caller works.
        """
        flows = np.asarray(flows, dtype=np.int64)
        if windows is None:
            windows = self._sequential_windows(flows)
        cuts = np.flatnonzero(np.diff(windows)) + 1
        bounds = [0, *cuts.tolist(), len(flows)]
        pieces = (flows[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a)
        reader = _GroupReader(self, list(columns))
        return run_ahead((reader.gather(p) for p in pieces), depth=ahead, name="dmfnet-stream")

    def _sequential_windows(self, flows: np.ndarray) -> np.ndarray:
        """Windows for reading ``flows`` in the given order: a new one after each run of
        row groups holding ``BUFFER_FLOWS`` of them (a changed group counts as a new run
        when the flows go back)."""
        if len(flows) == 0:
            return np.zeros(0, dtype=np.int64)
        groups = self.group_of(flows)
        starts = np.r_[True, groups[1:] != groups[:-1]]
        run_of = np.cumsum(starts) - 1
        sizes = np.bincount(run_of)
        window_of_run = _windows_of(sizes, BUFFER_FLOWS)
        return window_of_run[run_of]

    def digests(self, columns: Sequence[str]) -> np.ndarray:
        """A 128-bit hash of the model inputs ``columns`` of every flow, as ``S16``: the
        comparison :func:`~dmfnet.data.splits.drop_test_duplicates` makes, in bounded
        memory (:func:`~dmfnet.data.splits.row_digests` of each row group)."""
        from dmfnet.data.splits import row_digests

        out = np.empty(len(self), dtype="S16")
        every = np.arange(len(self), dtype=np.int64)
        for flows, inputs in self.read(every, columns):
            out[flows] = row_digests(inputs, np.arange(len(flows)))
        return out

    def epoch_order(
        self, flows: np.ndarray, rng: np.random.Generator, buffer_flows: int = BUFFER_FLOWS
    ) -> tuple[np.ndarray, np.ndarray]:
        """``flows`` shuffled for one epoch, and the buffer (window) each is read in.

        With more flows than ``buffer_flows`` the row groups holding them are taken in a
        random order, cut into windows of at least ``buffer_flows`` flows, and the flows
        of each window are shuffled; otherwise the order is ``rng.permutation(flows)``,
        the in-memory path's. Every flow appears once.
        """
        flows = np.asarray(flows, dtype=np.int64)
        if len(flows) <= buffer_flows:
            return rng.permutation(flows), np.zeros(len(flows), dtype=np.int64)
        groups = self.group_of(flows)
        present, counts = np.unique(groups, return_counts=True)
        rank = np.empty(len(present), dtype=np.int64)
        rank[rng.permutation(len(present))] = np.arange(len(present))
        window_of_rank = _windows_of(counts[np.argsort(rank)], buffer_flows)
        window = window_of_rank[rank[np.searchsorted(present, groups)]]
        order = np.lexsort((rng.random(len(flows)), window))  # by window, shuffled inside
        return flows[order], window[order]


def _windows_of(sizes: np.ndarray, buffer_flows: int) -> np.ndarray:
    """Consecutive runs of ``sizes`` numbered into windows of at least ``buffer_flows``
    (the last may hold fewer)."""
    before = np.cumsum(sizes) - sizes
    return (before // max(buffer_flows, 1)).astype(np.int64)


class _GroupReader:
    """Decodes the row groups of a piece of flows and gathers the flows' inputs in order."""

    def __init__(self, dataset: StreamedDataset, columns: list[str]) -> None:
        self.dataset = dataset
        self.columns = columns
        self.handles: dict[int, pq.ParquetFile] = {}

    def gather(self, flows: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The inputs of ``flows``, in their order: their row groups are decoded one at a
        time and each one's flows copied into place (memory: the piece and one group)."""
        ds = self.dataset
        groups = ds.group_of(flows)
        by_group = np.argsort(groups, kind="stable")
        ordered = groups[by_group]
        bounds = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1], True])
        inputs: dict[str, np.ndarray] = {}
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            g = int(ordered[lo])
            file, index, first, _ = ds.groups[g].tolist()
            table = self._file(file).read_row_group(index, columns=self.columns)
            at = by_group[lo:hi]  # where these flows go in the piece
            local = ds.rows[flows[at]] - first  # and where they are in the row group
            for name in self.columns:
                values = column_to_numpy(name, table.column(name))
                if name not in inputs:
                    inputs[name] = np.empty((len(flows), *values.shape[1:]), values.dtype)
                inputs[name][at] = values[local]
        return flows, inputs

    def _file(self, index: int) -> pq.ParquetFile:
        if index not in self.handles:
            self.handles[index] = pq.ParquetFile(self.dataset.files[index])
        return self.handles[index]


def open_streamed(path: str | Path, key_columns: Sequence[str] = ()) -> StreamedDataset:
    """A prepared dataset with its labels and ``key_columns`` (scalar columns such as
    ``capture``) in memory, read row group by row group; no byte column is read."""
    files, card = dataset_files(path)
    bad = [c for c in key_columns if c not in SCALAR_COLUMNS]
    if bad:
        raise ValueError(f"key columns are scalar columns; not {', '.join(bad)}")
    groups: list[tuple[int, int, int, int]] = []
    labels: list[np.ndarray] = []
    keys: dict[str, list[np.ndarray]] = {c: [] for c in key_columns}
    start = 0
    widths = None
    for f, file in enumerate(files):
        handle = pq.ParquetFile(file)
        these = schema_widths(handle.schema_arrow)
        if widths is not None and these != widths:
            raise ValueError(f"{file}: sequence widths differ from {files[0].name}'s")
        widths = these
        for g in range(handle.num_row_groups):
            table = handle.read_row_group(g, columns=[LABEL_COLUMN, *key_columns])
            groups.append((f, g, start, table.num_rows))
            start += table.num_rows
            labels.append(_strings_to_numpy(table.column(LABEL_COLUMN)))
            for name in key_columns:
                keys[name].append(column_to_numpy(name, table.column(name)))
    every = np.concatenate(labels).astype(str) if labels else np.zeros(0, dtype=str)
    classes, y = np.unique(every, return_inverse=True)
    return StreamedDataset(
        files=files,
        groups=np.array(groups, dtype=np.int64).reshape(-1, 4),
        rows=np.arange(start, dtype=np.int64),
        labels=every,
        columns={
            k: np.concatenate(v) if v else np.zeros(0, dtype=object) for k, v in keys.items()
        },
        classes=[str(c) for c in classes],
        y=y.astype(np.int64).reshape(-1),
        card=card,
        path=str(path),
    )


def input_bytes(path: str | Path, columns: Sequence[str]) -> int:
    """What the model inputs ``columns`` of a prepared dataset take in memory, from the
    files' metadata (row counts and widths) alone."""
    files, _ = dataset_files(path)
    total = 0
    for file in files:
        meta = pq.ParquetFile(file)
        widths = schema_widths(meta.schema_arrow)
        per_flow = 0
        for name in columns:
            if name in SEQUENCE_COLUMNS:
                dtype, width = SEQUENCE_COLUMNS[name]
                per_flow += np.dtype(dtype).itemsize * widths.get(name, width)
            elif SCALAR_COLUMNS.get(name) not in (None, "str"):
                per_flow += np.dtype(SCALAR_COLUMNS[name]).itemsize
            else:
                per_flow += 8  # a reference to a shared string
        total += per_flow * meta.metadata.num_rows
    return total


def machine_memory() -> int:
    """This machine's physical memory in bytes (0 when the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def choose_loader(loader: str, path: str | Path | None, columns: Sequence[str]) -> str:
    """``"memory"`` or ``"stream"`` for ``loader`` (``"auto"``: stream a dataset on disk
    whose inputs, once per training process of this machine, would take more than
    ``STREAM_ABOVE_MEMORY_SHARE`` of its memory)."""
    if loader not in LOADERS:
        raise ValueError(f"loader must be one of {', '.join(LOADERS)}, not {loader!r}")
    if path is None:
        if loader == "stream":
            raise ValueError("the streaming loader reads a prepared dataset's files; give its path")
        return "memory"
    if loader != "auto":
        return loader
    memory = machine_memory()
    # Under torchrun every process of this machine would hold its own copy.
    copies = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
    if memory and copies * input_bytes(path, columns) > STREAM_ABOVE_MEMORY_SHARE * memory:
        return "stream"
    return "memory"
