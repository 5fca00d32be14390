"""torch against onnxruntime: DMF alone, and `dmfnet classify` from capture to predictions.

    .venv/bin/python benchmarks/inference_speed.py                  # 200 MB capture, 2 threads
    .venv/bin/python benchmarks/inference_speed.py --size-mb 50 --repeat 5

1. **Model alone**: ``predict_proba`` of the run's model (default: DMF with untrained
   weights, six classes; inference costs the same whatever the weights) with torch
   (:class:`~dmfnet.training.runs.TrainedModel`) and with onnxruntime
   (:class:`~dmfnet.export.OnnxModel` on its export), on ``--threads`` threads, at batch
   256 (``--flows`` flows) and batch 1 (a tenth of them): flows/s, best and median of
   ``--repeat`` rounds (each round runs both engines, so a slow spell of a shared machine
   falls on both).
2. **Capture to predictions**: ``dmfnet classify RUN capture.pcap -o predictions.csv
   --engine E --threads T -q`` as a subprocess, timed from start to exit (interpreter
   start-up and model loading included), on the ingest benchmark's capture
   (:func:`ingest.build_capture`: the real captures of ``../shared/data`` replayed to
   ``--size-mb``, addresses rewritten per replay). The run folder holds ``model.onnx``
   from ``dmfnet export``, so ``--engine onnx`` does not export. MB/s = capture bytes /
   wall time.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dmfnet.export import ONNX_FILE, OnnxModel, example_flows, export_onnx  # noqa: E402
from dmfnet.models import create_model  # noqa: E402
from dmfnet.training.runs import RUN_FILE, WEIGHTS_FILE, load_run, save_weights  # noqa: E402
from ingest import _dmfnet_command, build_capture, find_sources, load_source, measure  # noqa: E402

DEMO_CLASSES = ["dns-over-tls", "https-bulk", "https-small", "scp-sftp", "ssh-interactive", "tls-chat"]  # fmt: skip


def untrained_run(folder: Path, model: str = "dmf") -> Path:
    """A run folder holding an untrained model: what ``load_run`` and ``classify`` read."""
    net = create_model(model, len(DEMO_CLASSES)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / WEIGHTS_FILE, net)
    info = {"model": model, "classes": DEMO_CLASSES, "inputs": list(net.inputs),
            "model_config": {}}  # fmt: skip
    (folder / RUN_FILE).write_text(json.dumps(info), encoding="utf-8")
    return folder


def bench_model(trained, engine: OnnxModel, flows: int, repeat: int) -> None:
    arrays = example_flows(trained.inputs, flows, seed=0)
    for batch, n in ((256, flows), (1, max(flows // 10, 1))):
        part = {c: v[:n] for c, v in arrays.items()}
        times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        for model in (trained, engine):  # warm-up
            model.predict_proba({c: v[:batch] for c, v in part.items()}, batch_size=batch)
        for _ in range(repeat):
            for label, model in (("torch", trained), ("onnxruntime", engine)):
                start = time.perf_counter()
                model.predict_proba(part, batch_size=batch)
                times[label].append(time.perf_counter() - start)
        for label, spent in times.items():
            print(
                f"  {label:<12} batch {batch:>4}: {n / min(spent):>9,.0f} flows/s best, "
                f"{n / statistics.median(spent):>9,.0f} median ({n:,} flows, {repeat} runs)",
                flush=True,
            )


def bench_classify(run: Path, capture: Path, work: Path, threads: int, repeat: int) -> None:
    size = capture.stat().st_size
    results: dict[str, list] = {"torch": [], "onnx": []}
    for _ in range(repeat):
        for engine in results:
            out = work / f"predictions-{engine}.csv"
            command = [*_dmfnet_command(), "classify", str(run), str(capture), "-o", str(out),
                       "--engine", engine, "--threads", str(threads), "-q"]  # fmt: skip
            m = measure(command)
            if m.returncode != 0:
                print(f"  {engine}: failed ({m.returncode}): {m.stderr.strip()[-300:]}")
                return
            flows = sum(1 for _ in open(out, encoding="utf-8")) - 1
            results[engine].append((m.wall_s, m.cpu_s, flows, m.tree_rss))
    for engine, rows in results.items():
        walls = [r[0] for r in rows]
        best = min(rows)
        print(
            f"  --engine {engine:<5}: {size / 1e6 / best[0]:6.1f} MB/s best "
            f"({best[0]:.2f} s, {best[1]:.2f} CPU s), {size / 1e6 / statistics.median(walls):6.1f}"
            f" median; {best[2]:,} flows, {best[2] / best[0]:,.0f} flows/s; peak RSS "
            f"{best[3] / 2**20:.0f} MiB ({len(rows)} runs)",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="run folder (default: untrained DMF)")
    parser.add_argument("--threads", type=int, default=2, help="threads of both engines")
    parser.add_argument("--flows", type=int, default=20_000, help="flows at batch 256")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size-mb", type=float, default=200.0, help="capture size (MB = 10^6)")
    parser.add_argument("--source", type=Path, action="append", help="captures to replay")
    parser.add_argument("--skip-capture", action="store_true", help="the model alone only")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dmfnet-inference-bench-") as tmp:
        work = Path(tmp)
        run = work / "run"  # a copy: the user's run folder is left untouched
        if args.run is not None:
            shutil.copytree(args.run, run)
        else:
            untrained_run(run)
        trained = load_run(run)
        started = time.perf_counter()
        export_onnx(trained, run / ONNX_FILE)
        print(f"dmfnet export: {time.perf_counter() - started:.1f} s", flush=True)
        engine = OnnxModel(run / ONNX_FILE, threads=args.threads)
        print(
            f"inference benchmark: model {trained.name}, {len(trained.classes)} classes, "
            f"{args.threads} threads, torch {torch.__version__}, onnxruntime "
            f"{_ort_version()}, {os.cpu_count()} CPUs, load average "
            f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}",
            flush=True,
        )
        print("model alone (predict_proba, inputs in memory):")
        bench_model(trained, engine, args.flows, args.repeat)
        if args.skip_capture:
            return 0
        sources = [load_source(p) for p in find_sources(args.source)]
        if not sources:
            print("no Ethernet pcap to replay (../shared/data or --source): capture skipped")
            return 0
        capture = work / "capture.pcap"
        built = build_capture(capture, int(args.size_mb * 1e6), sources)
        print(
            f"capture to predictions ({built.bytes / 1e6:.1f} MB, {built.packets:,} packets, "
            f"{built.replays} replays of {len(sources)} captures; dmfnet classify, CSV):",
            flush=True,
        )
        bench_classify(run, capture, work, args.threads, args.repeat)
    return 0


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    sys.exit(main())
