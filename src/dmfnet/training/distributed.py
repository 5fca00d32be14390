"""Several training processes under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node=2 -m dmfnet.cli train ...`` sets ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; :func:`setup` then joins the process group
(gloo on CPU, nccl on CUDA, one GPU per local rank). Every process draws the same
permutation of the training flows each epoch and takes its own equal-sized shard (the
``DistributedSampler`` scheme, padded by wrapping around), so all processes run the same
number of steps. Validation is sharded too and gathered, so every process takes the same
early-stopping decision. Without ``WORLD_SIZE`` > 1 every function here is a no-op.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

_owned = False  # True when setup() created the process group (and teardown() ends it)
_device: torch.device | None = None


def requested() -> bool:
    """True when launched as one of several processes (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def device() -> torch.device | None:
    """This process's device under torchrun; ``None`` when not distributed."""
    return _device if active() else None


def setup(device: str | torch.device | None = None) -> None:
    """Join the process group when launched by torchrun: nccl for CUDA, gloo for CPU."""
    global _owned, _device
    if not requested() or not dist.is_available():
        return
    want_cuda = (
        torch.cuda.is_available() if device in (None, "auto") else str(device).startswith("cuda")
    )
    if want_cuda and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available")
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        _device = torch.device("cuda", local)
    else:
        _device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        _owned = True


def teardown() -> None:
    """Leave the process group if :func:`setup` joined it."""
    global _owned
    if _owned and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _owned = False


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``module`` (already on ``device``)."""
    ids = [device.index] if device.type == "cuda" else None
    # Every step uses the same parameters (static graph): DDP learns them in the first step,
    # so a model with unused parameters works without a graph traversal every step.
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, static_graph=True)


def shard(order: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This process's equal-sized share of ``order`` (padded by wrapping around)."""
    if world <= 1:
        return order
    total = -(-len(order) // world) * world
    padded = np.resize(order, total) if total != len(order) else order
    return padded[rank::world]


def gather_validation(
    pred: np.ndarray, true: np.ndarray, loss_sum: float, train_loss_sum: float, seen: int
) -> tuple[np.ndarray, np.ndarray, float, float, int]:
    """Combine every process's validation predictions and loss sums."""
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, (pred, true, loss_sum, train_loss_sum, seen))
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        float(sum(p[2] for p in parts)),
        float(sum(p[3] for p in parts)),
        int(sum(p[4] for p in parts)),
    )


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
