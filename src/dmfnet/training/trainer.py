"""One training loop for DMF, its ablations and the baselines (paper §5.1).

:func:`train` splits a flow dataset (8:1:1 stratified, the paper's protocol, or by capture
file), removes test flows whose model inputs (or the columns given as ``duplicate_inputs``)
duplicate a training flow (unless asked to keep them, as the paper does), fits the model
with AdamW and early stopping on the validation macro-F1, scores the best checkpoint on
the test flows and writes a run folder (:mod:`dmfnet.training.runs`). Estimator models
(XGBoost) take the same path apart from the epoch loop. :func:`evaluate` scores a trained
run on another prepared dataset.

Batching indexes tensors made once from the dataset columns (raw dtypes, zero-copy where
possible); there is no per-flow Python object. A dataset larger than memory is streamed
instead (``loader="stream"``, chosen automatically when the inputs would not fit): the
key columns are loaded, the inputs read a buffer of Parquet row groups at a time
(:mod:`dmfnet.data.stream`, :class:`StreamedBatches`). Under ``torchrun`` (``WORLD_SIZE`` > 1) the
loop runs DistributedDataParallel and only rank 0 writes the run folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dmfnet.flows.config import recorded_flow_config
from dmfnet.flows.early import first_packets
from dmfnet.flows.early import sources as early_sources
from dmfnet.outputs import EVALUATION, RUN, Output, check_output, open_output
from dmfnet.training import defaults, distributed
from dmfnet.training.metrics import classification_metrics, improves
from dmfnet.training.rejection import (
    DEFAULT_ACCEPT_RATE,
    available_scores,
    calibrate_rejection,
    check_accept_rate,
)
from dmfnet.training.runs import (
    ESTIMATOR_DIR,
    HISTORY_FILE,
    METRICS_FILE,
    RUN_FILE,
    WEIGHTS_FILE,
    TrainedModel,
    load_run,
    model_logits,
    save_weights,
    versions,
    write_history,
    write_json,
)

SPLITS = ("random", "file")
SCHEDULES = ("cosine", "constant")
# Packets known at decision for the early-decision curve of ``evaluate(decide_after=...)``.
EARLY_PACKETS = (2, 3, 5, 10, 20, 30, 60)  # those past the run's m_packets are left out
GPU_RESIDENT_BYTES = 4 << 30  # model inputs up to this size are copied to the GPU once


@dataclass(frozen=True)
class TrainConfig:
    """The resolved training configuration, recorded in ``run.json``."""

    model: str = "dmf"
    seed: int = 0
    split: str = "random"  # "random": 8:1:1 stratified (paper); "file": by capture file
    keep_duplicates: bool = False  # True keeps duplicate test flows (the paper's protocol)
    epochs: int = defaults.EPOCHS
    batch_size: int = 256  # global: divided among processes under torchrun; see auto_batch_size
    lr: float = defaults.LR
    weight_decay: float = defaults.WEIGHT_DECAY
    patience: int = defaults.PATIENCE  # epochs without a better validation score; 0: never
    schedule: str = defaults.SCHEDULE  # learning rate: "constant", or "cosine" (warm-up + decay)
    ema: float = defaults.EMA  # decay of an exponential moving average of the weights; 0 = off
    device: str = "cpu"
    num_workers: int = 0  # DataLoader workers gathering batches; 0 gathers in-process
    world_size: int = 1
    loader: str = "memory"  # "memory": inputs loaded once; "stream": read by row groups


# ----------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so that a CPU run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA when present, else CPU; ``"cuda"`` without a GPU is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available")
    return dev


def _load(
    dataset: Any, columns: Sequence[str], loader: str = "memory", keys: Sequence[str] = ()
) -> tuple[Any, str]:
    """A FlowDataset (or, for the streaming loader, a StreamedDataset holding the ``keys``
    columns) and the path it came from ('' when built in memory)."""
    from dmfnet.data.stream import choose_loader, open_streamed

    if isinstance(dataset, (str, os.PathLike)):
        from dmfnet.data import load_dataset

        path = Path(dataset)
        if not path.exists():
            raise FileNotFoundError(f"dataset {path} does not exist")
        if choose_loader(loader, path, columns) == "stream":
            return open_streamed(path, key_columns=keys), str(path)
        return load_dataset(path, columns=list(columns)), str(path)
    choose_loader(loader, None, columns)  # "stream" needs a path: said here
    return dataset, str(getattr(dataset, "path", "") or "")


def _streamed(dataset: Any) -> bool:
    from dmfnet.data.stream import StreamedDataset

    return isinstance(dataset, StreamedDataset)


def select_classes(
    dataset: Any, *, min_class_flows: int = 0, drop_classes: Sequence[str] = ()
) -> Any:
    """The flows of the classes with at least ``min_class_flows`` flows, minus ``drop_classes``.

    Real captures label many protocols with a handful of flows (and a catch-all such as
    ``Unknown``); a classifier cannot learn or be scored on a class with 3 flows. Class
    codes are renumbered over the kept classes. Returns ``dataset`` itself when nothing is
    removed; an error names what is left when fewer than two classes remain. A class of
    ``drop_classes`` that the dataset does not have is a warning (``UserWarning``): one
    command line then serves datasets with and without a catch-all class.
    """
    if min_class_flows < 0:
        raise ValueError(f"min_class_flows must be 0 or more, got {min_class_flows}")
    labels = np.asarray(dataset.labels).astype(str)
    names, counts = np.unique(labels, return_counts=True)
    unknown = sorted(set(drop_classes) - set(names.tolist()))
    if unknown:
        warnings.warn(
            f"drop classes: the dataset has no class {', '.join(unknown)}; nothing dropped "
            "for it",
            stacklevel=2,
        )
    keep = [
        str(n)
        for n, c in zip(names, counts, strict=True)
        if c >= min_class_flows and n not in set(drop_classes)
    ]
    if len(keep) == len(names):
        return dataset
    if len(keep) < 2:
        raise ValueError(
            f"{len(keep)} class(es) left with at least {min_class_flows} flows after "
            f"dropping {', '.join(drop_classes) or 'none'}; training needs at least 2"
        )
    subset = dataset.take(np.flatnonzero(np.isin(labels, keep)))
    classes, y = np.unique(np.asarray(subset.labels).astype(str), return_inverse=True)
    subset.classes = [str(c) for c in classes]
    subset.y = y.astype(np.int64).reshape(-1)
    return subset


def column(dataset: Any, name: str) -> np.ndarray:
    """Column ``name`` of a FlowDataset, with an error that names the missing column."""
    try:
        return np.asarray(dataset[name])
    except KeyError:
        raise KeyError(f"the dataset has no column {name!r}") from None


def _card_summary(dataset: Any) -> dict[str, Any]:
    card = getattr(dataset, "card", None)
    return dict(card) if isinstance(card, Mapping) else {}


def _model_config(model: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The model's resolved config (its dataclass ``config`` when it has one)."""
    cfg = getattr(model, "config", None)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return asdict(cfg)
    return dict(overrides)


