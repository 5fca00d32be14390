import csv

import pytest

from dmfnet.training.benchmark import METRIC_COLUMNS, read_results, write_tables

ROWS = [
    # model, seed, accuracy, precision, recall, fpr, f1, train_s, flows/s
    ("dmf", 0, 0.90, 0.80, 0.85, 0.010, 0.82, 100, 5000),
    ("dmf", 1, 0.92, 0.82, 0.87, 0.012, 0.84, 110, 5200),
    ("cnn1d", 0, 0.80, 0.70, 0.75, 0.030, 0.72, 50, 20000),
    ("cnn1d", 1, 0.84, 0.74, 0.77, 0.020, 0.74, 70, 22000),
    ("dmf-late", 0, 0.88, 0.78, 0.80, 0.015, 0.79, 90, 6000),
    ("dmf-late", 1, 0.88, 0.80, 0.82, 0.015, 0.81, 90, 6000),
]


def _results(path, rows=ROWS):
    """results.csv of the hand-made rows (the layout before test_size was recorded)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "seed", *METRIC_COLUMNS])
        w.writerows(rows)
    return path


def _md_row(md, name):
    lines = [line for line in md.splitlines() if f"| {name} |" in line]
    assert lines, f"no row for {name}"
    return [c.strip() for c in lines[0].strip("|").split("|")]


def test_tables_cells_from_hand_made_results(tmp_path):
    res = _results(tmp_path / "results.csv")
    info = {"dataset": "/data/ndpi", "split": "random", "keep_duplicates": False}
    written = write_tables(res, tmp_path / "out", info)
    md = written["markdown"].read_text()

    # Header states dataset, protocol, duplicate handling and seeds.
    assert "/data/ndpi" in md and "stratified" in md
    assert "test flows whose model inputs equal a training flow's are dropped" in md
    assert "**Seeds:** 0, 1" in md and "over 2 runs" in md

    # Comparison table: paper column order Accuracy, Recall, FPR, Precision, then F1.
    assert "| Type | Model | Accuracy | Recall | FPR | Precision | F1 |" in md
    cnn = _md_row(md, "1D CNN")
    assert cnn == ["Non-multimodal", "1D CNN", "82.00 ± 2.83", "76.00 ± 1.41", "2.50 ± 0.71",
                   "72.00 ± 2.83", "73.00 ± 1.41"]  # fmt: skip
    dmf = _md_row(md.split("## Ablation")[0], "DMF")
    assert dmf == ["Multimodal", "DMF", "**91.00 ± 1.41**", "**86.00 ± 1.41**", "**1.10 ± 0.14**",
                   "**81.00 ± 1.41**", "**83.00 ± 1.41**"]  # fmt: skip
    assert "XGBoost" not in md  # models without results get no row

    ablation = md.split("## Ablation")[1].split("\n## ")[0]
    assert _md_row(ablation, "w/o Multi-scale fusion")[1:] == [
        "88.00 ± 0.00", "81.00 ± 1.41", "1.50 ± 0.00", "79.00 ± 1.41", "80.00 ± 1.41",
    ]  # fmt: skip
    order = [line.split("|")[1].strip() for line in ablation.splitlines() if line.startswith("| ")]
    assert order == ["Model", "w/o Multi-scale fusion", "DMF"]

    with open(written["comparison"]) as fh:
        table = list(csv.DictReader(fh))
    assert [r["model"] for r in table] == ["cnn1d", "dmf"]
    assert table[0]["accuracy_mean"] == "82.0000" and table[0]["accuracy_std"] == "2.8284"
    assert table[1]["group"] == "Multimodal" and table[1]["runs"] == "2"
    with open(written["ablation"]) as fh:
        assert [r["name"] for r in csv.DictReader(fh)] == ["w/o Multi-scale fusion", "DMF"]
    assert written["plot"].read_bytes()[:4] == b"\x89PNG"


def test_one_seed_shows_mean_only(tmp_path):
    res = _results(tmp_path / "results.csv", [r for r in ROWS if r[1] == 0])
    md = write_tables(res, tmp_path, {"split": "file", "keep_duplicates": True})[
        "markdown"
    ].read_text()
    assert _md_row(md, "1D CNN")[2] == "80.00"
    assert "one run per model" in md and "by capture file" in md and "paper's protocol" in md


def test_later_row_replaces_earlier_and_bad_file_fails(tmp_path):
    rows = [*ROWS, ("dmf", 1, 0.5, 0.5, 0.5, 0.5, 0.5, 1, 1)]
    res = _results(tmp_path / "results.csv", rows)
    got = {(r["model"], r["seed"]): r for r in read_results(res)}
    assert len(got) == 6 and got[("dmf", 1)]["accuracy"] == 0.5

    bad = tmp_path / "bad.csv"
    bad.write_text("model,seed,accuracy\ndmf,0,0.9\n")
    with pytest.raises(ValueError, match="missing precision_macro"):
        write_tables(bad, tmp_path, {})
    empty = _results(tmp_path / "empty.csv", [])
    with pytest.raises(ValueError, match="no results"):
        write_tables(empty, tmp_path, {})
