"""One rule for every command's output folder (dmfnet.outputs): new, empty or one of its
own kind; anything else refused in one line unless --force; never inside the input
dataset; nothing half-made that looks finished, and no folder left by a failed command."""

from __future__ import annotations

import json
import os

import pytest
import torch

from dmfnet.cli import main
from dmfnet.data.dataset import CARD_NAME
from dmfnet.outputs import (
    BENCHMARK,
    DATASET,
    DEMO,
    EVALUATION,
    RUN,
    UNFINISHED,
    OutputError,
    check_output,
    open_output,
)
from dmfnet.training.benchmark import run_benchmark
from dmfnet.training.trainer import evaluate, train
from training_data import synthetic_flows, write_flow_file

FAST = dict(epochs=1, batch_size=16, patience=0, device="cpu", progress=False)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset_folder(tmp_path_factory):
    """A dataset folder as `prepare` leaves it: a part file and the card."""
    folder = tmp_path_factory.mktemp("outputs") / "ds"
    folder.mkdir()
    write_flow_file(synthetic_flows(n_per_class=20), folder / "part-000000-000.parquet")
    (folder / CARD_NAME).write_text(json.dumps({"format": "dmfnet-flow-dataset"}))
    return folder


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()


# -- the rule itself ------------------------------------------------------------------------


def test_a_new_folder_is_made_marked_unfinished_until_finished(tmp_path):
    out = tmp_path / "a" / "run"
    output = open_output(out, RUN)
    assert (out / UNFINISHED).is_file()
    output.finish()
    assert list(out.iterdir()) == []


def test_an_empty_folder_is_taken(tmp_path):
    open_output(tmp_path, RUN).finish()


@pytest.mark.parametrize("kind", [DATASET, RUN, EVALUATION, BENCHMARK, DEMO], ids=lambda k: k.name)
def test_a_folder_that_is_not_ours_needs_force(tmp_path, kind):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=rf"^{tmp_path}: .*not empty.*--force"):
        open_output(tmp_path, kind)
    open_output(tmp_path, kind, force=True).finish()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_unfinished_output_of_its_kind_is_cleared_without_force(tmp_path):
    open_output(tmp_path, RUN)  # never finished: a command killed outright
    (tmp_path / "history.csv").write_text("epoch\n1\n")
    with open(tmp_path / UNFINISHED, "w") as fh:  # its process has ended
        json.dump({"kind": "run", "pid": 2**22 + 17}, fh)
    open_output(tmp_path, RUN).finish()
    assert list(tmp_path.iterdir()) == []


def test_an_output_being_written_by_a_live_process_is_refused(tmp_path):
    (tmp_path / UNFINISHED).write_text(json.dumps({"kind": "run", "pid": os.getppid()}))
    with pytest.raises(OutputError, match=f"process {os.getppid()} is writing it"):
        open_output(tmp_path, RUN)


def test_an_unfinished_output_of_another_kind_is_not_ours(tmp_path):
    open_output(tmp_path / "x", EVALUATION)
    with pytest.raises(OutputError, match="not a dmfnet run"):
        check_output(tmp_path / "x", RUN)


