"""How fast ``dmfnet classify`` is: the DMF model alone, and capture to predictions.

    .venv/bin/python benchmarks/classify.py                 # about a minute
    .venv/bin/python benchmarks/classify.py --size-mb 200 --threads 1 2

1. **Model alone**: ``TrainedModel.predict_proba`` (batched inference, eval mode, no
   gradients, softmax) of DMF on CPU over ``--flows`` flows of random bytes and lengths
   (the cost does not depend on the values), per batch size and torch thread count;
   median of ``--repeat`` runs after one warm-up.
2. **Capture to predictions**: :func:`dmfnet.classify.classify_captures` on a capture of
   ``--size-mb`` built by replaying the bundled demo captures (real TLS/SSH/DoT traffic;
   each replay's addresses are rewritten so its flows are new, timestamps shifted so the
   capture is in time order), CSV written, in this process. Also the ingest alone (read +
   flow assembly, nothing predicted), so the model's share shows.

A run folder (``--run``) is used when given; otherwise an untrained DMF with the demo's six
classes: inference costs the same whatever the weights. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dmfnet.classify import classify_captures  # noqa: E402
from dmfnet.flows.schema import BYTES_LEN, M_PACKETS  # noqa: E402
from ingest import build_capture, find_sources, load_source  # noqa: E402

DEMO_CLASSES = ["dns-over-tls", "https-bulk", "https-small", "scp-sftp", "ssh-interactive", "tls-chat"]  # fmt: skip


def trained_model(run: str | None):
    """The run's model, or an untrained DMF wrapped like a loaded run."""
    from dmfnet.models import create_model
    from dmfnet.training.runs import TrainedModel, load_run

    if run:
        return load_run(run)
    model = create_model("dmf", len(DEMO_CLASSES)).eval()
    return TrainedModel(
        model, name="dmf", kind="torch", classes=DEMO_CLASSES, inputs=("bytes", "lengths")
    )


def bench_model(trained, flows: int, batch_sizes: list[int], repeat: int) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "bytes": rng.integers(0, 256, (flows, BYTES_LEN), dtype=np.uint8),
        "lengths": rng.integers(40, 1500, (flows, M_PACKETS), dtype=np.int32),
    }
    for batch in batch_sizes:
        trained.predict_proba({k: v[:batch] for k, v in arrays.items()}, batch_size=batch)
        times, cpu = [], []
        for _ in range(repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            trained.predict_proba(arrays, batch_size=batch)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        best, median = min(times), statistics.median(times)
        print(
            f"  threads {torch.get_num_threads()}  batch {batch:>5}: "
            f"{flows / median:>9,.0f} flows/s median, {flows / best:>9,.0f} best, "
            f"{flows / statistics.median(cpu):>9,.0f} per CPU s ({flows:,} flows, {repeat} runs)",
            flush=True,
        )


def bench_capture(trained, capture: Path, out: Path) -> None:
    from dmfnet.capture import read_packets
    from dmfnet.flows import FlowConfig, assemble_flows
    from dmfnet.problems import ProblemLog

    size = capture.stat().st_size
    start, start_cpu = time.perf_counter(), time.process_time()
    flows = packets = 0
    problems = ProblemLog()

    def counted():
        nonlocal packets
        for batch in read_packets(capture, problems):
            packets += len(batch)
            yield batch

    for chunk in assemble_flows(counted(), FlowConfig(), str(capture)):
        flows += int((np.asarray(chunk["filter_reason"]).astype(str) == "").sum())
    ingest = time.perf_counter() - start
    ingest_cpu = time.process_time() - start_cpu
    print(
        f"  ingest alone (read + flows):  {ingest:6.2f} s  {flows / ingest:>9,.0f} flows/s  "
        f"{packets / ingest:>10,.0f} packets/s  {size / 1e6 / ingest:6.1f} MB/s  "
        f"({ingest_cpu:.2f} CPU s: {flows / ingest_cpu:,.0f} flows per CPU s)",
        flush=True,
    )
    start_cpu = time.process_time()
    summary = classify_captures(trained, [capture], out, progress=False)
    wall, cpu = summary.seconds, time.process_time() - start_cpu
    print(
        f"  capture -> predictions.csv:   {wall:6.2f} s  {summary.flows_classified / wall:>9,.0f} "
        f"flows/s  {summary.packets / wall:>10,.0f} packets/s  {size / 1e6 / wall:6.1f} MB/s  "
        f"({cpu:.2f} CPU s: {summary.flows_classified / cpu:,.0f} flows per CPU s)",
        flush=True,
    )
    print(
        f"  {summary.flows_classified:,} flows classified, {summary.packets:,} packets, "
        f"{size / 1e6:.1f} MB; peak RSS of this process so far "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="run folder to load (default: untrained DMF, 6 classes)")
    parser.add_argument("--flows", type=int, default=20_000, help="flows for the model alone")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size-mb", type=float, default=50.0, help="capture size (MB = 10^6)")
    parser.add_argument("--captures", type=Path, default=REPO / "demo" / "captures")
    args = parser.parse_args(argv)

    trained = trained_model(args.run)
    load = os.getloadavg()
    print(
        f"dmfnet classify benchmark: model {trained.name}, {len(trained.classes)} classes, "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average "
        f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}",
        flush=True,
    )
    print("model alone (predict_proba on CPU):")
    for threads in dict.fromkeys(args.threads):
        torch.set_num_threads(threads)
        bench_model(trained, args.flows, args.batch_sizes, args.repeat)

    sources = [load_source(p) for p in find_sources([args.captures])]
    if not sources:
        print(f"no Ethernet pcap under {args.captures}: capture benchmark skipped")
        return 0
    with tempfile.TemporaryDirectory(prefix="dmfnet-classify-bench-") as work:
        capture = Path(work) / "replayed.pcap"
        built = build_capture(capture, int(args.size_mb * 1e6), sources)
        print(
            f"capture to predictions ({built.bytes / 1e6:.1f} MB, {built.packets:,} packets, "
            f"{built.replays} replays of {len(sources)} demo captures):"
        )
        for threads in dict.fromkeys(args.threads):
            torch.set_num_threads(threads)
            print(f" torch threads {threads}:")
            bench_capture(trained, capture, Path(work) / "predictions.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
