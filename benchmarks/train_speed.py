"""Training and scoring speed of the shared training loop on this machine.

Builds an in-memory flow dataset with the real column shapes (every column the model reads,
with the schema's widths; class-dependent so that training has something to learn), trains a
registered model for a fixed number of epochs with :func:`dmfnet.training.train` and
prints flows/s of training and of test-set scoring. Run as::

    python benchmarks/train_speed.py --flows 100000 --epochs 2 --device cpu
    torchrun --nproc_per_node=2 benchmarks/train_speed.py --flows 20000   # DDP on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch

from dmfnet.data.dataset import FlowDataset
from dmfnet.models.registry import model_inputs
from dmfnet.training.complexity import synthetic_inputs
from dmfnet.training.trainer import train


def make_flows(n: int, classes: int, model: str, seed: int = 0) -> FlowDataset:
    """``n`` flows of ``classes`` classes holding every column ``model`` reads, with the
    schema's dtypes and widths; header bytes and packet lengths depend on the class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    columns = synthetic_inputs(model_inputs(model), n, seed)
    for name in ("bytes", "payload_packet_bytes"):
        if name in columns:
            columns[name][:, :80] = (20 + 40 * y % 230)[:, None].astype(np.uint8)
    for name in ("lengths", "payload_lengths"):
        if name in columns:
            width = columns[name].shape[1]
            packets = 4 + 2 * y
            values = (60 + 120 * y)[:, None] + rng.integers(0, 400, (n, width))
            keep = np.arange(width)[None] < packets[:, None]
            columns[name] = np.where(keep, values, 0).astype(columns[name].dtype)
    names = np.array([f"class{c:02d}" for c in range(classes)])
    return FlowDataset(
        columns=columns, labels=names[y], classes=[str(c) for c in names], y=y.astype(np.int64)
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flows", type=int, default=50_000)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--model", default="dmf")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dataset = make_flows(args.flows, args.classes, args.model)
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        result = train(
            dataset,
            run_dir,
            model=args.model,
            epochs=args.epochs,
            batch_size=args.batch_size,
            patience=0,
            device=args.device,
            progress=True,
        )
        wall = time.perf_counter() - start
    if os.environ.get("RANK", "0") != "0":
        return
    epochs = result["epochs_run"] or 1
    figures = {
        "model": args.model,
        "device": str(args.device),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "processes": int(os.environ.get("WORLD_SIZE", "1")),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "flows": args.flows,
        "train_flows": result["train_size"],
        "epochs": result["epochs_run"],
        "batch_size": args.batch_size,
        "train_seconds": round(result["train_seconds"], 2),
        "train_flows_per_s": round(result["train_size"] * epochs / result["train_seconds"]),
        "infer_flows_per_s": round(result["infer_flows_per_s"]),
        "wall_seconds": round(wall, 2),
        "test_accuracy": round(result["accuracy"], 4),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    main()
