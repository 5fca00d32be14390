"""The whole pipeline on the bundled captures, in a few minutes: ``dmfnet demo``.

``demo/captures/<class>/*.pcap`` (real encrypted traffic recorded on loopback by
``scripts/make_demo_captures.py``) -> ``prepare`` (labels from the folders) -> ``train``
DMF -> test metrics and report -> ``classify`` one capture. Everything goes into one
output folder: ``dataset/``, ``run/``, ``predictions.csv`` and, written last,
``demo.json``, which marks it as a finished demo: a rerun replaces it. Any other
non-empty folder is refused unless ``force`` (see :mod:`dmfnet.outputs`).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dmfnet
from dmfnet.outputs import DEMO, open_output
from dmfnet.training import defaults

CAPTURES_ENV = "DMFNET_DEMO_CAPTURES"
DEFAULT_CAPTURE = Path("tls-chat") / "tls-chat-2.pcap"  # the capture classified at the end
# The demo trains as `dmfnet train` does by default (batch 32 on its ~860 training flows).
DEMO_BATCH_SIZE = 32
DEMO_EPOCHS = defaults.EPOCHS
DEMO_PATIENCE = defaults.PATIENCE


class DemoError(ValueError):
    """The demo cannot run: bundled captures not found, output in the way."""


@dataclass
class DemoResult:
    """Where the demo wrote its dataset, run, report and predictions, and the test metrics."""

    dataset: Path
    run: Path
    report: Path
    predictions: Path
    metrics: dict[str, Any]


def demo_captures() -> Path:
    """The bundled ``demo/captures`` folder.

    Looked up in ``$DMFNET_DEMO_CAPTURES``, then beside the package's source tree (a clone,
    or ``pip install -e .``), then under the current folder.
    """
    candidates = []
    if os.environ.get(CAPTURES_ENV):
        candidates.append(Path(os.environ[CAPTURES_ENV]))
    package = Path(dmfnet.__file__).resolve().parent  # <repo>/src/dmfnet
    candidates += [package.parents[1] / "demo" / "captures", Path.cwd() / "demo" / "captures"]
    for path in candidates:
        if path.is_dir() and any(p.is_dir() for p in path.iterdir()):
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise DemoError(
        f"bundled demo captures not found (tried {tried}); run from a clone of the "
        f"repository, set {CAPTURES_ENV}, or record them with scripts/make_demo_captures.py"
    )


def run_demo(
    out: str | Path = "demo-run",
    *,
    epochs: int = DEMO_EPOCHS,
    batch_size: int = DEMO_BATCH_SIZE,
    patience: int = DEMO_PATIENCE,
    seed: int = 0,
    captures: str | Path | None = None,
    classify_capture: str | Path | None = None,
    shown: int = 8,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> DemoResult:
    """Prepare the bundled captures, train DMF, print metrics, classify one capture.

    ``out`` may be new, empty or an earlier demo's (replaced); another non-empty folder
    needs ``force``. A demo that fails or is interrupted removes what it wrote."""
    from dmfnet.classify import classify_captures
    from dmfnet.data import prepare
    from dmfnet.training.report import metrics_table, per_class_table
    from dmfnet.training.trainer import train

    if epochs < 1:
        raise DemoError(f"epochs must be at least 1, not {epochs}")
    if batch_size < 1:
        raise DemoError(f"batch size must be at least 1, not {batch_size}")
    source = Path(captures) if captures is not None else demo_captures()
    if not source.is_dir():
        raise DemoError(f"{source}: no such folder")
    out = Path(out)
    try:
        output = open_output(out, DEMO, force=force)
    except ValueError as exc:
        raise DemoError(str(exc)) from None
    with output:
        dataset_dir, run_dir = out / "dataset", out / "run"
        predictions = out / "predictions.csv"

        _say(f"1/3 prepare: {source} -> {dataset_dir} (labels from the class folders)")
        summary = prepare(
            source, dataset_dir, labels="folder", workers=workers, progress=progress, force=force
        )
        print(summary.report(warnings=False), flush=True)

        _say(
            f"2/3 train DMF: {epochs} epochs at most, batch {batch_size}, seed {seed} -> {run_dir}"
        )
        metrics = train(
            dataset_dir,
            run_dir,
            model="dmf",
            seed=seed,
            epochs=epochs,
            batch_size=batch_size,
            patience=patience,
            device="cpu",
            progress=progress,
            force=force,
        )
        print()
        print(f"test metrics ({metrics['test_size']} held-out flows, random 8:1:1 split):")
        print(metrics_table(metrics))
        print()
        print(per_class_table(metrics))
        report = run_dir / "report.md"
        print(f"\nreport: {report}", flush=True)

        target = Path(classify_capture) if classify_capture else source / DEFAULT_CAPTURE
        if not target.exists():
            target = next(iter(sorted(source.rglob("*.pcap*"))), target)
        _say(f"3/3 classify: {target} -> {predictions}")
        result = classify_captures(run_dir, [target], predictions, progress=False)
        print(_first_rows(predictions, shown))
        print(result.report())
        print(
            "(the demo model was trained on most flows of the bundled captures; "
            "classify your own: dmfnet classify " + f"{run_dir} CAPTURE... -o predictions.csv)"
        )
        record = {
            "dataset": dataset_dir.name,
            "run": run_dir.name,
            "predictions": predictions.name,
            "captures": str(source),
            "test_metrics": {k: metrics[k] for k in ("accuracy", "f1_macro") if k in metrics},
        }
        (out / "demo.json").write_text(json.dumps(record, indent=2) + "\n")  # last: finished
    return DemoResult(dataset_dir, run_dir, report, predictions, metrics)


def _say(line: str) -> None:
    print(f"\n== {line}", flush=True)


def _first_rows(path: Path, n: int) -> str:
    """The first ``n`` predictions as an aligned table."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(itertools.islice(csv.DictReader(handle), n))
    if not rows:
        return "(no flows)"
    table = [("client", "server", "packets", "predicted", "top")]
    for r in rows:
        table.append(
            (
                _endpoint(r["client_ip"], r["client_port"]),
                _endpoint(r["server_ip"], r["server_port"]),
                r["packets"],
                f"{r['predicted']} ({float(r['probability']):.2f})",
                r["top"].replace(";", "  "),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    lines = [
        "  ".join(f"{cell:<{w}}" for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in table
    ]
    return "\n".join(lines)


def _endpoint(ip: str, port: str) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
