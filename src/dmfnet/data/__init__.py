"""Flow datasets: labels (folder, file, CSV), Parquet on disk, numpy in memory, splits."""

from dmfnet.data.dataset import FlowDataset, flows_to_dataset, load_dataset
from dmfnet.data.prepare import PrepareError, PrepareSummary, prepare

__all__ = [
    "FlowDataset",
    "PrepareError",
    "PrepareSummary",
    "flows_to_dataset",
    "load_dataset",
    "prepare",
]