def test_a_finished_run_or_dataset_needs_force_an_evaluation_or_demo_is_replaced(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    with pytest.raises(OutputError, match="holds a finished run.*--force"):
        check_output(tmp_path / "run", RUN)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset.json").write_text("{}")  # the older card name counts
    with pytest.raises(OutputError, match="holds a finished dataset.*--force"):
        check_output(tmp_path / "ds", DATASET)
    for kind, mark in ((EVALUATION, "evaluation.json"), (DEMO, "demo.json")):
        folder = tmp_path / kind.name
        folder.mkdir()
        (folder / mark).write_text("{}")
        (folder / "report.md").write_text("old")
        open_output(folder, kind).finish()
        assert not (folder / mark).exists()


def test_a_benchmark_report_is_resumed_as_it_is(tmp_path):
    (tmp_path / "benchmark.json").write_text("{}")
    (tmp_path / "results.csv").write_text("model,seed\n")
    open_output(tmp_path, BENCHMARK).finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmark.json", "results.csv"]


def test_an_output_in_the_input_dataset_is_refused_even_with_force(dataset_folder):
    for out in (dataset_folder, dataset_folder / "run"):
        with pytest.raises(OutputError, match=f"input dataset {dataset_folder}"):
            check_output(out, RUN, force=True, inputs=[dataset_folder])
    part = next(dataset_folder.glob("part-*.parquet"))  # a part file of it names it too
    with pytest.raises(OutputError, match="is inside the input dataset"):
        check_output(dataset_folder / "r", RUN, inputs=[part])


def test_a_failed_command_removes_the_folders_it_made(tmp_path):
    output = open_output(tmp_path / "a" / "b" / "run", RUN)
    (tmp_path / "a" / "b" / "run" / "history.csv").write_text("x")
    output.fail()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_command_leaves_a_folder_it_found_as_it_was(tmp_path):
    (tmp_path / "evaluation-x").mkdir()  # a finished run, replaced with --force, then failed
    (tmp_path / "run.json").write_text("{}")
    output = open_output(tmp_path, RUN, force=True)
    assert list(tmp_path.iterdir()) == [tmp_path / UNFINISHED]
    (tmp_path / "model.pt").write_text("half")
    output.fail()
    assert list(tmp_path.iterdir()) == []


# -- the commands ---------------------------------------------------------------------------


def test_train_refuses_an_existing_run_and_replaces_it_with_force(dataset_folder, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", dataset_folder, "-o", run, "--epochs", "1", "--batch-size", "16", "-q"]
    assert _run(argv, capsys)[0] == 0
    (run / "evaluation-old").mkdir()
    (run / "evaluation-old" / "evaluation.json").write_text("{}")
    stamp = (run / "run.json").stat().st_mtime_ns
    code, err = _run(argv, capsys)
    assert code == 2
    assert err == [f"dmfnet train: error: {run}: holds a finished run (use --force to replace it)"]
    assert (run / "run.json").stat().st_mtime_ns == stamp
    assert _run([*argv, "--force"], capsys)[0] == 0
    assert not (run / "evaluation-old").exists()
    assert (run / "run.json").stat().st_mtime_ns != stamp
    assert not (run / UNFINISHED).exists()


@pytest.mark.parametrize("inside", [False, True], ids=["same", "inside"])
def test_train_refuses_to_write_into_its_dataset(dataset_folder, capsys, inside):
    out = dataset_folder / "run" if inside else dataset_folder
    before = sorted(p.name for p in dataset_folder.iterdir())
    code, err = _run(["train", dataset_folder, "-o", out, "-q", "--force"], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"dmfnet train: error: {out}: is")
    assert f"the input dataset {dataset_folder}" in err[0]
    assert sorted(p.name for p in dataset_folder.iterdir()) == before


def test_a_failed_train_leaves_no_folder(dataset_folder, tmp_path):
    bad = {**FAST, "lr": float("nan")}  # fails once training starts, the folder made
    with pytest.raises(ValueError, match="(?i)learning rate|nan"):
        train(dataset_folder, tmp_path / "new" / "run", **bad)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="(?i)learning rate|nan"):
        train(dataset_folder, tmp_path / "empty", **bad)
    assert list((tmp_path / "empty").iterdir()) == []


def test_an_interrupted_train_does_not_look_finished_and_is_rerun(dataset_folder, tmp_path):
    from dmfnet.training import trainer

    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt

    real = trainer._write_report
    trainer._write_report = interrupted  # after the weights, before run.json
    try:
        with pytest.raises(KeyboardInterrupt):
            train(dataset_folder, tmp_path / "run", **FAST)
    finally:
        trainer._write_report = real
    assert calls and not (tmp_path / "run").exists()


@pytest.mark.filterwarnings("ignore:.*was trained on")
def test_evaluate_into_the_dataset_is_refused_before_scoring(dataset_folder, tmp_path):
    train(dataset_folder, tmp_path / "run", **FAST)
    with pytest.raises(OutputError, match="inside the input dataset"):
        evaluate(tmp_path / "run", dataset_folder, dataset_folder / "eval")
    assert not (dataset_folder / "eval").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(OutputError, match="not empty.*--force"):
        evaluate(tmp_path / "run", dataset_folder, tmp_path / "mine")
    result = evaluate(tmp_path / "run", dataset_folder)  # RUN/evaluation-ds, twice
    result = evaluate(tmp_path / "run", dataset_folder)
    out = tmp_path / "run" / "evaluation-ds"
    assert result["report_dir"] == str(out)
    assert (out / "evaluation.json").is_file() and not (out / UNFINISHED).exists()


def test_a_failed_benchmark_leaves_no_folder_and_a_report_is_still_resumed(
    dataset_folder, tmp_path, capsys
):
    report = tmp_path / "report"
    options = "--models dmf --seeds 1 --min-class-flows 1000 --no-complexity -q".split()
    code, err = _run(["benchmark", dataset_folder, "-o", report, *options], capsys)
    assert code == 2 and len(err) == 1
    assert not report.exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(OutputError, match="not a dmfnet benchmark report.*--force"):
        run_benchmark(dataset_folder, tmp_path / "other", models=["dmf"], seeds=1, **FAST)
    with pytest.raises(OutputError, match="inside the input dataset"):
        run_benchmark(dataset_folder, dataset_folder / "b", models=["dmf"], seeds=1, **FAST)


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path, capsys):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "mine.txt").write_text("the user's")
    code, err = _run(["demo", "-o", tmp_path, "--epochs", "1", "-q"], capsys)
    assert code == 2
    assert err == [
        f"dmfnet demo: error: {tmp_path}: folder exists, is not empty and is not a dmfnet "
        "demo (use --force to write into it)"
    ]
    assert [p.name for p in (tmp_path / "dataset").iterdir()] == ["mine.txt"]


def test_a_demo_folder_from_before_demo_json_is_still_a_demo(tmp_path):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    (tmp_path / "predictions.csv").write_text("capture\n")
    open_output(tmp_path, DEMO).finish()  # replaced, as `make demo` run again does
    assert list(tmp_path.iterdir()) == []
