"""Dataset layer speed: Parquet write and load, CSV flow labelling, splits, test de-duplication.

Builds ``--flows`` synthetic flows shaped like real ones (the byte columns are zero past a
few hundred bytes, as short packets leave them) and prints wall and CPU seconds and rows
per second of each step, so changes to the Parquet layout or the loader can be compared:

    .venv/bin/python benchmarks/dataset_io.py               # 200k flows
    .venv/bin/python benchmarks/dataset_io.py --flows 50000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dmfnet.data.dataset import CARD_NAME, PartWriter, load_dataset
from dmfnet.data.labels import FlowTableLabeller
from dmfnet.data.splits import drop_test_duplicates, split_by_file, split_random
from dmfnet.flows.schema import SCALAR_COLUMNS, SEQUENCE_COLUMNS

CHUNK = 20_000


def synthetic_chunk(n: int, rng: np.random.Generator, offset: int) -> dict[str, np.ndarray]:
    """Flows with every schema column, realistic sparsity in the byte columns."""
    chunk: dict[str, np.ndarray] = {}
    for name, (dtype, width) in SEQUENCE_COLUMNS.items():
        values = np.zeros((n, width), dtype=dtype)
        used = min(width, 400 if dtype == "uint8" else 12)
        if dtype == "float32":
            values[:, :used] = rng.random((n, used), dtype=np.float32)
        else:
            values[:, :used] = rng.integers(0, 128, (n, used)).astype(dtype)
        chunk[name] = values
    index = np.arange(offset, offset + n)
    for name, dtype in SCALAR_COLUMNS.items():
        if dtype == "str":
            chunk[name] = np.full(n, f"{name}-0", dtype=object)
        elif dtype == "bool":
            chunk[name] = np.ones(n, dtype=bool)
        else:
            chunk[name] = rng.integers(0, 60000, n).astype(dtype)
    chunk["capture"] = np.array([f"capture-{i % 97}.pcap" for i in index], dtype=object)
    chunk["client_ip"] = np.array(
        [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in index], dtype=object
    )
    chunk["server_ip"] = np.full(n, "192.168.0.1", dtype=object)
    chunk["protocol"] = np.full(n, 6, dtype=np.uint8)
    return chunk


def timed(results: list, step: str, rows: int, fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    results.append((step, rows, wall, cpu))
    print(f"  {step}: {wall:.2f} s wall, {cpu:.2f} s CPU", file=sys.stderr, flush=True)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=200_000, help="flows (default 200000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = args.flows
    rng = np.random.default_rng(args.seed)
    results: list = []
    with tempfile.TemporaryDirectory(prefix="dmfnet-dataset-io-") as tmp:
        folder = Path(tmp) / "ds"
        folder.mkdir()
        chunks = [synthetic_chunk(min(CHUNK, n - s), rng, s) for s in range(0, n, CHUNK)]
        labels = [np.array([f"class-{i % 20}" for i in range(len(c["protocol"]))]) for c in chunks]

        def write() -> None:
            writer = PartWriter(folder, 0)
            for chunk, lab in zip(chunks, labels, strict=True):
                writer.write(chunk, lab.astype(object))
            writer.close()
            (folder / CARD_NAME).write_text(json.dumps({}))

        timed(results, "write Parquet (all columns)", n, write)
        size = sum(p.stat().st_size for p in folder.glob("*.parquet"))
        ds = timed(results, "load_dataset (all columns)", n, lambda: load_dataset(folder))
        del ds
        ds = timed(
            results,
            "load_dataset (bytes, lengths, capture)",
            n,
            lambda: load_dataset(folder, columns=["bytes", "lengths", "capture"]),
        )
        csv = Path(tmp) / "labels.csv"
        with open(csv, "w") as handle:
            handle.write("file,protocol,src_ip,src_port,dst_ip,dst_port,label\n")
            for chunk, lab in zip(chunks, labels, strict=True):
                for row in zip(
                    chunk["capture"],
                    chunk["client_ip"],
                    chunk["client_port"],
                    chunk["server_ip"],
                    chunk["server_port"],
                    lab,
                    strict=True,
                ):
                    handle.write(f"{row[0]},TCP,{row[1]},{row[2]},{row[3]},{row[4]},{row[5]}\n")
        table = timed(results, "load label CSV", n, lambda: FlowTableLabeller(csv))

        def label() -> int:
            return sum(int((table.label_chunk(c, "capture-0.pcap") != "").sum()) for c in chunks)

        timed(results, "label flows by CSV", n, label)
        train, val, test = timed(results, "split_random", n, lambda: split_random(ds.y, 0))
        timed(results, "split_by_file", n, lambda: split_by_file(ds["capture"], ds.y, 0))
        inputs = {"bytes": ds["bytes"], "lengths": ds["lengths"]}
        timed(
            results,
            "drop_test_duplicates (all flows vs train)",
            n,
            lambda: drop_test_duplicates(train, np.arange(n), inputs),
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"## Dataset layer, {n:,} flows, {os.cpu_count()} cores")
    print(
        f"Parquet size: {size / 1e6:.1f} MB ({size / n:.0f} bytes per flow); peak RSS {peak:.0f} MiB"
    )
    print(f"Load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    print()
    print("| step | wall s | CPU s | flows per wall s | flows per CPU s |")
    print("|---|---|---|---|---|")
    for step, rows, wall, cpu in results:
        per_cpu = f"{rows / cpu:,.0f}" if cpu > 0 else "-"
        print(f"| {step} | {wall:.2f} | {cpu:.2f} | {rows / wall:,.0f} | {per_cpu} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
