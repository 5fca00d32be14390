"""``prepare`` end to end on captures the tests write: classes, filters, problems, workers."""

import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dmfnet.cli import main
from dmfnet.data import PrepareError, load_dataset, prepare
from dmfnet.data.dataset import CARD_NAME, PartWriter
from dmfnet.data.labels import FlowTableLabeller
from pcapbuild import (
    ETHERTYPE_ARP,
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_RAW,
    Interface,
    Record,
    Section,
    ethernet,
    ip,
    tcp,
    tcp_conversation,
    udp_exchange,
    wrap,
    write_pcap,
    write_pcapng,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
T0 = 1_700_000_000_000_000_000
SECOND = 1_000_000_000


def _web_records():
    records = []
    for i in range(3):  # three TCP flows with payload: kept
        records += tcp_conversation(
            ("10.0.0.1", 40000 + i),
            ("10.0.0.2", 443),
            (("c", b"GET / HTTP/1.1\r\n\r\n"), ("s", b"HTTP/1.1 200 OK\r\n\r\n" + bytes(300))),
            start_ns=T0 + i * SECOND,
        )
    records += udp_exchange(("10.0.0.1", 5353), ("10.0.0.53", 53), start_ns=T0 + 5 * SECOND)
    syn = ip("10.0.0.1", "10.0.0.2", 6, tcp(41000, 443, flags="S"))
    records += [Record(T0 + 6 * SECOND, syn), Record(T0 + 7 * SECOND, syn)]  # failed handshake
    records += tcp_conversation(  # handshake and close, never any payload
        ("10.0.0.1", 42000), ("10.0.0.2", 80), (), start_ns=T0 + 8 * SECOND
    )
    return sorted(records, key=lambda r: r.ts_ns)


def _chat_records():
    records = []
    for i in range(2):  # two UDP flows: kept
        records += udp_exchange(
            ("192.168.1.5", 50000 + i),
            ("192.168.1.9", 3478),
            (("c", b"ping" * 10), ("s", b"pong" * 10)),
            start_ns=T0 + i * SECOND,
        )
    records += udp_exchange(("192.168.1.5", 5000), ("224.0.0.252", 5355), start_ns=T0 + 3 * SECOND)
    icmp = ip("192.168.1.5", "192.168.1.9", 1, b"\x08\x00\xf7\xfe\x00\x01\x00\x00")
    records.append(Record(T0 + 4 * SECOND, icmp))
    return sorted(records, key=lambda r: r.ts_ns)


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    """Two class folders, several formats and link types, a broken and an unrelated file."""
    root = tmp_path_factory.mktemp("captures")
    (root / "web").mkdir()
    (root / "chat").mkdir()
    write_pcap(root / "web" / "a.pcap", wrap(_web_records(), LINKTYPE_ETHERNET))
    more_web = tcp_conversation(
        ("2001:db8::1", 50000), ("2001:db8::2", 443), (("c", b"x" * 50), ("s", b"y" * 70))
    ) + tcp_conversation(("10.1.0.1", 50001), ("10.1.0.2", 8443), (("c", b"hi"),))
    section = Section(interfaces=[Interface(LINKTYPE_RAW)], records=more_web)
    write_pcapng(root / "web" / "b.pcapng.gz", [section], gzip=True)
    chat = wrap(_chat_records(), LINKTYPE_LINUX_SLL)
    write_pcap(root / "chat" / "c.pcap", chat, linktype=LINKTYPE_LINUX_SLL, nanosecond=True)
    arp = Record(
        T0, ethernet(b"\x00\x01\x08\x00\x06\x04\x00\x01" + bytes(20), ethertype=ETHERTYPE_ARP)
    )
    udp = udp_exchange(("192.168.1.6", 50100), ("192.168.1.9", 3478), start_ns=T0 + SECOND)
    write_pcap(root / "chat" / "d.pcap", [arp, *wrap(udp, LINKTYPE_ETHERNET)])
    (root / "chat" / "broken.pcap").write_bytes(b"this is not a capture file at all")
    (root / "chat" / "notes.txt").write_text("not a capture, skipped")
    return root


def _prepare(captures, out, **kw):
    kw.setdefault("progress", False)
    return prepare([captures], out, **kw)


def test_classes_removals_and_problems(captures, tmp_path):
    summary = _prepare(captures, tmp_path / "ds", workers=1)
    card = json.loads((tmp_path / "ds" / CARD_NAME).read_text())
    assert summary.classes == {"chat": 3, "web": 5}
    assert card["removed"]["dns"] == {"web": 1}
    assert card["removed"]["failed_handshake"] == {"web": 1}
    assert card["removed"]["no_payload"] == {"web": 1}
    assert card["removed"]["llmnr"] == {"chat": 1}
    assert card["removed"]["non_tcp_udp"] == {"chat": 1}
    assert card["non_ip_packets"]["total"] == 1
    assert card["skipped_files"]["count"] == 1
    assert card["totals"]["captures"] == 5 and card["totals"]["captures_failed"] == 1
    [problem] = card["problems"]["listed"]
    assert problem["file"].endswith("broken.pcap")
    assert card["tool"]["name"] == "dmfnet"
    assert card["parameters"]["flow_config"]["idle_timeout"] == 120.0
    assert card["parameters"]["labels"]["mode"] == "folder"
    # small captures' parts are merged into one file, in capture order
    assert [p.name for p in (tmp_path / "ds").glob("part-*.parquet")] == card["files"]
    assert len(card["files"]) == 1
    ds = load_dataset(tmp_path / "ds")
    assert len(ds) == 8 and ds.classes == ["chat", "web"]
    assert ds.labels.tolist() == ["chat"] * 3 + ["web"] * 5
    assert ds["bytes"].shape == (8, 1600) and ds["lengths"].shape == (8, 60)  # 60 recorded
    web = ds.labels == "web"
    assert set(ds["server_port"][web].tolist()) == {443, 8443}
    assert all(Path(c).parent.name == lab for c, lab in zip(ds["capture"], ds.labels, strict=True))


def test_two_workers_give_the_same_rows(captures, tmp_path):
    _prepare(captures, tmp_path / "one", workers=1)
    _prepare(captures, tmp_path / "two", workers=2)
    one, two = load_dataset(tmp_path / "one"), load_dataset(tmp_path / "two")
    assert one.labels.tolist() == two.labels.tolist()
    for name in one.columns:
        assert np.array_equal(one[name], two[name]), name
    card_one = json.loads((tmp_path / "one" / CARD_NAME).read_text())
    card_two = json.loads((tmp_path / "two" / CARD_NAME).read_text())
    for key in ("classes", "removed", "problems", "totals", "files"):
        assert card_one[key] == card_two[key], key


def test_max_flows_per_class_is_a_seeded_sample(captures, tmp_path):
    first = _prepare(captures, tmp_path / "a", workers=1, max_flows_per_class=2, seed=7)
    _prepare(captures, tmp_path / "b", workers=2, max_flows_per_class=2, seed=7)
    assert first.classes == {"chat": 2, "web": 2}
    card = first.card
    assert card["classes"]["web"]["before_sampling"] == 5
    assert card["parameters"]["max_flows_per_class"] == 2
    a, b = load_dataset(tmp_path / "a"), load_dataset(tmp_path / "b")
    assert np.array_equal(a["start_time"], b["start_time"])
    assert np.array_equal(a["client_port"], b["client_port"])


def test_file_labels(captures, tmp_path):
    summary = _prepare(captures / "web", tmp_path / "ds", labels="file", workers=1)
    assert summary.classes == {"a": 3, "b": 2}


def test_csv_labels_leave_unlisted_flows_out_or_keep_them(captures, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "file,protocol,src_ip,src_port,dst_ip,dst_port,label\n"
        "a.pcap,TCP,10.0.0.2,443,10.0.0.1,40000,tls\n"  # server first: matched either way
        "a.pcap,TCP,10.0.0.1,40001,10.0.0.2,443,tls\n"
    )
    summary = _prepare(captures / "web", tmp_path / "ds", labels=csv, workers=1)
    assert summary.classes == {"tls": 2}
    assert summary.card["unlabelled"] == {"flows": 3, "kept": False}
    kept = _prepare(captures / "web", tmp_path / "kept", labels=csv, keep_unlabelled=True)
    assert kept.classes == {"tls": 2, "unlabelled": 3}


def test_output_folder_in_use_needs_force(captures, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(PrepareError, match="not empty.*--force"):
        _prepare(captures / "web", out)
    _prepare(captures / "web", out, force=True)
    assert (out / CARD_NAME).is_file() and (out / "old.txt").is_file()


def test_nothing_readable_exits_non_zero_with_one_line(tmp_path, capsys):
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "x.pcap").write_bytes(b"garbage, not a capture")
    (bad / "empty.pcap").write_bytes(b"")
    code = main(["prepare", str(bad), "-o", str(tmp_path / "out"), "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code != 0
    assert len(err) == 1, err
    assert err[0].startswith("dmfnet prepare: error: no readable capture among 2 input(s)")
    assert "Traceback" not in err[0]


def test_flows_all_filtered_names_the_filters(tmp_path):
    folder = tmp_path / "dns"
    folder.mkdir()
    dns = udp_exchange(("10.0.0.1", 3333), ("10.0.0.53", 53))
    write_pcap(folder / "q.pcap", dns, linktype=LINKTYPE_RAW)
    with pytest.raises(PrepareError, match="no flows kept.*dns 1"):
        _prepare(folder, tmp_path / "out")


def test_cli_prepare_and_info_print_the_class_table(captures, tmp_path, capsys):
    out = tmp_path / "ds"
    # 1: the dataset is written, but broken.pcap could not be read at all
    assert main(["prepare", str(captures), "-o", str(out), "--workers", "1", "--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert "chat" in printed and "web" in printed and "failed_handshake" in printed
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "labels: folder" in info
    assert "broken.pcap" in info
    row = next(line for line in info.splitlines() if line.startswith("web "))
    assert row.split()[:2] == ["web", "5"]


def test_the_dmfnet_command_ends_with_all_its_output(captures, tmp_path):
    """The command ends its process at once after prepare and info (no interpreter
    teardown): everything printed must still arrive, and the exit code be the command's."""

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as users have

    def dmfnet(*args):
        command = [sys.executable, "-m", "dmfnet.cli", *map(str, args)]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    out = tmp_path / "ds"
    done = dmfnet("prepare", captures, "-o", out, "--workers", "2", "--no-progress")
    assert done.returncode == 1, done.stderr  # written; broken.pcap unreadable
    assert done.stdout.splitlines()[-1] == f"dataset: {out} (8 flows)"
    assert done.stderr.splitlines()[-1].endswith("1 of 5 capture(s) could not be read at all")
    assert len(load_dataset(out).labels) == 8
    info = dmfnet("info", out)
    assert info.returncode == 0
    assert "labels: folder" in info.stdout and "broken.pcap" in info.stdout
    assert info.stdout == _printed(main, ["info", str(out)])
    again = dmfnet("prepare", captures, "-o", out, "--no-progress")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"dmfnet prepare: error: {out}: holds a finished dataset (use --force to replace it)"
    ]


def _printed(function, *args) -> str:
    """What ``function(*args)`` prints on stdout."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        function(*args)
    return buffer.getvalue()


def test_cli_keep_options_reach_the_filters(captures, tmp_path, capsys):
    out = tmp_path / "ds"
    args = ["prepare", str(captures / "web"), "-o", str(out), "--no-progress", "--keep-dns"]
    assert main(args + ["--keep-no-payload", "--keep-failed-handshakes"]) == 0
    card = json.loads((out / CARD_NAME).read_text())
    assert card["classes"]["web"]["flows"] == 8
    assert card["parameters"]["flow_config"]["drop_dns"] is False


@pytest.mark.skipif(not (SHARED / "data/ndpi/pcaps").is_dir(), reason="no ../shared")
def test_csv_labels_on_a_real_ndpi_capture(tmp_path):
    csv = SHARED / "data/ndpi/labels.csv"
    summary = _prepare(SHARED / "data/ndpi/pcaps/1kxun.pcap", tmp_path / "ds", labels=csv)
    ds = load_dataset(tmp_path / "ds")
    assert summary.classes["1kxun"] > 10
    table = FlowTableLabeller(csv)
    chunk = {name: ds[name] for name in ("protocol", "client_ip", "client_port", "server_ip")}
    chunk["server_port"] = ds["server_port"]
    assert table.label_chunk(chunk, "1kxun.pcap").tolist() == ds.labels.tolist()
    target = (ds["server_ip"] == "161.117.13.29") & (ds["client_port"] == 45380)
    assert ds.labels[target].tolist() == ["1kxun"]
    assert sum(summary.card["removed"]["dns"].values()) > 0


def test_small_parts_merge_in_order_large_parts_stay(tmp_path):
    import pyarrow.parquet as pq

    from dmfnet.data.prepare import _merge_small_parts
    from test_data_dataset import synthetic_flows

    parts, expected = [], []
    for index, rows in enumerate([5, 2, 2, 5, 1]):
        chunk = synthetic_flows(rows, seed=index)
        writer = PartWriter(tmp_path, index)
        writer.write(chunk, f"c{index}")
        parts += [p.name for p in writer.close()]
        expected += chunk["start_time"].tolist()
    merged = _merge_small_parts(tmp_path, parts, target_rows=4)
    assert merged == [parts[0], parts[1], parts[3], parts[4]]
    assert sorted(p.name for p in tmp_path.glob("part-*.parquet")) == merged
    assert pq.ParquetFile(tmp_path / parts[1]).metadata.num_rows == 4
    (tmp_path / "dataset.json").write_text("{}")
    ds = load_dataset(tmp_path)
    assert ds["start_time"].tolist() == expected
    assert ds.labels.tolist() == ["c0"] * 5 + ["c1"] * 2 + ["c2"] * 2 + ["c3"] * 5 + ["c4"]


def test_a_failing_output_stops_the_run_with_one_clear_error(captures, tmp_path, monkeypatch):
    import errno

    def disk_full(self, flows, labels):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PartWriter, "write", disk_full)
    with pytest.raises(PrepareError, match="cannot write flows.*No space left"):
        _prepare(captures / "web", tmp_path / "ds", workers=1)


def record_progress(monkeypatch) -> list[int]:
    """The progress bars' increments, as the returned list fills (stderr taken for a
    terminal: bars are drawn only there)."""
    import tqdm

    import dmfnet.progress

    monkeypatch.setattr(dmfnet.progress, "_is_terminal", lambda stream: True)
    seen: list[int] = []
    original = tqdm.tqdm.update

    def update(self, n=1):
        seen.append(n)
        return original(self, n)

    monkeypatch.setattr(tqdm.tqdm, "update", update)
    return seen


def test_progress_reaches_the_total_bytes_of_every_input(captures, tmp_path, monkeypatch):
    seen = record_progress(monkeypatch)
    _prepare(captures, tmp_path / "ds", workers=1, progress=True)
    inputs = [p for p in captures.rglob("*") if p.is_file() and p.suffix != ".txt"]
    assert sum(seen) == sum(p.stat().st_size for p in inputs)


def test_prepare_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    text = capsys.readouterr().out
    for option in (
        "--labels",
        "--workers",
        "--max-flows-per-class",
        "--seed",
        "--idle-timeout",
        "--active-timeout",
        "--keep-dns",
        "--keep-llmnr",
        "--keep-failed-handshakes",
        "--keep-no-payload",
        "--keep-non-tcp-udp",
        "--no-anonymise",
        "--signed-lengths",
        "--no-payload-packet-bytes",
        "--keep-unlabelled",
        "--force",
    ):
        assert option in text, option


def test_parts_over_the_small_size_stay_even_when_a_group_has_room(tmp_path):
    import pyarrow.parquet as pq

    from dmfnet.data.prepare import _merge_small_parts
    from test_data_dataset import synthetic_flows

    parts = []
    for index, rows in enumerate([5, 2, 2, 5, 1]):
        writer = PartWriter(tmp_path, index)
        writer.write(synthetic_flows(rows, seed=index), f"c{index}")
        parts += [p.name for p in writer.close()]
    merged = _merge_small_parts(tmp_path, parts, target_rows=100, small_rows=3)
    assert merged == [parts[0], parts[1], parts[3], parts[4]]
    assert pq.ParquetFile(tmp_path / parts[1]).metadata.num_rows == 4
    assert pq.ParquetFile(tmp_path / parts[0]).metadata.num_rows == 5


def test_removals_are_counted_per_flow(tmp_path):
    folder = tmp_path / "caps" / "mail"
    folder.mkdir(parents=True)
    records = tcp_conversation(
        ("10.0.0.1", 40000), ("10.0.0.2", 993), (("c", b"a1 LOGIN"), ("s", b"a1 OK")), start_ns=T0
    )
    for i in range(3):
        records += udp_exchange(("10.0.0.1", 6000 + i), ("10.0.0.53", 53), start_ns=T0 + i)
    write_pcap(folder / "m.pcap", sorted(records, key=lambda r: r.ts_ns), linktype=LINKTYPE_RAW)
    summary = _prepare(tmp_path / "caps", tmp_path / "ds", workers=1)
    assert summary.classes == {"mail": 1}
    assert summary.card["removed"]["dns"] == {"mail": 3}


def test_a_worker_killed_fails_only_its_capture_and_leaves_no_broken_file(
    captures, tmp_path, monkeypatch
):
    import os

    prepare_module = importlib.import_module("dmfnet.data.prepare")
    original = prepare_module.prepare_capture

    def dies_on_c(index, path, size, **kw):
        if path.endswith("c.pcap"):  # half a part file written, then the process is killed
            (Path(kw["out"]) / f"part-{index:06d}-000.parquet").write_bytes(b"PAR1 unfinished")
            os._exit(9)
        return original(index, path, size, **kw)

    monkeypatch.setattr(prepare_module, "prepare_capture", dies_on_c)
    summary = _prepare(captures, tmp_path / "ds", workers=2)
    card = json.loads((tmp_path / "ds" / CARD_NAME).read_text())
    died = [p for p in card["problems"]["listed"] if "worker process died" in p["reason"]]
    assert [Path(p["file"]).name for p in died] == ["c.pcap"]
    assert summary.classes == {"chat": 1, "web": 5}  # c.pcap's two chat flows are missing
    ds = load_dataset(tmp_path / "ds")
    assert len(ds) == 6 and not any(c.endswith("c.pcap") for c in ds["capture"])
