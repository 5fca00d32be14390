"""Training-recipe pieces: the weight average (EMA), which epoch is kept, and DMF's
payload-packet length view."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

from dmfnet.models.dmf import fit_width, payload_packets_first
from dmfnet.training.metrics import best_history_index, improves
from dmfnet.training.trainer import WeightAverage, train
from training_data import synthetic_flows


def test_weight_average_moves_a_share_of_the_way_and_copies_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.9)
    before = [p.detach().clone() for p in average.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(5.0)
    # The first updates follow the weights closely: decay (1 + n) / (10 + n), then 0.9.
    assert [WeightAverage(model, 0.9).current_decay() for _ in range(1)] == [0.1]
    average.updates = 100
    assert average.current_decay() == 0.9
    average.update()
    for avg, old, new in zip(average.model.parameters(), before, model.parameters(), strict=True):
        assert torch.allclose(avg, 0.9 * old + 0.1 * new)
    assert torch.equal(average.model[1].running_mean, torch.full((2,), 5.0))
    assert not any(p.requires_grad for p in average.model.parameters())
    with pytest.raises(ValueError, match="ema"):
        WeightAverage(model, decay=1.0)


def test_training_with_a_weight_average_keeps_the_average(tmp_path):
    torch.set_num_threads(1)
    ds = synthetic_flows()
    fast = {"epochs": 8, "batch_size": 16, "patience": 0, "progress": False, "device": "cpu"}
    result = train(ds, tmp_path / "ema", model="dmf", seed=0, ema=0.5, **fast)
    info = json.loads((tmp_path / "ema" / "run.json").read_text())
    assert info["training"]["ema"] == 0.5
    plain = train(ds, tmp_path / "plain", model="dmf", seed=0, **fast)
    saved = torch.load(tmp_path / "ema" / "model.pt", weights_only=True)
    other = torch.load(tmp_path / "plain" / "model.pt", weights_only=True)
    # Same seed, same batches: only the averaging differs, so the kept weights differ.
    assert any(not torch.equal(saved[k], other[k]) for k in saved if saved[k].is_floating_point())
    assert result["accuracy"] >= 0.8 and plain["accuracy"] >= 0.8
    with pytest.raises(ValueError, match="ema"):
        train(ds, tmp_path / "bad", model="dmf", ema=1.5, **fast)


def test_payload_packets_come_first_and_acks_leave_the_length_sequence():
    lengths = torch.tensor([[60, 60, 52, 300, 52, 1500, 40, 0]])
    directions = torch.tensor([[1, -1, 1, 1, -1, -1, 1, 0]], dtype=torch.int8)
    payload = torch.tensor([[0, 0, 0, 248, 0, 1448, 0, 0]])
    got_lengths, got_directions = payload_packets_first(lengths, directions, payload)
    assert got_lengths.tolist() == [[300, 1500, 0, 0, 0, 0, 0, 0]]
    assert got_directions.tolist() == [[1, -1, 0, 0, 0, 0, 0, 0]]
    # Cut to a narrower width: the first payload packets of a row wider than the modality.
    cut_lengths, cut_directions = payload_packets_first(lengths, directions, payload, width=1)
    assert cut_lengths.tolist() == [[300]] and cut_directions.tolist() == [[1]]
    assert cut_lengths.dtype == lengths.dtype and cut_directions.dtype == torch.int8


def test_a_length_row_is_cut_or_zero_padded_to_the_modality_width():
    row = torch.tensor([[100, -200, 300]], dtype=torch.int32)
    assert fit_width(row, 2).tolist() == [[100, -200]]
    assert fit_width(row, 5).tolist() == [[100, -200, 300, 0, 0]]
    assert torch.equal(fit_width(row, 3), row)


def test_an_epoch_improves_on_macro_f1_and_on_loss_only_at_equal_macro_f1():
    assert improves(0.95, 0.9, 0.94, 0.1)  # higher F1 wins whatever the loss
    assert improves(1.0, 0.05, 1.0, 0.32)  # same F1, lower loss
    assert not improves(1.0, 0.32, 1.0, 0.05)
    assert not improves(1.0, 0.32, 1.0, 0.32)  # an exact repeat is no better
    assert not improves(0.99, 0.01, 1.0, 0.32)  # lower F1 loses whatever the loss
    assert improves(0.2, math.inf, -math.inf, math.inf)  # the first epoch always counts


def test_the_kept_epoch_of_a_history_is_the_lowest_loss_among_the_best_macro_f1():
    # A small validation split scored perfectly from epoch 4 on: epoch 10 has the same
    # macro-F1 at a sixth of the loss, so it is the epoch to keep.
    f1 = [0.46, 0.84, 0.98, 1.0, 0.99, 0.98, 0.98, 0.98, 0.98, 1.0, 0.99, 0.99, 0.97, 0.99]
    loss = [4.1, 1.1, 0.60, 0.32, 0.20, 0.22, 0.15, 0.21, 0.11, 0.048, 0.076, 0.10, 0.13, 0.16]
    history = [
        {"epoch": i + 1, "val_f1_macro": f, "val_loss": v}
        for i, (f, v) in enumerate(zip(f1, loss, strict=True))
    ]
    assert best_history_index(history) == 9
    assert best_history_index([{"epoch": 1, "val_f1_macro": None}]) is None
    assert best_history_index([]) is None


def test_training_keeps_the_epoch_the_selection_rule_names(tmp_path):
    # An easy dataset: validation macro-F1 reaches 100 % within a few epochs and stays
    # there while the loss falls. The run keeps the lowest-loss perfect epoch, not the first.
    torch.set_num_threads(1)
    ds = synthetic_flows()
    train(ds, tmp_path / "run", model="dmf", seed=0, epochs=12, batch_size=16, patience=4,
          ema=0.0, progress=False, device="cpu")  # fmt: skip
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    with open(tmp_path / "run" / "history.csv", newline="") as fh:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    perfect = [h for h in history if h["val_f1_macro"] == 1.0]
    assert len(perfect) >= 2, "the made dataset should be scored perfectly at several epochs"
    expected = min(perfect, key=lambda h: h["val_loss"])
    assert info["best_epoch"] == int(expected["epoch"]) > int(perfect[0]["epoch"])
