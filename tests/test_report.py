import csv

import numpy as np
import pytest

from dmfnet.training.metrics import classification_metrics
from dmfnet.training.report import write_run_report

HISTORY = [
    {"epoch": 1, "train_loss": 2.0, "val_loss": 1.8, "val_accuracy": 0.5, "val_f1_macro": 0.4},
    {"epoch": 2, "train_loss": 1.2, "val_loss": 1.1, "val_accuracy": 0.7, "val_f1_macro": 0.65},
    {"epoch": 3, "train_loss": 0.9, "val_loss": 1.3, "val_accuracy": 0.68, "val_f1_macro": 0.6},
]


def _png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_run_report_files_and_contents(tmp_path):
    names = ["TLS", "SSH", "QUIC"]
    m = classification_metrics(
        [0, 0, 0, 0, 1, 1, 1, 2, 2, 2], [0, 0, 1, 2, 1, 1, 0, 2, 2, 1], names
    )
    info = {
        "model": "dmf",
        "dataset": "/data/demo",
        "split": "random",
        "seed": 3,
        "duplicates_removed": 17,
    }
    write_run_report(tmp_path / "run", m, HISTORY, names, info)
    run = tmp_path / "run"
    md = (run / "report.md").read_text()
    assert "stratified" in md and "**Seed:** 3" in md and "removed:** 17" in md
    assert "| Accuracy | 60.00 % |" in md
    assert "| TLS | 66.67 | 50.00 | 57.14 | 16.67 | 4 |" in md
    assert "best validation macro-F1 65.00 % at epoch 2" in md
    assert "](confusion.png)" in md and "](training_curve.png)" in md
    rows = list(csv.reader((run / "confusion.csv").open()))
    assert rows[0] == ["true \\ predicted", "TLS", "SSH", "QUIC"]
    assert rows[1] == ["TLS", "2", "1", "1"]
    assert _png_size(run / "confusion.png")[0] > 300
    assert _png_size(run / "training_curve.png")[0] > 300


def test_no_history_skips_curve(tmp_path):
    m = classification_metrics([0, 1], [0, 1], ["a", "b"])
    write_run_report(tmp_path, m, [], ["a", "b"], {"model": "xgboost"})
    assert not (tmp_path / "training_curve.png").exists()
    assert "Training curve" not in (tmp_path / "report.md").read_text()


def test_many_classes_grow_the_figure(tmp_path):
    rng = np.random.default_rng(1)
    names = [f"Application-{i:02d}" for i in range(30)]
    y = rng.integers(0, 30, 3000)
    m = classification_metrics(
        y, np.where(rng.random(3000) < 0.8, y, rng.integers(0, 30, 3000)), names
    )
    write_run_report(tmp_path / "big", m, HISTORY, names, {"model": "dmf"})
    small = tmp_path / "small"
    m3 = classification_metrics([0, 1, 2], [0, 1, 2], names[:3])
    write_run_report(small, m3, HISTORY, names[:3], {"model": "dmf"})
    assert (
        _png_size(tmp_path / "big" / "confusion.png")[0]
        > 1.8 * _png_size(small / "confusion.png")[0]
    )


def test_mismatched_class_names_fail(tmp_path):
    m = classification_metrics([0, 1], [0, 1], ["a", "b"])
    with pytest.raises(ValueError):
        write_run_report(tmp_path, m, [], ["a", "b", "c"], {})


def _many_class_metrics(k=300, absent=40, seed=2):
    """A k-class test set where the last ``absent`` classes have no test flows (a few flows
    are predicted as them) and classes 0-4 are confused with each other."""
    rng = np.random.default_rng(seed)
    names = [f"Application-with-a-rather-long-protocol-name-{i:03d}" for i in range(k)]
    y = rng.integers(0, k - absent, 6000)
    pred = y.copy()
    mix = rng.random(y.size) < 0.03
    pred[mix] = rng.integers(0, k, int(mix.sum()))
    pred[y < 5] = rng.integers(0, 5, int((y < 5).sum()))  # classes 0-4 confused
    return classification_metrics(y, pred, names), names


def test_many_classes_draw_a_bounded_figure_of_the_worst_confusions(tmp_path):
    from dmfnet.training.report import MAX_FIGURE_CLASSES, confusion_focus

    m, names = _many_class_metrics()
    write_run_report(tmp_path, m, HISTORY, names, {"model": "dmf"})
    width, height = _png_size(tmp_path / "confusion.png")
    assert width <= 3000 and height <= 3000, (width, height)
    shown = confusion_focus(m["confusion"])
    assert len(shown) == MAX_FIGURE_CLASSES
    assert set(range(5)) <= set(shown.tolist())  # the confused classes are in the figure
    md = (tmp_path / "report.md").read_text()
    assert "The figure shows the 30 of 300 classes most involved in errors" in md
    rows = list(csv.reader((tmp_path / "confusion.csv").open()))
    assert len(rows) == 301 and len(rows[0]) == 301  # the CSV keeps every class


def test_classes_without_test_flows_are_one_line_not_rows(tmp_path):
    from dmfnet.training.report import per_class_table

    m, names = _many_class_metrics()
    table = per_class_table(m)
    assert names[0] in table and f"| {names[-1]} |" not in table
    assert table.count("\n| ") == 260  # one row per class with test flows
    last = table.splitlines()[-1]
    assert last.startswith("40 class(es) with no test flows, not listed: ")
    assert names[260] in last and "and 30 more" in last and "test flows predicted as" in last
    small = classification_metrics([0, 1], [0, 1], ["a", "b"])
    assert "no test flows" not in per_class_table(small)
