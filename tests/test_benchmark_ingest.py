"""The ingest benchmark's capture builder and its dpkt yardstick do what they claim."""

import importlib.util
import json
import struct
import sys
from pathlib import Path

import dpkt
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pcapbuild import (
    Record,
    ethernet,
    ip_bytes,
    tcp_conversation,
    udp_exchange,
    wrap,
    write_pcap,
)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


ingest = _load("ingest")
reference = _load("dpkt_reference")

T0 = 1_600_000_000_000_000_000  # ns


def _sources(tmp_path: Path) -> list[Path]:
    """Two small Ethernet captures: big-endian ns with VLAN-tagged IPv4, and IPv6."""
    v4 = tcp_conversation(("10.1.2.3", 40000), ("192.168.7.9", 443), start_ns=T0)
    a = write_pcap(
        tmp_path / "a.pcap",
        wrap(v4, lambda p: ethernet(p, vlans=[(0x8100, 5)])),
        big_endian=True,
        nanosecond=True,
    )
    v6 = udp_exchange(("2001:db8::1", 5000), ("2001:db8::2", 6000), start_ns=T0 + 7 * 10**9)
    b = write_pcap(tmp_path / "b.pcap", wrap(v6, ethernet))
    (tmp_path / "raw.pcap").write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
    return [a, b]


def _read(path: Path) -> list[tuple[float, bytes]]:
    with open(path, "rb") as f:
        return list(dpkt.pcap.Reader(f))


def test_find_sources_keeps_only_ethernet_pcap(tmp_path):
    data = tmp_path / "data" / "slips"
    data.mkdir(parents=True)
    expected = _sources(data)
    assert ingest.find_sources([tmp_path / "data"]) == sorted(expected)
    assert ingest.find_sources([data / "b.pcap", data / "raw.pcap"]) == [data / "b.pcap"]


def test_build_capture_replays_with_distinct_addresses_in_time_order(tmp_path):
    sources = [ingest.load_source(p) for p in _sources(tmp_path)]
    one_pass = sum(len(s.records) for s in sources)
    out = ingest.build_capture(tmp_path / "big.pcap", 24 + 2 * one_pass + 1, sources)
    records = _read(tmp_path / "big.pcap")
    # Three replays begun, the third cut right after its first record.
    assert out.replays == 3 and out.packets == len(records) == 2 * 10 + 1
    assert out.bytes == (tmp_path / "big.pcap").stat().st_size > 2 * one_pass
    stamps = [ts for ts, _ in records]
    assert stamps == sorted(stamps)
    assert stamps[0] == ingest.START_EPOCH_US / 1e6

    v4 = [dpkt.ethernet.Ethernet(buf).data for _, buf in records[0:8] + records[10:18]]
    v6 = [dpkt.ethernet.Ethernet(buf).data for _, buf in records[8:10] + records[18:20]]
    addresses = {(p.src, p.dst) for p in v4 + v6}
    assert len(addresses) == 8  # two directions x two families x two replays
    client, server = ip_bytes("10.1.2.3"), ip_bytes("192.168.7.9")
    # Replay 0 XORs octets 2-3 with 0x0001, replay 1 with 0x0002; octets 1 and 4 untouched.
    assert v4[0].src == bytes([10, 1, 3, 3]) and v4[0].dst == bytes([192, 168, 6, 9])
    assert v4[8].src == bytes([10, 1, 0, 3]) and v4[8].dst == bytes([192, 168, 5, 9])
    assert v4[0].src != client and v4[0].dst != server
    expected_v6 = bytearray(ip_bytes("2001:db8::1"))
    expected_v6[13] ^= 0x01  # IPv6: bytes 12-13 of each address
    assert v6[0].src == bytes(expected_v6)
    # Everything but addresses and timestamps is the source's bytes.
    original = _read(tmp_path / "a.pcap")
    for (_, buf), (_, copy) in zip(original, records[0:8], strict=True):
        a, b = dpkt.ethernet.Ethernet(buf).data, dpkt.ethernet.Ethernet(copy).data
        assert bytes(a.data) == bytes(b.data) and a.len == b.len and a.sum == b.sum


