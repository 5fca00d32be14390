"""Speed of read + parse + flow assembly (flows, filters, anonymisation, modalities), one core.

Builds a capture of real traffic (the Ethernet pcaps under ``../shared/data`` replayed with
rewritten addresses, by the builder of ``benchmarks/ingest.py``), then times in this process:

- read + parse alone (``dmfnet.capture.read_packets``), the floor flow assembly sits on;
- read + parse + ``dmfnet.flows.assemble_flows`` (every output chunk is produced);

and prints packets/s, MB/s (10^6 bytes of capture file per second), flows, the share of
time spent in flow assembly, and the peak RSS of this process. Medians of ``--repeat`` runs.

    .venv/bin/python benchmarks/flows_assemble.py              # 200 MB capture
    .venv/bin/python benchmarks/flows_assemble.py --size-mb 20 --repeat 1
    .venv/bin/python benchmarks/flows_assemble.py --capture some.pcap
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from dmfnet.capture import read_packets  # noqa: E402
from dmfnet.flows import FlowConfig, assemble_flows  # noqa: E402
from dmfnet.problems import ProblemLog  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest  # noqa: E402


def build_short_flows(path: Path, size_bytes: int, flows_per_second: float = 1000.0) -> int:
    """A capture of many two-packet UDP flows (request, reply), like scans or DNS-heavy links.

    The hard case for flow assembly: about one flow per two packets, so any per-flow Python
    work shows, and flows stay open until their idle timeout passes, so about
    ``flows_per_second * idle_timeout`` of them are open at once. Every flow has its own
    client address and port. Returns the packet count.
    """
    eth = bytes(6) + bytes(5) + b"\x01" + b"\x08\x00"

    def record(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
        udp_part = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        ip_part = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp_part), 0, 0, 64, 17, 0, src, dst
        )
        frame = eth + ip_part + udp_part
        return struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame

    server = bytes([198, 51, 100, 7])
    request = np.frombuffer(record(bytes(4), server, 0, 4433, b"q" * 60), np.uint8)
    reply = np.frombuffer(record(server, bytes(4), 4433, 0, b"r" * 140), np.uint8)
    per_flow = len(request) + len(reply)
    flows = max(size_bytes // per_flow, 1)
    block = np.empty((flows, per_flow), np.uint8)
    block[:, : len(request)] = request
    block[:, len(request) :] = reply
    i = np.arange(flows, dtype=np.int64)
    client = (np.uint32(10 << 24) + (i // 50_000).astype(np.uint32)).astype(">u4")
    port = (1024 + i % 50_000).astype(">u2")
    usec = (i * (1e6 / flows_per_second)).astype(np.int64)
    for base, ip_at, port_at in ((0, 16 + 14 + 12, 16 + 34), (len(request), 16 + 14 + 16, 16 + 36)):
        block[:, base + ip_at : base + ip_at + 4] = client.view(np.uint8).reshape(-1, 4)
        block[:, base + port_at : base + port_at + 2] = port.view(np.uint8).reshape(-1, 2)
        ts = np.stack([1_700_000_000 + usec // 1_000_000, usec % 1_000_000 + base // 100], 1)
        block[:, base : base + 8] = ts.astype("<u4").view(np.uint8).reshape(-1, 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        f.write(block.tobytes())
    return 2 * flows


def time_read(path: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and packets of read + parse."""
    t0, c0 = time.perf_counter(), time.process_time()
    packets = sum(len(p) for p in read_packets(path, ProblemLog()))
    return time.perf_counter() - t0, time.process_time() - c0, packets


def time_assemble(path: Path, config: FlowConfig) -> tuple[float, float, int, dict]:
    """Wall seconds, CPU seconds, flows (kept and removed) and filter counts of
    read + parse + assemble."""
    t0, c0 = time.perf_counter(), time.process_time()
    stream = assemble_flows(read_packets(path, ProblemLog()), config, str(path))
    flows = sum(len(chunk["packets"]) for chunk in stream)
    return time.perf_counter() - t0, time.process_time() - c0, flows, dict(stream.stats.removed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=200.0, help="capture size to build")
    parser.add_argument("--capture", type=Path, help="time this capture instead of building one")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--workdir", type=Path, help="where the built capture goes")
    parser.add_argument(
        "--short-flows",
        action="store_true",
        help="build a capture of two-packet flows instead of replaying real traffic",
    )
    parser.add_argument(
        "--flows-per-second", type=float, default=1000.0, help="new flows per second (short flows)"
    )
    args = parser.parse_args(argv)

    if args.capture:
        path = args.capture
    else:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dmfnet-flows-bench-"))
        workdir.mkdir(parents=True, exist_ok=True)
        if args.short_flows:
            path = workdir / "short-flows.pcap"
            build_short_flows(path, int(args.size_mb * 1e6), args.flows_per_second)
        else:
            path = workdir / "replayed.pcap"
            sources = [ingest.load_source(p) for p in ingest.find_sources()]
            ingest.build_capture(path, int(args.size_mb * 1e6), sources)
        print(f"built {path}")
    size = path.stat().st_size
    time_read(path)  # warm the page cache

    reads = [time_read(path) for _ in range(args.repeat)]
    read_s = statistics.median(r[0] for r in reads)
    read_cpu = statistics.median(r[1] for r in reads)
    packets = reads[0][2]
    runs = [time_assemble(path, FlowConfig()) for _ in range(args.repeat)]
    total_s = statistics.median(r[0] for r in runs)
    total_cpu = statistics.median(r[1] for r in runs)
    _, _, flows, removed = runs[0]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    print(f"capture: {path} ({size / 1e6:.1f} MB, {packets} packets, {flows} flows)")
    print(f"removed by filters: {removed}")
    print(
        f"read+parse:          {read_s:7.3f} s  {packets / read_s / 1e3:8.0f} k packets/s"
        f"  {size / read_s / 1e6:7.1f} MB/s"
    )
    print(
        f"read+parse+assemble: {total_s:7.3f} s  {packets / total_s / 1e3:8.0f} k packets/s"
        f"  {size / total_s / 1e6:7.1f} MB/s  ({flows / total_s / 1e3:.0f} k flows/s)"
    )
    print(
        f"CPU time (what one core does, whatever else runs on the machine): read+parse"
        f" {read_cpu:.3f} s ({size / read_cpu / 1e6:.1f} MB/s), read+parse+assemble"
        f" {total_cpu:.3f} s ({size / total_cpu / 1e6:.1f} MB/s,"
        f" {packets / total_cpu / 1e3:.0f} k packets/s)"
    )
    print(f"flow assembly share: {(total_cpu - read_cpu) / total_cpu:.0%} of the CPU time")
    print(f"peak RSS of this process: {peak_rss / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
