"""One test set for every model of a benchmark, and paired comparisons with DMF."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from dmfnet.models import model_inputs
from dmfnet.training.benchmark import (
    METRIC_COLUMNS,
    SHARED_DUPLICATE_RULE,
    append_result,
    paired_differences,
    read_results,
    run_benchmark,
    write_tables,
)
from dmfnet.training.trainer import split_indices, train
from training_data import synthetic_flows

ONE_EPOCH = dict(epochs=1, batch_size=64, patience=0, device="cpu", progress=False)
SEED = 2  # with seed 2, 13 of the 18 test flows have their twin in training
# What the length modality reads of a flow (the lengths of its packets that carry payload).
LENGTHS = ["lengths", "payload_lengths"]
T_975 = {2: 4.302652729911275, 3: 3.182446305284263}  # t(0.975, df), from a t table


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _twins(columns):
    """The synthetic dataset with flow 2k+1 a copy of flow 2k (same class) in ``columns``."""
    ds = synthetic_flows(n_per_class=60)
    for name in columns:
        ds.columns[name][1::2] = ds.columns[name][0::2]
    return ds


def _twin_in_train(seed, ds):
    """Test flows (all kept) whose twin is a training flow."""
    train_idx, _, all_test, _ = split_indices(ds, ("bytes",), seed=seed, keep_duplicates=True)
    return all_test, np.isin(all_test ^ 1, train_idx)


# ----------------------------------------------------------------------------- one test set


def test_a_duplicate_in_one_models_inputs_only_is_kept_for_all(tmp_path):
    ds = _twins(LENGTHS)  # twins share packet lengths, not bytes
    all_test, twin = _twin_in_train(SEED, ds)
    assert twin.sum() > 0
    # Today's rule (dmfnet train): the lengths-only model loses the twins from its test set.
    own = train(ds, tmp_path / "own", model="dmf-no-bytes", seed=SEED, **ONE_EPOCH)
    assert own["duplicates_removed"] == int(twin.sum())
    assert own["test_size"] == len(all_test) - int(twin.sum())
    # The benchmark's rule: compared on bytes and lengths together, nothing is a duplicate.
    for model in ("dmf-no-bytes", "dmf-no-lengths"):
        result = train(ds, tmp_path / model, model=model, duplicate_inputs=["bytes", "lengths"],
                       seed=SEED, **ONE_EPOCH)  # fmt: skip
        assert result["duplicates_removed"] == 0 and result["test_size"] == len(all_test)
        info = json.loads((tmp_path / model / "run.json").read_text())
        assert info["duplicate_inputs"] == ["bytes", "lengths"]
    info = json.loads((tmp_path / "own" / "run.json").read_text())
    assert info["duplicate_inputs"] == list(model_inputs("dmf-no-bytes"))  # the model's own


def test_a_full_duplicate_is_dropped_for_all_models(tmp_path):
    ds = _twins(["bytes", "lengths"])
    all_test, twin = _twin_in_train(SEED, ds)
    _, _, test_idx, removed = split_indices(ds, ["bytes", "lengths"], seed=SEED)
    np.testing.assert_array_equal(test_idx, all_test[~twin])
    assert removed == int(twin.sum()) > 0
    for model in ("dmf-no-bytes", "dmf-no-lengths"):
        result = train(ds, tmp_path / model, model=model, duplicate_inputs=["bytes", "lengths"],
                       seed=SEED, **ONE_EPOCH)  # fmt: skip
        assert result["duplicates_removed"] == removed
        assert result["test_size"] == len(test_idx)
        info = json.loads((tmp_path / model / "run.json").read_text())
        assert info["duplicate_inputs"] == ["bytes", "lengths"]


def test_extra_columns_compared_are_loaded_from_a_dataset_file(tmp_path):
    from training_data import write_flow_file

    path = write_flow_file(_twins(LENGTHS), tmp_path / "flows.parquet")
    own = train(path, tmp_path / "own", model="dmf-no-bytes", seed=SEED, **ONE_EPOCH)
    shared = train(path, tmp_path / "shared", model="dmf-no-bytes",
                   duplicate_inputs=["bytes", "lengths"], seed=SEED, **ONE_EPOCH)  # fmt: skip
    assert own["duplicates_removed"] > 0 and shared["duplicates_removed"] == 0
    assert shared["test_size"] == own["test_size"] + own["duplicates_removed"]


def test_two_models_of_one_benchmark_get_the_same_test_flows(tmp_path):
    ds = _twins(LENGTHS)
    seen = []

    def recording(data, run_dir, **kw):
        seen.append(kw["duplicate_inputs"])
        return train(data, run_dir, **kw)

    run_benchmark(ds, tmp_path, models=["dmf-no-bytes", "dmf-no-lengths"], seeds=1,
                  complexity=False, train_fn=recording, **ONE_EPOCH)  # fmt: skip
    union = sorted(set(model_inputs("dmf-no-bytes")) | set(model_inputs("dmf-no-lengths")))
    assert union == ["directions", "lengths", "payload_lengths", "payload_packet_bytes"]
    assert seen == [union, union]
    rows = {r["model"]: r for r in read_results(tmp_path / "results.csv")}
    all_test, twin = _twin_in_train(0, ds)
    assert twin.sum() > 0  # each model's own inputs would have given different test sets
    assert rows["dmf-no-bytes"]["test_size"] == rows["dmf-no-lengths"]["test_size"]
    assert rows["dmf-no-bytes"]["test_size"] == len(all_test)
    assert rows["dmf-no-bytes"]["duplicates_removed"] == 0
    settings = json.loads((tmp_path / "benchmark.json").read_text())
    assert settings["duplicate_inputs"] == union
    md = (tmp_path / "tables.md").read_text()
    assert SHARED_DUPLICATE_RULE in md and f"compared on {', '.join(union)}" in md
    assert f"**Test flows per seed:** 0: {len(all_test)}" in md


def _fake(data, run_dir, **kw):
    return {**dict.fromkeys(METRIC_COLUMNS, 0.5), "test_size": 12, "duplicates_removed": 0}


def test_a_report_of_the_older_per_model_rule_is_refused_and_same_settings_resume(tmp_path):
    ds = synthetic_flows(n_per_class=40)
    run_benchmark(ds, tmp_path, models=["dmf"], seeds=1, complexity=False, train_fn=_fake,
                  **ONE_EPOCH)  # fmt: skip
    again = run_benchmark(ds, tmp_path, models=["dmf"], seeds=1, complexity=False,
                          train_fn=_fake, **ONE_EPOCH)  # fmt: skip
    assert again["skipped"] == [("dmf", 0)]
    # A model with other inputs changes the test flows of every model: another folder.
    with pytest.raises(ValueError, match="duplicate_inputs"):
        run_benchmark(ds, tmp_path, models=["dmf", "cnn1d"], seeds=1, complexity=False,
                      train_fn=_fake, **ONE_EPOCH)  # fmt: skip
    settings = json.loads((tmp_path / "benchmark.json").read_text())
    del settings["duplicate_inputs"]  # as written before the shared rule
    (tmp_path / "benchmark.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="older rule"):
        run_benchmark(ds, tmp_path, models=["dmf"], seeds=1, complexity=False, train_fn=_fake,
                      **ONE_EPOCH)  # fmt: skip


# ----------------------------------------------------------------------------- statistics


def _row(model, seed, f1, fpr=0.01):
    return {"model": model, "seed": seed, **dict.fromkeys(METRIC_COLUMNS, 0.5),
            "f1_macro": f1, "fpr_macro": fpr}  # fmt: skip


DMF_F1 = [0.80, 0.81, 0.82, 0.83]
ROWS = [_row("dmf", k, f) for k, f in enumerate(DMF_F1)]
ROWS += [_row("up", k, DMF_F1[k] + d / 100) for k, d in enumerate([1, 2, 3])]  # seeds 0-2
ROWS += [_row("down", k, DMF_F1[k] + d / 100) for k, d in enumerate([-4, -5, -6, -5])]
ROWS += [_row("better", k, DMF_F1[k] + d / 100) for k, d in enumerate([2, 3, 4])]
ROWS += [_row("ties", k, DMF_F1[k] + d / 100) for k, d in enumerate([0.04, -0.06, 1.0])]
ROWS += [_row("single", 0, 0.70), _row("elsewhere", 7, 0.99)]


def test_paired_differences_match_hand_computed_values():
    got = {p["model"]: p for p in paired_differences(ROWS)}
    assert list(got) == ["up", "down", "better", "ties", "single"]  # no shared seed: left out

    up = got["up"]  # differences 1, 2, 3 pp: mean 2, s = 1
    assert up["seeds"] == [0, 1, 2] and up["n"] == 3
    assert up["differences_pp"] == pytest.approx([1, 2, 3])
    assert up["mean_pp"] == pytest.approx(2.0)
    half = T_975[2] * 1.0 / math.sqrt(3)  # 2.484
    assert up["ci_low_pp"] == pytest.approx(2 - half)
    assert up["ci_high_pp"] == pytest.approx(2 + half)
    assert (up["wins"], up["ties"], up["losses"]) == (3, 0, 0)
    assert up["verdict"] == "no clear difference"  # the interval holds 0

    down = got["down"]  # -4, -5, -6, -5: mean -5, s = sqrt(2/3)
    half = T_975[3] * math.sqrt(2 / 3) / 2
    assert down["mean_pp"] == pytest.approx(-5.0)
    assert down["ci_low_pp"] == pytest.approx(-5 - half)
    assert down["ci_high_pp"] == pytest.approx(-5 + half)
    assert (down["wins"], down["ties"], down["losses"]) == (0, 0, 4)
    assert down["verdict"] == "DMF better"

    better = got["better"]  # 2, 3, 4: mean 3, CI 3 ± 2.484, above 0
    assert better["ci_low_pp"] == pytest.approx(3 - T_975[2] / math.sqrt(3))
    assert better["verdict"] == "model better"

    ties = got["ties"]  # |0.04| < 0.05 is a tie, |-0.06| is not
    assert (ties["wins"], ties["ties"], ties["losses"]) == (1, 1, 1)

    single = got["single"]
    assert single["n"] == 1 and single["mean_pp"] == pytest.approx(-10.0)
    assert math.isnan(single["ci_low_pp"]) and math.isnan(single["ci_high_pp"])
    assert single["verdict"] == "n/a (one seed)" and single["losses"] == 1


def test_lower_is_better_metric_counts_a_lower_value_as_a_win():
    rows = [_row("dmf", k, 0.8, fpr=0.05) for k in range(3)]
    rows += [_row("m", k, 0.8, fpr=0.05 - d / 100) for k, d in enumerate([1, 2, 3])]
    (p,) = paired_differences(rows, metric="fpr_macro")
    assert p["mean_pp"] == pytest.approx(-2.0)
    assert (p["wins"], p["losses"]) == (3, 0) and p["verdict"] == "no clear difference"
    assert paired_differences(rows[3:]) == []  # no DMF results: nothing to pair


# ----------------------------------------------------------------------------- tables.md


def _write(path, rows):
    for r in rows:
        append_result(path, r)
    return path


def test_tables_show_the_paired_section_and_test_flows_per_seed(tmp_path):
    sizes = {0: 315, 1: 312}
    rows = [
        {**_row(m, k, f), "test_size": sizes[k], "duplicates_removed": 3 * (k + 1)}
        for m, fs in (("dmf", [0.80, 0.81]), ("cnn1d", [0.78, 0.80]))
        for k, f in enumerate(fs)
    ]
    res = _write(tmp_path / "results.csv", rows)
    info = {"keep_duplicates": False, "duplicate_inputs": ["bytes", "flow_head", "lengths"]}
    written = write_tables(res, tmp_path / "out", info)
    md = written["markdown"].read_text()
    assert SHARED_DUPLICATE_RULE in md and "compared on bytes, flow_head, lengths" in md
    assert "- **Test flows per seed:** 0: 315, 1: 312\n" in md
    assert "- **Duplicate test flows dropped per seed:** 0: 3, 1: 6\n" in md
    section = md.split("## Paired comparison with DMF")[1].split("\n## ")[0]
    assert "scored on the same test flows" in section and "0.05 pp" in section
    # differences -2 and -1 pp: mean -1.5, s = sqrt(0.5), CI -1.5 ± 12.706 * 0.5
    assert "| cnn1d | 2 | -1.50 | [-7.85, +4.85] | 0 / 0 / 2 | no clear difference |" in section
    with open(written["paired"]) as fh:
        (paired,) = list(csv.DictReader(fh))
    assert paired["model"] == "cnn1d" and paired["reference"] == "dmf"
    assert paired["shared_seeds"] == "2" and paired["seeds"] == "0 1"
    assert paired["mean_diff_pp"] == "-1.5000" and paired["ci_low_pp"] == "-7.8531"
    assert (paired["wins"], paired["ties"], paired["losses"]) == ("0", "0", "2")
    assert paired["verdict"] == "no clear difference"

    # Models of one seed scored on different numbers of flows: said so.
    rows[3]["test_size"] = 311
    res2 = _write(tmp_path / "results2.csv", rows)
    md = write_tables(res2, tmp_path / "out2", info)["markdown"].read_text()
    assert "0: 315, 1: 311-312 — models of one seed differ (seed 1: dmf 312, cnn1d 311)" in md

    # One shared seed: no interval. No DMF: no section.
    one = _write(tmp_path / "one.csv", [r for r in rows if r["seed"] == 0])
    md = write_tables(one, tmp_path / "out3", info)["markdown"].read_text()
    assert "| cnn1d | 1 | -2.00 | n/a | 0 / 0 / 1 | n/a (one seed) |" in md
    none = _write(tmp_path / "none.csv", [r for r in rows if r["model"] != "dmf"])
    written = write_tables(none, tmp_path / "out4", info)
    assert "Paired comparison" not in written["markdown"].read_text() and "paired" not in written


def test_old_results_without_test_sizes_still_read_and_take_new_rows(tmp_path):
    old = tmp_path / "results.csv"
    with open(old, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "seed", *METRIC_COLUMNS])
        w.writerow(["dmf", 0, *[0.5] * len(METRIC_COLUMNS)])
        w.writerow(["cnn1d", 0, *[0.4] * len(METRIC_COLUMNS)])
    (dmf, cnn) = read_results(old)
    assert math.isnan(dmf["test_size"]) and math.isnan(dmf["duplicates_removed"])
    assert cnn["f1_macro"] == 0.4
    md = write_tables(old, tmp_path / "out", {"keep_duplicates": False})["markdown"].read_text()
    assert "Test flows per seed" not in md and "## Paired comparison with DMF" in md

    append_result(old, {**_row("dmf", 1, 0.6), "test_size": 20, "duplicates_removed": 1})
    with open(old) as fh:
        assert next(csv.reader(fh))[-2:] == ["test_size", "duplicates_removed"]
    got = {(r["model"], r["seed"]): r for r in read_results(old)}
    assert len(got) == 3 and got[("dmf", 1)]["test_size"] == 20
    assert math.isnan(got[("cnn1d", 0)]["test_size"]) and got[("cnn1d", 0)]["f1_macro"] == 0.4