# ----------------------------------------------------------------------------- splits


def split_indices(
    dataset: Any,
    inputs: Sequence[str],
    *,
    seed: int,
    split: str = "random",
    keep_duplicates: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(train, val, test, duplicates_removed)`` flow indices under the chosen protocol."""
    from dmfnet.data.splits import (
        drop_duplicate_digests,
        drop_test_duplicates,
        split_by_file,
        split_random,
    )

    y = np.asarray(dataset.labels)  # class names, so that split warnings name classes
    if split == "random":
        train_idx, val_idx, test_idx = split_random(y, seed)
    elif split == "file":
        train_idx, val_idx, test_idx = split_by_file(column(dataset, "capture"), y, seed)
    else:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    removed = 0
    if not keep_duplicates and _streamed(dataset):  # inputs hashed row group by row group
        digests = dataset.digests(list(inputs))
        test_idx, removed = drop_duplicate_digests(train_idx, test_idx, digests)
    elif not keep_duplicates:
        arrays = {c: column(dataset, c) for c in inputs}
        test_idx, removed = drop_test_duplicates(train_idx, test_idx, arrays)
    train_idx, val_idx, test_idx = (
        np.asarray(i, dtype=np.int64) for i in (train_idx, val_idx, test_idx)
    )
    for name, idx in (("training", train_idx), ("validation", val_idx), ("test", test_idx)):
        if idx.size == 0:
            raise ValueError(
                f"the {name} split is empty ({len(y)} flows, split {split!r}); "
                "the dataset is too small for this protocol"
            )
    return train_idx, val_idx, test_idx, int(removed)


# ----------------------------------------------------------------------------- batching

MIN_STEPS_PER_EPOCH = defaults.MIN_STEPS_PER_EPOCH  # auto batch size: steps per epoch
MIN_BATCH, MAX_BATCH = defaults.MIN_BATCH, defaults.MAX_BATCH


def auto_batch_size(n_train: int) -> int:
    """Flows per step for ``n_train`` training flows: a power of two in [32, 256] giving at
    least ``MIN_STEPS_PER_EPOCH`` (128) steps per epoch where the data allows.

    A fixed 256 gives the bundled demo (864 training flows) 4 steps per epoch and the IoT
    Sentinel devices (8.3 k) 32: models stopped before they fit (docs/model-study.md).
    Datasets of 32 k training flows and more keep 256.
    """
    target = max(n_train // MIN_STEPS_PER_EPOCH, 1)
    size = 1 << (target.bit_length() - 1)  # largest power of two <= target
    return int(min(max(size, MIN_BATCH), MAX_BATCH))


def learning_rate_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base learning rate: linear warm-up, then cosine decay to zero.

    The warm-up (one epoch) keeps AdamW's first, poorly estimated steps small; the decay
    lets the last epochs settle instead of hopping around a minimum at the full rate.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive batches of ``order``; a last batch of one flow joins the one before
    (batch normalisation cannot train on a single flow)."""
    out = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(out) > 1 and len(out[-1]) == 1:
        last = out.pop()
        out[-1] = np.concatenate([out[-1], last])
    return out


class _BatchGather(torch.utils.data.Dataset):
    """Gathers a whole batch by index (used only when ``num_workers`` > 0)."""

    def __init__(self, tensors: Sequence[torch.Tensor], y: torch.Tensor) -> None:
        self.tensors, self.y = list(tensors), y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx: np.ndarray) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        index = torch.from_numpy(np.asarray(idx))
        return tuple(t[index] for t in self.tensors), self.y[index]


def _iterate(
    tensors: Sequence[torch.Tensor],
    y: torch.Tensor,
    batches: Sequence[np.ndarray],
    device: torch.device,
    num_workers: int = 0,
) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
    """Yield ``(inputs, targets)`` batches on ``device``."""
    if num_workers > 0:
        loader = torch.utils.data.DataLoader(
            _BatchGather(tensors, y),
            sampler=list(batches),
            batch_size=None,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )
        for inputs, target in loader:
            yield (
                tuple(t.to(device, non_blocking=True) for t in inputs),
                target.to(device, non_blocking=True),
            )
        return
    for idx in batches:
        index = torch.from_numpy(idx).to(tensors[0].device)
        yield (
            tuple(t[index].to(device, non_blocking=True) for t in tensors),
            y[index].to(device, non_blocking=True),
        )


class _TrainingBatches:
    """Re-iterable training batches in a fixed order, for a model's ``post_fit``."""

    def __init__(self, source: Any, idx: np.ndarray, batch_size: int) -> None:
        self.source, self.idx, self.batch_size = source, idx, batch_size

    def __iter__(self):
        return self.source.ordered(self.idx, self.batch_size)


