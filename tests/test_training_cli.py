"""`dmfnet train` and `dmfnet evaluate`: results printed, bad input one line and non-zero."""

from __future__ import annotations

import json

import pytest
import torch

from dmfnet.cli import main
from training_data import synthetic_flows, write_flow_file


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cli")
    flows = write_flow_file(synthetic_flows(n_per_class=20), root / "flows.parquet")
    argv = ["train", str(flows), "-o", str(root / "run"), "--epochs", "2", "--batch-size", "16"]
    argv += ["--seed", "4", "--set", "fusion_tokens=4", "--set", "length_scaling=log", "-q"]
    argv += ["--threads", "1"]
    code = main(argv)
    yield root, code
    torch.set_num_threads(before)


def test_train_writes_the_run_and_records_overrides(trained, capsys):
    root, code = trained
    assert code == 0
    info = json.loads((root / "run" / "run.json").read_text())
    assert info["model_config"]["fusion_tokens"] == 4
    assert info["model_config"]["length_scaling"] == "log"
    assert info["seed"] == 4 and info["training"]["epochs"] == 2
    assert info["torch_threads"] == 1
    assert info["dataset"]["path"] == str(root / "flows.parquet")


def test_evaluate_prints_metrics_and_unknown_classes(trained, capsys):
    root, _ = trained
    other = write_flow_file(synthetic_flows(("chat", "zoom"), 10), root / "other.parquet")
    capsys.readouterr()
    assert main(["evaluate", str(root / "run"), str(other), "-o", str(root / "ev")]) == 0
    printed = capsys.readouterr()
    out = printed.out
    assert "left out, unknown to the model: 1 class, 10 flows: zoom (10)" in out
    assert "trained on" not in printed.err  # another dataset: no warning
    assert "| Accuracy |" in out and "| chat |" in out
    assert f"report: {root / 'ev' / 'report.md'}" in out
    assert (root / "ev" / "metrics.json").is_file()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_evaluate_missing_run_folder_fails_with_one_line(trained, tmp_path, capsys):
    root, _ = trained
    assert main(["evaluate", str(tmp_path / "no-run"), str(root / "flows.parquet")]) != 0
    assert "no-run is not a run folder" in _one_line_error(capsys)


def test_evaluate_dataset_without_known_classes_fails_with_one_line(trained, capsys):
    root, _ = trained
    alien = write_flow_file(synthetic_flows(("voip", "zoom"), 5), root / "alien.parquet")
    capsys.readouterr()
    assert main(["evaluate", str(root / "run"), str(alien)]) != 0
    assert "none of the dataset's classes (voip, zoom)" in _one_line_error(capsys)


def test_train_bad_input_fails_with_one_line(trained, tmp_path, capsys):
    root, _ = trained
    flows = str(root / "flows.parquet")
    out = str(tmp_path / "r")
    assert main(["train", str(tmp_path / "missing"), "-o", out]) != 0
    assert "missing does not exist" in _one_line_error(capsys)
    assert main(["train", flows, "-o", out, "--model", "nope"]) != 0
    assert "unknown model 'nope'" in _one_line_error(capsys)
    assert main(["train", flows, "-o", out, "--set", "fusion_tokens"]) != 0
    assert "KEY=VALUE" in _one_line_error(capsys)
    assert main(["train", flows, "-o", out, "-q", "--set", "no_such_knob=1"]) != 0
    assert "no_such_knob" in _one_line_error(capsys)


def test_evaluate_report_goes_into_the_run_folder_by_default(trained, capsys):
    root, _ = trained
    assert main(["evaluate", str(root / "run"), str(root / "flows.parquet")]) == 0
    report = root / "run" / "evaluation-flows" / "report.md"
    printed = capsys.readouterr()
    assert f"report: {report}" in printed.out
    assert report.is_file()
    # the run's own training dataset: scores include training flows, said once on stderr
    warning = [line for line in printed.err.splitlines() if "trained on" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: ")
    assert "held-out test scores are in its metrics.json" in warning[0]


def test_unknown_classes_are_one_summary_line():
    from dmfnet.training.trainer import unknown_summary

    unknown = {f"proto{i:03d}": i + 1 for i in range(388)}
    text = unknown_summary(unknown)
    assert text.startswith(f"388 classes, {sum(unknown.values()):,} flows: proto387 (388), ")
    assert text.endswith("proto383 (384) and 383 more") and "\n" not in text
    assert unknown_summary({}) == ""


def test_evaluate_device_defaults_to_auto_like_train():
    from dmfnet.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["evaluate", "R", "D"]).device == "auto"
    assert parser.parse_args(["train", "D", "-o", "R"]).device == "auto"


def test_training_dataset_is_recognised_by_path_or_by_its_card(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from dmfnet.training.trainer import _is_training_dataset

    card = {"created": "2025-01-01T00:00:00+00:00", "classes": {"a": {"flows": 3}}}
    info = {"dataset": {"path": "data/ds", "card": card}}
    monkeypatch.chdir(tmp_path)
    plain = SimpleNamespace(card={})
    assert _is_training_dataset(info, str(tmp_path / "data" / "ds"), plain)  # same folder
    assert not _is_training_dataset(info, str(tmp_path / "other"), plain)
    moved = SimpleNamespace(card=dict(card))  # copied or moved elsewhere: the same card
    assert _is_training_dataset(info, "/mnt/copy/ds", moved)
    remade = SimpleNamespace(card={**card, "created": "2025-02-02T00:00:00+00:00"})
    assert not _is_training_dataset(info, "/mnt/copy/ds", remade)


def test_drop_classes_absent_from_the_dataset_is_a_warning(trained, tmp_path, capsys):
    root, _ = trained
    argv = ["train", str(root / "flows.parquet"), "-o", str(tmp_path / "r"), "-q"]
    assert main([*argv, "--model", "xgboost", "--drop-classes", "Unknown"]) == 0
    err = capsys.readouterr().err
    assert "warning: drop classes: the dataset has no class Unknown; nothing dropped" in err
