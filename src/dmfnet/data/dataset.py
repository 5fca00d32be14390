"""The flow dataset on disk (Parquet, one row per flow) and in memory (numpy arrays).

On disk every column of :mod:`dmfnet.flows.schema` plus ``label`` is a plain Parquet type
that pandas, polars, DuckDB and Spark read: ``uint8`` sequences (``bytes``,
``payload_packet_bytes``, ``flow_head``, ``payload_head``) as fixed-size binary, numeric
sequences as lists, ``start_time``/``end_time`` as timestamps (microseconds, UTC), other
scalars as they are. The schema's optional columns
(``OPTIONAL_COLUMNS``, e.g. ``payload_packet_bytes``) are written when the flows have them
(a flow setting can leave them out). In memory a :class:`FlowDataset` holds 2-D arrays for
sequences (``bytes`` is uint8 ``(N, 1600)``) and 1-D arrays for scalars, built without a
Python loop over rows.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dmfnet.flows.schema import (
    LABEL_COLUMN,
    OPTIONAL_COLUMNS,
    SCALAR_COLUMNS,
    SEQUENCE_COLUMNS,
)
from dmfnet.memory import page_slabs

# The card is named so that Parquet readers pass over it (Arrow, pandas and Spark skip
# names starting with "_" or "."), and a reader of the whole folder reads the parts only;
# datasets made before it was renamed have ``dataset.json``, which is read as well.
CARD_NAME = "_dataset.json"
LEGACY_CARD_NAME = "dataset.json"
PART_GLOB = "part-*.parquet"
PARQUET_COMPRESSION = "snappy"  # cheapest to write and read; every Parquet reader has it
ROW_GROUP_ROWS = 16384  # flows per Parquet row group (about 70 MB before compression)
PART_ROWS = 1_000_000  # flows per part file before a new one is started

_STRING = "str"
# Byte strings of packets: fixed-size binary on disk; other sequences are lists of numbers.
BINARY_COLUMNS = ("bytes", "payload_packet_bytes", "flow_head", "payload_head")

# Flow times: float64 epoch seconds in memory (flow assembly's values, from which models
# compute durations); on disk Arrow/Parquet timestamps in microseconds, UTC, so that
# readers see times (float64 seconds carry about 0.24 µs at today's dates: microseconds
# keep all of it). Datasets written with float64 seconds load as before.
TIME_COLUMNS = ("start_time", "end_time")
TIME_TYPE = pa.timestamp("us", tz="UTC")
_TIME_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


WIDTHS_KEY = b"dmfnet.widths"  # Parquet schema metadata: values per row of each sequence


def default_widths() -> dict[str, int]:
    """Values per row of each sequence column with the default flow parameters."""
    return {name: width for name, (_, width) in SEQUENCE_COLUMNS.items()}


def _arrow_type(name: str, widths: Mapping[str, int]) -> pa.DataType:
    if name == LABEL_COLUMN:
        return pa.string()
    if name in SEQUENCE_COLUMNS:
        dtype, _ = SEQUENCE_COLUMNS[name]
        if name in BINARY_COLUMNS:
            return pa.binary(widths[name])
        return pa.list_(pa.from_numpy_dtype(np.dtype(dtype)))
    if name in TIME_COLUMNS:
        return TIME_TYPE
    dtype = SCALAR_COLUMNS[name]
    if dtype == _STRING:
        return pa.string()
    return pa.from_numpy_dtype(np.dtype(dtype))


def arrow_schema(widths: Mapping[str, int] | None = None, omit: Collection[str] = ()) -> pa.Schema:
    """Arrow schema of a dataset part: ``label``, the scalar columns, the sequence columns.

    ``widths`` (values per row of each sequence column; default: the schema's) are kept
    in the schema metadata so readers know them before reading a row. ``omit``: optional
    columns (:data:`~dmfnet.flows.schema.OPTIONAL_COLUMNS`) the part does not have.
    """
    bad = [c for c in omit if c not in OPTIONAL_COLUMNS]
    if bad:
        raise ValueError(f"column(s) {', '.join(bad)} cannot be left out")
    widths = {k: v for k, v in {**default_widths(), **(widths or {})}.items() if k not in omit}
    names = [LABEL_COLUMN, *SCALAR_COLUMNS, *(c for c in SEQUENCE_COLUMNS if c not in omit)]
    fields = [pa.field(n, _arrow_type(n, widths), nullable=False) for n in names]
    return pa.schema(fields, metadata={WIDTHS_KEY: json.dumps(widths).encode()})


def schema_widths(schema: pa.Schema) -> dict[str, int]:
    """Sequence widths recorded in a dataset file's schema (the defaults when absent)."""
    widths = default_widths()
    meta = schema.metadata or {}
    if WIDTHS_KEY in meta:
        widths.update({k: int(v) for k, v in json.loads(meta[WIDTHS_KEY]).items()})
    for name in BINARY_COLUMNS:
        if name in schema.names and pa.types.is_fixed_size_binary(schema.field(name).type):
            widths[name] = schema.field(name).type.byte_width
    return widths


# ------------------------------------------------------------------------------------------
# numpy -> Arrow


def _primitive_array(values: np.ndarray) -> pa.Array:
    """A 1-D numeric or bool numpy array as an Arrow array, built from its buffer.

    ``pa.array`` is avoided on the writing path: its first call imports pandas when pandas
    is installed (0.2-0.4 s of start-up that writing a dataset never needs).
    """
    values = np.ascontiguousarray(values)
    if values.dtype == np.bool_:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    arrow_type = pa.from_numpy_dtype(values.dtype)
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


def _string_array(values: np.ndarray) -> pa.Array:
    """A 1-D array of strings as an Arrow string array (UTF-8), without ``pa.array``.

    Each distinct string is encoded once (a chunk holds few: labels, capture names,
    addresses) into a dictionary that Arrow then expands, row by row, in C++.
    """
    first: dict = {}  # each distinct value, numbered as met (a dict: no sort of strings)
    items = values.tolist()
    codes = np.fromiter((first.setdefault(v, len(first)) for v in items), np.int32, len(items))
    encoded = [str(s).encode("utf-8", "backslashreplace") for s in first]
    sizes = np.array([len(e) for e in encoded], np.int64)
    if len(items) and int(sizes[codes].sum()) > np.iinfo(np.int32).max:
        raise ValueError("a string column of one chunk exceeds 2 GiB")
    offsets = np.zeros(len(encoded) + 1, np.int32)
    np.cumsum(sizes, out=offsets[1:])
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    dictionary = pa.Array.from_buffers(pa.string(), len(encoded), buffers)
    indices = pa.Array.from_buffers(pa.int32(), len(items), [None, pa.py_buffer(codes)])
    return pa.DictionaryArray.from_arrays(indices, dictionary).dictionary_decode()


def _to_arrow(name: str, values: np.ndarray | str, n: int) -> pa.Array:
    """One column of a chunk as an Arrow array of the dataset type (zero-copy where possible)."""
    if name in SEQUENCE_COLUMNS:
        dtype, _ = SEQUENCE_COLUMNS[name]
        matrix = np.ascontiguousarray(np.asarray(values), dtype=dtype)
        if matrix.ndim != 2 or len(matrix) != n:
            raise ValueError(f"column {name!r}: shape {matrix.shape}, expected ({n}, width)")
        width = matrix.shape[1]
        if name in BINARY_COLUMNS:
            return pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(width), n, [None, pa.py_buffer(matrix)]
            )
        offsets = _primitive_array(np.arange(0, n * width + 1, width, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, _primitive_array(matrix.reshape(-1)))
    if name == LABEL_COLUMN or SCALAR_COLUMNS[name] == _STRING:
        if isinstance(values, str):
            return _string_array(np.full(n, values, dtype=object))
        array = np.asarray(values)
        if array.shape != (n,):
            raise ValueError(f"column {name!r}: shape {array.shape}, expected ({n},)")
        return _string_array(array)
    array = np.asarray(values, dtype=SCALAR_COLUMNS[name])
    if array.shape != (n,):
        raise ValueError(f"column {name!r}: shape {array.shape}, expected ({n},)")
    if name in TIME_COLUMNS:  # epoch seconds -> integer microseconds
        micros = np.rint(array * 1e6).astype(np.int64)
        return pa.Array.from_buffers(TIME_TYPE, n, [None, pa.py_buffer(micros)])
    return _primitive_array(array)


def _check_columns(flows: Mapping[str, np.ndarray]) -> list[str]:
    """Raise for a missing column that is not optional; return the optional ones missing."""
    missing = [c for c in (*SCALAR_COLUMNS, *SEQUENCE_COLUMNS) if c not in flows]
    required = [c for c in missing if c not in OPTIONAL_COLUMNS]
    if required:
        raise ValueError(f"flow chunk lacks column(s): {', '.join(required)}")
    return missing


def flows_to_table(flows: Mapping[str, np.ndarray], labels: np.ndarray | str) -> pa.Table:
    """Flow arrays (the schema's columns, any row count; optional ones may be left out) and
    their labels -> an Arrow table."""
    n = _row_count(flows)
    omit = _check_columns(flows)
    widths = {name: int(np.shape(flows[name])[-1]) for name in SEQUENCE_COLUMNS if name in flows}
    schema = arrow_schema(widths, omit)
    arrays = [_to_arrow(LABEL_COLUMN, labels, n)]
    arrays += [_to_arrow(f.name, flows[f.name], n) for f in schema if f.name != LABEL_COLUMN]
    return pa.Table.from_arrays(arrays, schema=schema)


def _row_count(flows: Mapping[str, np.ndarray]) -> int:
    for name in ("protocol", "bytes", "lengths"):
        if name in flows:
            return len(flows[name])
    raise ValueError("flow chunk has no 'protocol' column")


def take_rows(flows: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The flows at ``rows`` (index or boolean mask) of every array column."""
    out = {}
    for name, values in flows.items():
        if isinstance(values, np.ndarray) and values.ndim >= 1:
            out[name] = values[rows]
        else:
            out[name] = values
    return out


def part_stem(index: int, bucket: int | None = None) -> str:
    """How the part files of capture ``index`` (of one of its flow buckets) are named."""
    return f"part-{index:06d}" + ("" if bucket is None else f"-b{bucket:02d}")


class PartWriter:
    """Writes one capture's flows to ``part-<index>-<seq>.parquet`` files, streaming.

    Flows are copied into a row group's worth of numpy columns and written when it is
    full, so memory stays bounded whatever the capture size and each row group is turned
    into Arrow once, however small the pieces handed in; a new part file starts every
    ``part_rows`` flows. Row groups are cut every ``row_group_rows`` flows, so the files
    depend on the flows written, not on how they were handed in. A writer for one
    ``bucket`` of a capture's flows names its files ``part-<index>-b<bucket>-<seq>.parquet``.
    Nothing is created for a capture without flows. With ``background`` a thread encodes
    and writes each full row group while the caller fills the next (one row group in
    flight at most); a write error is raised by the next ``write`` or by ``close``.
    """

    def __init__(
        self,
        folder: str | Path,
        index: int,
        *,
        bucket: int | None = None,
        row_group_rows: int = ROW_GROUP_ROWS,
        part_rows: int = PART_ROWS,
        background: bool = False,
    ) -> None:
        if row_group_rows < 1 or part_rows < 1:
            raise ValueError("row_group_rows and part_rows must be at least 1")
        self.folder = Path(folder)
        self.index = index
        self.stem = part_stem(index, bucket)
        self.row_group_rows = row_group_rows
        self.part_rows = part_rows
        self.paths: list[Path] = []
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._part_rows = 0
        # The row group being filled, and a second one for the row group in flight.
        self._buffer: dict[str, np.ndarray] | None = None
        self._spare: dict[str, np.ndarray] | None = None
        self._buffered = 0
        self._thread: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        if background:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="dmfnet-write")

    def write(
        self,
        flows: Mapping[str, np.ndarray],
        labels: np.ndarray | str,
        rows: np.ndarray | None = None,
    ) -> None:
        """Append flows (already filtered) with their labels; with ``rows``, the flows at
        those row indices only, in that order (copied once, into the row group)."""
        columns = _writable_columns(flows, labels)
        n = len(columns[LABEL_COLUMN]) if rows is None else len(rows)
        if self._buffer is None:
            self._buffer = self._allocate(columns)
        if columns.keys() != self._buffer.keys():
            raise ValueError("flow chunks of one capture differ in columns")
        widths = {k: v.shape[1] for k, v in self._buffer.items() if v.ndim == 2}
        if any(columns[k].shape[1] != w for k, w in widths.items()):
            raise ValueError("flow chunks of one capture differ in sequence widths")
        start = 0
        while start < n:
            take = min(self.row_group_rows - self._buffered, n - start)
            at = slice(self._buffered, self._buffered + take)
            for name, buffer in self._buffer.items():
                if rows is None:
                    buffer[at] = columns[name][start : start + take]
                else:  # straight into the row group: no temporary copy of the rows
                    np.take(columns[name], rows[start : start + take], 0, buffer[at], "clip")
            self._buffered += take
            self.rows += take
            start += take
            if self._buffered == self.row_group_rows:
                self._flush()

    def _allocate(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Empty row-group columns; the numeric ones are slabs of one block of memory
        (several MiB: filled with a tenth of the page faults, see :mod:`dmfnet.memory`)."""
        layout = {
            name: ((self.row_group_rows, *values.shape[1:]), _column_dtype(name))
            for name, values in columns.items()
        }
        numeric = page_slabs({k: v for k, v in layout.items() if not v[1].hasobject})
        return {k: numeric[k] if k in numeric else np.empty(*layout[k]) for k in layout}

    def _flush(self) -> None:
        """Write the rows buffered (a full row group, or the last one at ``close``)."""
        if not self._buffered:
            return
        filled = {name: values[: self._buffered] for name, values in self._buffer.items()}
        table = flows_to_table(filled, filled[LABEL_COLUMN])
        self._buffered = 0
        self._wait()  # the spare buffer is free once the row group in flight is written
        if self._thread is None:
            self._write_out(table)
        else:
            self._pending = self._thread.submit(self._write_out, table)
            if self._spare is None:
                self._spare = self._allocate(self._buffer)
            self._buffer, self._spare = self._spare, self._buffer

    def _wait(self) -> None:
        """Wait for the row group in flight; raise its error, if any."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _write_out(self, table: pa.Table) -> None:
        start = 0
        while start < table.num_rows:
            if self._writer is None or self._part_rows >= self.part_rows:
                self._open_next(table.schema)
            room = self.part_rows - self._part_rows
            piece = table.slice(start, room)
            self._writer.write_table(piece, row_group_size=self.row_group_rows)
            self._part_rows += piece.num_rows
            start += piece.num_rows

    def _open_next(self, schema: pa.Schema) -> None:
        if self._writer is not None:
            self._writer.close()
        path = self.folder / f"{self.stem}-{len(self.paths):03d}.parquet"
        self._writer = open_parquet_writer(path, schema)
        self.paths.append(path)
        self._part_rows = 0

    def close(self) -> list[Path]:
        """Flush what is buffered and close; returns the part files written."""
        try:
            self._flush()
            self._wait()
        finally:
            if self._thread is not None:
                self._thread.shutdown(wait=True)
                self._thread = None
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        return self.paths


def _column_dtype(name: str) -> np.dtype:
    if name in SEQUENCE_COLUMNS:
        return np.dtype(SEQUENCE_COLUMNS[name][0])
    if name == LABEL_COLUMN or SCALAR_COLUMNS[name] == _STRING:
        return np.dtype(object)
    return np.dtype(SCALAR_COLUMNS[name])


def _writable_columns(
    flows: Mapping[str, np.ndarray], labels: np.ndarray | str
) -> dict[str, np.ndarray]:
    """The schema's columns of a chunk (optional ones when it has them) and its labels,
    checked for presence and shape."""
    n = _row_count(flows)
    omit = _check_columns(flows)
    columns = {
        LABEL_COLUMN: np.full(n, labels, dtype=object)
        if isinstance(labels, str)
        else np.asarray(labels)
    }
    for name in (*SCALAR_COLUMNS, *SEQUENCE_COLUMNS):
        if name in omit:
            continue
        values = np.asarray(flows[name])
        want = 2 if name in SEQUENCE_COLUMNS else 1
        if values.ndim != want or len(values) != n:
            raise ValueError(f"column {name!r}: shape {values.shape}, expected {n} rows")
        columns[name] = values
    if columns[LABEL_COLUMN].shape != (n,):
        raise ValueError(f"labels: shape {columns[LABEL_COLUMN].shape}, expected ({n},)")
    return columns


def open_parquet_writer(path: str | Path, schema: pa.Schema | None = None) -> pq.ParquetWriter:
    """A Parquet writer with the dataset's schema and settings (plain types, snappy)."""
    strings = [LABEL_COLUMN] + [n for n, t in SCALAR_COLUMNS.items() if t == _STRING]
    return pq.ParquetWriter(
        str(path),
        schema if schema is not None else arrow_schema(),
        compression=PARQUET_COMPRESSION,
        use_dictionary=strings,
        write_statistics=[LABEL_COLUMN, *[n for n in SCALAR_COLUMNS]],
        # The C library's allocator: it reuses the memory numpy has just freed, where
        # Arrow's own (mimalloc) takes fresh pages (preparing a 200 MB capture on one core:
        # 12 % less time, half the system time).
        memory_pool=pa.system_memory_pool(),
    )


# ------------------------------------------------------------------------------------------
# Parquet -> numpy


@dataclass
class FlowDataset:
    """Flows as numpy arrays: ``columns`` by schema name, plus labels and class codes.

    ``classes`` are the sorted class names and ``y`` each flow's index into them; ``card``
    is the dataset's card, ``_dataset.json`` (empty when there is none).
    """

    columns: dict[str, np.ndarray]
    labels: np.ndarray  # (N,) str
    classes: list[str] = field(default_factory=list)
    y: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (N,)
    card: dict = field(default_factory=dict)
    path: str = ""  # where it was loaded from ("" when built in memory)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def take(self, rows: np.ndarray) -> FlowDataset:
        """The flows at ``rows``; class names and codes stay those of the whole dataset."""
        return FlowDataset(
            columns={k: v[rows] for k, v in self.columns.items()},
            labels=self.labels[rows],
            classes=list(self.classes),
            y=self.y[rows],
            card=self.card,
            path=self.path,
        )


def card_path(folder: str | Path) -> Path | None:
    """The card of a dataset folder (``_dataset.json``, or ``dataset.json`` of a dataset
    made before the rename), or None when it has none."""
    folder = Path(folder)
    for name in (CARD_NAME, LEGACY_CARD_NAME):
        if (folder / name).is_file():
            return folder / name
    return None


def no_card_message(folder: str | Path) -> str:
    """Why a folder without a card is not a dataset (an unfinished one says so)."""
    from dmfnet.outputs import unfinished_note

    note = unfinished_note(folder)
    if note:
        return f"{folder}: {note}, no {CARD_NAME}; run `dmfnet prepare` again"
    return f"{folder}: no {CARD_NAME}; not a finished `dmfnet prepare` output folder"


def dataset_files(path: str | Path) -> tuple[list[Path], dict]:
    """The Parquet files of a prepared dataset (folder or one file) and its card."""
    path = Path(path)
    if path.is_dir():
        card_file = card_path(path)
        if card_file is None:
            raise ValueError(no_card_message(path))
        card = json.loads(card_file.read_text())
        files = sorted(path.glob(PART_GLOB))
        return files, card
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset file or folder")
    card_file = card_path(path.parent)
    card = json.loads(card_file.read_text()) if card_file is not None else {}
    return [path], card


def load_dataset(path: str | Path, columns: Sequence[str] | None = None) -> FlowDataset:
    """Read a prepared dataset (folder written by ``prepare``, or one Parquet file).

    ``columns``: schema columns to load (default: all that the files hold); labels are
    always loaded. Asking for an optional column the files lack (a dataset prepared with
    it switched off) raises ``ValueError``. Binary columns are viewed straight from Arrow
    buffers, not parsed row by row, and each output array is allocated once for all files.
    """
    files, card = dataset_files(path)
    known = set(SCALAR_COLUMNS) | set(SEQUENCE_COLUMNS)
    if columns is None:
        if files:
            present = set(pq.read_schema(files[0]).names)
            wanted = [c for c in (*SCALAR_COLUMNS, *SEQUENCE_COLUMNS) if c in present]
        else:
            wanted = [*SCALAR_COLUMNS, *SEQUENCE_COLUMNS]
    else:
        unknown = [c for c in columns if c not in known and c != LABEL_COLUMN]
        if unknown:
            raise ValueError(
                f"unknown column(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        wanted = [c for c in columns if c != LABEL_COLUMN]
    metas = [pq.ParquetFile(f) for f in files]
    for file, meta in zip(files, metas, strict=True):
        absent = [c for c in wanted if c not in meta.schema_arrow.names]
        if absent:
            raise ValueError(
                f"{file}: no column(s) {', '.join(absent)} (prepared without them: "
                f"see the flow parameters in its {CARD_NAME})"
            )
    counts = [m.metadata.num_rows for m in metas]
    widths = schema_widths(metas[0].schema_arrow) if metas else default_widths()
    for file, meta in zip(files[1:], metas[1:], strict=True):
        if schema_widths(meta.schema_arrow) != widths:
            raise ValueError(f"{file}: sequence widths differ from {files[0].name}'s")
    total = int(sum(counts))
    out = {name: _allocate(name, total, widths) for name in wanted}
    label_parts: list[np.ndarray] = []
    start = 0
    for file, meta in zip(files, metas, strict=True):
        # one row group at a time: memory beyond the output arrays stays one row group
        for group in range(meta.num_row_groups):
            table = meta.read_row_group(group, columns=[LABEL_COLUMN, *wanted])
            count = table.num_rows
            if start + count > total:
                raise ValueError(f"{file}: more rows than its metadata says")
            for name in wanted:
                column_to_numpy(name, table.column(name), out=out[name][start : start + count])
            label_parts.append(_strings_to_numpy(table.column(LABEL_COLUMN)))
            start += count
    if start != total:
        raise ValueError(f"{path}: {start} rows read, metadata says {total}")
    labels = np.concatenate(label_parts).astype(str) if label_parts else np.zeros(0, dtype=str)
    classes, y = np.unique(labels, return_inverse=True)
    return FlowDataset(
        columns=out,
        labels=labels,
        classes=[str(c) for c in classes],
        y=y.astype(np.int64).reshape(-1),
        card=card,
        path=str(path),
    )


def _allocate(name: str, n: int, widths: Mapping[str, int] | None = None) -> np.ndarray:
    if name in SEQUENCE_COLUMNS:
        dtype, width = SEQUENCE_COLUMNS[name]
        width = (widths or {}).get(name, width)
        return np.empty((n, width), dtype=dtype)
    dtype = SCALAR_COLUMNS[name]
    return np.empty(n, dtype=object if dtype == _STRING else dtype)


def column_to_numpy(
    name: str, column: pa.ChunkedArray | pa.Array, out: np.ndarray | None = None
) -> np.ndarray:
    """One dataset column (Arrow) as the schema's numpy array: 2-D for sequences.

    With ``out`` (rows to fill, e.g. a slice of a preallocated array) the values are
    copied straight into it, chunk by chunk, with no intermediate array.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    if name not in SEQUENCE_COLUMNS and SCALAR_COLUMNS.get(name) == _STRING:
        strings = _strings_to_numpy(column)
        if out is None:
            return strings
        out[:] = strings
        return out
    if name in SEQUENCE_COLUMNS:
        dtype = SEQUENCE_COLUMNS[name][0]
        width = out.shape[1] if out is not None else None
        convert = lambda c: _sequence_chunk(name, c, dtype, width)  # noqa: E731
    elif name in TIME_COLUMNS:
        convert = _seconds_chunk
    else:
        dtype = SCALAR_COLUMNS[name]
        convert = lambda c: np.asarray(c.to_numpy(zero_copy_only=False), dtype=dtype)  # noqa: E731
    if out is None:
        parts = [convert(c) for c in chunks]
        if not parts:
            return _allocate(name, 0)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
    start = 0
    for chunk in chunks:
        values = convert(chunk)
        out[start : start + len(values)] = values
        start += len(values)
    if start != len(out):
        raise ValueError(f"column {name!r}: {start} rows, expected {len(out)}")
    return out


def _seconds_chunk(chunk: pa.Array) -> np.ndarray:
    """A time column chunk as float64 epoch seconds: from a timestamp of any unit, or the
    float64 seconds of datasets written before times were timestamps."""
    if pa.types.is_timestamp(chunk.type):
        if chunk.null_count:
            raise ValueError(f"time column has {chunk.null_count} null value(s)")
        ticks = chunk.view(pa.int64()).to_numpy(zero_copy_only=False)
        return ticks / _TIME_UNITS[chunk.type.unit]
    return np.asarray(chunk.to_numpy(zero_copy_only=False), dtype=np.float64)


def _sequence_chunk(name: str, chunk: pa.Array, dtype: str, width: int | None) -> np.ndarray:
    """A sequence column chunk as an (n, width) view or array; ``width`` None: the chunk's."""
    n = len(chunk)
    if chunk.null_count:
        raise ValueError(f"column {name!r} has {chunk.null_count} null value(s)")
    if pa.types.is_fixed_size_binary(chunk.type):
        size = chunk.type.byte_width
        if width is not None and size != width:
            raise ValueError(f"column {name!r}: {size} bytes per row, not {width}")
        buffer = chunk.buffers()[1]
        flat = np.frombuffer(buffer, dtype=np.uint8, count=n * size, offset=chunk.offset * size)
        return flat.reshape(n, size)
    if pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type):
        offsets = chunk.offsets.to_numpy()
        steps = np.diff(offsets)
        if width is None:
            width = int(steps[0]) if n else 0
        if n and not np.all(steps == width):
            raise ValueError(f"column {name!r}: rows are not all {width} values long")
        values = chunk.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=dtype).reshape(n, width)
    if pa.types.is_fixed_size_list(chunk.type):
        size = chunk.type.list_size
        if width is not None and size != width:
            raise ValueError(f"column {name!r}: {size} values per row, not {width}")
        values = chunk.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=dtype).reshape(n, size)
    raise ValueError(f"column {name!r}: unexpected Arrow type {chunk.type}")