def test_load_source_shortens_jumps_of_years_to_an_hour(tmp_path):
    year = 365 * 86400 * 10**9
    packets = udp_exchange(("10.0.0.1", 1), ("10.0.0.2", 2), [("c", b"x")] * 4, gap_ns=10**6)
    stamps = [T0, T0 + 10 * year, T0 + 10 * year + 5 * 10**9, T0 + 2 * 10**9]
    records = [Record(t, r.data) for t, r in zip(stamps, packets, strict=True)]
    source = ingest.load_source(write_pcap(tmp_path / "s.pcap", wrap(records, ethernet)))
    hour = ingest.MAX_JUMP_US
    # Back by ten years: back by an hour.
    assert source.ts_us.tolist() == [0, hour, hour + 5_000_000, 5_000_000]


def test_build_capture_refuses_without_sources(tmp_path):
    with pytest.raises(ValueError, match="no source captures"):
        ingest.build_capture(tmp_path / "x.pcap", 1000, [])


def test_dpkt_reference_flows_and_modalities(tmp_path):
    server = ("10.0.0.2", 443)
    tls = tcp_conversation(("10.0.0.1", 40000), server, [("c", b"A" * 300)], start_ns=T0)
    # The same endpoints again one second later: the SYN starts a new flow, closed by RST.
    again = tcp_conversation(
        ("10.0.0.1", 40000), server, [("s", b"B" * 10)], start_ns=T0 + 10**9, close="rst"
    )
    failed = tcp_conversation(("10.0.0.1", 40001), server, [], start_ns=T0, close=None)[:1]
    # A capture of one direction only: SYN and data but no SYN/ACK, kept for its data.
    both = tcp_conversation(("10.0.0.5", 40002), server, [("c", b"C" * 20)], start_ns=T0)
    one_way = [r for r in both if r.data[12:16] == ip_bytes("10.0.0.5")]
    dns = udp_exchange(("10.0.0.1", 5353), ("10.0.0.3", 53), start_ns=T0)
    late = udp_exchange(("10.0.0.1", 7000), ("10.0.0.4", 7001), start_ns=T0 + 200 * 10**9)
    records = sorted(tls + again + failed + one_way + dns + late, key=lambda r: r.ts_ns)
    capture = write_pcap(tmp_path / "c.pcap", wrap(records, ethernet))
    summary = reference.prepare(capture, tmp_path / "out.parquet")
    assert (summary.packets, summary.dns_llmnr, summary.failed_handshake) == (22, 2, 1)
    # The failed SYN and the one-way flow end idle when the late UDP exchange comes.
    assert summary.end_reasons == {"fin": 1, "rst": 1, "idle": 2, "end_of_capture": 1}
    assert summary.no_payload == 0 and summary.kept == 4
    rows = sorted(
        pq.read_table(tmp_path / "out.parquet").to_pylist(),
        key=lambda r: (r["start_time"], r["client_port"]),
    )
    first, one_way_row, second, udp = rows
    assert one_way_row["client_port"] == 40002
    assert one_way_row["lengths"][:6] == [40, 40, 60, 40, 40, 0]
    assert first["client_ip"] == "10.0.0.1" and first["client_port"] == 40000
    assert first["server_port"] == 443 and first["end_reason"] == "fin"
    # The last ACK of the close still belongs to the closed flow.
    assert first["lengths"][:8] == [40, 40, 40, 340, 40, 40, 40, 0]
    assert second["end_reason"] == "rst" and second["lengths"][:6] == [40, 40, 40, 50, 40, 0]
    packet = [first["bytes"][i * 320 : (i + 1) * 320] for i in range(5)]
    assert len(first["bytes"]) == 1600
    assert packet[0][:4] == bytes([0x45, 0, 0, 40])
    assert packet[0][10:20] == bytes(10)  # IP checksum and addresses zeroed
    assert packet[0][20:24] == bytes(4) and packet[0][36:38] == bytes(2)  # ports, checksum
    assert packet[0][33] == 0x02  # SYN
    assert packet[3][80:320] == b"A" * 240  # payload cut to 240 bytes
    assert packet[0][40:320] == bytes(280)  # header padded, no payload
    assert udp["lengths"][:3] == [33, 34, 0]


