"""Unknown flows: the rejection threshold, classify --reject and the open-set benchmark."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import pcapbuild as pb
from dmfnet.classify import ClassifyError, classify_captures, iter_predictions
from dmfnet.cli import main
from dmfnet.training.rejection import (
    MIN_MISCLASSIFIED,
    auroc,
    calibrate_rejection,
    flow_scores,
    run_rejection,
    threshold_for,
)
from training_data import synthetic_flows

KNOWN = ("chat", "download", "ssh")
START_NS = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, single_thread) -> Path:
    """DMF trained on three classes of the synthetic flows (voip and zoom never seen)."""
    from dmfnet.training.trainer import train

    out = tmp_path_factory.mktemp("rejection") / "run"
    train(synthetic_flows(KNOWN, n_per_class=60), out, epochs=4, batch_size=32, progress=False)
    return out


# ----------------------------------------------------------------------------- scores


def test_scores_are_max_softmax_and_logsumexp() -> None:
    logits = np.array([[2.0, 0.0, 0.0], [20.0, 18.0, -5.0]])
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert flow_scores(logits, "max_softmax") == pytest.approx(softmax.max(axis=1))
    assert flow_scores(logits, "energy") == pytest.approx(np.log(np.exp(logits).sum(axis=1)))
    with pytest.raises(ValueError, match="max_softmax, energy"):
        flow_scores(logits, "entropy")


@pytest.mark.parametrize(("n", "rate", "accepted"), [(100, 0.95, 95), (37, 0.9, 34), (20, 1.0, 20)])
def test_threshold_accepts_the_rate_of_its_calibration_flows(n, rate, accepted) -> None:
    scores = np.random.default_rng(n).random(n)
    assert (scores >= threshold_for(scores, rate)).sum() == accepted


def test_accept_rate_outside_zero_one_is_an_error() -> None:
    for rate in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="accept rate"):
            threshold_for(np.ones(3), rate)


def test_auroc_counts_ties_half() -> None:
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5
    assert math.isnan(auroc(np.array([1.0]), np.array([])))


def test_score_chosen_is_the_one_that_tells_misclassified_flows_apart() -> None:
    # Right flows: large logits, close together (low max softmax, high energy); wrong flows:
    # small logits, one far ahead (high max softmax, low energy). Max softmax ranks them
    # the wrong way round; energy separates them.
    rng = np.random.default_rng(0)
    right = 10.0 + rng.random((30, 3))
    right[:, 0] += 1.0
    wrong = rng.random((MIN_MISCLASSIFIED, 3))
    wrong[:, 1] += 4.0
    logits = np.vstack([right, wrong])
    y = np.zeros(len(logits), dtype=np.int64)
    record = calibrate_rejection(logits, y, kind="torch")
    assert record["score"] == "energy"
    measured = record["score_choice"]["auroc_correct_vs_misclassified"]
    assert measured["energy"] == 1.0 and measured["max_softmax"] < 0.5
    assert record["score_choice"]["misclassified_flows"] == MIN_MISCLASSIFIED
    # The other way round: right flows with small logits, one far ahead; wrong flows with
    # large, close logits. Max softmax is chosen.
    right = rng.random((30, 3))
    right[:, 0] += 5.0
    wrong = 10.0 + rng.random((MIN_MISCLASSIFIED, 3))
    wrong[:, 1] += 1.5
    flipped = np.vstack([right, wrong])
    assert calibrate_rejection(flipped, y, kind="torch")["score"] == "max_softmax"
    # An estimator has probabilities only: max softmax whatever the measurement.
    assert calibrate_rejection(logits, y, kind="estimator")["score"] == "max_softmax"
    with pytest.raises(ValueError, match="not available"):
        calibrate_rejection(logits, y, kind="estimator", score="energy")


def test_too_few_misclassified_flows_keep_the_default_score() -> None:
    right = np.array([[11.0, 10.0, 10.0], [12.0, 11.5, 11.0], [10.5, 10.0, 9.0]])
    wrong = np.array([[0.0, 3.0, 0.0]])  # one error: its rank is not a measurement
    logits, y = np.vstack([right, wrong]), np.zeros(4, dtype=np.int64)
    record = calibrate_rejection(logits, y, kind="torch")
    assert record["score"] == "energy" and "fewer than" in record["score_choice"]["chosen_by"]
    assert calibrate_rejection(logits, y, kind="estimator")["score"] == "max_softmax"
    record = calibrate_rejection(right, np.zeros(3, dtype=np.int64), kind="torch")
    assert record["score"] == "energy"
    assert record["score_choice"]["auroc_correct_vs_misclassified"]["energy"] is None


# ----------------------------------------------------------------------------- trained run


def _validation_and_test(run: Path) -> tuple[dict, np.ndarray, dict]:
    """The known validation inputs and labels of the run, and its known test inputs."""
    from dmfnet.training.runs import load_run
    from dmfnet.training.trainer import split_indices

    trained = load_run(run)
    ds = synthetic_flows(KNOWN, n_per_class=60)
    _, val_idx, test_idx, _ = split_indices(ds, list(trained.inputs), seed=0)
    inputs = {c: ds[c] for c in trained.inputs}
    val = {c: a[val_idx] for c, a in inputs.items()}
    test = {c: a[test_idx] for c, a in inputs.items()}
    return val, ds.y[val_idx], test


def test_run_records_a_threshold_that_accepts_95_percent_of_its_validation_flows(
    run_dir: Path,
) -> None:
    from dmfnet.training.runs import load_run

    info = json.loads((run_dir / "run.json").read_text())
    record = info["rejection"]
    assert record["accept_rate"] == 0.95 and record["score"] in ("max_softmax", "energy")
    trained = load_run(run_dir)
    rule = run_rejection(trained.info)
    val, _, _ = _validation_and_test(run_dir)
    accepted = rule.accepts(rule.scores(trained.predict_logits(val)))
    assert len(accepted) == record["validation_flows"] == 18
    assert accepted.sum() == record["validation_accepted"] == math.ceil(0.95 * 18)


def test_flows_of_a_class_left_out_of_training_are_rejected_more_often(run_dir: Path) -> None:
    from dmfnet.training.runs import load_run

    trained = load_run(run_dir)
    rule = run_rejection(trained.info)
    _, _, test = _validation_and_test(run_dir)
    unseen = synthetic_flows(("voip", "zoom"), n_per_class=30, seed=5)
    unknown = {c: unseen[c] for c in trained.inputs}
    known_scores = rule.scores(trained.predict_logits(test))
    unknown_scores = rule.scores(trained.predict_logits(unknown))
    known_rejected = 1 - rule.accepts(known_scores).mean()
    unknown_rejected = 1 - rule.accepts(unknown_scores).mean()
    assert unknown_rejected > known_rejected
    assert auroc(known_scores, unknown_scores) > 0.5


# ----------------------------------------------------------------------------- classify


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    records = []
    for i, size in enumerate((40, 300, 900, 1400)):
        records += pb.tcp_conversation(
            (f"10.1.0.{i + 5}", 40001 + i),
            ("192.0.2.10", 443),
            [("c", b"\x16\x03\x01" + b"x" * size), ("s", b"y" * (size // 2 + 10))],
            start_ns=START_NS + i * 1_000_000_000,
        )
    records.sort(key=lambda r: r.ts_ns)
    return pb.write_pcap(tmp_path / "flows.pcap", pb.wrap(records, pb.LINKTYPE_ETHERNET))


def _run_with_threshold(run_dir: Path, tmp_path: Path, threshold: float | None) -> Path:
    """A copy of the run whose threshold is ``threshold`` (None: no rejection record)."""
    copy = tmp_path / "run-copy"
    shutil.copytree(run_dir, copy)
    info = json.loads((copy / "run.json").read_text())
    if threshold is None:
        del info["rejection"]
    else:
        info["rejection"]["threshold"] = threshold
    (copy / "run.json").write_text(json.dumps(info))
    return copy


def test_classify_reject_labels_flows_below_the_threshold_unknown_and_keeps_the_top(
    run_dir: Path, capture: Path, tmp_path: Path
) -> None:
    scores = [r["score"] for r in iter_predictions(run_dir, [capture], reject=True)]
    assert len(scores) == 4
    middle = float(np.median(scores))  # half the flows below, half above
    run = _run_with_threshold(run_dir, tmp_path, middle)
    out = tmp_path / "pred.csv"
    summary = classify_captures(run, [capture], out, progress=False, reject=True)
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[-1] == "score"
    unknown = [r for r in rows if r["predicted"] == "unknown"]
    assert 0 < len(unknown) < len(rows)
    for row in rows:
        top = [item.split(":")[0] for item in row["top"].split(";")]
        assert len(top) == 3 and set(top) == set(KNOWN)
        below = float(row["score"]) < round(middle, 4)
        assert (row["predicted"] == "unknown") == below
        if not below:
            assert row["predicted"] == top[0]
    assert summary.unknown == len(unknown) == summary.predicted["unknown"]
    assert f"{len(unknown)} flows unknown" in summary.report()
    # Without --reject the same run forces every flow into a known class.
    plain = classify_captures(run, [capture], tmp_path / "plain.csv", progress=False)
    assert "unknown" not in plain.predicted and plain.unknown == 0


def test_cli_reject_writes_unknown_in_jsonl(
    run_dir: Path, capture: Path, tmp_path: Path, capsys
) -> None:
    run = _run_with_threshold(run_dir, tmp_path, 1e9)  # nothing reaches it
    out = tmp_path / "pred.jsonl"
    assert main(["classify", str(run), str(capture), "-o", str(out), "-q", "--reject"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["predicted"] for r in lines] == ["unknown"] * 4
    assert all(len(r["top"]) == 3 and "score" in r for r in lines)
    assert "4 flows unknown" in capsys.readouterr().out


def test_reject_with_a_run_without_threshold_is_one_clear_line(
    run_dir: Path, capture: Path, tmp_path: Path, capsys
) -> None:
    old = _run_with_threshold(run_dir, tmp_path, None)
    with pytest.raises(ClassifyError, match="no rejection threshold"):
        classify_captures(old, [capture], tmp_path / "p.csv", reject=True)
    code = main(["classify", str(old), str(capture), "-o", str(tmp_path / "p.csv"), "--reject"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "train it again" in err[0]
    # Without --reject the old run still classifies.
    assert classify_captures(old, [capture], tmp_path / "q.csv", progress=False).flows_classified == 4


# ----------------------------------------------------------------------------- open set


def test_open_set_benchmark_reports_auroc_and_rates_per_held_out_class(
    tmp_path: Path, single_thread
) -> None:
    from dmfnet.training.openset import held_out_classes, read_open_set, run_open_set

    classes = ("chat", "download", "ssh", "voip")
    assert held_out_classes(classes, 0, 1) == ["chat"]
    assert held_out_classes(classes, 5, 1) == ["download"]
    assert held_out_classes(classes, 1, 2) == ["ssh", "voip"]
    with pytest.raises(ValueError, match="1 to 2"):
        held_out_classes(classes, 0, 3)

    dataset = synthetic_flows(classes, n_per_class=30)
    report = tmp_path / "open-set"
    out = run_open_set(
        dataset, report, models=["dmf"], seeds=2, epochs=1, batch_size=32, progress=False
    )
    assert out["failed"] == [] and out["trained"] == [("dmf", 0), ("dmf", 1)]
    rows = read_open_set(report / "open_set.csv")
    assert [(r["seed"], r["held_out"]) for r in rows] == [(0, "chat"), (1, "download")]
    for row in rows:
        assert row["unknown_flows"] == 30
        assert 0 < row["known_test_flows"] <= 9  # the test split of 3 known classes
        for key in ("auroc", "auroc_max_softmax", "auroc_energy", "accepted_known",
                    "rejected_unknown"):  # fmt: skip
            assert 0.0 <= row[key] <= 1.0
        assert row["auroc"] == row[f"auroc_{row['score']}"]
        info = json.loads((report / "runs" / "dmf" / f"seed{row['seed']}" / "run.json").read_text())
        assert row["held_out"] not in info["classes"] and len(info["classes"]) == 3
        assert row["threshold"] == info["rejection"]["threshold"]
    tables = (report / "tables.md").read_text()
    assert "# Open-set benchmark" in tables and "| dmf | 2 |" in tables
    assert "seeds 0: chat; 1: download" in tables
    # A rerun resumes: nothing trained again.
    again = run_open_set(
        dataset, report, models=["dmf"], seeds=2, epochs=1, batch_size=32, progress=False
    )
    assert again["trained"] == [] and len(again["skipped"]) == 2
    with pytest.raises(ValueError, match="other settings"):
        run_open_set(dataset, report, models=["dmf"], seeds=2, epochs=2, progress=False)


def test_cli_open_set_writes_the_report_and_refuses_too_many_held_out_classes(
    tmp_path: Path, capsys, single_thread
) -> None:
    from training_data import write_flow_file

    flows = write_flow_file(synthetic_flows(("chat", "download", "ssh"), 30), tmp_path / "f.parquet")
    report = tmp_path / "report"
    args = ["benchmark", str(flows), "-o", str(report), "--open-set", "--models", "dmf"]
    args += ["--seeds", "1", "--epochs", "1", "--batch-size", "32", "-q"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "# Open-set benchmark" in out and "1 runs trained" in out
    assert (report / "open_set.csv").exists() and (report / "tables.md").exists()
    assert not (report / "results.csv").exists()  # not a closed-set benchmark report
    code = main([*args[:4], "-o", str(tmp_path / "other"), "--open-set", "--held-out", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "held-out classes per seed must be 1 to 1" in err[0]