def _strings_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Strings as an object array; equal strings share one Python object (cheap memory)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.string())
    import pyarrow.compute as pc  # here: 30 ms of start-up that writing a dataset never needs

    encoded = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
    names = np.array(encoded.dictionary.to_pylist() + [None], dtype=object)
    codes = encoded.indices.fill_null(len(names) - 1).to_numpy(zero_copy_only=False)
    return names[codes]


# ------------------------------------------------------------------------------------------
# In-memory flows (new captures to classify) -> the same arrays


def flows_to_dataset(
    chunks: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]],
    columns: Sequence[str] | None = None,
    *,
    kept_only: bool = True,
    label: str = "",
) -> FlowDataset:
    """Flow chunks from flow assembly -> a :class:`FlowDataset` without writing Parquet.

    ``kept_only`` drops flows a filter removed (``filter_reason`` not empty), as
    ``prepare`` does. Every flow gets ``label`` (default ``""``: unknown). ``columns``
    default: every column of the schema, the optional ones when the first chunk has them.
    """
    if isinstance(chunks, Mapping):
        chunks = [chunks]
    wanted = list(columns) if columns is not None else [*SCALAR_COLUMNS, *SEQUENCE_COLUMNS]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    total = 0
    for i, chunk in enumerate(chunks):
        if i == 0 and columns is None:
            absent = [c for c in OPTIONAL_COLUMNS if c not in chunk]
            wanted = [c for c in wanted if c not in absent]
            parts = {name: [] for name in wanted}
        n = _row_count(chunk)
        rows = np.ones(n, dtype=bool)
        if kept_only and "filter_reason" in chunk:
            rows = np.asarray(chunk["filter_reason"]).astype(str) == ""
        for name in wanted:
            if name not in chunk:
                raise ValueError(f"flow chunk lacks column {name!r}")
            parts[name].append(_as_schema_array(name, chunk[name], n)[rows])
        total += int(rows.sum())
    columns_out = {
        name: (np.concatenate(p) if p else _allocate(name, 0)) for name, p in parts.items()
    }
    labels = np.full(total, label, dtype=str)
    classes = [label] if label and total else []
    return FlowDataset(
        columns=columns_out,
        labels=labels,
        classes=classes,
        y=np.zeros(total, dtype=np.int64),
        card={},
    )


def _as_schema_array(name: str, values: np.ndarray | str, n: int) -> np.ndarray:
    if name in SEQUENCE_COLUMNS:
        array = np.asarray(values, dtype=SEQUENCE_COLUMNS[name][0])
        if array.ndim != 2 or len(array) != n:
            raise ValueError(f"column {name!r}: shape {array.shape}, expected ({n}, width)")
        return array
    if SCALAR_COLUMNS[name] == _STRING:
        if isinstance(values, str):
            out = np.empty(n, dtype=object)
            out[:] = values
            return out
        return np.asarray(values, dtype=object)
    return np.asarray(values, dtype=SCALAR_COLUMNS[name])


def remove_dataset_files(folder: str | Path) -> None:
    """Delete what ``prepare`` writes in ``folder`` (its part files, card and unfinished
    parts), nothing else."""
    from dmfnet.outputs import DATASET, clear

    clear(folder, DATASET)
