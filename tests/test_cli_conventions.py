"""Conventions every ``dmfnet`` command keeps: ``python -m dmfnet``, one progress switch, bars
only on a terminal, a quiet end when stdout's reader goes, problems on stderr, one rule for
exit codes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pcapbuild as pb
from dmfnet.cli import build_parser, main
from dmfnet.progress import byte_progress
from training_data import synthetic_flows

COMMANDS_WITH_PROGRESS = {
    "prepare": ["prepare", "IN", "-o", "OUT"],
    "train": ["train", "DS", "-o", "RUN"],
    "benchmark": ["benchmark", "DS", "-o", "REPORT"],
    "classify": ["classify", "RUN", "X.pcap", "-o", "-"],
    "demo": ["demo"],
}


def _dmfnet(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "dmfnet", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, **kw)


def test_python_dash_m_dmfnet_runs_the_command(tmp_path):
    done = _dmfnet("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("dmfnet "), done.stderr
    missing = _dmfnet("info", tmp_path / "nope", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.startswith("dmfnet info: error: ") and "Traceback" not in missing.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS_WITH_PROGRESS))
def test_every_command_takes_both_progress_switches(command):
    parser = build_parser()
    argv = COMMANDS_WITH_PROGRESS[command]
    assert parser.parse_args(argv).quiet is False
    for switch in ("-q", "--quiet", "--no-progress"):
        assert parser.parse_args([*argv, switch]).quiet is True


def test_help_documents_one_progress_switch_and_the_exit_status(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    text = capsys.readouterr().out
    assert "-q, --quiet" in text and "--no-progress" not in text
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "exit status" in text and "some input could not be read" in text


def test_no_progress_bar_when_stderr_is_not_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe or a log file
    bar = byte_progress(1000, "prepare")
    bar.update(500)
    bar.close()
    assert sys.stderr.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = byte_progress(1000, "prepare")
    bar.update(500)
    bar.close()
    assert "prepare" in sys.stderr.getvalue()
    assert byte_progress(10, "x", enabled=False).__class__.__name__ == "_Silent"


# ------------------------------------------------------------------ classify: pipes, problems


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from dmfnet.training.trainer import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("conventions") / "run"
        train(synthetic_flows(n_per_class=20), out, epochs=1, batch_size=32, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    """Many small TCP flows: more predictions than one pipe buffer holds."""
    records = []
    for i in range(400):
        records += pb.tcp_conversation(
            (f"10.1.{i // 200}.{i % 200 + 1}", 40000 + i),
            ("192.0.2.10", 443),
            [("c", b"\x16\x03\x01" + bytes(60)), ("s", b"x" * 300)],
            start_ns=1_700_000_000_000_000_000 + i * 1_000_000,
        )
    records.sort(key=lambda r: r.ts_ns)
    path = tmp_path_factory.mktemp("cap") / "many.pcap"
    return pb.write_pcap(path, pb.wrap(records, pb.LINKTYPE_ETHERNET))


def test_classify_to_a_closed_pipe_ends_quietly_with_0(run_dir, capture):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "dmfnet", "classify", str(run_dir), str(capture)]
    process = subprocess.Popen(
        [*command, "-o", "-", "-q", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    process.stdout.readline()  # the header, then the reader goes (`| head -1`)
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=300) == 0, err
    assert "Broken pipe" not in err and "Traceback" not in err and "error" not in err, err


def test_classify_problems_go_to_stderr_and_exit_codes_follow_one_rule(
    run_dir, capture, tmp_path, capsys
):
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(capture.read_bytes()[:-30])  # its last record truncated: one problem
    out = tmp_path / "p.csv"
    assert main(["classify", str(run_dir), str(cut), "-o", str(out), "-q"]) == 0
    printed = capsys.readouterr()
    assert "flows classified" in printed.out
    assert "problem(s) while reading" in printed.err
    assert "while reading" not in printed.out

    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"not a capture at all" * 10)
    # some input unreadable, output written: 1
    assert main(["classify", str(run_dir), str(junk), str(capture), "-o", str(out), "-q"]) == 1
    printed = capsys.readouterr()
    assert "could not read" in printed.err and "junk.pcap" not in printed.out
    # nothing readable: 2, as `prepare` with no readable capture
    assert main(["classify", str(run_dir), str(junk), "-o", str(out), "-q"]) == 2
    assert "1 of 1 capture(s) could not be read" in capsys.readouterr().err
