"""``dmfnet prepare --cluster`` against ``--workers`` at equal cores: MB/s and overhead.

Builds the ingest benchmark's capture (real traffic of ``../shared/data`` replayed to
``--size-mb``, see ``ingest.py``) and ``--copies`` byte copies of it as separate files
(default: 200 MB and 4 copies, 1 GB in all), then times as subprocesses, with wall time,
CPU time and peak RSS summed over the process tree (a local cluster's scheduler, nannies
and workers included):

- ``dmfnet prepare FILES -o OUT --workers 1`` and ``--workers 2``;
- ``dmfnet prepare FILES -o OUT --cluster local:1`` and ``--cluster local:2`` (a Dask
  ``LocalCluster`` of one or two worker processes, started and stopped by the command);

and prints MB/s (10^6 bytes of capture per second), the cluster's overhead at equal
cores (its wall time over the process pool's, minus one), whether every output holds the
same part files byte for byte, and a Markdown table. ``--repeat N`` runs the jobs in N
rounds and reports medians.

    .venv/bin/python benchmarks/cluster_ingest.py                       # 1 GB in 5 files
    .venv/bin/python benchmarks/cluster_ingest.py --size-mb 50 --copies 3   # 200 MB
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import (  # noqa: E402
    BuiltCapture,
    Run,
    _build_all,
    _dmfnet_command,
    _execute,
    _mib,
    _ok,
)

JOBS = (("workers 1", "--workers", "1"), ("workers 2", "--workers", "2"))
CLUSTER_JOBS = (("cluster local:1", "--cluster", "local:1"), ("cluster local:2", "--cluster", "local:2"))


def same_parts(a: Path, b: Path) -> bool:
    """Both outputs hold the same part files, byte for byte."""
    names = sorted(p.name for p in a.glob("part-*.parquet"))
    if not names or names != sorted(p.name for p in b.glob("part-*.parquet")):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def markdown(runs: list[Run], baseline: dict[str, Run]) -> str:
    lines = [
        "| job | files | MB | wall s | MB/s | CPU s | peak RSS (tree) | overhead vs pool |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        pool = baseline.get(run.name)
        overhead = f"{100 * (run.wall_s / pool.wall_s - 1):+.1f} %" if pool else ""
        lines.append(
            f"| {run.name} | {len(run.captures)} | {run.bytes / 1e6:.0f} | {run.wall_s:.1f} | "
            f"{run.mb_per_s:.1f} | {run.cpu_s:.1f} | {_mib(run.tree_rss)} | {overhead} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=200.0, help="capture size (default 200)")
    parser.add_argument(
        "--copies", type=int, default=4, help="copies of it, as separate files (default 4)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all jobs (median)")
    parser.add_argument("--workdir", type=Path, help="keep captures here (default: temporary)")
    parser.add_argument(
        "--source", type=Path, action="append", help="capture file or folder to replay"
    )
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="dmfnet-cluster-")) if temporary else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        built = _build_all(
            workdir, int(args.size_mb * 1e6), False, False, log, places=args.source
        )["capture"][0]
        captures: list[BuiltCapture] = [built]
        for i in range(args.copies):
            copy = workdir / f"copy-{i + 1}.pcap"
            if not copy.exists() or copy.stat().st_size != built.bytes:
                shutil.copyfile(built.path, copy)
            captures.append(replace(built, path=str(copy)))
        files = [c.path for c in captures]
        log(f"{len(files)} captures, {sum(c.bytes for c in captures) / 1e6:.0f} MB in all")
        jobs = []
        for name, option, value in JOBS + CLUSTER_JOBS:
            out = workdir / ("out-" + name.replace(" ", "-").replace(":", ""))
            command = [*_dmfnet_command(), "prepare", *files, "-o", str(out), option, value]
            jobs.append((Run(name, [*command, "-q", "--force"], captures), out))
        _execute(jobs, args.repeat, log)
        runs = [run for run, _ in jobs]
        if not all(_ok(run) for run in runs):
            log("some job failed; see above")
            return 1
        pools = {"cluster local:1": runs[0], "cluster local:2": runs[1]}
        outs = [out for _, out in jobs]
        same = all(same_parts(outs[0], out) for out in outs[1:])
        print(markdown(runs, pools))
        print(f"\nsame part files in all {len(outs)} outputs: {'yes' if same else 'NO'}")
        for run in runs[2:]:
            pool = pools[run.name]
            print(
                f"{run.name}: {run.mb_per_s:.1f} MB/s against {pool.mb_per_s:.1f} MB/s with "
                f"{pool.name}: overhead {100 * (run.wall_s / pool.wall_s - 1):+.1f} % of wall "
                f"time, {run.wall_s - pool.wall_s:+.1f} s"
            )
        return 0
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
