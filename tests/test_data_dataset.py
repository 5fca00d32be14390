"""The Parquet flow dataset: write -> load gives the same arrays, in plain Parquet types."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dmfnet.data.dataset import (
    CARD_NAME,
    PartWriter,
    flows_to_dataset,
    load_dataset,
)
from dmfnet.flows.schema import SCALAR_COLUMNS, SEQUENCE_COLUMNS


def synthetic_flows(n: int, seed: int = 0, widths: dict | None = None) -> dict:
    """A flow chunk with every schema column filled with seeded random values."""
    rng = np.random.default_rng(seed)
    widths = widths or {}
    chunk = {}
    for name, (dtype, width) in SEQUENCE_COLUMNS.items():
        width = widths.get(name, width)
        if dtype == "float32":
            chunk[name] = rng.random((n, width), dtype=np.float32)
        else:
            info = np.iinfo(dtype)
            chunk[name] = rng.integers(info.min, info.max, (n, width), endpoint=True, dtype=dtype)
    for name, dtype in SCALAR_COLUMNS.items():
        if dtype == "str":
            chunk[name] = np.array([f"{name}-{i % 7}" for i in range(n)], dtype=object)
        elif dtype == "bool":
            chunk[name] = rng.integers(0, 2, n).astype(bool)
        elif dtype == "float64":  # times: epoch seconds to the microsecond, as captured
            chunk[name] = np.round(1.7e9 + rng.random(n) * 1e8, 6)
        else:
            chunk[name] = rng.integers(0, 200, n).astype(dtype)
    chunk["filter_reason"] = np.array(["", "dns"] * (n // 2) + [""] * (n % 2), dtype=object)
    return chunk


def _write(folder, chunks_and_labels, **kw):
    writer = PartWriter(folder, 0, **kw)
    for chunk, labels in chunks_and_labels:
        writer.write(chunk, labels)
    paths = writer.close()
    (folder / CARD_NAME).write_text(json.dumps({"format": "test"}))
    return paths


def test_round_trip_gives_identical_arrays(tmp_path):
    a, b = synthetic_flows(50, seed=1), synthetic_flows(31, seed=2)
    la = np.array(["web", "mail"] * 25, dtype=object)
    lb = np.array(["chat"] * 31, dtype=object)
    # small row groups and parts: several files, several row groups and Arrow chunks
    paths = _write(tmp_path, [(a, la), (b, lb)], row_group_rows=16, part_rows=40)
    assert [p.name for p in paths] == [
        "part-000000-000.parquet",
        "part-000000-001.parquet",
        "part-000000-002.parquet",
    ]
    ds = load_dataset(tmp_path)
    assert len(ds) == 81
    for name in [*SEQUENCE_COLUMNS, *SCALAR_COLUMNS]:
        want = np.concatenate([a[name], b[name]])
        assert ds[name].dtype == (object if SCALAR_COLUMNS.get(name) == "str" else want.dtype)
        assert ds[name].shape == want.shape, name
        assert np.array_equal(ds[name], want), name
    assert ds["bytes"].dtype == np.uint8 and ds["bytes"].shape == (81, 1600)
    assert ds.labels.tolist() == la.tolist() + lb.tolist()
    assert ds.classes == ["chat", "mail", "web"]
    assert np.array_equal(np.array(ds.classes)[ds.y], ds.labels)
    assert ds.card == {"format": "test"}


def test_load_selected_columns_and_single_file(tmp_path):
    chunk = synthetic_flows(10)
    paths = _write(tmp_path, [(chunk, "x")])
    ds = load_dataset(paths[0], columns=["bytes", "lengths"])
    assert set(ds.columns) == {"bytes", "lengths"}
    assert np.array_equal(ds["lengths"], chunk["lengths"])
    assert ds.labels.tolist() == ["x"] * 10
    with pytest.raises(ValueError, match="unknown column"):
        load_dataset(tmp_path, columns=["nope"])


def test_take_keeps_class_codes(tmp_path):
    _write(tmp_path, [(synthetic_flows(6), np.array(list("aabbcc"), dtype=object))])
    ds = load_dataset(tmp_path)
    sub = ds.take(np.array([4, 5]))
    assert sub.classes == ["a", "b", "c"]
    assert sub.y.tolist() == [2, 2]
    assert np.array_equal(sub["bytes"], ds["bytes"][4:])


def test_parquet_uses_plain_types(tmp_path):
    (path,) = _write(tmp_path, [(synthetic_flows(4), "x")])
    schema = pq.read_schema(path)
    assert schema.field("bytes").type == pa.binary(1600)
    assert schema.field("flow_head").type == pa.binary(1024)
    assert schema.field("lengths").type == pa.list_(pa.int32())
    assert schema.field("iat").type == pa.list_(pa.float32())
    assert schema.field("label").type == pa.string()
    assert schema.field("start_time").type == pa.timestamp("us", tz="UTC")
    assert schema.field("end_time").type == pa.timestamp("us", tz="UTC")
    for field in schema:
        assert not isinstance(field.type, pa.ExtensionType)


def test_pandas_reads_the_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    chunk = synthetic_flows(5)
    (path,) = _write(tmp_path, [(chunk, "x")])
    frame = pd.read_parquet(path)
    assert len(frame) == 5
    assert frame["bytes"].iloc[0] == chunk["bytes"][0].tobytes()
    assert list(frame["lengths"].iloc[1]) == chunk["lengths"][1].tolist()


def test_times_are_utc_timestamps_on_disk_and_epoch_seconds_in_memory(tmp_path):
    pd = pytest.importorskip("pandas")
    chunk = synthetic_flows(4)
    chunk["start_time"] = np.array([1.7e9, 1.7e9 + 0.000001, 1_700_000_123.456789, 0.5])
    chunk["end_time"] = chunk["start_time"] + 2.25
    (path,) = _write(tmp_path, [(chunk, "x")])
    frame = pd.read_parquet(path)
    assert str(frame["start_time"].dt.tz) == "UTC"
    assert frame["start_time"].iloc[2] == pd.Timestamp("2023-11-14 22:15:23.456789", tz="UTC")
    ds = load_dataset(tmp_path)
    assert ds["start_time"].dtype == np.float64
    assert ds["start_time"].tolist() == chunk["start_time"].tolist()  # exact to the µs
    assert ds["end_time"].tolist() == chunk["end_time"].tolist()


def test_datasets_with_float_seconds_still_load(tmp_path):
    chunk = synthetic_flows(6)
    (path,) = _write(tmp_path, [(chunk, "x")])
    table = pq.read_table(path)
    schema = table.schema
    for name in ("start_time", "end_time"):  # the layout of datasets made before
        at = schema.get_field_index(name)
        table = table.set_column(at, pa.field(name, pa.float64(), nullable=False),
                                 pa.array(chunk[name] + 1e-7))  # fmt: skip
    pq.write_table(table, path)
    assert pq.read_schema(path).field("start_time").type == pa.float64()
    ds = load_dataset(tmp_path)
    assert ds["start_time"].tolist() == (chunk["start_time"] + 1e-7).tolist()


def test_other_widths_round_trip(tmp_path):
    chunk = synthetic_flows(7, widths={"bytes": 320, "lengths": 10})
    _write(tmp_path, [(chunk, "x")])
    ds = load_dataset(tmp_path)
    assert ds["bytes"].shape == (7, 320)
    assert ds["lengths"].shape == (7, 10)
    assert np.array_equal(ds["lengths"], chunk["lengths"])


def test_folder_without_card_is_refused(tmp_path):
    PartWriter(tmp_path, 0).close()
    with pytest.raises(ValueError, match="no _dataset.json"):
        load_dataset(tmp_path)


def test_chunk_missing_column_is_refused(tmp_path):
    chunk = synthetic_flows(3)
    del chunk["lengths"]
    with pytest.raises(ValueError, match="lacks column.*lengths"):
        PartWriter(tmp_path, 0).write(chunk, "x")


def test_flows_to_dataset_keeps_unfiltered_flows_as_loaded_arrays(tmp_path):
    chunk = synthetic_flows(6)  # rows 1, 3, 5 removed by a filter
    ds = flows_to_dataset([chunk, chunk], columns=["bytes", "lengths", "capture"])
    assert len(ds) == 6
    assert np.array_equal(ds["bytes"], np.concatenate([chunk["bytes"][::2]] * 2))
    assert ds["capture"].dtype == object
    every = flows_to_dataset(chunk, kept_only=False)
    assert len(every) == 6 and set(every.columns) == set(SCALAR_COLUMNS) | set(SEQUENCE_COLUMNS)


def test_strings_round_trip_whatever_their_characters(tmp_path):
    chunk = synthetic_flows(6, seed=3)
    chunk["capture"] = np.array(["", "é/猫.pcap", "a", "", "é/猫.pcap", "x\u0000y"], dtype=object)
    chunk["client_ip"] = np.array(["2001:db8::1"] * 6, dtype=object)
    _write(tmp_path, [(chunk, "Вконтакте")])
    ds = load_dataset(tmp_path)
    assert ds["capture"].tolist() == chunk["capture"].tolist()
    assert ds["client_ip"].tolist() == ["2001:db8::1"] * 6
    assert ds.labels.tolist() == ["Вконтакте"] * 6
    assert pq.read_table(next(tmp_path.glob("*.parquet"))).column("capture").type == pa.string()


def test_background_writer_writes_the_same_parts(tmp_path):
    chunks = [(synthetic_flows(40, seed=s), f"class{s % 2}") for s in range(5)]
    kw = dict(row_group_rows=32, part_rows=90)
    (tmp_path / "plain").mkdir()
    (tmp_path / "bg").mkdir()
    plain = _write(tmp_path / "plain", chunks, **kw)
    ahead = _write(tmp_path / "bg", chunks, background=True, **kw)
    assert [p.name for p in plain] == [p.name for p in ahead]
    a, b = load_dataset(tmp_path / "plain"), load_dataset(tmp_path / "bg")
    assert a.labels.tolist() == b.labels.tolist()
    for name in a.columns:
        assert np.array_equal(a[name], b[name]), name
    for x, y in zip(plain, ahead, strict=True):
        assert (
            pq.ParquetFile(x).metadata.num_row_groups == pq.ParquetFile(y).metadata.num_row_groups
        )


def test_background_write_error_is_raised_not_lost(tmp_path):
    writer = PartWriter(tmp_path / "missing", 0, row_group_rows=8, background=True)
    with pytest.raises(OSError):
        for s in range(4):
            writer.write(synthetic_flows(10, seed=s), "x")
        writer.close()


def test_page_blocks_start_on_huge_page_boundaries():
    from dmfnet.memory import HUGE_PAGE, page_block

    for nbytes in (100, HUGE_PAGE, 3 * HUGE_PAGE + 5):
        block = page_block(nbytes, zeros=True)
        assert block.shape == (nbytes,) and block.dtype == np.uint8 and not block.any()
        if nbytes >= HUGE_PAGE:
            assert block.ctypes.data % HUGE_PAGE == 0
        block[:] = 7  # writable, all of it


def test_page_slabs_are_separate_zeroed_arrays_of_one_block():
    from dmfnet.memory import page_slabs

    layout = {"a": ((1000, 15), np.uint8), "b": ((999,), np.int64), "c": ((3,), np.bool_)}
    slabs = page_slabs(layout, zeros=True)
    start = slabs["a"].ctypes.data
    for name, (shape, dtype) in layout.items():
        assert slabs[name].shape == shape and slabs[name].dtype == dtype
        assert not slabs[name].any() and (slabs[name].ctypes.data - start) % 64 == 0
    slabs["a"][:] = 1
    slabs["b"][:] = -1
    slabs["c"][:] = True
    assert (slabs["a"] == 1).all() and (slabs["b"] == -1).all()  # no slab overlaps another
    assert page_slabs({"e": ((0,), np.int32)})["e"].shape == (0,)
