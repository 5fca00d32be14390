"""Speed of the capture layer alone: read + vectorised parse (``dmfnet.capture.read_packets``).

Prints, per capture, MB/s (10^6 bytes of the file on disk per second) and packets/s of

- ``walk``: the record walk and record-header decode only (parsing switched off),
- ``read+parse``: what ``read_packets`` yields (link, IP, TCP/UDP fields of every packet),

on one core, medians of ``--repeat`` runs after a warm-up read (page cache), by wall
time and by this process's CPU time (the fairer figure on a shared, busy machine; the
load average is printed), and the peak RSS of this process. Without ``--capture`` it builds a capture of real traffic from
``../shared/data`` with the replay builder of ``benchmarks/ingest.py``; ``--gzip`` also
times a gzip copy of each capture (decompression included).

    .venv/bin/python benchmarks/capture_read.py                     # 200 MB built capture
    .venv/bin/python benchmarks/capture_read.py --size-mb 20 --repeat 1
    .venv/bin/python benchmarks/capture_read.py --capture a.pcap --capture b.pcapng.gz
"""

from __future__ import annotations

import argparse
import gzip
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dmfnet.capture.reader as reader
from dmfnet.capture import read_packets
from dmfnet.problems import ProblemLog


def _time_read(path: Path, parse: bool) -> tuple[float, float, int, int]:
    """Wall seconds, CPU seconds, packets and problems of one full read of ``path``."""
    original = reader.parse_packets
    if not parse:
        reader.parse_packets = lambda batch: batch  # the walk and record decode alone
    try:
        problems = ProblemLog()
        start, cpu = time.perf_counter(), time.process_time()
        packets = 0
        for batch in read_packets(path, problems):
            packets += len(batch)
        return time.perf_counter() - start, time.process_time() - cpu, packets, problems.total
    finally:
        reader.parse_packets = original


def _report(path: Path, repeat: int) -> None:
    size = path.stat().st_size
    _time_read(path, True)  # warm the page cache
    for label, parse in (("walk", False), ("read+parse", True)):
        runs = [_time_read(path, parse) for _ in range(repeat)]
        packets, problems = runs[0][2], runs[0][3]
        for clock, k in (("wall", 0), ("cpu", 1)):
            seconds = statistics.median(r[k] for r in runs)
            print(
                f"{path.name:<24} {label:<10} {clock:<4} {size / 1e6:7.1f} MB {packets:>9,} pkts "
                f"{seconds:7.3f} s {size / seconds / 1e6:7.1f} MB/s "
                f"{packets / seconds / 1e3:6.0f} k pkts/s  problems {problems}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", action="append", type=Path, help="capture(s) to time")
    ap.add_argument("--size-mb", type=float, default=200.0, help="size of the built capture")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    ap.add_argument("--gzip", action="store_true", help="also time a gzip copy of each capture")
    args = ap.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="dmfnet-capture-bench-"))
    try:
        captures = list(args.capture or [])
        if not captures:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import ingest

            sources = [ingest.load_source(p) for p in ingest.find_sources()]
            path = workdir / "replayed.pcap"
            built = ingest.build_capture(path, int(args.size_mb * 1e6), sources)
            print(f"built {path.name}: {built.bytes / 1e6:.1f} MB, {built.packets:,} packets")
            captures = [path]
        if args.gzip:
            for path in list(captures):
                packed = workdir / (path.name + ".gz")
                with open(path, "rb") as src, gzip.open(packed, "wb", compresslevel=6) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                captures.append(packed)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs (load {load}), one used")
        for path in captures:
            _report(path, args.repeat)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this process: {peak:.0f} MiB")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
