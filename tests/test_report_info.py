"""report.md shows the torch loop's options for torch models only (not for XGBoost)."""

from __future__ import annotations

import pytest
import torch

from dmfnet.data.dataset import FlowDataset, flows_to_dataset
from test_data_dataset import synthetic_flows as every_column
from training_data import synthetic_flows


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from dmfnet.training.trainer import train

    ds = synthetic_flows(n_per_class=20)
    out = tmp_path_factory.mktemp("reports")
    # XGBoost reads flow statistics: every schema column, random, with the same classes.
    every = flows_to_dataset(every_column(len(ds), seed=3), kept_only=False)
    every = FlowDataset(every.columns, ds.labels, ds.classes, ds.y)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(every, out / "xgb", model="xgboost", epochs=7, batch_size=32, lr=0.01,
              model_config={"n_estimators": 5}, progress=False)  # fmt: skip
        train(ds, out / "dmf", model="dmf-late", epochs=1, batch_size=32, lr=0.002,
              device="cpu", progress=False)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return {name: (out / name / "report.md").read_text() for name in ("xgb", "dmf")}


def test_estimator_report_leaves_out_the_torch_loop_options(reports):
    head = reports["xgb"].split("## Test metrics")[0]
    for label in ("Epochs", "Best epoch", "Batch size", "Learning rate", "Device", "stopped"):
        assert label not in head, label
    assert "**Training:** the estimator's own fit" in head


def test_torch_report_shows_the_loop_options(reports):
    head = reports["dmf"].split("## Test metrics")[0]
    assert "**Epochs (max):** 1" in head
    assert "**Batch size:** 32" in head
    assert "**Learning rate:** 0.002" in head
    assert "**Device:** cpu" in head
    assert "**Training:**" not in head
