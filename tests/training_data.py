"""Tiny learnable flow datasets for the training tests (in memory and as a Parquet file)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dmfnet.data.dataset import CARD_NAME, FlowDataset, flows_to_table
from dmfnet.flows.schema import SCALAR_COLUMNS, SEQUENCE_COLUMNS

PATTERNS = {"chat": 0, "download": 1, "ssh": 2, "voip": 3, "zoom": 4}


def synthetic_flows(
    classes: tuple[str, ...] = ("chat", "download", "ssh"),
    n_per_class: int = 60,
    seed: int = 0,
    n_captures: int = 3,
) -> FlowDataset:
    """Flows whose header bytes and packet lengths depend on the class name.

    Class ``c`` (pattern ``k`` = :data:`PATTERNS` of its name) gets first-packet header
    bytes of value ``30 + 50 k``, ``6 + 3 k`` packets of about ``80 + 250 k`` bytes, the rest
    random: a model that reads either modality separates the classes in a few epochs, and
    a class keeps its pattern in every dataset. Each class's flows come from ``n_captures``
    capture files named after it.
    """
    rng = np.random.default_rng(seed)
    n = n_per_class * len(classes)
    labels = np.repeat(np.array(classes), n_per_class)
    raw = rng.integers(0, 256, (n, SEQUENCE_COLUMNS["bytes"][1]), dtype=np.uint8)
    lengths = np.zeros((n, SEQUENCE_COLUMNS["lengths"][1]), dtype=np.int32)
    directions = np.zeros_like(lengths, dtype=np.int8)
    captures = np.empty(n, dtype=object)
    for row, name in enumerate(labels):
        k = PATTERNS[name]
        raw[row, :80] = 30 + 50 * k
        packets = 6 + 3 * k
        lengths[row, :packets] = 80 + 250 * k + rng.integers(0, 60, packets)
        directions[row, :packets] = np.where(np.arange(packets) % 2 == 0, 1, -1)
        captures[row] = f"{name}-{row % n_captures}.pcap"
    # Every packet carries payload: the first payload packets are the first packets.
    payload_lengths = np.maximum(lengths - 40, 0) * (directions != 0)
    class_names, y = np.unique(labels, return_inverse=True)
    return FlowDataset(
        columns={
            "bytes": raw,
            "payload_packet_bytes": raw.copy(),
            "lengths": lengths,
            "directions": directions,
            "payload_lengths": payload_lengths.astype(np.int32),
            "capture": captures.astype(str),
        },
        labels=labels,
        classes=[str(c) for c in class_names],
        y=y.astype(np.int64),
        card={"classes": {str(c): int((labels == c).sum()) for c in class_names}},
    )


def write_flow_file(dataset: FlowDataset, path: Path) -> Path:
    """The dataset as one Parquet file in the on-disk schema (other columns zero)."""
    n = len(dataset)
    flows: dict[str, np.ndarray] = {}
    for name, (dtype, width) in SEQUENCE_COLUMNS.items():
        flows[name] = np.zeros((n, width), dtype=dtype)
    for name, dtype in SCALAR_COLUMNS.items():
        flows[name] = np.full(n, "", dtype=object) if dtype == "str" else np.zeros(n, dtype=dtype)
    flows.update(dataset.columns)
    pq.write_table(flows_to_table(flows, dataset.labels), path)
    return path


def write_flow_folder(
    dataset: FlowDataset, root: Path, row_group_rows: int, cuts: tuple[int, ...] = ()
) -> Path:
    """The dataset as a prepared dataset folder: part files cut at ``cuts`` (flow indices),
    row groups of ``row_group_rows`` flows, a card; other columns zero."""
    n = len(dataset)
    columns: dict[str, np.ndarray] = {}
    for name, (dtype, width) in SEQUENCE_COLUMNS.items():
        columns[name] = np.zeros((n, width), dtype=dtype)
    for name, dtype in SCALAR_COLUMNS.items():
        columns[name] = np.full(n, "", dtype=object) if dtype == "str" else np.zeros(n, dtype)
    columns.update(dataset.columns)
    root.mkdir(parents=True, exist_ok=True)
    bounds = [0, *cuts, n]
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        part = {k: v[lo:hi] for k, v in columns.items()}
        table = flows_to_table(part, dataset.labels[lo:hi])
        pq.write_table(table, root / f"part-{i:06d}-000.parquet", row_group_size=row_group_rows)
    (root / CARD_NAME).write_text(json.dumps({"classes": dataset.card.get("classes", {})}))
    return root
