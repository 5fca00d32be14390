"""Open-set quality: how well a run's rejection threshold tells unseen classes apart.

``dmfnet benchmark DATASET -o REPORT --open-set`` runs :func:`run_open_set`. Seed ``k``
holds out ``held_out`` classes (in class-name order, classes ``k * held_out`` onwards,
wrapping round: with as many seeds as classes and one class held out per seed, each class
is held out once), trains each model on the other classes through the one training path
(:func:`dmfnet.training.trainer.train`, which calibrates the threshold on the validation
flows of the known classes) and scores two sets of flows that training never saw:

* the known test flows: the run's own test split (same seed, same duplicate rule);
* the unknown flows: every flow of the held-out classes.

Per (model, seed) ``open_set.csv`` gets the AUROC of known against unknown flows for the
score the run chose and for each score the model has, and, at the calibrated threshold,
the share of known test flows accepted and of unknown flows rejected. ``tables.md``
summarises them per model (mean ± sample std over seeds).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dmfnet.outputs import OPEN_SET, open_output
from dmfnet.training import defaults
from dmfnet.training.rejection import (
    DEFAULT_ACCEPT_RATE,
    SCORES,
    auroc,
    available_scores,
    check_accept_rate,
    flow_scores,
    run_rejection,
)

# DMF and the baselines: every one gives class probabilities.
OPEN_SET_MODELS = ("dmf", "cnn1d", "xgboost", "acid", "appnet", "mimetic")
RESULTS_FILE = "open_set.csv"
SETTINGS_FILE = "open_set.json"
OPEN_SET_COLUMNS = (
    "model",
    "seed",
    "held_out",
    "score",
    "threshold",
    "auroc",
    *(f"auroc_{name}" for name in SCORES),
    "accepted_known",
    "rejected_unknown",
    "known_test_flows",
    "unknown_flows",
    "f1_macro_known",
)
_TEXT_COLUMNS = ("model", "held_out", "score")
_TABLE = (
    ("auroc", "AUROC"),
    ("accepted_known", "Known accepted"),
    ("rejected_unknown", "Unknown rejected"),
    *((f"auroc_{name}", f"AUROC ({name})") for name in SCORES),
    ("f1_macro_known", "Known macro-F1"),
)


def held_out_classes(classes: Sequence[str], seed: int, held_out: int) -> list[str]:
    """The classes seed ``seed`` holds out: ``held_out`` of the sorted class names, from
    ``seed * held_out`` on, wrapping round."""
    names = sorted(str(c) for c in classes)
    if not 1 <= held_out <= len(names) - 2:
        raise ValueError(
            f"held-out classes per seed must be 1 to {len(names) - 2} (training needs 2 known "
            f"classes of the {len(names)}), got {held_out}"
        )
    start = seed * held_out
    return [names[(start + i) % len(names)] for i in range(held_out)]


def open_set_scores(
    trained: Any, known: Mapping[str, np.ndarray], unknown: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """AUROC per score and accept/reject rates at the run's threshold, for a loaded run,
    the inputs of its known test flows and those of flows of classes it never saw."""
    rule = run_rejection(trained.info)
    known_logits = trained.predict_logits(known)
    unknown_logits = trained.predict_logits(unknown)
    out: dict[str, Any] = {"score": rule.score, "threshold": rule.threshold}
    for name in SCORES:
        value = math.nan
        if name in available_scores(trained.kind):
            value = auroc(flow_scores(known_logits, name), flow_scores(unknown_logits, name))
        out[f"auroc_{name}"] = value
    out["auroc"] = out[f"auroc_{rule.score}"]
    known_scores, unknown_scores = rule.scores(known_logits), rule.scores(unknown_logits)
    out["accepted_known"] = float(rule.accepts(known_scores).mean())
    out["rejected_unknown"] = float((~rule.accepts(unknown_scores)).mean())
    out["known_test_flows"] = len(known_scores)
    out["unknown_flows"] = len(unknown_scores)
    return out


# ----------------------------------------------------------------------------- open_set.csv


def read_open_set(path: str | Path) -> list[dict[str, Any]]:
    """Rows of ``open_set.csv`` (numbers as float, seed as int; a later row for the same
    (model, seed) replaces an earlier one)."""
    path = Path(path)
    if not path.exists():
        return []
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for line, raw in enumerate(csv.DictReader(fh), start=2):
            try:
                row: dict[str, Any] = {c: raw[c] for c in _TEXT_COLUMNS}
                row["seed"] = int(raw["seed"])
                for c in OPEN_SET_COLUMNS:
                    if c not in row:
                        row[c] = float(raw[c]) if raw[c] not in ("", None) else math.nan
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}, line {line}: unreadable row ({exc!r})") from None
            rows[(row["model"], row["seed"])] = row
    return list(rows.values())


def _append(path: Path, row: Mapping[str, Any]) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(OPEN_SET_COLUMNS)
        values = []
        for c in OPEN_SET_COLUMNS:
            value = row[c]
            if isinstance(value, float):
                value = "" if math.isnan(value) else repr(value)
            values.append(value)
        writer.writerow(values)


def _cell(values: Sequence[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    mean = 100 * float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {100 * float(np.std(values, ddof=1)):.2f}"


def write_open_set_tables(
    results_csv: str | Path, out_dir: str | Path, info: Mapping[str, Any]
) -> Path:
    """``tables.md``: per model, mean ± sample std over seeds (in %) of the AUROC, the known
    test flows accepted and the unknown flows rejected at the calibrated threshold, the
    AUROC of each score and the macro-F1 on the known test flows; then one line per run."""
    rows = read_open_set(results_csv)
    if not rows:
        raise ValueError(f"{results_csv} holds no open-set results yet")
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = ["# Open-set benchmark", ""]
    for key, value in info.items():
        lines.append(f"- **{key[0].upper() + key[1:]}:** {value}")
    lines += [
        "",
        "AUROC: the chance that a known test flow scores above a flow of a held-out class, "
        "with the score each run chose on its validation flows (then with each score). "
        "Known accepted / unknown rejected: shares of the known test flows and of the "
        "held-out flows on each side of the run's calibrated threshold. Mean ± sample std "
        "over seeds, in %.",
        "",
        "| Model | Runs | " + " | ".join(label for _, label in _TABLE) + " | Score chosen |",
        "|---|---:|" + "---:|" * len(_TABLE) + "---|",
    ]
    for model in models:
        own = [r for r in rows if r["model"] == model]
        chosen = ", ".join(
            f"{name} ×{sum(r['score'] == name for r in own)}"
            for name in SCORES
            if any(r["score"] == name for r in own)
        )
        cells = [_cell([float(r[key]) for r in own]) for key, _ in _TABLE]
        lines.append(f"| {model} | {len(own)} | " + " | ".join(cells) + f" | {chosen} |")
    lines += [
        "",
        "## Runs",
        "",
        "| Model | Seed | Held out | Score | Threshold | AUROC | Known accepted | "
        "Unknown rejected | Known test flows | Unknown flows |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (models.index(r["model"]), r["seed"])):
        lines.append(
            f"| {r['model']} | {r['seed']} | {r['held_out']} | {r['score']} | "
            f"{r['threshold']:.4g} | {_cell([r['auroc']])} | {_cell([r['accepted_known']])} | "
            f"{_cell([r['rejected_unknown']])} | {int(r['known_test_flows']):,} | "
            f"{int(r['unknown_flows']):,} |"
        )
    path = Path(out_dir) / "tables.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- running


def _check_settings(report_dir: Path, settings: Mapping[str, Any]) -> None:
    """Refuse to mix open-set results of different settings in one report folder."""
    path = report_dir / SETTINGS_FILE
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        differ = [k for k in settings if previous.get(k) != settings[k]]
        if differ:
            raise ValueError(
                f"{report_dir} holds open-set results of other settings ("
                + "; ".join(f"{k}: {previous.get(k)!r} before, {settings[k]!r} now" for k in differ)
                + "); use a new report folder"
            )
    path.write_text(json.dumps(dict(settings), indent=2, default=str), encoding="utf-8")


def run_open_set(
    dataset: Any,
    report_dir: str | Path,
    *,
    models: Sequence[str] = OPEN_SET_MODELS,
    seeds: int = 5,
    held_out: int = 1,
    accept_rate: float = DEFAULT_ACCEPT_RATE,
    split: str = "random",
    keep_duplicates: bool = False,
    epochs: int = defaults.EPOCHS,
    batch_size: int | None = None,
    lr: float = defaults.LR,
    weight_decay: float = defaults.WEIGHT_DECAY,
    patience: int = defaults.PATIENCE,
    schedule: str = defaults.SCHEDULE,
    ema: float = defaults.EMA,
    device: str | None = None,
    model_config: Mapping[str, Mapping[str, Any]] | None = None,
    min_class_flows: int = 0,
    drop_classes: Sequence[str] = (),
    progress: bool = True,
    train_fn: Callable[..., dict[str, Any]] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Hold out classes per seed, train ``models`` on the rest, score known and unknown flows.

    Writes ``runs/<model>/seed<k>/`` (full run folders), ``open_set.csv`` (one row per
    finished (model, seed), appended at once: a rerun resumes), ``open_set.json`` (the
    settings; a folder of other settings is refused) and ``tables.md``. Returns ``trained``,
    ``skipped`` and ``failed`` lists and the path of ``tables.md`` (``None`` without
    results). ``min_class_flows`` and ``drop_classes`` choose the classes first, as in
    :func:`~dmfnet.training.benchmark.run_benchmark`; the held-out classes are taken from
    those kept.
    """
    from dmfnet.data import load_dataset
    from dmfnet.models import get_entry
    from dmfnet.training.benchmark import shared_duplicate_inputs
    from dmfnet.training.runs import load_run
    from dmfnet.training.trainer import column, select_classes, split_indices

    if train_fn is None:
        from dmfnet.training.trainer import train as train_fn
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    check_accept_rate(accept_rate)
    models = list(dict.fromkeys(models))
    if not models:
        raise ValueError("no models chosen")
    for m in models:
        get_entry(m)  # unknown names fail here, before any training
    report_dir = Path(report_dir)
    source = dataset if isinstance(dataset, (str, Path)) else getattr(dataset, "path", None)
    with open_output(report_dir, OPEN_SET, force=force, inputs=[source or None]):
        dataset_name = str(Path(source).resolve()) if source else "(in memory)"
        ds = load_dataset(dataset) if isinstance(dataset, (str, Path)) else dataset
        ds = select_classes(ds, min_class_flows=min_class_flows, drop_classes=drop_classes)
        classes = [str(c) for c in ds.classes]
        held_per_seed = [held_out_classes(classes, seed, held_out) for seed in range(seeds)]
        model_config = {k: dict(v) for k, v in (model_config or {}).items()}
        duplicate_inputs = (
            None if keep_duplicates else shared_duplicate_inputs(models, model_config)
        )
        settings = {
            "dataset": dataset_name,
            "classes": classes,
            "held_out_per_seed": held_out,
            "accept_rate": accept_rate,
            "split": split,
            "keep_duplicates": bool(keep_duplicates),
            "duplicate_inputs": duplicate_inputs,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "patience": patience,
            "schedule": schedule,
            "ema": ema,
            "model_config": model_config,
        }
        _check_settings(report_dir, settings)
        results_csv = report_dir / RESULTS_FILE
        done = {(r["model"], r["seed"]) for r in read_open_set(results_csv)}
        labels = np.asarray(ds.labels).astype(str)

        trained, skipped, failed = [], [], []
        for seed, held in enumerate(held_per_seed):
            pending = [m for m in models if (m, seed) not in done]
            skipped += [(m, seed) for m in models if (m, seed) in done]
            if not pending:
                continue
            known_ds = select_classes(ds, drop_classes=held)
            unknown_idx = np.flatnonzero(np.isin(labels, held))
            for model in pending:
                run_dir = report_dir / "runs" / model / f"seed{seed}"
                if run_dir.exists():  # unfinished or of other settings: train again
                    shutil.rmtree(run_dir)
                if progress:
                    print(f"open set, seed {seed}: {model}, held out {', '.join(held)}", flush=True)
                try:
                    metrics = train_fn(
                        known_ds, run_dir, model=model, seed=seed, split=split,
                        keep_duplicates=keep_duplicates, epochs=epochs, batch_size=batch_size,
                        lr=lr, weight_decay=weight_decay, patience=patience, schedule=schedule,
                        ema=ema, device=device, model_config=model_config.get(model),
                        duplicate_inputs=duplicate_inputs, accept_rate=accept_rate,
                        progress=progress,
                    )  # fmt: skip
                    run = load_run(run_dir)
                    _, _, test_idx, _ = split_indices(
                        known_ds,
                        duplicate_inputs or list(run.inputs),
                        seed=seed,
                        split=split,
                        keep_duplicates=keep_duplicates,
                    )
                    known = {c: column(known_ds, c)[test_idx] for c in run.inputs}
                    unknown = {c: column(ds, c)[unknown_idx] for c in run.inputs}
                    scores = open_set_scores(run, known, unknown)
                except (KeyboardInterrupt, MemoryError):
                    raise
                except Exception as exc:
                    failed.append((model, seed, f"{type(exc).__name__}: {exc}"))
                    with open(report_dir / "failures.log", "a", encoding="utf-8") as fh:
                        fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
                                 f"{model} seed {seed}: {type(exc).__name__}: {exc}\n")  # fmt: skip
                    if progress:
                        print(f"  {model}, seed {seed} failed: {exc}", flush=True)
                    continue
                row = {"model": model, "seed": seed, "held_out": ";".join(held), **scores,
                       "f1_macro_known": metrics["f1_macro"]}  # fmt: skip
                _append(results_csv, row)
                trained.append((model, seed))
                if progress:
                    print(
                        f"  {model}, seed {seed}: AUROC {100 * row['auroc']:.2f} % "
                        f"({row['score']}), known accepted {100 * row['accepted_known']:.2f} %, "
                        f"unknown rejected {100 * row['rejected_unknown']:.2f} %",
                        flush=True,
                    )
        info = {
            "dataset": f"{dataset_name} ({len(labels):,} flows, {len(classes)} classes)",
            "held out": f"{held_out} class(es) per seed, in class-name order; seeds "
            + "; ".join(f"{k}: {', '.join(h)}" for k, h in enumerate(held_per_seed)),
            "unknown flows": "every flow of the held-out classes",
            "known flows": "the run's test split of the other classes "
            + ("(duplicates kept)" if keep_duplicates else "(duplicate test flows dropped "
               "as in the benchmark)"),
            "threshold": f"calibrated on the validation flows to accept {accept_rate:.0%}",
            "split": split,
            "epochs (max)": epochs,
            "early stopping patience": patience,
        }  # fmt: skip
        if min_class_flows:
            info["classes kept"] = f"at least {min_class_flows} flows"
        if drop_classes:
            info["classes left out"] = ", ".join(sorted(drop_classes))
        tables = (
            write_open_set_tables(results_csv, report_dir, info) if results_csv.exists() else None
        )
        return {"trained": trained, "skipped": skipped, "failed": failed, "tables": tables}
