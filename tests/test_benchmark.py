import csv
import json

import pytest
import torch

from dmfnet.models import create_model
from dmfnet.training.benchmark import read_results, run_benchmark
from dmfnet.training.complexity import count_flops, measure, synthetic_inputs
from dmfnet.training.trainer import train
from training_data import synthetic_flows

FAST = dict(seeds=1, epochs=1, batch_size=64, patience=0, device="cpu", progress=False)


@pytest.fixture(scope="module")
def dataset():
    return synthetic_flows(n_per_class=40)


def test_interrupted_benchmark_resumes_without_retraining(dataset, tmp_path):
    report = tmp_path / "report"
    calls = []

    def interrupted_after_first(ds, run_dir, **kw):
        calls.append(kw["model"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train(ds, run_dir, **kw)

    with pytest.raises(KeyboardInterrupt):
        run_benchmark(dataset, report, models=["dmf-late", "dmf-no-bytes"], complexity=False,
                      train_fn=interrupted_after_first, **FAST)  # fmt: skip
    assert [r["model"] for r in read_results(report / "results.csv")] == ["dmf-late"]
    first_run = report / "runs" / "dmf-late" / "seed0" / "run.json"
    stamp = first_run.stat().st_mtime_ns

    calls.clear()

    def counting(ds, run_dir, **kw):
        calls.append(kw["model"])
        return train(ds, run_dir, **kw)

    out = run_benchmark(dataset, report, models=["dmf-late", "dmf-no-bytes"], complexity=False,
                        train_fn=counting, **FAST)  # fmt: skip
    assert calls == ["dmf-no-bytes"]
    assert out["skipped"] == [("dmf-late", 0)] and out["trained"] == [("dmf-no-bytes", 0)]
    assert first_run.stat().st_mtime_ns == stamp
    with open(report / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["model"], r["seed"]) for r in rows] == [("dmf-late", "0"), ("dmf-no-bytes", "0")]
    assert list(rows[0]) == ["model", "seed", "accuracy", "precision_macro", "recall_macro",
                             "fpr_macro", "f1_macro", "train_seconds", "infer_flows_per_s",
                             "test_size", "duplicates_removed"]  # fmt: skip
    assert rows[0]["test_size"] == rows[1]["test_size"] == "12"  # one test set for both models
    md = (report / "tables.md").read_text()
    assert "| w/o Multi-scale fusion |" in md and "| w/o Raw byte |" in md
    metrics = json.loads((report / "runs" / "dmf-no-bytes" / "seed0" / "metrics.json").read_text())
    assert float(rows[1]["f1_macro"]) == pytest.approx(metrics["f1_macro"])


def test_finished_run_missing_from_results_is_not_retrained(dataset, tmp_path):
    report = tmp_path / "report"
    run_benchmark(dataset, report, models=["dmf-late"], complexity=False, **FAST)
    (report / "results.csv").unlink()  # killed after training, before the row was written

    def must_not_train(*a, **kw):
        raise AssertionError("retrained a finished run")

    out = run_benchmark(dataset, report, models=["dmf-late"], complexity=False,
                        train_fn=must_not_train, **FAST)  # fmt: skip
    assert out["trained"] == [("dmf-late", 0)]
    assert len(read_results(report / "results.csv")) == 1


def test_report_folder_refuses_another_protocol(dataset, tmp_path):
    def fake(ds, run_dir, **kw):
        return dict.fromkeys(("accuracy", "precision_macro", "recall_macro", "fpr_macro",
                              "f1_macro", "train_seconds", "infer_flows_per_s"), 0.5)  # fmt: skip

    run_benchmark(dataset, tmp_path, models=["dmf"], complexity=False, train_fn=fake, **FAST)
    with pytest.raises(ValueError, match="split: 'random' before, 'file' now"):
        run_benchmark(dataset, tmp_path, models=["dmf"], complexity=False, train_fn=fake,
                      **{**FAST, "split": "file"})  # fmt: skip
    with pytest.raises(KeyError, match="unknown model"):
        run_benchmark(dataset, tmp_path, models=["nope"], complexity=False, train_fn=fake, **FAST)


def test_a_failing_model_is_reported_and_the_rest_still_run(dataset, tmp_path):
    def flaky(ds, run_dir, **kw):
        if kw["model"] == "dmf-late":
            raise RuntimeError("out of luck")
        return dict.fromkeys(("accuracy", "precision_macro", "recall_macro", "fpr_macro",
                              "f1_macro", "train_seconds", "infer_flows_per_s"), 0.5)  # fmt: skip

    out = run_benchmark(dataset, tmp_path, models=["dmf-late", "dmf"], complexity=False,
                        train_fn=flaky, **FAST)  # fmt: skip
    assert out["failed"] == [("dmf-late", 0, "RuntimeError: out of luck")]
    assert [r["model"] for r in read_results(tmp_path / "results.csv")] == ["dmf"]
    assert "dmf-late seed 0: RuntimeError: out of luck" in (tmp_path / "failures.log").read_text()


@pytest.mark.parametrize("name", ["dmf", "dmf-late"])
def test_complexity_numbers_are_positive_and_params_match(name):
    r = measure(name, 5, batch_size=32, repeats=2, warmup=1)
    model = create_model(name, 5)
    assert r["params"] == sum(p.numel() for p in model.parameters())
    for key in ("flops_per_flow", "batch_latency_ms", "single_flow_latency_ms",
                "throughput_flows_per_s", "weights_mib"):  # fmt: skip
        assert r[key] > 0, key
    assert r["peak_memory_mib"] >= 0
    assert r["trees"] is None


def test_flop_count_sees_the_fusion_transformer():
    deep_model, late_model = create_model("dmf", 5).eval(), create_model("dmf-late", 5).eval()
    assert deep_model.inputs == late_model.inputs
    data = synthetic_inputs(list(deep_model.inputs), 16)
    tensors = [torch.from_numpy(data[c]) for c in deep_model.inputs]
    deep = count_flops(deep_model, tensors)
    late = count_flops(late_model, tensors)
    # Hand count of the byte MLP alone: 2 * 16 flows * (1600*512 + 512*256) multiply-adds.
    assert late > 2 * 16 * (1600 * 512 + 512 * 256)
    assert deep > late * 1.2  # three Transformer fusion blocks are not free


def test_cli_benchmark_and_complexity_only(dataset, tmp_path, capsys):
    from dmfnet.cli import main
    from training_data import write_flow_file

    data = write_flow_file(dataset, tmp_path / "flows.parquet")
    report = tmp_path / "report"
    args = ["benchmark", str(data), "-o", str(report), "--models", "dmf-late", "--seeds", "2",
            "--epochs", "1", "--batch-size", "64", "--device", "cpu", "-q"]  # fmt: skip
    assert main([*args, "--no-complexity"]) == 0
    out = capsys.readouterr().out
    assert "2 runs trained, 0 already in" in out and "| w/o Multi-scale fusion |" in out
    assert "mean ± sample std over 2 runs" in (report / "tables.md").read_text()
    assert "(120 flows, 3 classes)" in (report / "tables.md").read_text()

    assert main(["benchmark", str(data), "-o", str(report), "--models", "dmf-late",
                 "--complexity-only", "--complexity-batch", "16"]) == 0  # fmt: skip
    table = (report / "complexity.md").read_text()
    params = sum(p.numel() for p in create_model("dmf-late", 3).parameters())
    assert f"| dmf-late | {params:,} |" in table
    source = json.loads((report / "complexity.json").read_text())[0]["source"]
    assert source.startswith("configuration of") and "seed0" in source


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--models", "dmf,nope"], "unknown model(s) nope"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--set", "cnn1d:x=1", "--models", "dmf"], "--set expects MODEL:KEY=VALUE"),
    ],
)
def test_cli_bad_options_give_one_line(dataset, tmp_path, capsys, extra, message):
    from dmfnet.cli import main
    from training_data import write_flow_file

    data = write_flow_file(dataset, tmp_path / "flows.parquet")
    assert main(["benchmark", str(data), "-o", str(tmp_path / "r"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert main(["benchmark", str(tmp_path / "missing"), "-o", str(tmp_path / "r")]) == 2


def test_tree_model_reports_trees_instead_of_flops():
    r = measure("xgboost", 3, batch_size=32, repeats=2, warmup=1)
    assert r["params"] is None and r["flops_per_flow"] is None
    assert r["trees"] > 0 and r["tree_nodes"] >= r["trees"]
    assert r["throughput_flows_per_s"] > 0 and "synthetic" in r["source"]
