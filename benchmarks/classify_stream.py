"""``dmfnet classify`` on a stream: throughput, memory and decision delay.

    .venv/bin/python benchmarks/classify_stream.py --run RUN              # about a minute
    .venv/bin/python benchmarks/classify_stream.py --run RUN --size-mb 1000

A capture of ``--size-mb`` is built by replaying the bundled demo captures (as
``benchmarks/classify.py`` does: real TLS/SSH/DoT traffic, each replay's flows new) and
classified three ways, each in a fresh ``dmfnet classify`` process:

1. the file, flows decided at their end (``classify RUN FILE``);
2. the file, flows decided after K packets (``--decide-after K``);
3. the same bytes piped into ``classify RUN -`` (a stream: records parsed as they arrive,
   flows decided once the model's inputs are complete).

For each: wall time, MB/s, flows written and the peak RSS of the process. The stream's
peak RSS against a larger ``--size-mb`` shows that memory does not grow with the stream.
For the stream, the decision delay in capture time is also given: how long after a flow's
first packet its line came (median and 95th percentile, ``decision_time - start_time``),
against the flow's whole duration. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import build_capture, find_sources, load_source  # noqa: E402

DMFNET = [sys.executable, "-m", "dmfnet", "classify"]


def run(command: list[str], stdin_path: Path | None) -> tuple[float, int]:
    """Wall seconds and peak RSS (MB) of one ``dmfnet classify`` process."""
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL  # noqa: SIM115
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    start = time.perf_counter()
    try:
        with subprocess.Popen(
            ["/usr/bin/time", "-f", "%M", *command],
            stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        ) as process:  # fmt: skip
            _, err = process.communicate()
    finally:
        if stdin_path:
            stdin.close()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{err.decode()[-2000:]}")
    return wall, int(err.decode().strip().splitlines()[-1]) // 1024


def _quantile(values: list[float], q: float) -> float:
    return values[int(q * (len(values) - 1))]


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run folder (e.g. from `dmfnet demo`)")
    parser.add_argument("--size-mb", type=float, default=100.0, help="capture size (MB = 10^6)")
    parser.add_argument("--decide-after", type=int, default=30)
    parser.add_argument("--captures", type=Path, default=REPO / "demo" / "captures")
    args = parser.parse_args(argv)
    if not Path("/usr/bin/time").exists():
        raise SystemExit("needs /usr/bin/time (apt install time) for the peak RSS")

    sources = [load_source(p) for p in find_sources([args.captures])]
    with tempfile.TemporaryDirectory(prefix="dmfnet-stream-bench-") as work:
        capture = Path(work) / "replayed.pcap"
        built = build_capture(capture, int(args.size_mb * 1e6), sources)
        mb = built.bytes / 1e6
        load = os.getloadavg()
        print(
            f"dmfnet classify on a stream: {mb:.1f} MB, {built.packets:,} packets "
            f"({built.replays} replays of {len(sources)} demo captures), run {args.run}, "
            f"{os.cpu_count()} CPUs, load average {load[0]:.1f}",
            flush=True,
        )
        cases = [
            ("file, decided at flow end", [str(capture)], None),
            (f"file, --decide-after {args.decide_after}",
             [str(capture), "--decide-after", str(args.decide_after)], None),
            ("stream on stdin (-)", ["-"], capture),
        ]  # fmt: skip
        whole: list[float] = []
        for label, extra, stdin in cases:
            out = Path(work) / "out.csv"
            wall, rss = run([*DMFNET, args.run, *extra, "-o", str(out)], stdin)
            with open(out, newline="") as f:
                rows = list(csv.DictReader(f))
            print(
                f"  {label:<28} {wall:6.1f} s  {mb / wall:6.1f} MB/s  {len(rows):>8,} flows  "
                f"peak RSS {rss:,} MB",
                flush=True,
            )
            if not whole:
                whole = sorted(float(r["duration"]) for r in rows)
            if stdin is not None and rows:
                delay = sorted(_seconds(r["decision_time"]) - _seconds(r["start_time"]) for r in rows)
                print(
                    "    capture time from a flow's first packet to its decision: median "
                    f"{_quantile(delay, 0.5):.3f} s, 95th percentile {_quantile(delay, 0.95):.3f} s "
                    f"(decided at flow end: median {_quantile(whole, 0.5):.3f} s, 95th "
                    f"percentile {_quantile(whole, 0.95):.3f} s)",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
