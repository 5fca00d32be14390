"""The vectorised paths of flow assembly against bytes worked out by hand: pieces placed all
at once, header fields zeroed in runs (also when a capture cuts a header short), TLS streams
rebuilt and walked all at once (against the walk one stream at a time)."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest

from dmfnet.capture import read_packets
from dmfnet.flows import FlowConfig, assemble_flows
from dmfnet.flows import assemble as assemble_module
from dmfnet.flows.anonymise import tls_zero_ranges, tls_zero_ranges_many
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


def _client_segments(segments: list[tuple[bytes, int]]) -> list[Record]:
    """A TCP handshake (client ISN 1000), then the client's (data, seq) segments in order."""
    c, s = ("10.0.0.1", 40000), ("10.0.0.2", 443)
    return [
        Record(T0, ip(c[0], s[0], 6, tcp(c[1], s[1], b"", seq=1000, flags="S"))),
        Record(T0 + 1, ip(s[0], c[0], 6, tcp(s[1], c[1], b"", seq=5000, flags="SA"))),
        Record(T0 + 2, ip(c[0], s[0], 6, tcp(c[1], s[1], b"", seq=1001, flags="A"))),
    ] + [
        Record(T0 + 3 + i, ip(c[0], s[0], 6, tcp(c[1], s[1], data, seq=q, flags="PA")))
        for i, (data, q) in enumerate(segments)
    ]


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
    seq = 1001
    payloads = [(hello[:split], seq), (hello[split:], seq + split), (b"late" * 8, seq - 5000)]
    recs = _client_segments(payloads)
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


def _tls_record(body: bytes, content_type: int = 22) -> bytes:
    return bytes([content_type, 3, 3]) + len(body).to_bytes(2, "big") + body


def _handshake(msg_type: int, body: bytes) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def _client_hello(host: bytes, sni_twice: bool = False) -> bytes:
    sni = struct.pack("!HBH", len(host) + 3, 0, len(host)) + host
    exts = struct.pack("!HHH", 10, 2, 23) + struct.pack("!HH", 0, len(sni)) + sni
    if sni_twice:
        exts += struct.pack("!HH", 0, len(sni)) + sni
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    return _handshake(1, body + struct.pack("!H", len(exts)) + exts)


def _random_tls_stream(rng: np.random.Generator) -> bytes:
    """Handshake messages split over records at random, ChangeCipherSpec, application data,
    garbage; sometimes cut short or with a few bytes changed."""
    parts = []
    for _ in range(int(rng.integers(0, 5))):
        c = rng.random()
        if c < 0.3:
            host = bytes(rng.integers(97, 123, int(rng.integers(0, 40))).astype(np.uint8))
            message = _client_hello(host, sni_twice=rng.random() < 0.3)
        elif c < 0.5:
            message = _handshake(11, rng.bytes(int(rng.integers(0, 3000))))
        elif c < 0.6:
            message = _handshake(2, b"\x03\x03" + bytes(40))
        elif c < 0.7:
            parts.append(_tls_record(b"\x01", 20))
            continue
        elif c < 0.8:
            parts.append(_tls_record(rng.bytes(int(rng.integers(0, 60)))))
            continue
        elif c < 0.85:
            parts.append(_tls_record(bytes(20), 23))
            continue
        else:
            message = rng.bytes(int(rng.integers(0, 50)))
        while True:  # the message over one or more records
            k = int(rng.integers(0, len(message) + 1)) if rng.random() < 0.5 else len(message)
            parts.append(_tls_record(message[:k]))
            message = message[k:]
            if not message:
                break
    stream = bytearray(b"".join(parts))
    if stream and rng.random() < 0.3:
        stream = stream[: int(rng.integers(0, len(stream)))]
    if stream and rng.random() < 0.2:
        for i in rng.integers(0, len(stream), 3).tolist():
            stream[i] = int(rng.integers(0, 256))
    return bytes(stream)


