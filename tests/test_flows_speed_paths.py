"""The vectorised paths of flow assembly against bytes worked out by hand: pieces placed all
at once, header fields zeroed in runs (also when a capture cuts a header short)."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np

from dmfnet.capture import read_packets
from dmfnet.flows import FlowConfig, assemble_flows
from dmfnet.flows import assemble as assemble_module
from dmfnet.flows.snippets import place_pieces
from dmfnet.problems import ProblemLog
from pcapbuild import LINKTYPE_RAW, Record, ip, tcp, write_pcap

T0 = 1_700_000_000_000_000_000


def test_place_pieces_in_any_order_writes_exactly_the_pieces():
    rng = np.random.default_rng(7)
    src = rng.integers(1, 256, 1 << 16, dtype=np.uint8)
    rows, width = 40, 1024
    row_start, offset, src_start, n = [], [], [], []
    for r in range(rows):  # each row: pieces of every size class, back to back, a gap
        at = int(rng.integers(0, 8))
        while at < width:
            size = int(rng.choice([1, 2, 3, 7, 8, 63, 64, 65, 255, 513, 1024]))
            row_start.append(r * width)
            offset.append(at)
            src_start.append(int(rng.integers(0, len(src) - size)))
            n.append(size)  # may cross the row's end: cut there
            at += size + int(rng.integers(0, 3))
    order = rng.permutation(len(n))
    args = [np.array(v, dtype=np.int64)[order] for v in (row_start, offset, src_start, n)]
    dst = np.full(rows * width, 0xEE, dtype=np.uint8)
    place_pieces(dst, args[0], args[1], src, args[2], args[3], width)
    expected = np.full(rows * width, 0xEE, dtype=np.uint8)
    for r0, o, s, k in zip(*args, strict=True):
        k = min(k, width - o)
        expected[r0 + o : r0 + o + k] = src[s : s + k]
    assert dst.tolist() == expected.tolist()


def _flow(tmp_path, recs):
    path = write_pcap(tmp_path / "cut.pcap", recs, linktype=LINKTYPE_RAW)
    chunks = list(assemble_flows(read_packets(path, ProblemLog()), FlowConfig(), str(path)))
    cols = {k: np.concatenate([ch[k] for ch in chunks]) for k in chunks[0]}
    assert len(cols["packets"]) == 1
    return cols


def test_header_fields_are_zeroed_where_the_capture_cuts_the_header_short(tmp_path):
    c, s = ("10.1.2.3", 40000), ("10.9.8.7", 8080)
    full = [
        ip(c[0], s[0], 6, tcp(c[1], s[1], b"", seq=1, flags="S")),
        ip(s[0], c[0], 6, tcp(s[1], c[1], b"", seq=9, flags="SA")),
        ip(c[0], s[0], 6, tcp(c[1], s[1], b"hello", seq=2, flags="PA")),
        ip(s[0], c[0], 6, tcp(s[1], c[1], b"world!", seq=10, flags="PA")),
    ]
    # Cut right after the ports, before the checksum, inside it, not at all (a cut before
    # the ports leaves the flow unknown).
    cut = [24, 30, 37, len(full[3])]
    recs = [
        Record(T0 + i * 1000, pkt[:k], wirelen=len(pkt))
        for i, (pkt, k) in enumerate(zip(full, cut, strict=True))
    ]
    cols = _flow(tmp_path, recs)

    def anonymised(pkt: bytes) -> bytes:
        b = bytearray(pkt)
        for lo, hi in ((10, 20), (20, 24), (36, 38)):  # checksum+addresses, ports, checksum
            b[lo:hi] = bytes(hi - lo)
        return bytes(b)

    seen = [anonymised(p)[:k] for p, k in zip(full, cut, strict=True)]
    head = b"".join(seen)
    assert cols["flow_head"][0].tobytes() == head.ljust(1024, b"\0")
    assert cols["payload_head"][0].tobytes() == b"world!".ljust(1024, b"\0")
    row = cols["bytes"][0].tobytes()
    for i, part in enumerate(seen):
        packet = row[i * 320 : (i + 1) * 320]
        header = part[:40]
        assert packet[:80] == header.ljust(80, b"\0"), i
        assert packet[80:] == part[40:].ljust(240, b"\0"), i


def test_icmpv6_checksum_is_zeroed_in_flow_head_only(tmp_path):
    message = b"\x80\x00\xab\xcd\x00\x01\x00\x01ping"  # echo request, checksum abcd
    pkt = ip("2001:db8::1", "2001:db8::2", 58, message)
    cols = _flow(tmp_path, [Record(T0, pkt)])
    expected = bytearray(pkt)
    expected[8:40] = bytes(32)  # addresses
    in_head = bytearray(expected)
    in_head[42:44] = b"\0\0"  # the checksum, past the 40-byte header
    assert cols["flow_head"][0].tobytes() == bytes(in_head).ljust(1024, b"\0")
    assert cols["payload_head"][0].tobytes() == message.ljust(1024, b"\0")
    row = cols["bytes"][0].tobytes()
    assert row[:80] == bytes(expected[:40]).ljust(80, b"\0")
    assert row[80:320] == message.ljust(240, b"\0")


def test_tls_stream_segment_far_behind_the_stream_is_left_out(tmp_path, monkeypatch):
    # Small slices: the stream starts in one slice, a segment 5000 bytes behind its start
    # (2**32 - 5000 ahead, modulo 2**32) comes in a later one and must not be copied.
    monkeypatch.setattr(assemble_module, "SLICE_PACKETS", 2)
    host = b"far-behind.example.net"
    sni = struct.pack("!HBH", len(host) + 3, 0, len(host)) + host
    exts = struct.pack("!HH", 0, len(sni)) + sni
    body = b"\x03\x03" + b"\x11" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack("!H", len(exts)) + exts
    message = bytes([1]) + len(body).to_bytes(3, "big") + body
    hello = struct.pack("!BHH", 22, 0x0301, len(message)) + message
    split = hello.index(host) + 5  # inside the host name
    c, s = ("10.0.0.1", 40000), ("10.0.0.2", 443)
    seq = 1001
    payloads = [(hello[:split], seq), (hello[split:], seq + split), (b"late" * 8, seq - 5000)]
    recs = [
        Record(T0, ip(c[0], s[0], 6, tcp(c[1], s[1], b"", seq=1000, flags="S"))),
        Record(T0 + 1, ip(s[0], c[0], 6, tcp(s[1], c[1], b"", seq=5000, flags="SA"))),
        Record(T0 + 2, ip(c[0], s[0], 6, tcp(c[1], s[1], b"", seq=seq, flags="A"))),
    ] + [
        Record(T0 + 3 + i, ip(c[0], s[0], 6, tcp(c[1], s[1], data, seq=q, flags="PA")))
        for i, (data, q) in enumerate(payloads)
    ]
    tracemalloc.start()
    try:
        cols = _flow(tmp_path, recs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20  # the stream was not grown to the far segment
    expected = bytearray(hello)
    at = hello.index(host)
    expected[at : at + len(host)] = bytes(len(host))
    head = bytes(expected) + b"late" * 8
    assert cols["payload_head"][0].tobytes() == head.ljust(1024, b"\0")
    assert host[:5] not in cols["flow_head"][0].tobytes()
