"""The vectorised pcap walk (record chains followed with numpy) finds exactly what the walk
one record at a time finds: same records, same problems, same batches.

Segments and windows are made small so that captures of a few hundred kB hold hundreds of
chains, and payloads are full of bytes that look like record headers.
"""

import gzip
import random
import struct

import numpy as np
import pytest

from dmfnet.capture import read_packets, reader
from dmfnet.problems import ProblemLog
from pcapbuild import Record, ethernet, ipv4, pcap_bytes, tcp, write_bytes
from walkcheck import count_chases, read, same_as_one_by_one, shrink_chase

T0 = 1_700_000_000  # seconds; top byte 0x65


@pytest.fixture(autouse=True)
def small_chase(monkeypatch):
    shrink_chase(monkeypatch)


def fake_header(rng: random.Random, sec: int) -> bytes:
    """16 bytes that pass for a record header: near time, small sane lengths."""
    caplen = rng.randrange(1, 200)
    return struct.pack("<IIII", sec + rng.randrange(-5, 5), rng.randrange(10**6), caplen, caplen)


def payload(rng: random.Random, size: int, sec: int) -> bytes:
    """Random bytes with fake record headers, zero runs and text at random offsets."""
    out = bytearray(rng.randbytes(size))
    for _ in range(size // 40):
        at = rng.randrange(max(size - 16, 1))
        kind = rng.random()
        piece = (
            fake_header(rng, sec)
            if kind < 0.6
            else bytes(16)
            if kind < 0.8
            else b"eeeeeeeeeeeeeeee"
        )
        out[at : at + 16] = piece[: size - at]
    return bytes(out)


def records(n: int, seed: int, *, start: int = T0, step_ns: int = 7_000_000) -> list[Record]:
    rng = random.Random(seed)
    out = []
    ts = start * 10**9
    for _ in range(n):
        size = rng.choice((rng.randrange(40, 90), rng.randrange(90, 600), 1514))
        out.append(Record(ts, payload(rng, size, ts // 10**9)))
        ts += rng.randrange(step_ns)
    return out


def test_fake_headers_in_payloads(tmp_path, monkeypatch):
    recs = records(3000, seed=1)
    path = write_bytes(tmp_path / "fake.pcap", pcap_bytes(recs))
    n, problems, chased = same_as_one_by_one(path, monkeypatch)
    assert n == 3000 and problems == []
    assert chased > 2500  # the chase did the work


def test_record_contents_and_times(tmp_path, monkeypatch):
    recs = records(800, seed=2)
    path = write_bytes(tmp_path / "c.pcap", pcap_bytes(recs))
    batches, _, chased = read(path, True, monkeypatch)
    assert chased > 500
    got = [x for b in batches for x in b["bytes"]]
    assert got == [r.data for r in recs]
    ts = np.concatenate([b["ts_ns"] for b in batches])
    np.testing.assert_array_equal(ts, [r.ts_ns // 1000 * 1000 for r in recs])


@pytest.mark.parametrize("start", [0x65FFFF00, 0x0000FF00])
def test_seconds_cross_a_top_byte(tmp_path, monkeypatch, start):
    # ~7 minutes per record: the seconds' top byte changes half-way
    recs = records(1000, seed=3, start=start, step_ns=500 * 10**9)
    path = write_bytes(tmp_path / "top.pcap", pcap_bytes(recs))
    n, problems, chased = same_as_one_by_one(path, monkeypatch)
    assert n == 1000 and problems == []
    assert chased > 0


def test_clock_jumps(tmp_path, monkeypatch):
    recs = records(600, seed=4)
    jumped = [
        Record(r.ts_ns + (i // 150) * 3 * 365 * 86400 * 10**9 * (-1) ** i, r.data)
        for i, r in enumerate(recs)
    ]
    path = write_bytes(tmp_path / "jump.pcap", pcap_bytes(jumped))
    n, problems, _ = same_as_one_by_one(path, monkeypatch)
    assert n == 600 and problems == []


def corrupted(recs: list[Record], *, at: list[int], caplen: int) -> bytes:
    """A pcap image whose records at the indexes ``at`` carry ``caplen`` in their header."""
    image = bytearray(pcap_bytes(recs))
    pos = 24
    for i, r in enumerate(recs):
        if i in at:
            struct.pack_into("<I", image, pos + 8, caplen)
        pos += 16 + len(r.data)
    return bytes(image)


@pytest.mark.parametrize("caplen", [0x7FFFFFFF, 300_000, 2000])
def test_corrupt_length_in_the_middle(tmp_path, monkeypatch, caplen):
    recs = records(1500, seed=5)
    path = write_bytes(tmp_path / "bad.pcap", corrupted(recs, at=[400, 1100], caplen=caplen))
    n, problems, chased = same_as_one_by_one(path, monkeypatch)
    assert chased > 0
    assert 1400 <= n < 1500
    assert problems, "a corrupt length is reported"


def test_empty_and_inconsistent_records(tmp_path, monkeypatch):
    recs = records(1200, seed=6)
    image = bytearray(pcap_bytes(recs))
    pos = 24
    for i, r in enumerate(recs):
        if i % 97 == 5:  # captured longer than on the wire
            struct.pack_into("<I", image, pos + 12, 10)
        pos += 16 + len(r.data)
    image += pcap_bytes([Record(T0 * 10**9, b"")])[24:] * 50  # empty records
    image += pcap_bytes(records(300, seed=7))[24:]
    path = write_bytes(tmp_path / "odd.pcap", bytes(image))
    n, problems, _ = same_as_one_by_one(path, monkeypatch)
    assert n == 1550 and problems == []


@pytest.mark.parametrize("cut", [5, 16 + 20])
def test_truncated_end(tmp_path, monkeypatch, cut):
    recs = records(1000, seed=8)
    image = pcap_bytes(recs)
    last = 16 + len(recs[-1].data)
    path = write_bytes(tmp_path / "cut.pcap", image[: len(image) - last + cut])
    n, problems, _ = same_as_one_by_one(path, monkeypatch)
    assert n == (999 if cut < 16 else 1000)
    assert len(problems) == 1


@pytest.mark.parametrize("gz", [False, True])
def test_chunk_boundaries(tmp_path, monkeypatch, gz):
    recs = records(3000, seed=9)
    image = corrupted(recs, at=[1700], caplen=0x40000000)
    data = gzip.compress(image, compresslevel=1) if gz else image
    path = write_bytes(tmp_path / "chunks.pcap", data)
    n, problems, chased = same_as_one_by_one(path, monkeypatch, chunk_bytes=1 << 16)
    assert chased > 0 and problems
    assert 2900 < n < 3000


@pytest.mark.parametrize(
    "options", [{"big_endian": True}, {"nanosecond": True}, {"big_endian": True, "snaplen": 1600}]
)
def test_other_pcap_variants(tmp_path, monkeypatch, options):
    recs = records(1500, seed=10)
    path = write_bytes(tmp_path / "v.pcap", pcap_bytes(recs, **options))
    n, problems, chased = same_as_one_by_one(path, monkeypatch)
    assert n == 1500 and problems == []
    assert chased > 1000


def test_modified_pcap(tmp_path, monkeypatch):
    """Kuznetzov's 24-byte record headers (ifindex, protocol, packet type after the lengths)."""
    recs = records(1200, seed=11)
    parts = [struct.pack("<IHHiIII", 0xA1B2CD34, 2, 4, 0, 0, 65535, 1)]
    for r in recs:
        sec, ns = divmod(r.ts_ns, 10**9)
        parts.append(struct.pack("<IIIIIHBx", sec, ns // 1000, len(r.data), len(r.data), 2, 8, 0))
        parts.append(r.data)
    path = write_bytes(tmp_path / "modified.pcap", b"".join(parts))
    n, problems, chased = same_as_one_by_one(path, monkeypatch)
    assert n == 1200 and problems == []
    assert chased > 800


def test_lengths_that_defeat_the_guesses(tmp_path, monkeypatch):
    """Empty records everywhere: chains stop at once; the walk backs off, same records."""
    monkeypatch.setattr(reader, "CHASE_YIELD", 16)
    recs = records(400, seed=12)
    image = bytearray()
    for r in recs:
        image += pcap_bytes([r])[24:] + pcap_bytes([Record(r.ts_ns, b"")])[24:]
    path = write_bytes(tmp_path / "empty.pcap", pcap_bytes([])[:24] + bytes(image))
    n, problems, _ = same_as_one_by_one(path, monkeypatch)
    assert n == 800 and problems == []


def test_chase_backs_off_when_unproductive(tmp_path, monkeypatch):
    """Every record empty: each chase finds nothing, so it is tried ever more rarely."""
    monkeypatch.setattr(reader, "CHASE_YIELD", 16)
    tried = count_chases(monkeypatch, reader._PcapWalker)
    image = pcap_bytes([Record(T0 * 10**9 + i, b"") for i in range(20_000)])
    path = write_bytes(tmp_path / "all-empty.pcap", image)
    problems = ProblemLog()
    n = sum(len(b) for b in read_packets(path, problems))
    assert n == 20_000 and not problems.problems
    assert len(tried) < 20


def test_zero_original_lengths(tmp_path, monkeypatch):
    """Some writers leave the original length 0: the guesses do not rely on it."""
    recs = [Record(r.ts_ns, r.data, wirelen=0) for r in records(1500, seed=13)]
    path = write_bytes(tmp_path / "wire0.pcap", pcap_bytes(recs))
    n, problems, chased = same_as_one_by_one(path, monkeypatch)
    assert n == 1500 and problems == []
    assert chased > 1000


def test_no_plausible_headers(tmp_path, monkeypatch):
    """Fractions of a second out of range in every record: no guesses, the walk one by one."""
    monkeypatch.setattr(reader, "CHASE_YIELD", 16)
    rng = random.Random(14)
    parts = [pcap_bytes([])]
    for _ in range(2000):
        data = rng.randbytes(rng.randrange(40, 300))
        parts.append(struct.pack("<IIII", T0, 2_000_000, len(data), len(data)) + data)
    path = write_bytes(tmp_path / "frac.pcap", b"".join(parts))
    n, problems, chased = same_as_one_by_one(path, monkeypatch)
    assert n == 2000 and problems == [] and chased == 0


def test_every_chain_stops_at_its_first_step(tmp_path, monkeypatch):
    """One record fills the file and every guess in it runs past the end: all chains stop
    at once (the first at the start) and the walk one by one takes the record."""
    rng = random.Random(15)
    data = bytearray(rng.randbytes(65535))
    for at in range(0, 65535 - 16, 40):
        data[at : at + 16] = struct.pack("<IIII", T0, 5, 70_000, 70_000)
    image = pcap_bytes([Record(T0 * 10**9, bytes(data))], snaplen=65535)
    path = write_bytes(tmp_path / "one.pcap", image)
    n, problems, _ = same_as_one_by_one(path, monkeypatch)
    assert n == 1 and problems == []


# The parse reads header rows over whole slices and masks out what is not there.


def parsed_all(path):
    problems = ProblemLog()
    return [p for p in read_packets(path, problems)], problems


def test_ipv4_header_length_below_five_words_is_not_ip(tmp_path):
    frame = bytearray(ethernet(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1000, 80))))
    frame[14] = 0x44  # version 4, IHL 4 (16 bytes): invalid
    good = ethernet(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1000, 80)))
    image = pcap_bytes([Record(T0 * 10**9, bytes(frame)), Record(T0 * 10**9 + 1, good)])
    (batch,), _ = parsed_all(write_bytes(tmp_path / "ihl.pcap", image))
    np.testing.assert_array_equal(batch.ip_version, [0, 4])
    np.testing.assert_array_equal(batch.l3_offset[:1], [-1])
    np.testing.assert_array_equal(batch.src_port, [0, 1000])


def test_tcp_data_offset_not_captured(tmp_path):
    """A TCP header cut before its data offset counts 20 bytes, whatever follows it."""
    frame = ethernet(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1000, 80, options=bytes(12))))
    cut = 14 + 20 + 10  # ports, sequence number, half the acknowledgement
    # the next record's header follows the cut; its third byte (0x80) would read as 8 words
    nxt = Record(0x00800000 * 10**9, frame)
    image = pcap_bytes([Record(T0 * 10**9, frame[:cut], wirelen=len(frame)), nxt])
    (batch,), _ = parsed_all(write_bytes(tmp_path / "cut.pcap", image))
    np.testing.assert_array_equal(batch.header_len, [40, 52])
    np.testing.assert_array_equal(batch.tcp_flags[:1], [0])