def test_measure_reports_exit_output_and_memory_of_the_child(tmp_path):
    # The child holds 200 MiB until the sampler has seen it (it then finds the flag file),
    # so the sampled peak does not depend on how busy the machine is.
    flag = tmp_path / "seen"
    grow = (
        "import os, sys, time; block = b'x' * (200 * 2**20); t = time.monotonic()\n"
        f"while not os.path.exists({str(flag)!r}) and time.monotonic() - t < 120:\n"
        "    time.sleep(0.01)\n"
        "print(len(block)); sys.exit(3)"
    )

    def on_sample(rss: int, anon: int) -> None:
        if anon > 200 * 2**20:
            flag.touch()

    m = ingest.measure([sys.executable, "-c", grow], sample_every=0.01, on_sample=on_sample)
    assert flag.exists(), "the sampler never saw the child's memory"
    assert m.returncode == 3 and m.stdout.strip() == str(200 * 2**20)
    # ru_maxrss also counts what the child shared with this process between fork and exec,
    # so only the lower bound is the child's own.
    assert m.max_rss > 200 * 2**20 and m.tree_rss >= m.max_rss
    assert 200 * 2**20 < m.tree_anon_rss <= m.tree_rss
    assert m.wall_s > 0 and m.cpu_s > 0


def test_compare_outputs_matches_flows_by_key(tmp_path):
    flows = tcp_conversation(("10.0.0.1", 40000), ("10.0.0.2", 443), start_ns=T0)
    flows += udp_exchange(("10.0.0.1", 7000), ("10.0.0.4", 7001), start_ns=T0)
    capture = write_pcap(tmp_path / "c.pcap", wrap(flows, ethernet))
    reference.prepare(capture, tmp_path / "dpkt.parquet")
    # The same flows with IPv4-mapped client addresses and one length changed.
    table = pq.read_table(tmp_path / "dpkt.parquet")
    mapped = pa.array(["::ffff:" + ip for ip in table["client_ip"].to_pylist()])
    lengths = table["lengths"].to_pylist()
    lengths[0][0] += 1
    table = table.set_column(2, "client_ip", mapped)
    table = table.set_column(12, "lengths", pa.array(lengths, type=table.schema.field(12).type))
    (tmp_path / "prepared").mkdir()
    pq.write_table(table, tmp_path / "prepared" / "part-0.parquet")
    agreement = ingest.compare_outputs(tmp_path / "prepared", tmp_path / "dpkt.parquet")
    assert agreement == {
        "flows_dmfnet": 2,
        "flows_dpkt": 2,
        "flows_in_both": 2,
        "same_lengths": 1,
        "same_bytes": 2,
    }


def test_dpkt_only_run_prints_table_and_json(tmp_path, capsys):
    sources = tmp_path / "sources"
    sources.mkdir()
    one_pass = sum(len(ingest.load_source(p).records) for p in _sources(sources))
    size_mb = (24 + 2 * one_pass) / 1e6  # exactly two replays
    figures = tmp_path / "figures.json"
    argv = ["--skip-prepare", "--size-mb", str(size_mb), "--source", str(sources)]
    argv += ["--workdir", str(tmp_path / "work"), "--json", str(figures)]
    assert ingest.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| dpkt reference | 0 MB, 0.00 M packets | 1 |" in printed
    assert "Command: `" in printed and "--skip-prepare" in printed
    (run,) = json.loads(figures.read_text())["runs"]
    assert run["name"] == "dpkt reference" and run["returncodes"] == [0]
    assert run["captures"][0]["replays"] == 2 and run["flows"] == 4  # TCP and UDP, twice


def test_pcapng_conversion_keeps_every_record(tmp_path):
    sources = [ingest.load_source(p) for p in _sources(tmp_path)]
    ingest.build_capture(tmp_path / "big.pcap", 5000, sources)
    out = ingest.convert_to_pcapng(tmp_path / "big.pcap", tmp_path / "big.pcapng")
    with open(tmp_path / "big.pcapng", "rb") as f:
        reader = dpkt.pcapng.Reader(f)
        assert reader.datalink() == 1
        converted = list(reader)
    original = _read(tmp_path / "big.pcap")
    assert out.packets == len(converted) == len(original)
    assert out.bytes == (tmp_path / "big.pcapng").stat().st_size
    assert [buf for _, buf in converted] == [buf for _, buf in original]
    assert [round(ts, 6) for ts, _ in converted] == [round(ts, 6) for ts, _ in original]
