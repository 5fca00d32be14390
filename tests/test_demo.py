"""The bundled demo captures and ``dmfnet demo``."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from dmfnet.cli import main
from dmfnet.data import prepare
from dmfnet.demo import DemoError, demo_captures, run_demo

REPO = Path(__file__).resolve().parents[1]
CAPTURES = REPO / "demo" / "captures"
MIN_CLASSES, MIN_FLOWS = 5, 100


@pytest.fixture
def one_thread():
    """Small-batch training on a shared 2-core machine: one torch thread, restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory):
    return prepare(
        CAPTURES, tmp_path_factory.mktemp("demo") / "ds", labels="folder", progress=False
    )


def test_bundled_captures_are_found_from_the_package() -> None:
    assert demo_captures() == CAPTURES
    classes = [p for p in CAPTURES.iterdir() if p.is_dir()]
    assert len(classes) >= MIN_CLASSES
    for folder in classes:
        assert sorted(folder.glob("*.pcap")), f"{folder} holds no capture"


def test_bundled_captures_parse_into_100_flows_per_class(demo_dataset) -> None:
    flows = demo_dataset.classes
    assert len(flows) >= MIN_CLASSES
    assert {name: n for name, n in flows.items() if n < MIN_FLOWS} == {}
    card = demo_dataset.card
    assert card["problems"]["total"] == 0
    assert card["totals"]["captures_failed"] == 0
    assert set(flows) == {p.name for p in CAPTURES.iterdir() if p.is_dir()}


def test_bundled_captures_stay_small() -> None:
    total = sum(p.stat().st_size for p in CAPTURES.rglob("*") if p.is_file())
    assert total < 10 * 1024 * 1024


def test_demo_runs_end_to_end(tmp_path: Path, one_thread, capsys) -> None:
    result = run_demo(tmp_path / "demo", epochs=1, progress=False)
    out = capsys.readouterr().out
    assert result.report.is_file()
    assert (result.run / "model.pt").is_file()
    assert "| Accuracy |" in out and str(result.report) in out
    with open(result.predictions, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= MIN_FLOWS // 2
    assert {r["capture"] for r in rows} == {str(CAPTURES / "tls-chat" / "tls-chat-2.pcap")}
    assert {r["server_port"] for r in rows} <= {"7443", "7444"}  # the chat servers' ports
    assert 0.0 <= result.metrics["accuracy"] <= 1.0


def test_demo_rejects_a_missing_captures_folder(tmp_path: Path) -> None:
    with pytest.raises(DemoError, match="no such folder"):
        run_demo(tmp_path / "out", captures=tmp_path / "absent", progress=False)


def test_cli_demo_bad_input_is_one_line_and_exit_2(tmp_path: Path, one_thread, capsys) -> None:
    code = main(["demo", "-o", str(tmp_path / "o"), "--captures", str(tmp_path / "absent")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "absent" in err[0]
    code = main(["demo", "-o", str(tmp_path / "o"), "--epochs", "0"])
    assert code == 2
    assert "epochs" in capsys.readouterr().err
