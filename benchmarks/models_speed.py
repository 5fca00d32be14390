"""Speed of every registered torch model alone: inference and training steps, CPU or CUDA.

Random-but-valid inputs of the dataset's dtypes and widths (cost does not depend on the
values); no data loading, no trainer. Prints, per model, parameters, inference flows/s
(eval, no gradients, one batch already on the device) and training flows/s (forward, the
model's own loss, backward, AdamW step), per wall second and per process CPU second (the
figure to read on a shared machine; with N threads it is up to N x below the wall rate of
an idle machine). Run as::

    python benchmarks/models_speed.py                      # CPU, every torch model
    python benchmarks/models_speed.py --device cuda --batch 4096 --amp
    python benchmarks/models_speed.py --models dmf,dmf-late --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from dmfnet.flows.schema import SCALAR_COLUMNS, SEQUENCE_COLUMNS
from dmfnet.models import available_models, create_model, get_entry


def random_columns(columns: tuple[str, ...], n: int, seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    out = []
    for name in columns:
        if name in SEQUENCE_COLUMNS:
            dtype, width = SEQUENCE_COLUMNS[name]
            if name == "directions":
                values = rng.choice(np.array([-1, 1], dtype=np.int8), (n, width))
            elif dtype == "float32":
                values = rng.random((n, width), dtype=np.float32)
            else:
                high = 256 if dtype == "uint8" else 1500
                values = rng.integers(0, high, (n, width)).astype(dtype)
        else:
            dtype = SCALAR_COLUMNS[name]
            values = (rng.random(n) * 1000).astype(dtype if dtype != "bool" else "float64")
        out.append(torch.from_numpy(np.ascontiguousarray(values)))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best_seconds(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """Best wall seconds and best process CPU seconds of ``fn`` over ``repeats`` runs.

    CPU seconds matter on a shared machine: other jobs inflate wall time, not CPU time.
    """
    fn()  # warm-up (kernel selection, allocator)
    fn()
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        best_wall = min(best_wall, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return best_wall, best_cpu


def measure(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    entry = get_entry(name)
    torch.manual_seed(0)
    model = create_model(name, args.classes).to(device)
    inputs = [t.to(device) for t in random_columns(entry.inputs, args.batch)]
    target = torch.randint(0, args.classes, (args.batch,), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)

    model.eval()

    def infer() -> None:
        with torch.inference_mode(), amp:
            model(*inputs)

    infer_s, infer_cpu_s = _best_seconds(infer, device, args.repeats)

    train_n = min(args.batch, args.train_batch)
    train_inputs = [t[:train_n] for t in inputs]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def step() -> None:
        with amp:
            out = model(*train_inputs)
            if hasattr(model, "loss"):
                loss = model.loss(out, target[:train_n])
            else:
                loss = torch.nn.functional.cross_entropy(out, target[:train_n])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_s, train_cpu_s = _best_seconds(step, device, args.repeats)
    return {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "infer_flows_per_s": args.batch / infer_s,
        "train_flows_per_s": train_n / train_s,
        "infer_flows_per_cpu_s": args.batch / infer_cpu_s,
        "train_flows_per_cpu_s": train_n / train_cpu_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="", help="comma-separated names (default: all torch)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1024, help="flows per inference batch")
    p.add_argument("--train-batch", type=int, default=256, help="flows per training step")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5, help="timed runs; the best is kept")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = [n for n in args.models.split(",") if n] or [
        n for n in available_models() if get_entry(n).kind == "torch"
    ]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"device {device} ({where}), torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, batch {args.batch}, train batch {args.train_batch}, "
        f"amp {args.amp}"
    )
    if hasattr(os, "getloadavg"):
        print("load average before: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(
        f"{'model':16s} {'parameters':>11s} {'infer flows/s':>14s} {'train flows/s':>14s}"
        f" {'infer flows/CPU-s':>18s} {'train flows/CPU-s':>18s}"
    )
    for name in names:
        r = measure(name, args, device)
        print(
            f"{r['model']:16s} {r['parameters']:>11,d} {r['infer_flows_per_s']:>14,.0f} "
            f"{r['train_flows_per_s']:>14,.0f} {r['infer_flows_per_cpu_s']:>18,.0f} "
            f"{r['train_flows_per_cpu_s']:>18,.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
