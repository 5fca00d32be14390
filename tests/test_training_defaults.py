"""Training defaults that hold on small and large datasets: batch size and learning rate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dmfnet.training.trainer import (
    auto_batch_size,
    learning_rate_factor,
    select_classes,
    train,
)
from training_data import synthetic_flows


@pytest.mark.parametrize(
    ("n_train", "batch"),
    [(10, 32), (864, 32), (2_772, 32), (8_308, 64), (20_000, 128), (40_000, 256),
     (5_000_000, 256)],  # fmt: skip
)
def test_auto_batch_size_gives_small_datasets_enough_steps(n_train, batch):
    assert auto_batch_size(n_train) == batch
    if n_train >= 32 * 128:  # where the data allows, at least 128 steps per epoch
        assert math.ceil(n_train / batch) >= 128 or batch == 256


def test_learning_rate_warms_up_then_decays_to_zero():
    factors = [learning_rate_factor(s, total_steps=100, warmup_steps=10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert learning_rate_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)


def test_default_batch_size_follows_the_training_split_and_is_recorded(tmp_path):
    torch.set_num_threads(1)
    dataset = synthetic_flows()
    result = train(
        dataset, tmp_path / "run", model="dmf-late", epochs=1, device="cpu", progress=False
    )
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["training"]["batch_size"] == auto_batch_size(result["train_size"])
    assert info["training"]["schedule"] == "cosine" and info["training"]["ema"] == 0.99


def test_cosine_schedule_trains_and_an_unknown_schedule_is_refused(tmp_path):
    torch.set_num_threads(1)
    dataset = synthetic_flows()
    result = train(
        dataset,
        tmp_path / "run",
        model="dmf-late",
        epochs=2,
        schedule="cosine",
        batch_size=16,
        device="cpu",
        progress=False,
    )
    assert result["epochs_run"] == 2
    with pytest.raises(ValueError, match="schedule"):
        train(dataset, tmp_path / "r", schedule="step", progress=False)


def test_select_classes_keeps_large_classes_and_renumbers_them():
    dataset = synthetic_flows(classes=("chat", "download", "ssh", "voip"))
    small = np.flatnonzero(dataset.labels == "voip")[:3]
    rows = np.concatenate([np.flatnonzero(dataset.labels != "voip"), small])
    uneven = dataset.take(rows)  # voip: 3 flows
    kept = select_classes(uneven, min_class_flows=10, drop_classes=["chat"])
    assert kept.classes == ["download", "ssh"]
    assert set(kept.labels.tolist()) == {"download", "ssh"}
    assert kept.y.tolist() == [kept.classes.index(str(c)) for c in kept.labels]
    assert select_classes(uneven) is uneven  # nothing to remove
    # a class the dataset lacks (the README's --drop-classes Unknown on the demo): a warning
    with pytest.warns(UserWarning, match="the dataset has no class Unknown; nothing dropped"):
        assert select_classes(uneven, drop_classes=["Unknown"]) is uneven
    with pytest.raises(ValueError, match="training needs at least 2"):
        select_classes(uneven, min_class_flows=10, drop_classes=["chat", "ssh"])


def test_train_records_the_classes_it_kept(tmp_path):
    torch.set_num_threads(1)
    dataset = synthetic_flows()
    train(
        dataset, tmp_path / "run", model="dmf-late", epochs=1, batch_size=16,
        drop_classes=["chat"], device="cpu", progress=False,
    )  # fmt: skip
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["classes"] == ["download", "ssh"]
    assert info["drop_classes"] == ["chat"]
