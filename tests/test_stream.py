"""The streaming loader: a dataset read by Parquet row groups, for datasets larger than memory.

Every training flow once an epoch, in a seeded order; the same inputs as the in-memory
path; splits and duplicate removal on key columns and digests; a small dataset trains to
the same metrics on both paths with the same seed.
"""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

from dmfnet.data import load_dataset
from dmfnet.data.splits import row_digests
from dmfnet.data.stream import choose_loader, input_bytes, open_streamed
from dmfnet.flows.schema import SEQUENCE_COLUMNS
from dmfnet.training.trainer import StreamedBatches, evaluate, split_indices, train
from training_data import synthetic_flows, write_flow_folder

stream_module = importlib.import_module("dmfnet.data.stream")
trainer_module = importlib.import_module("dmfnet.training.trainer")

INPUTS = ["payload_packet_bytes", "lengths", "directions"]  # DMF's
FAST = dict(epochs=3, batch_size=16, patience=0, device="cpu", progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """180 flows of three classes in three part files of row groups of 23 flows (shuffled
    rows, so that every row group mixes classes), with some duplicated flows."""
    flows = synthetic_flows()
    order = np.random.default_rng(5).permutation(len(flows))
    order[-6:] = order[:6]  # six flows twice: duplicates a split may put on both sides
    flows = flows.take(order)
    return write_flow_folder(
        flows, tmp_path_factory.mktemp("streamed") / "ds", row_group_rows=23, cuts=(70, 71)
    )


def test_only_labels_and_key_columns_are_held(folder):
    ds = open_streamed(folder, key_columns=["capture"])
    whole = load_dataset(folder)
    assert set(ds.columns) == {"capture"}
    assert ds.labels.tolist() == whole.labels.tolist() and ds.classes == whole.classes
    assert ds["capture"].tolist() == whole["capture"].tolist()
    assert len(ds.groups) == 4 + 1 + 5  # row groups of 23: 70 -> 4, 1 -> 1, 109 -> 5
    with pytest.raises(ValueError, match="key columns are scalar"):
        open_streamed(folder, key_columns=["bytes"])


@pytest.mark.parametrize("buffer_flows", [1, 40, 100_000])
def test_an_epoch_holds_every_flow_once_in_a_seeded_order(folder, buffer_flows):
    ds = open_streamed(folder)
    flows = np.sort(np.random.default_rng(0).choice(len(ds), 150, replace=False))

    def order(seed):
        return ds.epoch_order(flows, np.random.default_rng(seed), buffer_flows)[0]

    first = order(1)
    assert np.array_equal(np.sort(first), flows)  # each once
    assert np.array_equal(order(1), first)  # the seed repeats it
    assert not np.array_equal(order(2), first)  # another seed changes it
    assert not np.array_equal(first, flows)


def test_a_small_buffer_shuffles_across_row_groups_and_reads_each_window_once(folder):
    ds = open_streamed(folder)
    flows = np.arange(len(ds))
    order, windows = ds.epoch_order(flows, np.random.default_rng(3), buffer_flows=40)
    assert np.all(np.diff(windows) >= 0) and windows[-1] >= 3  # windows follow each other
    groups = ds.group_of(order)
    first_groups = [int(groups[windows == w][0]) for w in range(3)]
    assert first_groups != sorted(first_groups) or groups[0] != 0  # not in file order
    for w in np.unique(windows):  # a window is whole row groups, each in one window only
        inside = set(groups[windows == w].tolist())
        assert not inside & set(groups[windows != w].tolist())


def test_the_inputs_read_are_those_of_the_flows_in_that_order(folder):
    ds = open_streamed(folder)
    whole = load_dataset(folder, columns=INPUTS)
    order, windows = ds.epoch_order(np.arange(len(ds)), np.random.default_rng(7), 50)
    seen = []
    for flows, inputs in ds.read(order, INPUTS, windows=windows):
        for name in INPUTS:
            assert np.array_equal(inputs[name], whole[name][flows]), name
        seen.append(flows)
    assert np.array_equal(np.concatenate(seen), order)


def test_ranks_share_an_epoch_with_equal_steps(folder, monkeypatch):
    ds = open_streamed(folder)
    flows = np.arange(len(ds) - 1)  # 179: the last rank's share wraps around by one
    got = []
    for rank in range(2):
        monkeypatch.setattr(trainer_module, "_rank_world", lambda r=rank: (r, 2))
        source = StreamedBatches(ds, INPUTS, ds.y, torch.device("cpu"), buffer_flows=40)
        batches = list(source.epoch(flows, np.random.default_rng(4), 16))
        got.append(np.concatenate([target.numpy() for _, target in batches]))
        assert len(batches) == 6  # 90 flows a rank: batches of 16, the last of 10
    assert len(got[0]) == len(got[1]) == 90
    assert sum(len(g) for g in got) == len(flows) + 1


def test_duplicates_are_found_by_digests_read_row_group_by_row_group(folder):
    ds = open_streamed(folder)
    whole = load_dataset(folder, columns=INPUTS)
    digests = ds.digests(INPUTS)
    assert np.array_equal(digests, row_digests(whole.columns, np.arange(len(whole))))
    for split in ("random", "file"):
        keys = ["capture"] if split == "file" else []
        streamed = split_indices(
            open_streamed(folder, keys), INPUTS, seed=2, split=split, keep_duplicates=False
        )
        loaded = split_indices(
            load_dataset(folder), INPUTS, seed=2, split=split, keep_duplicates=False
        )
        for a, b in zip(streamed, loaded, strict=True):
            assert np.array_equal(a, b)
    assert split_indices(ds, INPUTS, seed=2)[3] > 0  # duplicated flows were removed


def _without_timings(result):
    return {k: v for k, v in result.items() if k not in ("train_seconds", "infer_flows_per_s")}


def test_training_streamed_gives_the_in_memory_metrics_with_the_same_seed(folder, tmp_path):
    memory = train(folder, tmp_path / "memory", seed=1, loader="memory", **FAST)
    streamed = train(folder, tmp_path / "stream", seed=1, loader="stream", **FAST)
    assert _without_timings(streamed) == _without_timings(memory)
    info = json.loads((tmp_path / "stream" / "run.json").read_text())
    assert info["training"]["loader"] == "stream"
    a = torch.load(tmp_path / "memory" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "stream" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.warns(UserWarning, match="the dataset .* was trained on"):
        scored = [
            evaluate(tmp_path / "memory", folder, tmp_path / f"eval-{how}", loader=how)
            for how in ("memory", "stream")
        ]
    assert _without_timings(scored[0]) | {"report_dir": ""} == _without_timings(scored[1]) | {
        "report_dir": ""
    }


def test_a_buffer_smaller_than_the_split_trains_and_scores_every_test_flow(folder, tmp_path):
    longer = {**FAST, "epochs": 8}
    result = train(folder, tmp_path / "run", seed=1, loader="stream", buffer_flows=30, **longer)
    memory = train(folder, tmp_path / "memory", seed=1, loader="memory", **longer)
    for key in ("train_size", "val_size", "test_size", "duplicates_removed"):
        assert result[key] == memory[key], key
    assert result["num_flows"] == result["test_size"]  # every test flow scored once
    assert result["accuracy"] >= 0.8  # chance is 1/3: it learned through the windows


def test_auto_streams_when_the_inputs_would_not_fit(folder, monkeypatch):
    size = input_bytes(folder, INPUTS)
    widths = {name: width for name, (_, width) in SEQUENCE_COLUMNS.items()}
    per_flow = widths["payload_packet_bytes"] + 4 * widths["lengths"] + widths["directions"]
    assert size == 180 * per_flow
    assert choose_loader("auto", folder, INPUTS) == "memory"
    monkeypatch.setattr(stream_module, "machine_memory", lambda: 8 * size)
    assert choose_loader("auto", folder, INPUTS) == "memory"  # 1/8 of the memory
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four torchrun processes: one copy each
    assert choose_loader("auto", folder, INPUTS) == "stream"
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(stream_module, "machine_memory", lambda: 2 * size)
    assert choose_loader("auto", folder, INPUTS) == "stream"
    assert choose_loader("memory", folder, INPUTS) == "memory"
    with pytest.raises(ValueError, match="give its path"):
        choose_loader("stream", None, INPUTS)
    with pytest.raises(ValueError, match="loader must be"):
        choose_loader("disk", folder, INPUTS)


def test_an_estimator_is_not_streamed(folder, tmp_path):
    with pytest.raises(ValueError, match="estimator"):
        train(folder, tmp_path / "x", model="xgboost", loader="stream", **FAST)


def test_the_command_line_streams_when_asked(folder, tmp_path, capsys):
    from dmfnet.cli import main

    run = tmp_path / "run"
    command = ["train", str(folder), "-o", str(run), "--epochs", "1", "--batch-size", "16"]
    assert main([*command, "--loader", "stream", "--shuffle-buffer", "40", "--device", "cpu"]) == 0
    assert "streamed from disk" in capsys.readouterr().out
    info = json.loads((run / "run.json").read_text())
    assert info["training"]["loader"] == "stream"
    evaluation = tmp_path / "eval"
    assert main(["evaluate", str(run), str(folder), "-o", str(evaluation), "--loader", "stream"]) == 0
    assert (evaluation / "evaluation.json").is_file()
