"""A prepared dataset folder is a Parquet dataset as it is: pandas, pyarrow, polars and
DuckDB read it (the README's one-liners); datasets with the older card name still load."""

import json

import pandas as pd
import pyarrow.dataset as pads
import pytest

from dmfnet.cli import main
from dmfnet.data import load_dataset, prepare
from dmfnet.data.card import read_card
from dmfnet.data.dataset import CARD_NAME, LEGACY_CARD_NAME
from test_prepare import captures  # noqa: F401  (the fixture)

FLOWS = 8  # the flows kept from the captures fixture


@pytest.fixture(scope="module")
def dataset(captures, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("readers") / "ds"
    prepare(captures, out, progress=False, warn=False)
    return out


def test_the_card_is_named_for_parquet_readers_to_pass_over(dataset):
    assert CARD_NAME == "_dataset.json"
    assert (dataset / CARD_NAME).is_file()
    assert not (dataset / LEGACY_CARD_NAME).exists()
    assert sorted(p.name for p in dataset.iterdir() if not p.name.startswith("_")) == sorted(
        read_card(dataset)["files"]
    )


def test_pyarrow_dataset_reads_the_folder(dataset):
    table = pads.dataset(dataset, format="parquet").to_table()
    assert table.num_rows == FLOWS
    assert sorted(set(table.column("label").to_pylist())) == ["chat", "web"]


def test_pandas_reads_the_folder(dataset):
    frame = pd.read_parquet(dataset)
    assert len(frame) == FLOWS
    assert frame["label"].value_counts().to_dict() == {"web": 5, "chat": 3}
    assert len(frame["bytes"].iloc[0]) == 1600


def test_polars_reads_the_parts(dataset):
    pl = pytest.importorskip("polars")
    frame = pl.read_parquet(dataset / "*.parquet")
    assert frame.height == FLOWS
    assert frame["label"].value_counts().height == 2


def test_duckdb_reads_the_parts(dataset):
    duckdb = pytest.importorskip("duckdb")
    query = f"SELECT label, count(*) FROM '{dataset}/*.parquet' GROUP BY label ORDER BY label"
    assert duckdb.sql(query).fetchall() == [("chat", 3), ("web", 5)]


def test_a_dataset_with_the_older_card_name_still_loads(dataset, tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    for part in dataset.glob("part-*.parquet"):
        (old / part.name).write_bytes(part.read_bytes())
    card = json.loads((dataset / CARD_NAME).read_text())
    (old / LEGACY_CARD_NAME).write_text(json.dumps(card))
    ds = load_dataset(old)
    assert len(ds) == FLOWS and ds.card == card
    assert read_card(old) == card
    assert main(["info", str(old)]) == 0
    assert "web" in capsys.readouterr().out
