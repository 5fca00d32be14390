"""Flow assembly on captures the tests build: known conversations in, exact flows out."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from dmfnet.capture import read_packets
from dmfnet.flows import FlowConfig, assemble_flows, schema
from dmfnet.flows import assemble as assemble_module
from dmfnet.problems import ProblemLog
from pcapbuild import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    Record,
    ethernet,
    ip,
    ip_bytes,
    ipv4,
    ipv6,
    tcp,
    tcp_conversation,
    udp,
    udp_exchange,
    wrap,
    write_pcap,
)

T0 = 1_700_000_000_000_000_000
SEC = 1_000_000_000


def flows_of(tmp_path, records, config=None, name="c.pcap", linktype=LINKTYPE_RAW):
    """Write records to a capture, assemble it, return (all columns concatenated, stats)."""
    path = write_pcap(tmp_path / name, sorted(records, key=lambda r: r.ts_ns), linktype=linktype)
    stream = assemble_flows(read_packets(path, ProblemLog()), config or FlowConfig(), str(path))
    chunks = list(stream)
    if not chunks:
        return {}, stream.stats
    cols = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    order = np.lexsort((cols["client_port"], cols["start_time"]))
    return {k: v[order] for k, v in cols.items()}, stream.stats


def test_columns_match_the_schema(tmp_path):
    cols, _ = flows_of(tmp_path, tcp_conversation(("10.0.0.1", 40000), ("10.0.0.2", 80)))
    expected = set(schema.SCALAR_COLUMNS) | set(schema.SEQUENCE_COLUMNS) | {"filter_reason"}
    assert set(cols) == expected
    for name, (dtype, width) in schema.SEQUENCE_COLUMNS.items():
        assert cols[name].dtype == np.dtype(dtype), name
        assert cols[name].shape == (1, width), name


def test_tcp_conversation_gives_one_flow_with_exact_fields(tmp_path):
    payloads = (("c", b"GET / HTTP/1.1\r\n\r\n"), ("s", b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 300))
    recs = tcp_conversation(("10.0.0.1", 40000), ("10.0.0.2", 80), payloads, gap_ns=SEC // 10)
    cols, stats = flows_of(tmp_path, recs)
    assert len(cols["packets"]) == 1
    assert stats.ip_packets == 8 and stats.flows == 1
    assert cols["client_ip"][0] == "10.0.0.1" and cols["client_port"][0] == 40000
    assert cols["server_ip"][0] == "10.0.0.2" and cols["server_port"][0] == 80
    assert cols["protocol"][0] == 6 and cols["ip_version"][0] == 4
    # SYN, SYN/ACK, ACK, data c, data s, FIN c, FIN s, final ACK (the close's tail).
    assert cols["packets"][0] == 8
    assert (cols["packets_c2s"][0], cols["packets_s2c"][0]) == (5, 3)
    c_len, s_len = 40 + len(payloads[0][1]), 40 + len(payloads[1][1])
    expected_lengths = [40, 40, 40, c_len, s_len, 40, 40, 40]
    assert cols["lengths"][0, :8].tolist() == expected_lengths
    assert not cols["lengths"][0, 8:].any()
    assert cols["directions"][0, :9].tolist() == [1, -1, 1, 1, -1, 1, -1, 1, 0]
    assert cols["payload_lengths"][0, :5].tolist() == [
        0,
        0,
        0,
        len(payloads[0][1]),
        len(payloads[1][1]),
    ]
    assert cols["tcp_flags"][0, :3].tolist() == [0x02, 0x12, 0x10]
    assert cols["tcp_windows"][0, 0] == 64240
    assert np.allclose(cols["iat"][0, :8], [0] + [0.1] * 7, atol=1e-6)
    assert cols["ip_bytes"][0] == sum(expected_lengths)
    assert cols["payload_bytes_c2s"][0] == len(payloads[0][1])
    assert cols["payload_bytes_s2c"][0] == len(payloads[1][1])
    assert cols["syn_seen"][0] and cols["handshake_complete"][0]
    assert cols["end_reason"][0] == "fin" and cols["filter_reason"][0] == ""
    assert cols["start_time"][0] == pytest.approx(T0 / SEC)
    assert cols["end_time"][0] == pytest.approx(T0 / SEC + 0.7)


def test_byte_modality_offsets_and_anonymised_header(tmp_path):
    payloads = (("c", b"A" * 300), ("s", b"B" * 10))
    recs = tcp_conversation(("10.1.2.3", 40001), ("10.9.8.7", 8080), payloads, close=None)
    cols, _ = flows_of(tmp_path, recs)
    row = cols["bytes"][0]
    assert row.shape == (1600,)
    for k, rec in enumerate(recs):  # SYN, SYN/ACK, ACK, data c, data s
        header = np.frombuffer(rec.data[:40], np.uint8).copy()
        header[10:20] = 0  # IPv4 checksum and addresses
        header[20:24] = 0  # ports
        header[36:38] = 0  # TCP checksum
        assert row[k * 320 : k * 320 + 40].tolist() == header.tolist(), k
        assert not row[k * 320 + 40 : k * 320 + 80].any()
    assert bytes(row[3 * 320 + 80 : 4 * 320]) == b"A" * 240  # payload cut to 240
    assert bytes(row[4 * 320 + 80 : 4 * 320 + 90]) == b"B" * 10
    assert not row[4 * 320 + 90 :].any()
    # flow_head: the IP packets back to back; payload_head: the payloads back to back.
    assert bytes(cols["payload_head"][0, :310]) == b"A" * 300 + b"B" * 10
    assert not cols["payload_head"][0, 310:].any()
    head = cols["flow_head"][0]
    assert bytes(head[3 * 40 + 40 : 3 * 40 + 340]) == b"A" * 300
    assert head[0] == 0x45 and head[40] == 0x45 and head[120] == 0x45


def test_no_address_or_port_survives_anywhere(tmp_path):
    recs = tcp_conversation(("192.168.77.66", 51234), ("203.0.113.99", 4433), close="rst")
    recs += udp_exchange(("2001:db8::abcd", 61000), ("2001:db8::1234", 7777), start_ns=T0 + SEC)
    cols, _ = flows_of(tmp_path, recs, FlowConfig(drop_no_payload=False))
    assert len(cols["packets"]) == 2
    secrets = [ip_bytes(a) for a in ("192.168.77.66", "203.0.113.99", "2001:db8::abcd")]
    secrets += [struct.pack("!H", p) for p in (51234, 4433, 61000, 7777)]
    for name in ("bytes", "flow_head", "payload_head"):
        for row in cols[name]:
            blob = row.tobytes()
            for secret in secrets:
                assert secret not in blob, (name, secret)
    assert cols["client_ip"].tolist() == ["192.168.77.66", "2001:db8::abcd"]


def test_anonymise_off_keeps_addresses(tmp_path):
    recs = udp_exchange(("10.0.0.1", 1111), ("10.0.0.2", 2222))
    cols, _ = flows_of(tmp_path, recs, FlowConfig(anonymise=False))
    assert ip_bytes("10.0.0.1") in cols["bytes"][0].tobytes()


def test_ipv6_extension_headers_are_skipped_when_zeroing_ports(tmp_path):
    seg = udp(33333, 44444, b"payload")
    pkt = ipv6("2001:db8::1", "2001:db8::2", 17, seg, extensions=[(0, b"\x01\x00" * 3)])
    cols, _ = flows_of(tmp_path, [Record(T0, pkt)])
    row = cols["bytes"][0]
    assert struct.pack("!H", 33333) not in row.tobytes()
    assert struct.pack("!H", 44444) not in row.tobytes()
    assert bytes(row[80 : 80 + 7]) == b"payload"
    assert cols["server_port"][0] == 44444 and cols["client_port"][0] == 33333


def test_client_is_the_receiver_of_a_leading_syn_ack(tmp_path):
    recs = tcp_conversation(("10.0.0.1", 40000), ("10.0.0.2", 443), close=None)[1:]
    cols, _ = flows_of(tmp_path, recs, FlowConfig(drop_no_payload=False))
    assert cols["client_ip"][0] == "10.0.0.1" and cols["server_port"][0] == 443
    assert cols["directions"][0, :3].tolist() == [-1, 1, 1]
    assert not cols["syn_seen"][0] and not cols["handshake_complete"][0]
    assert cols["filter_reason"][0] == ""


def test_mid_flow_capture_client_is_first_sender(tmp_path):
    recs = tcp_conversation(("10.0.0.1", 40000), ("10.0.0.2", 443), close=None)[4:]
    cols, _ = flows_of(tmp_path, recs)
    assert cols["client_ip"][0] == "10.0.0.2" and cols["client_port"][0] == 443


# ---------------------------------------------------------------------------- flow ends


def test_fin_close_then_reuse_of_the_same_key_gives_two_flows(tmp_path):
    a = tcp_conversation(("10.0.0.1", 40000), ("10.0.0.2", 80))
    b = tcp_conversation(("10.0.0.1", 40000), ("10.0.0.2", 80), start_ns=T0 + SEC)
    cols, _ = flows_of(tmp_path, a + b)
    assert cols["packets"].tolist() == [8, 8]
    assert cols["end_reason"].tolist() == ["fin", "fin"]
    assert cols["handshake_complete"].all()


def test_rst_close_keeps_stragglers_and_splits_on_new_syn(tmp_path):
    a = tcp_conversation(("10.0.0.1", 40000), ("10.0.0.2", 80), close="rst")
    c, s = ("10.0.0.1", 40000), ("10.0.0.2", 80)
    straggler = Record(a[-1].ts_ns + 1000, ip(s[0], c[0], 6, tcp(s[1], c[1], flags="RA")))
    b = tcp_conversation(c, s, start_ns=a[-1].ts_ns + 2000)
    cols, _ = flows_of(tmp_path, [*a, straggler, *b])
    assert cols["packets"].tolist() == [len(a) + 1, len(b)]
    assert cols["end_reason"].tolist() == ["rst", "fin"]


def test_data_after_close_starts_a_new_flow(tmp_path):
    a = tcp_conversation(("10.0.0.1", 40000), ("10.0.0.2", 80))
    late = Record(
        a[-1].ts_ns + 1000, ip("10.0.0.1", "10.0.0.2", 6, tcp(40000, 80, b"x", flags="PA"))
    )
    cols, _ = flows_of(tmp_path, [*a, late])
    assert cols["packets"].tolist() == [8, 1]
    assert cols["client_ip"].tolist() == ["10.0.0.1", "10.0.0.1"]


def test_idle_timeout_splits_and_reports_idle(tmp_path):
    a = udp_exchange(("10.0.0.1", 5000), ("10.0.0.2", 6000))
    b = udp_exchange(("10.0.0.1", 5000), ("10.0.0.2", 6000), start_ns=T0 + 121 * SEC)
    cols, _ = flows_of(tmp_path, a + b)
    assert cols["packets"].tolist() == [2, 2]
    assert cols["end_reason"].tolist() == ["idle", "end_of_capture"]
    cols, _ = flows_of(tmp_path, a + b, FlowConfig(idle_timeout=200), name="d.pcap")
    assert cols["packets"].tolist() == [4]


def test_active_timeout_splits_long_flows(tmp_path):
    recs = [
        Record(T0 + 3 * i * SEC, ip("10.0.0.1", "10.0.0.2", 17, udp(5000, 6000, b"x")))
        for i in range(10)
    ]
    cols, _ = flows_of(tmp_path, recs, FlowConfig(active_timeout=10))
    assert cols["packets"].tolist() == [4, 4, 2]
    assert cols["end_reason"].tolist() == ["active", "active", "end_of_capture"]


def test_idle_expiry_across_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(assemble_module, "SLICE_PACKETS", 1)
    a = udp_exchange(("10.0.0.1", 5000), ("10.0.0.2", 6000))
    other = udp_exchange(("10.0.0.3", 5000), ("10.0.0.4", 6000), start_ns=T0 + 500 * SEC)
    path = write_pcap(tmp_path / "e.pcap", a + other, linktype=LINKTYPE_RAW)
    stream = assemble_flows(read_packets(path, ProblemLog()), FlowConfig(), str(path))
    first = next(stream)  # the first flow is emitted once the clock passed its idle timeout
    assert first["packets"].tolist() == [2] and first["end_reason"].tolist() == ["idle"]
    assert stream.stats.peak_open_flows == 1


# ---------------------------------------------------------------------------- filters


def _filter_capture():
    recs = []
    t = T0
    # kept: TCP with payload
    recs += tcp_conversation(("10.0.0.1", 40000), ("10.0.0.2", 443), start_ns=t)
    # failed handshake: SYN and SYN/ACK only
    recs += tcp_conversation(("10.0.0.1", 40001), ("10.0.0.2", 443), start_ns=t + SEC)[:2]
    # no payload: handshake and close, nothing else
    recs += tcp_conversation(("10.0.0.1", 40002), ("10.0.0.2", 443), (), start_ns=t + 2 * SEC)
    recs += udp_exchange(("10.0.0.1", 40003), ("10.0.0.53", 53), start_ns=t + 3 * SEC)
    recs += udp_exchange(("10.0.0.1", 40004), ("224.0.0.252", 5355), start_ns=t + 4 * SEC)
    icmp = b"\x08\x00\x00\x00\x00\x01\x00\x01ping"
    recs += [Record(t + 5 * SEC, ipv4("10.0.0.1", "10.0.0.2", 1, icmp))]
    recs += udp_exchange(("10.0.0.1", 40005), ("10.0.0.2", 9999), start_ns=t + 6 * SEC)
    return recs


def test_each_filter_removes_what_it_should(tmp_path):
    cols, stats = flows_of(tmp_path, _filter_capture())
    assert cols["filter_reason"].tolist() == [
        "",
        "failed_handshake",
        "no_payload",
        "dns",
        "llmnr",
        "non_tcp_udp",
        "",
    ]
    assert stats.removed == {
        "failed_handshake": 1,
        "no_payload": 1,
        "dns": 1,
        "llmnr": 1,
        "non_tcp_udp": 1,
    }
    icmp = np.flatnonzero(cols["protocol"] == 1)[0]
    assert cols["client_port"][icmp] == 0 and cols["packets"][icmp] == 1


@pytest.mark.parametrize(
    "switch, reason",
    [
        ("drop_failed_handshake", "failed_handshake"),
        ("drop_no_payload", "no_payload"),
        ("drop_dns", "dns"),
        ("drop_llmnr", "llmnr"),
        ("drop_non_tcp_udp", "non_tcp_udp"),
    ],
)
def test_each_filter_can_be_switched_off(tmp_path, switch, reason):
    cols, _ = flows_of(tmp_path, _filter_capture(), FlowConfig(**{switch: False}))
    assert reason not in cols["filter_reason"].tolist()
    if reason == "failed_handshake":  # that flow carried no payload either
        assert cols["filter_reason"][1] == "no_payload"
    else:
        assert (cols["filter_reason"] == "").sum() == 3


def test_non_ip_and_fragments_are_counted(tmp_path):
    arp = Record(T0, b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\x00" * 28)
    first = ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2, b"a" * 16)[:16], more_fragments=True)
    later = ipv4("10.0.0.1", "10.0.0.2", 17, b"b" * 16, fragment_offset=16)
    recs = [arp] + wrap([Record(T0 + 1, first), Record(T0 + 2, later)], ethernet)
    _, stats = flows_of(tmp_path, recs, linktype=LINKTYPE_ETHERNET)
    assert stats.non_ip == 1
    assert stats.unplaced_fragments == 1
    assert stats.ip_packets == 1


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="idle_timeout"):
        FlowConfig(idle_timeout=0)
    with pytest.raises(ValueError, match="n_packets"):
        FlowConfig(n_packets=40, m_packets=30)


# ---------------------------------------------------------------------------- batches


def _mixed_capture():
    recs = []
    for i in range(12):
        recs += tcp_conversation(
            (f"10.0.{i}.1", 40000 + i),
            ("10.0.0.2", 443),
            (("c", bytes([i]) * (100 + 37 * i)), ("s", b"s" * (50 * i + 1)), ("c", b"c" * 9)),
            start_ns=T0 + i * 3_000_000 + i,
            gap_ns=2_000_000,
            close=("fin", "rst", None)[i % 3],
        )
    recs += tcp_conversation(("10.0.0.1", 40000), ("10.0.0.2", 443), start_ns=T0 + 50 * SEC)
    recs += udp_exchange(("10.0.0.9", 53000), ("10.0.0.2", 53), start_ns=T0 + 7)
    recs += udp_exchange(("10.0.0.9", 6000), ("10.0.0.2", 7000), start_ns=T0 + 200 * SEC + 11)
    return recs


@pytest.mark.parametrize("slice_packets", [1, 2, 3, 17])
def test_splitting_into_tiny_batches_gives_identical_flows(tmp_path, monkeypatch, slice_packets):
    whole, _ = flows_of(tmp_path, _mixed_capture(), name="whole.pcap")
    monkeypatch.setattr(assemble_module, "SLICE_PACKETS", slice_packets)
    split, _ = flows_of(tmp_path, _mixed_capture(), name="split.pcap")
    assert len(whole["packets"]) == 15
    for name in whole:
        if name == "capture":
            continue
        assert np.array_equal(whole[name], split[name]), name


def test_one_direction_capture_with_data_is_not_a_failed_handshake(tmp_path):
    recs = tcp_conversation(("10.0.0.1", 40000), ("10.0.0.2", 80), (("c", b"data"),))
    client_only = [r for r in recs if r.data[12:16] == ip_bytes("10.0.0.1")]
    cols, _ = flows_of(tmp_path, client_only)
    assert cols["syn_seen"][0] and not cols["handshake_complete"][0]
    assert cols["filter_reason"][0] == ""
    lone_syn = tcp_conversation(("10.0.0.1", 40001), ("10.0.0.2", 80), (), close=None)[:1]
    cols, _ = flows_of(tmp_path, lone_syn, name="syn.pcap")
    assert cols["filter_reason"][0] == "failed_handshake"


def test_timestamps_going_back_keep_file_order(tmp_path):
    def packet(t, src, payload):
        return Record(T0 + t * SEC, ip(src, "10.0.0.9", 17, udp(5000, 6000, payload)))

    arp = Record(T0 + 2 * SEC, b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\x00" * 28)
    # File order: A at 0 s, B at 200 s, A again at 1 s (the clock went back), ARP at 2 s.
    recs = [packet(0, "10.0.0.1", b"a"), packet(200, "10.0.0.2", b"b"), packet(1, "10.0.0.1", b"c")]
    recs = [*wrap(recs, ethernet), arp]
    path = write_pcap(tmp_path / "clock.pcap", recs, linktype=LINKTYPE_ETHERNET)
    stream = assemble_flows(read_packets(path, ProblemLog()), FlowConfig(), str(path))
    chunks = list(stream)
    flows = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    assert flows["client_ip"].tolist() == ["10.0.0.1", "10.0.0.2"]
    assert flows["packets"].tolist() == [2, 1]
    assert flows["iat"][0, :2] == pytest.approx([0.0, 1.0])
    assert flows["end_time"][0] == pytest.approx(T0 / SEC + 1)  # the last packet, in file order
    assert stream.stats.non_ip == 1


def test_signed_lengths_and_other_widths(tmp_path):
    recs = tcp_conversation(("10.0.0.1", 40000), ("10.0.0.2", 80), (("c", b"x" * 100),))
    config = FlowConfig(
        signed_lengths=True,
        n_packets=2,
        header_bytes=40,
        payload_bytes=60,
        m_packets=10,
        head_bytes=128,
    )
    cols, _ = flows_of(tmp_path, recs, config)
    assert cols["lengths"].shape == (1, 10) and cols["bytes"].shape == (1, 200)
    assert cols["flow_head"].shape == (1, 128) and cols["payload_head"].shape == (1, 128)
    assert cols["lengths"][0, :5].tolist() == [40, -40, 40, 140, 40]
    assert cols["bytes"][0, 100] == 0x45  # second packet's IP header at 1 * (40 + 60)
    # flow_head: 3 x 40 bytes of handshake, then the data packet cut at 128 bytes.
    assert cols["flow_head"][0, 120] == 0x45 and not cols["flow_head"][0, 124:128].any()


def test_hash_collisions_fall_back_to_the_full_key(tmp_path, monkeypatch):
    whole, _ = flows_of(tmp_path, _mixed_capture(), name="hashed.pcap")

    def colliding(proto, lo_hi, lo_lo, hi_hi, hi_lo, ports):
        return (ports.astype(np.uint64) & np.uint64(1)) * np.uint64(7)  # two hash values

    monkeypatch.setattr(assemble_module, "_key_hash", colliding)
    monkeypatch.setattr(assemble_module, "SLICE_PACKETS", 5)
    collided, _ = flows_of(tmp_path, _mixed_capture(), name="collided.pcap")
    for name in whole:
        if name != "capture":
            assert np.array_equal(whole[name], collided[name]), name