def _covered(ranges) -> set[int]:
    return {i for a, b in ranges for i in range(a, b)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tls_walk_of_many_streams_covers_what_the_walk_one_by_one_covers(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        streams = [_random_tls_stream(rng) for _ in range(int(rng.integers(1, 30)))]
        # A stream of one-byte records: more steps than the vectorised walk takes.
        streams.append(b"".join(_tls_record(bytes([b])) for b in _client_hello(b"x" * 30)))
        lengths = np.array([len(s) for s in streams], dtype=np.int64)
        start = np.cumsum(lengths) - lengths + 3  # streams need not start at 0
        flat = np.frombuffer(b"pad" + b"".join(streams), dtype=np.uint8)
        which, a, b = tls_zero_ranges_many(flat, start, lengths)
        for j, stream in enumerate(streams):
            got = zip(a[which == j].tolist(), b[which == j].tolist(), strict=True)
            assert _covered(got) == _covered(tls_zero_ranges(stream)), (seed, j)
    assert [len(x) for x in tls_zero_ranges_many(flat[:0], start[:0], lengths[:0])] == [0, 0, 0]


def test_tls_stream_rebuild_out_of_order_and_retransmitted_with_other_bytes(tmp_path):
    # The ClientHello's bytes come out of order, the host name split between two segments.
    # The first segment's record length says 1 byte (the walk would find no ClientHello);
    # a shorter retransmission of its first bytes, later in the file, has the right
    # length: the later copy wins, so the host name is found and zeroed. (All in one
    # slice: a packet is anonymised with what the stream holds up to its slice.)
    host = b"out-of-order.example.com"
    hello = _tls_record(_client_hello(host))
    at = hello.index(host)
    bad = hello[:3] + b"\x00\x01" + hello[5:40]
    seq = 1001
    pieces = [(0, 40), (at + 7, len(hello)), (0, 8), (40, at + 7)]
    segments = [(bad, seq)] + [(hello[a:b], seq + a) for a, b in pieces[1:]]
    recs = _client_segments(segments)
    cols = _flow(tmp_path, recs)
    zeroed = bytearray(hello)
    zeroed[at : at + len(host)] = bytes(len(host))
    expected = bad + b"".join(zeroed[a:b] for a, b in pieces[1:])
    assert cols["payload_head"][0].tobytes() == expected.ljust(1024, b"\0")[:1024]


def test_address_texts_kept_across_chunks_match_the_socket_module(monkeypatch):
    import socket

    monkeypatch.setattr(assemble_module, "_ADDRESS_TEXTS", 300)  # started afresh at times
    rng = np.random.default_rng(3)
    text = assemble_module._AddressText()
    pool = rng.integers(0, 2**32, 500, dtype=np.uint64)
    pool[:3] = [0, 2**32 - 1, 0x0A000001]
    for _ in range(8):
        n = int(rng.integers(0, 400))
        lo = rng.choice(pool, n)
        hi = np.where(rng.random(n) < 0.1, rng.integers(1, 2**63, n, dtype=np.uint64), 0)
        ipv = np.where(hi == 0, 4, 6).astype(np.uint8)
        lo = np.where(ipv == 6, rng.integers(0, 2**63, n, dtype=np.uint64), lo).astype(np.uint64)
        expected = [
            socket.inet_ntoa(int(b).to_bytes(4, "big"))
            if v == 4
            else socket.inet_ntop(
                socket.AF_INET6, int(a).to_bytes(8, "big") + int(b).to_bytes(8, "big")
            )
            for a, b, v in zip(hi.tolist(), lo.tolist(), ipv.tolist(), strict=True)
        ]
        assert text(hi.astype(np.uint64), lo, ipv).tolist() == expected


def test_stable_order_is_the_stable_argsort():
    rng = np.random.default_rng(5)
    for high in (1, 300, 1 << 16, 70_000, 1 << 32, 1 << 40):
        for n in (0, 1, 1000):
            values = rng.integers(0, high, n, dtype=np.int64)
            expected = np.argsort(values, kind="stable").tolist()
            assert assemble_module._stable_order(values).tolist() == expected
            if high <= 1 << 32:
                bound = high if n else 0
                assert assemble_module._stable_order(values, bound).tolist() == expected
                as_u32 = values.astype(np.uint32)
                assert assemble_module._stable_order(as_u32, 1 << 32).tolist() == expected


def test_median_is_numpys():
    rng = np.random.default_rng(11)
    for n in (1, 2, 3, 4, 7, 10, 1001, 4096):
        for values in (rng.random(n) * 1e9, rng.integers(0, 5, n).astype(np.float64)):
            assert assemble_module._median(values) == np.median(values)