class MemoryBatches:
    """Batches gathered from model inputs held in memory (tensors made once, zero-copy).

    Each epoch every process draws the same permutation of the training flows and takes
    its strided share (:func:`distributed.shard`).
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        inputs: Sequence[str],
        y: np.ndarray,
        device: torch.device,
        num_workers: int = 0,
    ) -> None:
        self.tensors = [_column_tensor(arrays[c]) for c in inputs]
        self.y_cpu = self.y = torch.from_numpy(np.asarray(y, dtype=np.int64))
        self.device, self.num_workers = device, num_workers
        if device.type == "cuda" and num_workers == 0:
            resident = sum(t.nbytes for t in self.tensors) + self.y.nbytes
            if resident <= GPU_RESIDENT_BYTES:  # index batches on the GPU: no copy per step
                self.tensors = [t.to(device) for t in self.tensors]
                self.y = self.y.to(device)

    def epoch(self, train_idx: np.ndarray, rng: np.random.Generator, batch_size: int):
        """This process's training batches of one epoch."""
        order = distributed.shard(rng.permutation(train_idx), *_rank_world())
        batches = _batches(order, batch_size)
        return _iterate(self.tensors, self.y, batches, self.device, self.num_workers)

    def ordered(self, idx: np.ndarray, batch_size: int):
        return _iterate(self.tensors, self.y, _batches(idx, batch_size), self.device)

    def share(self, idx: np.ndarray) -> np.ndarray:
        """This process's part of the validation flows."""
        rank, world = _rank_world()
        return idx[rank::world]

    def targets(self, idx: np.ndarray) -> np.ndarray:
        return self.y_cpu[torch.from_numpy(idx)].numpy()


