"""Training on a dataset larger than memory: the streaming loader against the in-memory path.

Writes synthetic prepared datasets with the real columns and widths (every column of the
schema, ``bytes`` and ``payload_packet_bytes`` 1600 bytes a flow, Parquet parts of 1 M
flows in row groups of 16 384 flows, written by the dataset's own writer; the classes
differ in their header bytes and packet lengths, so a model learns something), then times
``dmfnet train`` as subprocesses, one epoch each, with peak RSS summed over the process
tree:

- ``--loader stream`` on the large dataset (``--flows``, default 5 M: 8 GB of each byte
  column);
- ``--loader memory`` and ``--loader stream`` on a dataset that fits (``--fits-flows``,
  default 500 k);
- with ``--memory-large``, ``--loader memory`` on the large dataset too (where it fits).

Training flows/s is the run's training flows over its ``train_seconds`` (the epoch and
its validation, as ``metrics.json`` records them); wall time includes the split, the
duplicate removal (digests of every flow's inputs) and scoring the test flows.

    .venv/bin/python benchmarks/stream_train.py --device cuda                # 5 M flows
    .venv/bin/python benchmarks/stream_train.py --flows 200000 --fits-flows 50000 --threads 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dmfnet.data.dataset import CARD_NAME, ROW_GROUP_ROWS, PartWriter  # noqa: E402
from dmfnet.flows.schema import SCALAR_COLUMNS, SEQUENCE_COLUMNS  # noqa: E402
from ingest import _dmfnet_command, _mib, measure  # noqa: E402

CLASSES = ("chat", "dns-over-https", "download", "email", "ssh", "streaming", "voip", "web")


def synthetic_chunk(rng: np.random.Generator, n: int, first: int) -> tuple[dict, np.ndarray]:
    """``n`` flows with every column of the schema; the class sets the first 20 header
    bytes and the packet lengths, the rest is random (bytes beyond a flow's length zero)."""
    k = rng.integers(0, len(CLASSES), n)
    flows: dict[str, np.ndarray] = {}
    for name, (dtype, width) in SEQUENCE_COLUMNS.items():
        flows[name] = np.zeros((n, width), dtype=dtype)
    for name in ("bytes", "payload_packet_bytes"):
        width = flows[name].shape[1]
        used = rng.integers(200, width + 1, n)
        values = rng.integers(0, 256, (n, width), dtype=np.uint8)
        values[np.arange(width)[None, :] >= used[:, None]] = 0
        values[:, :20] = (30 + 25 * k)[:, None]
        flows[name] = values
    packets = flows["lengths"].shape[1]
    count = rng.integers(2, packets + 1, n)
    present = np.arange(packets)[None, :] < count[:, None]
    lengths = (80 + 150 * k)[:, None] + rng.integers(0, 400, (n, packets))
    flows["lengths"] = np.where(present, lengths, 0).astype(np.int32)
    flows["directions"] = np.where(present, np.where(np.arange(packets) % 2, -1, 1), 0).astype(
        np.int8
    )
    flows["payload_lengths"] = np.maximum(flows["lengths"] - 40, 0) * present
    flows["iat"] = (rng.random((n, packets)) * present).astype(np.float32)
    for name, dtype in SCALAR_COLUMNS.items():
        flows[name] = np.full(n, "", dtype=object) if dtype == "str" else np.zeros(n, dtype)
    flows["capture"] = np.array([f"{c}-{(first + i) % 16}.pcap" for i, c in enumerate(k)])
    flows["protocol"][:] = 6
    flows["start_time"] = 1.7e9 + np.arange(first, first + n) * 1e-3
    flows["end_time"] = flows["start_time"] + 1.0
    return flows, np.array(CLASSES)[k]


def write_dataset(folder: Path, flows: int, seed: int, log) -> None:
    """A prepared dataset folder of ``flows`` synthetic flows (reused when it is there)."""
    if (folder / CARD_NAME).exists():
        card = json.loads((folder / CARD_NAME).read_text())
        if card.get("totals", {}).get("flows_written") == flows:
            log(f"reusing {folder}")
            return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    writer = PartWriter(folder, 0)
    counts: dict[str, int] = {}
    for first in range(0, flows, ROW_GROUP_ROWS):
        chunk, labels = synthetic_chunk(rng, min(ROW_GROUP_ROWS, flows - first), first)
        writer.write(chunk, labels)
        for label, count in zip(*np.unique(labels, return_counts=True), strict=True):
            counts[str(label)] = counts.get(str(label), 0) + int(count)
    parts = writer.close()
    card = {
        "format": "dmfnet-flow-dataset",
        "synthetic": "benchmarks/stream_train.py",
        "classes": {c: {"flows": n} for c, n in sorted(counts.items())},
        "totals": {"flows_written": flows},
        "files": [p.name for p in parts],
    }
    (folder / CARD_NAME).write_text(json.dumps(card, indent=1))
    size = sum(p.stat().st_size for p in parts)
    log(f"wrote {folder}: {flows} flows, {size / 1e9:.2f} GB in {len(parts)} part file(s) "
        f"in {time.perf_counter() - started:.0f} s")


def train_once(name: str, dataset: Path, loader: str, run: Path, args, log) -> dict:
    command = [
        *_dmfnet_command(), "train", str(dataset), "-o", str(run), "--model", args.model,
        "--epochs", "1", "--patience", "0", "--loader", loader, "--device", args.device,
        "--batch-size", str(args.batch_size), "--force", "-q",
    ]  # fmt: skip
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.keep_duplicates:
        command.append("--keep-duplicates")
    log(f"timing {name}: {' '.join(command)}")
    m = measure(command)
    if m.returncode != 0:
        raise SystemExit(f"{name} failed: {m.stderr.strip().splitlines()[-1:]}")
    metrics = json.loads((run / "metrics.json").read_text())
    row = {
        "job": name,
        "flows": int(metrics["train_size"] + metrics["val_size"] + metrics["test_size"]),
        "train_flows": int(metrics["train_size"]),
        "train_s": float(metrics["train_seconds"]),
        "flows_per_s": metrics["train_size"] / metrics["train_seconds"],
        "wall_s": m.wall_s,
        "peak_rss": m.tree_rss,
        "anon_rss": m.tree_anon_rss,
        "accuracy": float(metrics["accuracy"]),
    }
    log(f"  {name}: {row['flows_per_s']:.0f} training flows/s, wall {m.wall_s:.0f} s, "
        f"peak RSS {_mib(m.tree_rss)} (anonymous {_mib(m.tree_anon_rss)})")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=5_000_000, help="large dataset (5 M)")
    parser.add_argument("--fits-flows", type=int, default=500_000, help="dataset that fits")
    parser.add_argument("--model", default="dmf")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--keep-duplicates", action="store_true", help="skip the duplicate removal (digests)"
    )
    parser.add_argument(
        "--memory-large",
        action="store_true",
        help="also train the large dataset in memory (where it fits): the RSS it costs",
    )
    parser.add_argument("--workdir", type=Path, help="keep the datasets here (reused)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="dmfnet-stream-")) if temporary else args.workdir
    try:
        large, fits = workdir / f"flows-{args.flows}", workdir / f"flows-{args.fits_flows}"
        write_dataset(large, args.flows, 1, log)
        write_dataset(fits, args.fits_flows, 2, log)
        rows = [
            train_once("memory, fits", fits, "memory", workdir / "run-memory", args, log),
            train_once("stream, fits", fits, "stream", workdir / "run-stream-fits", args, log),
            train_once("stream, large", large, "stream", workdir / "run-stream", args, log),
        ]
        if args.memory_large:
            rows.append(
                train_once("memory, large", large, "memory", workdir / "run-memory-large", args, log)
            )
        print("| job | flows | training flows/s | train s | wall s | peak RSS | anonymous RSS |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['job']} | {r['flows']:,} | {r['flows_per_s']:.0f} | {r['train_s']:.0f} | "
                f"{r['wall_s']:.0f} | {_mib(r['peak_rss'])} | {_mib(r['anon_rss'])} |"
            )
        memory, streamed = rows[0]["flows_per_s"], rows[1]["flows_per_s"]
        print(f"\nstreaming at {100 * streamed / memory:.0f} % of the in-memory flows/s "
              f"on {args.fits_flows:,} flows")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return 0
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
