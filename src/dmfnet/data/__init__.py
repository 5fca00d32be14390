"""Flow datasets: labels (folder, file, CSV), Parquet on disk, numpy in memory, splits."""

from dmfnet.data.dataset import FlowDataset, flows_to_dataset, load_dataset

__all__ = ["FlowDataset", "flows_to_dataset", "load_dataset"]