class StreamedBatches:
    """Batches read from the dataset's Parquet row groups as training goes, for datasets
    larger than memory (:mod:`dmfnet.data.stream`).

    Each epoch every process computes the same order (row groups shuffled, flows shuffled
    within a buffer of ``buffer_flows``) and takes a contiguous share of it, padded by
    wrapping around as :func:`distributed.shard` pads, so that it reads about its own
    share of the row groups and every process runs the same number of steps.
    """

    def __init__(
        self,
        dataset: Any,
        inputs: Sequence[str],
        y: np.ndarray,
        device: torch.device,
        buffer_flows: int | None = None,
    ) -> None:
        from dmfnet.data.stream import BUFFER_FLOWS

        self.dataset, self.inputs = dataset, list(inputs)
        self.y = np.asarray(y, dtype=np.int64)
        self.device = device
        self.buffer_flows = buffer_flows or BUFFER_FLOWS

    def epoch(self, train_idx: np.ndarray, rng: np.random.Generator, batch_size: int):
        order, windows = self.dataset.epoch_order(train_idx, rng, self.buffer_flows)
        rank, world = _rank_world()
        per = -(-len(order) // world)
        at = np.resize(np.arange(len(order)), per * world)[rank * per : (rank + 1) * per]
        return self._batches(order[at], windows[at], batch_size)

    def ordered(self, idx: np.ndarray, batch_size: int):
        return self._batches(idx, None, batch_size)

    def share(self, idx: np.ndarray) -> np.ndarray:
        rank, world = _rank_world()
        return np.array_split(idx, world)[rank]

    def targets(self, idx: np.ndarray) -> np.ndarray:
        return self.y[idx]

    def _batches(self, flows: np.ndarray, windows: np.ndarray | None, batch_size: int):
        sizes = [len(b) for b in _batches(flows, batch_size)]
        pieces = self.dataset.read(flows, self.inputs, windows=windows)
        for rows, inputs in _rebatch(pieces, sizes):
            yield (
                tuple(
                    torch.from_numpy(np.ascontiguousarray(inputs[c])).to(
                        self.device, non_blocking=True
                    )
                    for c in self.inputs
                ),
                torch.from_numpy(self.y[rows]).to(self.device, non_blocking=True),
            )


def _rank_world() -> tuple[int, int]:
    return distributed.rank(), distributed.world_size()


def _rebatch(
    pieces: Iterator[tuple[np.ndarray, dict[str, np.ndarray]]], sizes: Sequence[int]
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """The flows of ``pieces`` (one a buffer) regrouped into batches of ``sizes``."""
    wanted = iter(sizes)
    want = next(wanted, None)
    held: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
    count = 0
    for flows, inputs in pieces:
        start = 0
        while want is not None and start < len(flows):
            take = min(want - count, len(flows) - start)
            part = slice(start, start + take)
            held.append((flows[part], {k: v[part] for k, v in inputs.items()}))
            count += take
            start += take
            if count == want:
                if len(held) == 1:
                    yield held[0]
                else:
                    yield (
                        np.concatenate([h[0] for h in held]),
                        {k: np.concatenate([h[1][k] for h in held]) for k in held[0][1]},
                    )
                held, count, want = [], 0, next(wanted, None)


class WeightAverage:
    """Exponential moving average of a model's weights (Polyak averaging).

    After every optimiser step ``avg = decay * avg + (1 - decay) * weights``; batch-norm
    statistics and other buffers are copied. Validation, early stopping and the saved
    checkpoint use the average: it moves less from step to step than the weights do, so
    the epoch early stopping picks depends less on one noisy validation score.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema must be in (0, 1), got {decay!r}")
        import copy

        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        self._params = [p for p in model.parameters()]
        self._avg = [p for p in self.model.parameters()]
        self._buffers = list(zip(self.model.buffers(), model.buffers(), strict=True))

    def current_decay(self) -> float:
        """The decay of the next update: ``min(decay, (1 + n) / (10 + n))`` after ``n``
        updates, so that the average follows the first steps closely (a plain 0.99 would
        keep the random initial weights in it for hundreds of steps)."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self._avg, self._params, 1.0 - self.current_decay())
        self.updates += 1
        for avg, current in self._buffers:
            avg.copy_(current)


class _WithLoss(nn.Module):
    """Model + its loss in one forward, so DistributedDataParallel sees a single output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return compute_loss(self.model, self.model(*inputs), target)


def compute_loss(model: nn.Module, output: Any, target: torch.Tensor) -> torch.Tensor:
    """The model's own ``loss(output, target)`` when it has one, else cross-entropy."""
    if hasattr(model, "loss"):
        loss = model.loss(output, target)
        if isinstance(loss, Mapping):
            loss = loss["loss"]
        elif isinstance(loss, (tuple, list)):
            loss = loss[0]
        return loss
    return nn.functional.cross_entropy(model_logits(output), target)


@torch.no_grad()
def _validate(
    model: nn.Module,
    source: Any,
    idx: np.ndarray,
    batch_size: int,
    device: torch.device,
) -> tuple[np.ndarray, float]:
    """Predicted class indices and summed loss over ``idx`` (eval mode)."""
    model.eval()
    preds, loss_total = [], torch.zeros((), dtype=torch.float64, device=device)
    for inputs, target in source.ordered(idx, batch_size):
        output = model(*inputs)
        loss_total += compute_loss(model, output, target) * len(target)
        preds.append(model_logits(output).argmax(1))
    pred = torch.cat(preds).cpu().numpy() if preds else np.zeros(0, np.int64)
    return pred, float(loss_total)


# ----------------------------------------------------------------------------- fitting


def _fit_torch(
    model: nn.Module,
    source: Any,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    class_names: Sequence[str],
    run_dir: Path,
    progress: bool,
) -> tuple[list[dict[str, Any]], int, str]:
    """AdamW with early stopping on validation macro-F1 (ties to the lower validation loss,
    :func:`~dmfnet.training.metrics.improves`); leaves the best weights in ``model``.

    Batches come from ``source`` (:class:`MemoryBatches` or :class:`StreamedBatches`).
    Returns the per-epoch history, the best epoch and why training stopped.
    """
    rank, world = distributed.rank(), distributed.world_size()
    model.to(device)
    net: nn.Module = _WithLoss(model)
    if world > 1:
        net = distributed.wrap(net, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    per_rank_batch = max(1, cfg.batch_size // world)
    steps_per_epoch = len(_batches(distributed.shard(train_idx, rank, world), per_rank_batch))
    scheduler = None
    if cfg.schedule == "cosine":
        total, warmup = cfg.epochs * steps_per_epoch, steps_per_epoch if cfg.epochs > 1 else 0
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: learning_rate_factor(step, total, warmup)
        )
    average = WeightAverage(model, cfg.ema) if cfg.ema else None
    scored = average.model if average is not None else model  # what is validated and kept
    val_shard = source.share(val_idx)
    labels = np.arange(len(class_names))
    history: list[dict[str, Any]] = []
    best_f1, best_loss, best_epoch, best_state, stale = -math.inf, math.inf, 0, None, 0
    stopped = "epochs"  # why training ended: epochs | early_stop | interrupted
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        net.train()
        loss_total, seen = torch.zeros((), dtype=torch.float64, device=device), 0
        try:
            for inputs, target in source.epoch(train_idx, rng, per_rank_batch):
                loss = net(*inputs, target=target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                if average is not None:
                    average.update()
                loss_total += loss.detach() * len(target)  # no host sync per step
                seen += len(target)
        except KeyboardInterrupt:
            # Ctrl-C after a finished epoch: test and save the best checkpoint so far.
            if world > 1 or best_state is None:
                raise
            stopped = "interrupted"
            if progress:
                print(f"interrupted in epoch {epoch}: keeping epoch {best_epoch}", flush=True)
            break
        loss_sum = float(loss_total)
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"training loss became {loss_sum} in epoch {epoch}")
        val_pred, val_loss_sum = _validate(scored, source, val_shard, per_rank_batch, device)
        val_true = source.targets(val_shard)
        if world > 1:
            val_pred, val_true, val_loss_sum, loss_sum, seen = distributed.gather_validation(
                val_pred, val_true, val_loss_sum, loss_sum, seen
            )
        scores = classification_metrics(val_true, val_pred, [str(c) for c in labels])
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "val_loss": val_loss_sum / max(len(val_true), 1),
            "val_accuracy": scores["accuracy"],
            "val_f1_macro": scores["f1_macro"],
            "seconds": time.perf_counter() - start,
        }
        history.append(row)
        improved = improves(row["val_f1_macro"], row["val_loss"], best_f1, best_loss)
        if improved:
            best_f1, best_loss, best_epoch, stale = row["val_f1_macro"], row["val_loss"], epoch, 0
            best_state = {k: v.detach().clone() for k, v in scored.state_dict().items()}
        else:
            stale += 1
        if rank == 0:
            write_history(run_dir / HISTORY_FILE, history)
            if progress:
                print(
                    f"epoch {epoch:3d}/{cfg.epochs}  loss {row['train_loss']:.4f}  "
                    f"val loss {row['val_loss']:.4f}  acc {100 * row['val_accuracy']:6.2f} %  "
                    f"F1 {100 * row['val_f1_macro']:6.2f} %  {row['seconds']:.1f} s"
                    + ("  *" if improved else ""),
                    flush=True,
                )
        if cfg.patience > 0 and stale >= cfg.patience:
            stopped = "early_stop"
            if rank == 0 and progress:
                print(
                    f"early stop: no better validation macro-F1 (nor an equal one at a lower "
                    f"loss) for {cfg.patience} epochs; keeping epoch {best_epoch}",
                    flush=True,
                )
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return history, best_epoch, stopped


def _fit_estimator(
    model: Any,
    arrays: dict[str, np.ndarray],
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
) -> Any:
    train = {c: a[train_idx] for c, a in arrays.items()}
    val = {c: a[val_idx] for c, a in arrays.items()}
    fitted = model.fit(train, y[train_idx], val, y[val_idx])
    return model if fitted is None else fitted


def _score(
    trained: TrainedModel, arrays: Mapping[str, np.ndarray], idx: np.ndarray
) -> tuple[np.ndarray, float]:
    """Test predictions (class indices) and inference throughput in flows/s."""
    subset = {c: arrays[c][idx] for c in trained.inputs}
    start = time.perf_counter()
    proba = trained.predict_proba(subset)
    seconds = time.perf_counter() - start
    return proba.argmax(axis=1), len(idx) / seconds if seconds > 0 else math.inf


def _score_streamed(
    trained: TrainedModel, dataset: Any, idx: np.ndarray
) -> tuple[np.ndarray, float]:
    """:func:`_score` on a dataset read a buffer of row groups at a time; the throughput
    counts the model's time only, as in memory."""
    pred = np.empty(len(idx), dtype=np.int64)
    seconds, at = 0.0, 0
    for flows, inputs in dataset.read(idx, trained.inputs):
        start = time.perf_counter()
        proba = trained.predict_proba(inputs)
        seconds += time.perf_counter() - start
        pred[at : at + len(flows)] = proba.argmax(axis=1)
        at += len(flows)
    return pred, len(idx) / seconds if seconds > 0 else math.inf


# ----------------------------------------------------------------------------- public API


def train(
    dataset: Any,
    run_dir: str | Path,
    *,
    model: str = "dmf",
    seed: int = 0,
    split: str = "random",
    keep_duplicates: bool = False,
    epochs: int = defaults.EPOCHS,
    batch_size: int | None = None,
    lr: float = defaults.LR,
    weight_decay: float = defaults.WEIGHT_DECAY,
    patience: int = defaults.PATIENCE,
    schedule: str = defaults.SCHEDULE,
    ema: float = defaults.EMA,
    device: str | torch.device | None = None,
    model_config: Mapping[str, Any] | None = None,
    num_workers: int = 0,
    min_class_flows: int = 0,
    drop_classes: Sequence[str] = (),
    duplicate_inputs: Sequence[str] | None = None,
    accept_rate: float = DEFAULT_ACCEPT_RATE,
    reject_score: str | None = None,
    progress: bool = True,
    force: bool = False,
    loader: str = "auto",
    buffer_flows: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` on a FlowDataset (or the path of one) and write the run folder ``run_dir``.

    Returns the test metrics (:func:`~dmfnet.training.metrics.classification_metrics`)
    plus ``train_size``, ``val_size``, ``test_size``, ``duplicates_removed``,
    ``train_seconds``, ``infer_flows_per_s``, ``epochs_run`` and ``best_epoch``. The same
    ``seed`` gives the same split and, on CPU, the same model and metrics. ``device=None``
    picks CUDA when present. Under ``torchrun`` every process returns the same dict and only
    rank 0 writes files. ``batch_size=None`` picks :func:`auto_batch_size` of the training
    split; ``schedule`` is ``"cosine"`` (one epoch of warm-up, then cosine decay over
    ``epochs``) or ``"constant"``. ``ema`` > 0 validates, early-stops on and keeps an
    exponential moving average of the weights with that decay (:class:`WeightAverage`).
    ``min_class_flows`` and ``drop_classes`` train on a
    subset of the classes (:func:`select_classes`).

    ``duplicate_inputs`` names the dataset columns compared when dropping test flows that
    duplicate a training flow (ignored with ``keep_duplicates``). ``None``, the default and
    what ``dmfnet train`` uses, compares the model's own inputs, so models with different
    inputs may be scored on different test flows.
    :func:`~dmfnet.training.benchmark.run_benchmark` passes the union of all benchmarked
    models' inputs, so that every model of one seed is scored on the same test flows. The
    columns compared are recorded in ``run.json`` (``duplicate_inputs``; ``None`` when
    duplicates are kept).

    ``loader`` says how the flows reach the model: ``"memory"`` loads the model inputs
    once (fastest while they fit), ``"stream"`` reads them from the dataset's Parquet row
    groups as training goes, shuffled across row groups and within a buffer of
    ``buffer_flows`` (:mod:`dmfnet.data.stream`), so memory does not grow with the
    dataset; ``"auto"`` (default) streams a dataset path whose inputs would take more than
    a quarter of the machine's memory. Splits, duplicate removal and class statistics
    read only the key columns on both paths. Estimators (XGBoost) fit in memory.

    The validation flows also calibrate the threshold below which ``classify --reject``
    calls a flow unknown (:func:`~dmfnet.training.rejection.calibrate_rejection`):
    ``accept_rate`` of them are accepted; ``reject_score`` (``max_softmax`` or ``energy``)
    fixes the score, ``None`` picks it on the validation flows. ``run.json`` records it
    under ``rejection``.

    ``run_dir`` follows :mod:`dmfnet.outputs`: an existing run is replaced (its
    ``evaluation-*`` folders too) only with ``force``, another non-empty folder is written
    into only with it, and a folder inside the dataset is refused. ``run.json`` is written
    last; a run that fails or is interrupted removes what it wrote.
    """
    from dmfnet.models import create_model, get_entry, model_inputs

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema must be 0 (off) or a decay in (0, 1), got {ema!r}")
    check_accept_rate(accept_rate)
    for name, value in (
        ("epochs", epochs),
        ("batch_size", 1 if batch_size is None else batch_size),
        ("buffer_flows", 1 if buffer_flows is None else buffer_flows),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    entry = get_entry(model)
    if reject_score is not None and reject_score not in available_scores(entry.kind):
        raise ValueError(
            f"rejection score {reject_score!r} is not available for model {model!r} "
            f"(available: {', '.join(available_scores(entry.kind))})"
        )
    run_dir = Path(run_dir)
    model_config = dict(model_config or {})
    model_config.pop("num_classes", None)  # set by the dataset's classes
    try:  # the columns this configuration reads (DMF's follow its byte column and direction)
        inputs = model_inputs(model, model_config)
    except TypeError as exc:
        raise ValueError(f"model {model!r} does not accept this configuration: {exc}") from None

    if keep_duplicates:
        compared: list[str] | None = None
    else:
        compared = list(
            dict.fromkeys(inputs if duplicate_inputs is None else duplicate_inputs)
        )
        if not compared:
            raise ValueError("duplicate_inputs is empty: no columns to compare test flows on")
    if entry.kind == "estimator" and loader == "stream":
        raise ValueError(f"model {model!r} is an estimator: it fits in memory, not streamed")
    if entry.kind == "estimator":
        loader = "memory"
    extra = [c for c in compared or () if c not in inputs]
    keys = ["capture"] if split == "file" else []
    columns = [*inputs, *extra, *keys]
    output = _open_run_folder(run_dir, dataset, force)
    try:
        ds, dataset_path = _load(dataset, columns, loader, keys)
        streamed = _streamed(ds)
        ds = select_classes(ds, min_class_flows=min_class_flows, drop_classes=drop_classes)
        class_names = [str(c) for c in ds.classes]
        if len(class_names) < 2:
            raise ValueError(
                f"the dataset has {len(class_names)} class(es); training needs at least 2"
            )
        y_np = np.asarray(ds.y, dtype=np.int64)
        arrays = {} if streamed else {c: column(ds, c) for c in inputs}
        distributed.setup(device)
    except BaseException:
        if output is not None:
            output.fail()
        raise
    try:
        dev = distributed.device()
        dev = resolve_device(device) if dev is None else dev
        world, rank = distributed.world_size(), distributed.rank()
        cfg = TrainConfig(
            model=model,
            seed=seed,
            split=split,
            keep_duplicates=keep_duplicates,
            epochs=epochs,
            batch_size=batch_size or MAX_BATCH,
            lr=lr,
            weight_decay=weight_decay,
            patience=patience,
            schedule=schedule,
            ema=ema,
            device=str(dev),
            num_workers=num_workers,
            world_size=world,
            loader="stream" if streamed else "memory",
        )
        seed_everything(seed)
        try:
            net = create_model(model, len(class_names), **model_config)
        except TypeError as exc:
            raise ValueError(f"model {model!r} does not accept this configuration: {exc}") from None
        train_idx, val_idx, test_idx, removed = split_indices(
            ds, compared or inputs, seed=seed, split=split, keep_duplicates=keep_duplicates
        )
        if isinstance(dataset, (str, os.PathLike)) and not streamed:  # free compared-only columns
            for c in extra:
                ds.columns.pop(c, None)
        if batch_size is None:
            cfg = dataclasses.replace(cfg, batch_size=auto_batch_size(len(train_idx)))
        if rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            if progress:
                print(
                    f"{model}: {len(class_names)} classes, {len(train_idx)}/{len(val_idx)}/"
                    f"{len(test_idx)} train/val/test flows ({split} split, "
                    f"{removed} duplicate test flows removed), device {dev}, "
                    f"batch {cfg.batch_size}"
                    + (", streamed from disk" if streamed else "")
                    + (f", {world} processes" if world > 1 else ""),
                    flush=True,
                )
        resolved_config = _model_config(net, model_config)

        start = time.perf_counter()
        history: list[dict[str, Any]] = []
        best_epoch, stopped = 0, "fitted"
        if entry.kind == "estimator":
            if rank == 0:
                net = _fit_estimator(net, arrays, y_np, train_idx, val_idx)
        else:
            if streamed:
                source: Any = StreamedBatches(ds, inputs, y_np, dev, buffer_flows)
            else:
                source = MemoryBatches(arrays, inputs, y_np, dev, num_workers)
            history, best_epoch, stopped = _fit_torch(
                net, source, train_idx, val_idx, cfg, dev, class_names, run_dir, progress
            )
            if hasattr(net, "post_fit") and rank == 0:
                net.eval()
                with torch.no_grad():
                    net.post_fit(_TrainingBatches(source, train_idx, cfg.batch_size))
        train_seconds = time.perf_counter() - start

        result: dict[str, Any] | None = None
        if rank == 0:
            trained = TrainedModel(
                net,
                name=model,
                kind=entry.kind,
                classes=class_names,
                inputs=inputs,
                device=dev,
            )
            if streamed:
                y_pred, flows_per_s = _score_streamed(trained, ds, test_idx)
            else:
                y_pred, flows_per_s = _score(trained, arrays, test_idx)
            result = classification_metrics(y_np[test_idx], y_pred, class_names)
            if streamed:  # pieces in the order of val_idx
                val_logits = np.concatenate(
                    [trained.predict_logits(x) for _, x in ds.read(val_idx, inputs)]
                )
            else:
                val_logits = trained.predict_logits({c: arrays[c][val_idx] for c in inputs})
            rejection = calibrate_rejection(
                val_logits,
                y_np[val_idx],
                kind=entry.kind,
                accept_rate=accept_rate,
                score=reject_score,
            )
            if progress:
                print(
                    f"rejection: {rejection['score']} below {rejection['threshold']:.4g} is "
                    f"unknown ({rejection['validation_accepted']}/{len(val_idx)} validation "
                    "flows accepted)",
                    flush=True,
                )
            result.update(
                train_size=int(len(train_idx)),
                val_size=int(len(val_idx)),
                test_size=int(len(test_idx)),
                duplicates_removed=removed,
                train_seconds=train_seconds,
                infer_flows_per_s=flows_per_s,
                epochs_run=len(history),
                best_epoch=best_epoch,
                stopped=stopped,
            )
            info = {
                "format": 1,
                "model": model,
                "kind": entry.kind,
                "model_config": resolved_config,
                "classes": class_names,
                "inputs": list(inputs),
                "training": asdict(cfg),
                "torch_threads": torch.get_num_threads(),
                "seed": seed,
                "split": split,
                "keep_duplicates": keep_duplicates,
                "duplicate_inputs": compared,
                "min_class_flows": min_class_flows,
                "drop_classes": list(drop_classes),
                "split_sizes": {
                    "train": int(len(train_idx)),
                    "val": int(len(val_idx)),
                    "test": int(len(test_idx)),
                },
                "duplicates_removed": removed,
                "epochs_run": len(history),
                "best_epoch": best_epoch,
                "stopped": stopped,
                "train_seconds": train_seconds,
                "rejection": rejection,
                "dataset": {
                    "path": dataset_path,
                    "flows": int(len(y_np)),
                    "card": _card_summary(ds),
                },
                "versions": versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            _write_run(run_dir, net, entry.kind, info, history, result, class_names)
            if output is not None:
                output.finish()
        result = distributed.broadcast(result)
        return result
    except BaseException:
        if output is not None:
            output.fail()
        raise
    finally:
        distributed.teardown()


def _open_run_folder(run_dir: Path, dataset: Any, force: bool) -> Output | None:
    """The run folder, checked, cleared where :mod:`dmfnet.outputs` says so and marked
    unfinished; None in the processes of a torchrun job other than rank 0 (they write
    nothing)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    return open_output(run_dir, RUN, force=force, inputs=[_source(dataset)])


def _source(dataset: Any) -> Any:
    """The path a dataset argument (a path or a FlowDataset) was read from, or None."""
    if isinstance(dataset, (str, os.PathLike)):
        return dataset
    return getattr(dataset, "path", None) or None


def _column_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.require(array, requirements=["C_CONTIGUOUS", "WRITEABLE"]))


def _report_info(info: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The flat run facts shown at the top of report.md.

    The options of the torch training loop (epochs, batch size, learning rate, device,
    best epoch) are shown for torch models only: an estimator (XGBoost) fits by its own
    procedure and is described as such.
    """
    training = info.get("training", {})
    if info.get("kind") == "estimator":
        loop = {
            "training": "the estimator's own fit (early stopping on the validation split); "
            "the epochs, batch size and learning rate of the torch loop do not apply"
        }
    else:
        loop = {
            "epochs": training.get("epochs"),
            "best_epoch": info["best_epoch"] or None,
            "stopped": info["stopped"],
            "batch_size": training.get("batch_size"),
            "learning_rate": training.get("lr"),
            "device": training.get("device"),
        }
    return {
        "model": info["model"],
        "dataset": info["dataset"]["path"] or "(in memory)",
        "split": info["split"],
        "seed": info["seed"],
        "keep_duplicates": info["keep_duplicates"],
        "duplicates_removed": info["duplicates_removed"],
        "duplicates_compared_on": ", ".join(info.get("duplicate_inputs") or []) or None,
        "train_size": info["split_sizes"]["train"],
        "val_size": info["split_sizes"]["val"],
        "test_size": info["split_sizes"]["test"],
        **loop,
        "train_seconds": round(float(metrics["train_seconds"]), 2),
        "infer_flows_per_s": round(float(metrics["infer_flows_per_s"])),
    }


def _write_run(
    run_dir: Path,
    model: Any,
    kind: str,
    info: dict[str, Any],
    history: list[dict[str, Any]],
    metrics: dict[str, Any],
    class_names: Sequence[str],
) -> None:
    """Model, history.csv and metrics.json, the report (a plotting failure is a warning),
    then run.json: written last, it marks a finished run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if kind == "estimator":
        (run_dir / ESTIMATOR_DIR).mkdir(exist_ok=True)
        model.save(run_dir / ESTIMATOR_DIR)
    else:
        save_weights(run_dir / WEIGHTS_FILE, model)
    write_history(run_dir / HISTORY_FILE, history)
    write_json(run_dir / METRICS_FILE, metrics)
    _write_report(run_dir, metrics, history, class_names, _report_info(info, metrics))
    write_json(run_dir / RUN_FILE, info)


def _write_report(run_dir, metrics, history, class_names, info, extra=()) -> None:
    from dmfnet.training.report import write_run_report

    try:
        write_run_report(run_dir, metrics, history, class_names, info, extra)
    except Exception as exc:  # the model and metrics are saved; say what is missing
        print(f"warning: report for {run_dir} not written: {exc}", flush=True)


def _is_training_dataset(info: Mapping[str, Any], path: str, ds: Any) -> bool:
    """Whether the dataset at ``path`` (loaded as ``ds``) is the one the run recorded in
    run.json: the same resolved path, or the same dataset card (a folder moved or copied)."""
    trained_on = info.get("dataset") or {}
    recorded = str(trained_on.get("path") or "")
    if path and recorded:
        try:
            if Path(path).resolve() == Path(recorded).resolve():
                return True
        except OSError:
            pass
    card, recorded_card = _card_summary(ds), trained_on.get("card") or {}
    return bool(card) and bool(recorded_card.get("created")) and (
        json.loads(json.dumps(card, default=str)) == recorded_card
    )


def unknown_summary(unknown: Mapping[str, int], shown: int = 5) -> str:
    """``{class: flows}`` of classes unknown to a model as one short text: how many classes
    and flows, the largest few (``"3 classes, 12 flows: a (7), b (4), c (1)"``)."""
    if not unknown:
        return ""
    top = sorted(unknown.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{name} ({n:,})" for name, n in top[:shown])
    if len(top) > shown:
        text += f" and {len(top) - shown:,} more"
    n_classes, flows = len(top), sum(unknown.values())
    return f"{n_classes:,} class{'es' if n_classes != 1 else ''}, {flows:,} flows: {text}"


def evaluate(
    run_dir: str | Path,
    dataset: Any,
    out_dir: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    force: bool = False,
    decide_after: int | None = None,
    loader: str = "auto",
) -> dict[str, Any]:
    """Score the model of ``run_dir`` on every flow of another prepared dataset.

    ``decide_after=K`` scores each flow as its first K packets show it (as ``dmfnet
    classify --decide-after K`` decides a stream; :func:`dmfnet.flows.early.first_packets`)
    and adds ``early``: macro-F1 and accuracy for K in :data:`EARLY_PACKETS` (and K), with
    a plot in the report.

    Classes are matched by name. Flows of classes the model does not know are counted per
    class (``unknown_classes``) and left out of the metrics; a dataset with none of the
    model's classes is an error. The report goes to ``out_dir`` (default
    ``RUN/evaluation-<dataset name>``). ``device=None`` picks CUDA when present, as
    :func:`train` does. Warns (``UserWarning``) when ``dataset`` is the run's own
    training dataset: its scores then include the flows the model was trained on.
    ``out_dir`` follows :mod:`dmfnet.outputs` (``force`` to write into a non-empty folder
    that is not an evaluation; never inside the dataset); ``evaluation.json`` is written
    last. ``loader``: as :func:`train`'s (``"stream"`` reads the flows a buffer of row
    groups at a time).
    """
    trained = load_run(run_dir, device=resolve_device(device))
    source = _source(dataset)
    name = Path(str(source)).name.removesuffix(".parquet") if source else "dataset"
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / f"evaluation-{name}"
    check_output(out, EVALUATION, force=force, inputs=[source])  # before the long part
    wanted = early_sources(trained.inputs) if decide_after is not None else trained.inputs
    if decide_after is not None:  # the cut to the first packets works on arrays in memory
        if loader == "stream":
            raise ValueError("decide_after scores flows in memory: use loader 'memory' or 'auto'")
        loader = "memory"
    ds, dataset_path = _load(dataset, wanted, loader)
    flow_config = recorded_flow_config(_card_summary(ds))
    if decide_after is not None and not 1 <= decide_after <= flow_config.m_packets:
        raise ValueError(
            f"decide_after must be between 1 and {flow_config.m_packets} packets, "
            f"not {decide_after}"
        )
    if _is_training_dataset(trained.info, dataset_path, ds):
        warnings.warn(
            f"{dataset_path or 'the dataset'} is the dataset {run_dir} was trained on: "
            "these scores include its training and validation flows; the run's held-out "
            "test scores are in its metrics.json",
            stacklevel=2,
        )
    labels = np.asarray(ds.labels).astype(str)
    index = {c: i for i, c in enumerate(trained.classes)}
    y_true = np.array([index.get(label, -1) for label in labels], dtype=np.int64)
    known = y_true >= 0
    names, counts = np.unique(labels[~known], return_counts=True)
    unknown = {str(n): int(c) for n, c in zip(names, counts, strict=True)}
    if not known.any():
        raise ValueError(
            f"none of the dataset's classes ({', '.join(sorted(set(labels.tolist())))}) "
            f"is known to the model (classes: {', '.join(trained.classes)})"
        )
    idx = np.flatnonzero(known)
    early = []
    if _streamed(ds):
        y_pred, flows_per_s = _score_streamed(trained, ds, idx)
    else:
        arrays = {c: column(ds, c) for c in wanted}
        if decide_after is not None:
            for k in sorted({*EARLY_PACKETS, decide_after}):
                if k > flow_config.m_packets:
                    continue
                cut = {**arrays, **first_packets(arrays, k, flow_config)}
                y_k, _ = _score(trained, cut, idx)
                scores = classification_metrics(y_true[idx], y_k, trained.classes)
                early.append({"packets": k, **{m: scores[m] for m in ("f1_macro", "accuracy")}})
            arrays = {**arrays, **first_packets(arrays, decide_after, flow_config)}
        y_pred, flows_per_s = _score(trained, arrays, idx)
    result = classification_metrics(y_true[idx], y_pred, trained.classes)
    if decide_after is not None:
        result.update(decide_after=decide_after, early=early)
    result.update(
        evaluated_flows=int(idx.size),
        unknown_flows=int((~known).sum()),
        unknown_classes=unknown,
        infer_flows_per_s=flows_per_s,
    )
    output = open_output(out, EVALUATION, force=force, inputs=[source])
    info = {
        "run": str(run_dir),
        "model": trained.name,
        "classes": trained.classes,
        "inputs": list(trained.inputs),
        "dataset": {"path": dataset_path, "flows": int(len(labels)), "card": _card_summary(ds)},
        "unknown_classes": unknown,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(out / METRICS_FILE, result)
    report_info = {
        "model": trained.name,
        "dataset": dataset_path or "(in memory)",
        "run": str(run_dir),
        "test_size": int(idx.size),
        "unknown_flows": int((~known).sum()),
        "unknown_classes": unknown_summary(unknown) or "none",
        "infer_flows_per_s": round(flows_per_s),
    }
    extra = []
    if decide_after is not None:
        from dmfnet.training.report import early_section, plot_early_curve

        report_info["decide_after"] = f"{decide_after} packets"
        extra = early_section(early, decide_after)
        try:
            plot_early_curve(early, out / "early_decisions.png", title=f"{trained.name}: early decisions")
        except Exception as exc:  # the metrics are saved; say what is missing
            print(f"warning: early-decision plot not written: {exc}", flush=True)
    _write_report(out, result, [], trained.classes, report_info, extra)
    write_json(out / "evaluation.json", info)  # last: it marks a finished evaluation
    output.finish()
    result["report_dir"] = str(out)
    return result
