"""Large captures shared among processes by flow buckets: the same dataset however shared."""

import importlib
import json
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dmfnet.capture import read_packets
from dmfnet.data import load_dataset, prepare
from dmfnet.data.dataset import CARD_NAME, PartWriter
from dmfnet.flows import Buckets, FlowConfig, assemble_flows
from dmfnet.problems import ProblemLog
from pcapbuild import (
    ETHERTYPE_ARP,
    LINKTYPE_ETHERNET,
    Record,
    ethernet,
    pcap_bytes,
    tcp_conversation,
    udp_exchange,
    wrap,
    write_bytes,
)
from test_data_dataset import synthetic_flows
from test_prepare import record_progress

# The modules, not the functions of the same names that their packages export.
prepare_module = importlib.import_module("dmfnet.data.prepare")
assemble_module = importlib.import_module("dmfnet.flows.assemble")
T0 = 1_700_000_000_000_000_000
SECOND = 1_000_000_000


def _many_flow_records() -> list[Record]:
    """Flows that end every way: FIN, RST, idle (between packets and on the clock), open."""
    records = []
    for i in range(60):
        records += tcp_conversation(
            (f"10.0.{i % 7}.1", 40000 + i),
            (f"10.9.{i % 5}.2", 443),
            (("c", bytes([i]) * (20 + i)), ("s", b"s" * (100 + 3 * i))),
            start_ns=T0 + i * 3 * SECOND,
            gap_ns=(1 + i % 4) * SECOND,
            close=("fin", "rst", None)[i % 3],
        )
    for i in range(10):  # a gap over the idle timeout splits each into two flows
        records += tcp_conversation(
            ("172.16.0.1", 50000 + i),
            ("172.16.0.2", 8443),
            (("c", b"q" * 40), ("s", b"r" * 60), ("c", b"late")),
            start_ns=T0 + i * 7 * SECOND,
            gap_ns=70 * SECOND,
        )
    for i in range(25):
        server = ("192.168.7.9", 53 if i % 5 == 0 else 3478)  # DNS: removed
        records += udp_exchange(("192.168.7.5", 30000 + i), server, start_ns=T0 + i * 11 * SECOND)
    records += tcp_conversation(
        ("2001:db8::1", 51000), ("2001:db8::2", 443), (("c", b"v6" * 30),), start_ns=T0
    )
    return sorted(records, key=lambda r: r.ts_ns)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """One capture of many flows with an ARP frame and a corrupt record inside."""
    root = tmp_path_factory.mktemp("big")
    records = wrap(_many_flow_records(), LINKTYPE_ETHERNET)
    arp = ethernet(b"\x00\x01\x08\x00\x06\x04\x00\x01" + bytes(20), ethertype=ETHERTYPE_ARP)
    records.insert(5, Record(records[5].ts_ns, arp))
    image = bytearray(pcap_bytes(records))
    at = 24 + sum(16 + len(r.data) for r in records[:200])
    struct.pack_into("<I", image, at + 8, 0x7FFFFF00)  # record 200: corrupt captured length
    (root / "net").mkdir()
    write_bytes(root / "net" / "big.pcap", bytes(image))
    small = tcp_conversation(("10.5.0.1", 1234), ("10.5.0.2", 443), start_ns=T0)
    write_bytes(root / "net" / "small.pcap", pcap_bytes(wrap(small, LINKTYPE_ETHERNET)))
    return root


@pytest.fixture
def short_slices(monkeypatch):
    """Many slices a capture, so that flows end on the capture's clock between slices."""
    monkeypatch.setattr(assemble_module, "SLICE_PACKETS", 37)


