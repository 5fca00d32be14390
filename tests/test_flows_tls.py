"""TLS anonymisation: server names and certificates never reach the byte columns."""

from __future__ import annotations

import struct

import numpy as np

from dmfnet.capture import read_packets
from dmfnet.flows import FlowConfig, assemble_flows
from dmfnet.flows import assemble as assemble_module
from dmfnet.flows.anonymise import tls_zero_ranges
from dmfnet.problems import ProblemLog
from pcapbuild import LINKTYPE_RAW, Record, ip, tcp, write_pcap

T0 = 1_700_000_000_000_000_000
HOST = b"secret-host.example.org"
CERT = bytes(range(256)) * 3 + b"CERTIFICATE-BODY-END"


def handshake(msg_type: int, body: bytes) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def record(payload: bytes, content_type: int = 22) -> bytes:
    return struct.pack("!BHH", content_type, 0x0303, len(payload)) + payload


def client_hello(host: bytes) -> tuple[bytes, tuple[int, int]]:
    """A ClientHello record with SNI; also where the host name sits in it."""
    sni = struct.pack("!HBH", len(host) + 3, 0, len(host)) + host
    groups = struct.pack("!HHH", 0x000A, 2, 0x0017)
    exts = groups + struct.pack("!HH", 0, len(sni)) + sni
    body = b"\x03\x03" + b"\x11" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack("!H", len(exts)) + exts
    rec = record(handshake(1, body))
    start = rec.index(host)
    return rec, (start, start + len(host))


def server_flight() -> tuple[bytes, tuple[int, int]]:
    """ServerHello + Certificate in one record; also where the Certificate body sits."""
    server_hello = handshake(2, b"\x03\x03" + b"\x55" * 38)
    chain = len(CERT).to_bytes(3, "big") + CERT
    cert_msg = handshake(11, len(chain).to_bytes(3, "big") + chain)
    rec = record(server_hello + cert_msg) + record(handshake(14, b""))
    body_start = 5 + len(server_hello) + 4
    return rec, (body_start, body_start + len(chain) + 3)


def tls_conversation(split_at: int, retransmit: bool = False) -> tuple[list[Record], bytes, bytes]:
    c, s = ("10.0.0.1", 40000), ("10.0.0.2", 443)
    hello, (h0, h1) = client_hello(HOST)
    flight, (c0, c1) = server_flight()
    expected_c = bytearray(hello)
    expected_c[h0:h1] = bytes(h1 - h0)
    expected_s = bytearray(flight)
    expected_s[c0:c1] = bytes(c1 - c0)
    t = [T0 + i * 1000 for i in range(10)]
    cseq, sseq = 1001, 5001

    def pkt(i, from_client, payload=b"", flags="PA", seq=None):
        if from_client:
            seg = tcp(c[1], s[1], payload, seq=cseq if seq is None else seq, flags=flags)
            return Record(t[i], ip(c[0], s[0], 6, seg))
        seg = tcp(s[1], c[1], payload, seq=sseq if seq is None else seq, flags=flags)
        return Record(t[i], ip(s[0], c[0], 6, seg))

    recs = [
        pkt(0, True, flags="S", seq=1000),
        pkt(1, False, flags="SA", seq=5000),
        pkt(2, True, flags="A"),
        pkt(3, True, hello),
        pkt(4, False, flight[:split_at]),
        pkt(5, False, flight[split_at:], seq=sseq + split_at),
    ]
    if retransmit:  # the first server segment again, after the second
        recs.append(pkt(6, False, flight[:split_at]))
    return recs, bytes(expected_c), bytes(expected_s)


def run(tmp_path, recs, name="tls.pcap"):
    path = write_pcap(tmp_path / name, recs, linktype=LINKTYPE_RAW)
    chunks = list(assemble_flows(read_packets(path, ProblemLog()), FlowConfig(), str(path)))
    assert sum(len(ch["packets"]) for ch in chunks) == 1
    return {k: np.concatenate([ch[k] for ch in chunks]) for k in chunks[0]}


def test_parser_finds_sni_and_certificate_ranges():
    hello, sni = client_hello(HOST)
    assert tls_zero_ranges(hello) == [sni]
    flight, cert = server_flight()
    assert tls_zero_ranges(flight) == [cert]
    # A certificate longer than what was seen so far: the range reaches past the data.
    assert tls_zero_ranges(flight[:100]) == [(cert[0], cert[1])]
    assert tls_zero_ranges(b"\x17\x03\x03\x00\x10" + bytes(16)) == []


def test_certificate_spanning_two_segments_is_zeroed_everywhere(tmp_path):
    recs, expected_c, expected_s = tls_conversation(split_at=150)
    cols = run(tmp_path, recs)
    head = cols["payload_head"][0].tobytes()
    assert head[: len(expected_c) + len(expected_s)] == expected_c + expected_s
    row = cols["bytes"][0]
    assert row[3 * 320 + 80 : 4 * 320].tobytes() == expected_c.ljust(240, b"\0")[:240]
    assert row[4 * 320 + 80 : 5 * 320].tobytes() == expected_s[:150] + bytes(90)
    for name in ("bytes", "flow_head", "payload_head"):
        blob = cols[name][0].tobytes()
        assert HOST not in blob
        for k in range(0, len(CERT) - 8, 8):
            assert CERT[k : k + 8] not in blob, (name, k)
    # Everything around the zeroed parts is kept: record headers, ServerHello.
    assert b"\x55" * 38 in head


def test_retransmitted_segment_is_zeroed_by_stream_position(tmp_path):
    recs, _, expected_s = tls_conversation(split_at=400, retransmit=True)
    cols = run(tmp_path, recs)
    row = cols["bytes"][0]
    # Packets: SYN, SYN/ACK, ACK, ClientHello, server part 1; part 2 and the retransmission
    # are beyond N = 5 but enter the heads.
    assert row[4 * 320 + 80 : 5 * 320].tobytes() == expected_s[:240]
    for name in ("flow_head", "payload_head"):
        blob = cols[name][0].tobytes()
        for k in range(0, len(CERT) - 8, 8):
            assert CERT[k : k + 8] not in blob, (name, k)


def test_tls_state_crosses_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(assemble_module, "SLICE_PACKETS", 1)
    recs, expected_c, expected_s = tls_conversation(split_at=150)
    cols = run(tmp_path, recs, name="tls-split.pcap")
    head = cols["payload_head"][0].tobytes()
    assert head[: len(expected_c) + len(expected_s)] == expected_c + expected_s
