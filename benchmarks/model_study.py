"""Model study: DMF variants scored on VALIDATION splits over several datasets and seeds.

Every choice of DMF's defaults (docs/model-study.md) was decided with this script, never on
test scores. A variant is a DMF configuration plus training options; each (variant,
dataset, seed) is trained by the one training path (``dmfnet.training.trainer.train``) and
scored by its best validation macro-F1 (the epoch early stopping keeps). Rows go to
``OUT/study.csv`` as they finish, so an interrupted study resumes; the table printed at the
end (and written to ``OUT/study.md``) is the mean over seeds per dataset, the mean over
datasets, and the mean over seeds of the per-seed spread.

    python benchmarks/model_study.py -o /tmp/study \\
        --dataset demo=/tmp/ev/demo --dataset ndpi=/tmp/ev/ndpi:50:Unknown \\
        --dataset iot=/tmp/ev/iot:50 --seeds 3 --variants paper,sign,payload

A dataset is ``NAME=PATH[:MIN_CLASS_FLOWS[:DROP,CLASSES]]``. ``--list`` prints the variants.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# Variant name -> (DMF configuration overrides, train() overrides, what it tests).
# "paper" is the paper's literal reading (dmf-paper); the others change one thing at a
# time against the defaults they name.
# Pinned in full (dmf.PAPER_CONFIG), so that round 1's variants keep meaning what they meant
# when DMF's defaults moved on.
PAPER: dict[str, Any] = {"length_direction": "none", "byte_column": "bytes",
                         "byte_scaling": "linear", "length_scaling": "sqrt",
                         "length_packets": "all", "label_smoothing": 0.0, "byte_mask": 0.0}
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "paper": (PAPER, {}, "the paper's inputs: first 5 packets, unsigned lengths"),
    "sign": ({**PAPER, "length_direction": "sign"}, {}, "lengths signed by direction"),
    "channel": ({**PAPER, "length_direction": "channel"}, {}, "direction as a 2nd length input"),
    "payload": ({**PAPER, "byte_column": "payload_packet_bytes"}, {},
                "bytes of the first 5 packets that carry payload"),
    "sign+plen": ({**PAPER, "length_direction": "sign", "length_packets": "payload"}, {},
                  "signed lengths of the packets that carry payload"),
    "sign+plen+payload": ({**PAPER, "length_direction": "sign", "length_packets": "payload",
                           "byte_column": "payload_packet_bytes"}, {},
                          "payload packets in both modalities"),
    "sign+payload": ({**PAPER, "length_direction": "sign",
                      "byte_column": "payload_packet_bytes"}, {}, "both"),
}


def _add(name: str, base: str, config: dict[str, Any], training: dict[str, Any], what: str) -> None:
    b_cfg, b_train, _ = VARIANTS[base]
    VARIANTS[name] = ({**b_cfg, **config}, {**b_train, **training}, what)


def _recipes(base: str) -> None:
    """Training-recipe variants on top of the input variant ``base``."""
    _add(f"{base}+ls", base, {"label_smoothing": 0.1}, {}, "label smoothing 0.1")
    _add(f"{base}+mask", base, {"byte_mask": 0.1}, {}, "10 % of byte positions zeroed")
    _add(f"{base}+cos", base, {}, {"schedule": "cosine"}, "warm-up + cosine decay")
    _add(f"{base}+long", base, {}, {"epochs": 60, "patience": 10}, "60 epochs, patience 10")
    _add(f"{base}+cos60", base, {}, {"schedule": "cosine", "epochs": 60, "patience": 60},
         "cosine over 60 epochs, no early stop")
    _add(f"{base}+ema", base, {}, {"ema": 0.99}, "weights averaged (EMA 0.99)")
    _add(f"{base}+cos+ema", base, {}, {"schedule": "cosine", "ema": 0.99}, "cosine + EMA")
    _add(f"{base}+cos40+ema", base, {}, {"schedule": "cosine", "epochs": 40, "patience": 10,
                                         "ema": 0.99}, "cosine over 40 epochs + EMA, patience 10")
    _add(f"{base}+g0", base, {"gamma": 0.0}, {}, "no contrastive term")
    _add(f"{base}+tok4", base, {"fusion_tokens": 4}, {}, "4 fusion tokens")
    _add(f"{base}+ch32", base, {"channels": (32, 64, 128)}, {}, "channels 32/64/128")
    _add(f"{base}+late", base, {"deep_fusion": False}, {}, "late fusion only")
    _add(f"{base}+nob", base, {"modalities": ("lengths",)}, {}, "lengths only")
    _add(f"{base}+nol", base, {"modalities": ("bytes",)}, {}, "bytes only")
    _add(f"{base}+wd", base, {}, {"weight_decay": 5e-2}, "weight decay 0.05")
    _add(f"{base}+lr3", base, {}, {"lr": 3e-4}, "learning rate 3e-4")
    _add(f"{base}+drop", base, {"mlp_dropout": 0.3}, {}, "MLP dropout 0.3")


for _base in ("paper", "sign", "channel", "payload", "sign+payload", "sign+plen",
              "sign+plen+payload"):
    _recipes(_base)
    # The recipe "R": more optimiser steps (batch for >= 128 steps an epoch), warm-up +
    # cosine decay over 40 epochs, weights averaged, patience 10.
    _add(f"{_base}+R", _base, {}, {"min_steps": 128, "schedule": "cosine", "epochs": 40,
                                   "patience": 10, "ema": 0.99}, "recipe R")

for _base in ("sign+R", "sign+payload+R", "paper+R"):
    _add(f"{_base}+lb", _base, {"byte_scaling": "learned"}, {}, "learned byte values")
    _add(f"{_base}+ll", _base, {"length_scaling": "learned"}, {}, "learned length values")
    _add(f"{_base}+lbl", _base, {"byte_scaling": "learned", "length_scaling": "learned"}, {},
         "learned byte and length values")


# DMF's defaults as they are now; a new study starts from here.
VARIANTS["default"] = ({}, {}, "DMF's defaults")
_add("default+e60", "default", {}, {"epochs": 60}, "at most 60 epochs (cosine over 60)")

# Rounds 2 and 3, on datasets that record 60 packets per flow (dmfnet prepare's default),
# against "r2": DMF's defaults after round 2 (signed lengths of the first 30 packets that
# carry payload, payload packets' bytes, recipe R, learned values; no byte masking). In the
# study tables of docs/model-study.md this row is "default" and the others "default+...":
# they were run while these were DMF's defaults.
VARIANTS["r2"] = ({"byte_mask": 0.0}, {}, "DMF's defaults after round 2 (no byte masking)")
_add("r2-all30", "r2", {"length_packets": "all"}, {},
     "lengths of the first 30 packets, payload or not (the default before round 2)")
_add("r2+e60", "r2", {}, {"epochs": 60}, "at most 60 epochs (cosine over 60)")
_add("r2+ls", "r2", {"label_smoothing": 0.1}, {}, "label smoothing 0.1")
# Round 3: regularisers, looking for a lower spread over seeds (DMF-only changes; the
# shared training loop stays as it is). r2+mask is DMF's default now.
_add("r2+mask", "r2", {"byte_mask": 0.1}, {}, "10 % of byte positions zeroed in training")
_add("r2+drop", "r2", {"mlp_dropout": 0.3}, {}, "MLP dropout 0.3 (default 0.1)")
_add("r2+hd", "r2", {"head_dropout": 0.5}, {}, "head dropout 0.5 (default 0.2)")
_add("r2+fd", "r2", {"fusion_dropout": 0.1}, {},
     "dropout 0.1 inside the fusion Transformers (default 0)")


def _batch_for(n_train: int, min_steps: int) -> int:
    """The trainer's auto batch size rule with another step target."""
    target = max(n_train // min_steps, 1)
    return int(min(max(1 << (target.bit_length() - 1), 32), 256))

FIELDS = ("variant", "dataset", "seed", "val_f1", "val_accuracy", "best_epoch", "epochs_run",
          "seconds")  # fmt: skip


def _register(variant: str) -> str:
    """A registry entry for the variant (in this process only); returns its model name.
    ``=NAME`` is the registered model NAME as it is (a baseline, say)."""
    from dmfnet.models.dmf import DMF, DMFConfig, model_inputs
    from dmfnet.models.registry import _REGISTRY, register_model

    if variant.startswith("="):
        return variant[1:]
    name = f"study:{variant}"
    if name in _REGISTRY:
        return name
    config = dict(VARIANTS[variant][0])

    def build(num_classes: int, **overrides: Any) -> DMF:
        return DMF(DMFConfig(num_classes=num_classes, **{**config, **overrides}))

    inputs = model_inputs(DMFConfig(**config))
    register_model(name, inputs=inputs, group="ablation", description=VARIANTS[variant][2])(build)
    return name


def validation_scores(ds: Any, run_dir: Path, seed: int) -> dict[str, float]:
    """Accuracy and macro-F1 of the saved run on its validation split (same seed, same split)."""
    from dmfnet.training.metrics import classification_metrics
    from dmfnet.training.runs import load_run
    from dmfnet.training.trainer import split_indices

    model = load_run(run_dir)
    _, val_idx, _, _ = split_indices(ds, model.inputs, seed=seed, keep_duplicates=True)
    proba = model.predict_proba({c: np.asarray(ds[c])[val_idx] for c in model.inputs})
    names = [str(c) for c in range(len(ds.classes))]
    return classification_metrics(ds.y[val_idx], proba.argmax(axis=1), names)


def _parse_dataset(text: str) -> tuple[str, str, int, list[str]]:
    name, _, rest = text.partition("=")
    parts = rest.split(":")
    min_flows = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    drop = parts[2].split(",") if len(parts) > 2 and parts[2] else []
    return name, parts[0], min_flows, drop


def _read(path: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        return {(r["variant"], r["dataset"], int(r["seed"])): r for r in csv.DictReader(fh)}


def summary_table(rows: list[dict[str, Any]], variants: list[str], datasets: list[str]) -> str:
    """Markdown: validation macro-F1 (%) per dataset (mean ± std over seeds) and overall."""
    head = "| variant | " + " | ".join(datasets) + " | mean | mean spread | runs |"
    lines = [head, "|---|" + "---:|" * (len(datasets) + 3)]
    for v in variants:
        cells, means, spreads, runs = [], [], [], 0
        for d in datasets:
            f1 = np.array([float(r["val_f1"]) for r in rows
                           if r["variant"] == v and r["dataset"] == d])  # fmt: skip
            runs += len(f1)
            if not len(f1):
                cells.append("")
                continue
            std = float(f1.std(ddof=1)) if len(f1) > 1 else math.nan
            means.append(f1.mean())
            spreads.append(std)
            cells.append(f"{100 * f1.mean():.2f}" + ("" if math.isnan(std) else f" ± {100 * std:.2f}"))
        if not runs:
            continue
        mean = f"{100 * np.mean(means):.2f}" if len(means) == len(datasets) else ""
        spread = [s for s in spreads if not math.isnan(s)]
        sp = f"{100 * np.mean(spread):.2f}" if len(spread) == len(datasets) else ""
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {mean} | {sp} | {runs} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--out", type=Path, default=Path("/tmp/model-study"))
    parser.add_argument("--dataset", action="append", default=[], help="NAME=PATH[:MIN[:DROP]]")
    parser.add_argument("--variants", default="paper,sign", help="comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, or a count")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--report-only", action="store_true", help="print the table only")
    args = parser.parse_args()
    if args.list:
        for name, (cfg, tr, what) in VARIANTS.items():
            print(f"{name:22s} {what}; config {cfg}; training {tr}")
        return
    import torch

    from dmfnet.data import load_dataset
    from dmfnet.training.trainer import select_classes, train

    torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS and not v.startswith("="):
            sys.exit(f"unknown variant {v!r} (--list shows them)")
    seeds = (list(range(int(args.seeds))) if args.seeds.isdigit()
             else [int(s) for s in args.seeds.split(",")])  # fmt: skip
    datasets = [_parse_dataset(d) for d in args.dataset]
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "study.csv"
    done = _read(results)
    if not args.report_only:
        for name, path, min_flows, drop in datasets:
            ds = None
            for v in variants:
                for seed in seeds:
                    if (v, name, seed) in done:
                        continue
                    if ds is None:
                        ds = select_classes(load_dataset(path), min_class_flows=min_flows,
                                            drop_classes=drop)  # fmt: skip
                    run_dir = args.out / "runs" / v / name / f"seed{seed}"
                    start = time.perf_counter()
                    training = dict(VARIANTS[v][1]) if v in VARIANTS else {}
                    if "min_steps" in training:
                        n_train = int(0.8 * len(ds.y))
                        training["batch_size"] = _batch_for(n_train, training.pop("min_steps"))
                    result = train(ds, run_dir, model=_register(v), seed=seed, device="cpu",
                                   progress=False, **training)  # fmt: skip
                    scores = validation_scores(ds, run_dir, seed)
                    row = {"variant": v, "dataset": name, "seed": seed,
                           "val_f1": scores["f1_macro"], "val_accuracy": scores["accuracy"],
                           "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"],
                           "seconds": f"{time.perf_counter() - start:.1f}"}  # fmt: skip
                    new = not results.exists()
                    with open(results, "a", newline="", encoding="utf-8") as fh:
                        w = csv.DictWriter(fh, fieldnames=FIELDS)
                        if new:
                            w.writeheader()
                        w.writerow(row)
                    done[(v, name, seed)] = row
                    print(f"{v} {name} seed {seed}: val F1 {100 * float(row['val_f1']):.2f} "
                          f"(epoch {row['best_epoch']}/{row['epochs_run']}, {row['seconds']} s)",
                          flush=True)  # fmt: skip
    rows = list(_read(results).values())
    names = [d[0] for d in datasets] or sorted({r["dataset"] for r in rows})
    shown = variants if not args.report_only else list(dict.fromkeys(r["variant"] for r in rows))
    table = summary_table(rows, shown, names)
    (args.out / "study.md").write_text(table + "\n", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    main()