def _by_bucket(path, buckets):
    """Rows of every column per bucket, in output order, and the assembly counts."""
    rows: dict[int, list[dict]] = {}
    flows = assemble_flows(read_packets(path, ProblemLog()), FlowConfig(), str(path), buckets)
    for chunk in flows:
        for b in np.unique(chunk["bucket"]).tolist():
            mine = chunk["bucket"] == b
            rows.setdefault(b, []).append({k: v[mine] for k, v in chunk.items()})
    joined = {
        b: {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        for b, chunks in rows.items()
    }
    return joined, flows.stats


@pytest.mark.parametrize("count", [2, 8])
def test_each_bucket_gets_the_flows_the_whole_capture_gives_it(big, short_slices, count):
    path = big / "net" / "big.pcap"
    whole, whole_stats = _by_bucket(path, Buckets(count, 0, count))
    assert len(whole) == count  # the hash spreads these flows over every bucket
    shares = [Buckets(count, b, b + 1) for b in range(count)]
    shares += [Buckets(count, 0, count // 2), Buckets(count, count // 2, count)]
    for share in shares:
        part, stats = _by_bucket(path, share)
        assert sorted(part) == list(range(share.lo, share.hi))
        for b, columns in part.items():
            assert columns.keys() == whole[b].keys()
            for name, values in columns.items():
                assert np.array_equal(values, whole[b][name]), (share, b, name)
        if share.primary:  # packets outside any flow are counted once, by bucket 0's holder
            assert stats.non_ip == whole_stats.non_ip == 1
            assert stats.packets == whole_stats.packets
        else:
            assert stats.non_ip == stats.packets == 0
    singles = [_by_bucket(path, Buckets(count, b, b + 1))[1] for b in range(count)]
    assert sum(s.ip_packets for s in singles) == whole_stats.ip_packets
    assert sum(s.flows for s in singles) == whole_stats.flows
    removed = sum((Counter(s.removed) for s in singles), Counter())
    assert removed == Counter(whole_stats.removed)
    # the flows split by the idle timeout and those ended by the clock are all there
    reasons = Counter(np.concatenate([c["end_reason"] for c in whole.values()]).tolist())
    assert reasons["idle"] >= 10 and reasons["fin"] and reasons["rst"]


def test_buckets_are_a_range_of_the_count():
    for lo, hi, count in [(2, 2, 4), (0, 5, 4), (-1, 1, 4), (0, 1, 0)]:
        with pytest.raises(ValueError, match="not a range"):
            Buckets(count, lo, hi)
    assert Buckets().everything and Buckets(8, 0, 3).primary and not Buckets(8, 3, 8).primary


def _card(folder):
    card = json.loads((folder / CARD_NAME).read_text())
    for key in ("created", "elapsed_s"):
        card.pop(key)
    return card


def test_a_split_capture_gives_the_same_files_with_any_number_of_workers(
    big, tmp_path, short_slices, monkeypatch
):
    monkeypatch.setattr(prepare_module, "SPLIT_MIN_BYTES", 10_000)  # big.pcap, not small.pcap
    outs = []
    for workers in (1, 2, 3, 9):
        out = tmp_path / f"w{workers}"
        prepare([big], out, workers=workers, progress=False, warn=False)
        outs.append(out)
    first = _card(outs[0])
    assert first["files"][0].startswith("part-000000-b00-")  # small parts merged into it
    assert [c["flow_buckets"] for c in first["captures"]] == [8, 1]
    [big_capture] = [c for c in first["captures"] if c["path"].endswith("big.pcap")]
    assert big_capture["problems"] == 2  # the corrupt record and the resync: once each
    assert first["problems"]["total"] == 2 and first["non_ip_packets"]["total"] == 1
    for out in outs[1:]:
        assert _card(out) == first
        for name in first["files"]:
            assert (out / name).read_bytes() == (outs[0] / name).read_bytes(), (out, name)
    # the same flows as a capture not split, only in another order
    monkeypatch.setattr(prepare_module, "SPLIT_MIN_BYTES", 1 << 40)
    prepare([big], tmp_path / "whole", workers=2, progress=False, warn=False)
    whole, split = load_dataset(tmp_path / "whole"), load_dataset(outs[0])
    card = _card(tmp_path / "whole")
    assert card["totals"] == first["totals"] and card["problems"] == first["problems"]
    assert card["removed"] == first["removed"] and card["classes"] == first["classes"]

    def ordered(ds):
        order = np.lexsort([ds["start_time"], ds["client_port"], ds["client_ip"].astype(str)])
        return {name: ds[name][order] for name in ds.columns}

    a, b = ordered(whole), ordered(split)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert not np.array_equal(whole["start_time"], split["start_time"])  # bucket by bucket


def test_progress_of_a_shared_capture_adds_up_to_its_size(big, tmp_path, monkeypatch):
    seen = record_progress(monkeypatch)
    monkeypatch.setattr(prepare_module, "SPLIT_MIN_BYTES", 10_000)
    prepare([big / "net" / "big.pcap"], tmp_path / "ds", workers=3, progress=True, warn=False)
    assert sum(seen) == (big / "net" / "big.pcap").stat().st_size


def test_spare_cores_go_to_the_large_captures_most_bytes_a_process_first(monkeypatch):
    monkeypatch.setattr(prepare_module, "SPLIT_MIN_BYTES", 100)
    plan = prepare_module._plan
    captures = [(0, "a", 1000), (1, "b", 50), (2, "c", 400)]
    # no core to spare: one process a capture, but large captures still have 8 buckets
    assert [t.buckets for t in plan(captures, 2)] == [Buckets(8, 0, 8), Buckets(), Buckets(8, 0, 8)]
    tasks = plan(captures, 6)
    # 3 spare: a (1000 bytes a process), a again (500 > 400), then c (400 > 333)
    assert [(t.index, t.buckets.lo, t.buckets.hi) for t in tasks] == [
        (0, 0, 2), (0, 2, 5), (0, 5, 8), (1, 0, 1), (2, 0, 4), (2, 4, 8)
    ]  # fmt: skip
    many = plan(captures, 40)  # at most a process a bucket
    assert sum(t.index == 0 for t in many) == 8 and sum(t.index == 2 for t in many) == 8
    assert all(t.buckets.hi - t.buckets.lo == 1 for t in many if t.index != 1)


def test_results_of_a_shared_capture_join_into_one():
    join = prepare_module._join_buckets
    CaptureResult = prepare_module.CaptureResult
    parts = []
    for lo, hi in [(4, 8), (0, 4)]:
        r = CaptureResult(index=0, path="x.pcap", size=10, buckets=Buckets(8, lo, hi))
        r.flows, r.kept, r.unlabelled = 5, Counter(web=3), 1
        r.removed = {"dns": Counter(web=1)}
        r.parts = [f"part-000000-b{lo:02d}-000.parquet"]
        r.problems.add("x.pcap", -1, "cannot read: MemoryError: ")
        if lo == 0:
            r.packets, r.non_ip = 40, Counter(non_ip=2)
            r.problems.add("x.pcap", 24, "corrupt record")
        parts.append(r)
    other = CaptureResult(index=1, path="y.pcap", size=3, packets=2)
    [x, y] = join([parts[0], other, parts[1]])
    assert y is other
    assert (x.packets, x.flows, x.unlabelled) == (40, 10, 2)
    assert x.kept == Counter(web=6) and x.removed == {"dns": Counter(web=2)}
    assert x.non_ip == Counter(non_ip=2)
    assert x.parts == ["part-000000-b00-000.parquet", "part-000000-b04-000.parquet"]
    assert [p.reason for p in x.problems.problems] == [
        "cannot read: MemoryError: ",
        "corrupt record",
    ]


def test_files_depend_on_the_flows_not_on_how_they_are_handed_in(tmp_path):
    flows = synthetic_flows(100, seed=3)
    labels = np.array(["a", "b"] * 50, dtype=object)
    for name, cuts in [("one", [0, 100]), ("many", [0, 1, 7, 8, 40, 41, 99, 100])]:
        writer = PartWriter(tmp_path / name, 0, bucket=3, row_group_rows=16, background=True)
        (tmp_path / name).mkdir()
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            writer.write({k: v[lo:hi] for k, v in flows.items()}, labels[lo:hi])
        [path] = writer.close()
        assert path.name == "part-000000-b03-000.parquet"
    one = (tmp_path / "one" / path.name).read_bytes()
    assert one == (tmp_path / "many" / path.name).read_bytes()
    ds = load_dataset(tmp_path / "one" / path.name)
    assert ds.labels.tolist() == labels.tolist()
    assert np.array_equal(ds["bytes"], flows["bytes"])


def test_chunks_of_other_widths_are_refused(tmp_path):
    writer = PartWriter(tmp_path, 0)
    writer.write(synthetic_flows(3), "x")
    wide = synthetic_flows(3)
    wide["lengths"] = np.zeros((3, 31), dtype=np.int32)
    with pytest.raises(ValueError, match="differ in sequence widths"):
        writer.write(wide, "x")


def test_a_process_sharing_a_capture_that_dies_loses_only_its_buckets(big, tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(prepare_module, "SPLIT_MIN_BYTES", 10_000)
    original = prepare_module.prepare_capture

    def dies_on_the_upper_buckets(index, path, size, **kw):
        if kw["buckets"].lo == 4:
            (Path(kw["out"]) / f"part-{index:06d}-b05-000.parquet").write_bytes(b"PAR1 cut")
            os._exit(9)
        return original(index, path, size, **kw)

    monkeypatch.setattr(prepare_module, "prepare_capture", dies_on_the_upper_buckets)
    prepare([big / "net" / "big.pcap"], tmp_path / "ds", workers=2, progress=False, warn=False)
    card = _card(tmp_path / "ds")
    assert [p["reason"] for p in card["problems"]["listed"]][-1].startswith("worker process died")
    assert card["totals"]["packets"] > 0  # bucket 0's process read the capture
    whole = tmp_path / "whole"
    monkeypatch.setattr(prepare_module, "prepare_capture", original)
    prepare([big / "net" / "big.pcap"], whole, workers=1, progress=False, warn=False)
    kept, every = load_dataset(tmp_path / "ds"), load_dataset(whole)
    # the rows of buckets 0-3, as the whole capture gives them; none of buckets 4-7
    assert 0 < len(kept) < len(every)
    lower = every["capture"][: len(kept)]
    assert np.array_equal(kept["start_time"], every["start_time"][: len(kept)])
    assert lower.tolist() == kept["capture"].tolist()


def test_a_gzip_capture_is_shared_the_same_way(big, tmp_path, monkeypatch):
    import gzip

    monkeypatch.setattr(prepare_module, "SPLIT_MIN_BYTES", 1_000)
    plain = big / "net" / "big.pcap"
    packed = tmp_path / "in" / "big.pcap.gz"
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    for workers in (1, 2):
        prepare([packed], tmp_path / f"w{workers}", workers=workers, progress=False, warn=False)
    prepare([plain], tmp_path / "plain", workers=2, progress=False, warn=False)
    one, two, ref = (_card(tmp_path / n) for n in ("w1", "w2", "plain"))
    assert one == two and one["captures"][0]["flow_buckets"] == 8
    for name in one["files"]:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
    assert {**one["totals"], "bytes": 0} == {**ref["totals"], "bytes": 0}
    assert one["problems"]["total"] == 2
    a, b = load_dataset(tmp_path / "w2"), load_dataset(tmp_path / "plain")
    for name in a.columns:
        if name != "capture":
            assert np.array_equal(a[name], b[name]), name


def test_the_writer_takes_the_rows_it_is_given_in_their_order(tmp_path):
    flows = synthetic_flows(10, seed=5)
    labels = np.array([f"c{i}" for i in range(10)], dtype=object)
    writer = PartWriter(tmp_path, 0, row_group_rows=4)
    writer.write(flows, labels, np.array([7, 2, 9, 0, 5]))
    writer.write(flows, labels, np.array([1]))
    [path] = writer.close()
    (tmp_path / "dataset.json").write_text("{}")
    ds = load_dataset(tmp_path)
    order = [7, 2, 9, 0, 5, 1]
    assert ds.labels.tolist() == [f"c{i}" for i in order]
    for name in ("bytes", "lengths", "start_time", "client_ip"):
        assert np.array_equal(ds[name], flows[name][order]), name
