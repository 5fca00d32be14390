"""The vectorised pcapng walk (enhanced packet block chains followed with numpy) finds
exactly what the walk one block at a time finds: same blocks, same problems, same batches.

Segments and windows are made small so that captures of a few hundred kB hold hundreds of
chains, and payloads are full of bytes that look like enhanced packet blocks.
"""

import gzip
import random
import struct

import numpy as np
import pytest

import walkcheck
from dmfnet.capture import read_packets, reader
from dmfnet.problems import ProblemLog
from pcapbuild import (
    LINKTYPE_ETHERNET,
    Interface,
    Record,
    Section,
    interface_statistics_block,
    name_resolution_block,
    pcapng_block,
    pcapng_bytes,
    write_bytes,
)
from walkcheck import shrink_chase

T0 = 1_700_000_000 * 10**9  # ns


@pytest.fixture(autouse=True)
def small_chase(monkeypatch):
    shrink_chase(monkeypatch)


def fake_block(rng: random.Random) -> bytes:
    """Bytes that pass for an EPB (or its start): type 6, sane lengths, a near time."""
    data = rng.randbytes(rng.randrange(0, 60))
    units = T0 // 1000 + rng.randrange(10**6)
    head = struct.pack("<IIIII", 0, units >> 32, units & 0xFFFFFFFF, len(data), len(data))
    block = pcapng_block(6, head + data)
    kind = rng.random()
    if kind < 0.5:
        return block  # a whole, consistent one
    if kind < 0.7:
        return block * 2  # a chain of two
    if kind < 0.85:
        return block[:8]  # just a type and a length
    return struct.pack("<II", 6, 0)


def payload(rng: random.Random, size: int) -> bytes:
    """Random bytes with fake blocks, zero runs and EPB type words at 4-aligned offsets."""
    out = bytearray(rng.randbytes(size))
    for _ in range(size // 60):
        at = 4 * rng.randrange(max(size // 4 - 1, 1))
        kind = rng.random()
        piece = fake_block(rng) if kind < 0.6 else bytes(16) if kind < 0.8 else b"\x06\0\0\0"
        out[at : at + len(piece)] = piece[: size - at]
    return bytes(out[:size])


def records(n: int, seed: int, *, interfaces: int = 1, blocks: tuple[str, ...] = ("epb",)):
    rng = random.Random(seed)
    out = []
    ts = T0
    for _ in range(n):
        size = rng.choice((rng.randrange(40, 90), rng.randrange(90, 600), 1514))
        iface = rng.randrange(interfaces)
        block = rng.choice(blocks)
        out.append(Record(ts, payload(rng, size), interface=iface, block=block))
        ts += rng.randrange(7_000_000)
    return out


def read(path, chase: bool, monkeypatch, **kw):
    return walkcheck.read(path, chase, monkeypatch, reader._PcapngWalker, **kw)


def same_as_one_by_one(path, monkeypatch, **kw):
    return walkcheck.same_as_one_by_one(path, monkeypatch, reader._PcapngWalker, **kw)


def block_starts(image: bytes) -> list[tuple[int, int]]:
    """(offset, type) of every block of a well-formed little-endian pcapng image."""
    out, pos = [], 0
    while pos < len(image):
        btype, blen = struct.unpack_from("<II", image, pos)
        out.append((pos, btype))
        pos += blen
    return out


def test_fake_blocks_in_payloads(tmp_path, monkeypatch):
    recs = records(3000, seed=1)
    path = write_bytes(tmp_path / "fake.pcapng", pcapng_bytes([Section(records=recs)]))
    n, problems, chased = same_as_one_by_one(path, monkeypatch)
    assert n == 3000 and problems == []
    assert chased > 2500  # the chase did the work


def test_record_contents_and_times(tmp_path, monkeypatch):
    recs = records(800, seed=2, interfaces=2)
    ifaces = [Interface(), Interface(tsresol=9)]
    path = write_bytes(
        tmp_path / "c.pcapng", pcapng_bytes([Section(interfaces=ifaces, records=recs)])
    )
    batches, problems, chased = read(path, True, monkeypatch)
    assert chased > 500 and problems == []
    assert [x for b in batches for x in b["bytes"]] == [r.data for r in recs]
    ts = np.concatenate([b["ts_ns"] for b in batches])
    want = [r.ts_ns if r.interface else r.ts_ns // 1000 * 1000 for r in recs]
    np.testing.assert_array_equal(ts, want)


def test_mixed_blocks_and_interfaces(tmp_path, monkeypatch):
    """SPB, PB, statistics, name resolution and custom blocks among EPBs of several
    interfaces with their own link types and time resolutions."""
    rng = random.Random(3)
    ifaces = [Interface(), Interface(linktype=101, tsresol=9), Interface(tsresol=0x80 | 20)]
    recs = records(2500, seed=3, interfaces=3)
    recs = [
        Record(r.ts_ns, r.data, interface=0, block=rng.choice(("spb", "pb")))
        if rng.random() < 0.03
        else r
        for r in recs
    ]
    extra = []
    for i in rng.sample(range(2500), 60):
        choices = (
            interface_statistics_block(rng.randrange(3)),
            name_resolution_block(),
            pcapng_block(0x00000BAD, rng.randbytes(rng.randrange(4, 80))),  # custom
            pcapng_block(10, rng.randbytes(40)),  # decryption secrets
            pcapng_block(6, struct.pack("<IIIII", 7, 0, 0, 4, 4) + b"abcd"),  # interface 7
        )
        block = rng.choice(choices)
        extra.append((i, block))
    sec = Section(interfaces=ifaces, records=recs, extra_blocks=extra)
    path = write_bytes(tmp_path / "mixed.pcapng", pcapng_bytes([sec]))
    n, problems, chased = same_as_one_by_one(path, monkeypatch)
    assert n >= 2500 and chased > 300
    assert any("undefined interface 7" in reason for _, reason in problems)


def test_sections_and_byte_orders(tmp_path, monkeypatch):
    sections = [
        Section(records=records(900, seed=4)),
        Section(
            interfaces=[Interface(tsresol=9), Interface(linktype=101)],
            records=records(900, seed=5, interfaces=2),
            big_endian=True,
        ),
        Section(records=records(900, seed=6)),
        Section(records=records(900, seed=7), big_endian=True),
    ]
    path = write_bytes(tmp_path / "sections.pcapng", pcapng_bytes(sections))
    n, problems, chased = same_as_one_by_one(path, monkeypatch)
    assert n == 3600 and problems == []
    assert chased > 2500


@pytest.mark.parametrize("how", ["length", "trailer", "odd", "short", "huge"])
def test_corrupt_lengths(tmp_path, monkeypatch, how):
    recs = records(2000, seed=8)
    image = bytearray(pcapng_bytes([Section(records=recs)]))
    epbs = [p for p, t in block_starts(bytes(image)) if t == 6]
    for p in (epbs[300], epbs[1200], epbs[1201]):
        blen = struct.unpack_from("<I", image, p + 4)[0]
        if how == "length":
            struct.pack_into("<I", image, p + 4, blen + 64)
        elif how == "trailer":
            struct.pack_into("<I", image, p + blen - 4, blen + 4)
        elif how == "odd":
            struct.pack_into("<I", image, p + 4, blen + 2)
        elif how == "short":
            struct.pack_into("<I", image, p + 4, 28)
        else:
            struct.pack_into("<I", image, p + 4, 0x7FFFFFFC)
    path = write_bytes(tmp_path / "bad.pcapng", bytes(image))
    n, problems, chased = same_as_one_by_one(path, monkeypatch)
    assert chased > 1000
    assert 1900 <= n <= 2000
    assert problems, "a corrupt length is reported"


def test_consistent_block_over_the_size_limit(tmp_path, monkeypatch):
    """An EPB longer than MAX_BLOCK with matching lengths: both walks take it as it comes."""
    monkeypatch.setattr(reader, "MAX_BLOCK", 1024)
    recs = records(1500, seed=9)
    path = write_bytes(tmp_path / "long.pcapng", pcapng_bytes([Section(records=recs)]))
    n, problems, chased = same_as_one_by_one(path, monkeypatch)
    assert n == 1500 and chased > 1000


@pytest.mark.parametrize("cut", [4, 10, 30, 100])
def test_truncated_end(tmp_path, monkeypatch, cut):
    recs = records(1000, seed=10)
    image = pcapng_bytes([Section(records=recs)])
    last = block_starts(image)[-1][0]
    path = write_bytes(tmp_path / "cut.pcapng", image[: last + cut])
    n, problems, _ = same_as_one_by_one(path, monkeypatch)
    assert n == (1000 if cut >= 28 else 999)
    assert len(problems) == 1


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("chunk", [1 << 16, 100_000])
def test_chunk_boundaries(tmp_path, monkeypatch, gz, chunk):
    recs = records(3000, seed=11, interfaces=2)
    sections = [
        Section(interfaces=[Interface(), Interface(tsresol=9)], records=recs[:2000]),
        Section(records=[Record(r.ts_ns, r.data) for r in recs[2000:]], big_endian=True),
    ]
    image = bytearray(pcapng_bytes(sections))
    epbs = [p for p, t in block_starts(bytes(image[:-1])[: len(image) // 2]) if t == 6]
    struct.pack_into("<I", image, epbs[700] + 4, 0x40000000)
    data = gzip.compress(bytes(image), compresslevel=1) if gz else bytes(image)
    path = write_bytes(tmp_path / "chunks.pcapng", data)
    n, problems, chased = same_as_one_by_one(path, monkeypatch, chunk_bytes=chunk)
    assert chased > 0 and problems
    assert 2900 < n < 3000


def test_chase_backs_off_when_unproductive(tmp_path, monkeypatch):
    """A statistics block after every packet: chains stop at once, the chase is tried
    ever more rarely, and the blocks are the same."""
    monkeypatch.setattr(reader, "CHASE_YIELD", 16)
    tried = walkcheck.count_chases(monkeypatch, reader._PcapngWalker)
    recs = [Record(T0 + i, b"x" * 40) for i in range(10_000)]
    isb = interface_statistics_block()
    sec = Section(records=recs, extra_blocks=[(i, isb) for i in range(1, 10_000)])
    path = write_bytes(tmp_path / "isb.pcapng", pcapng_bytes([sec]))
    problems = ProblemLog()
    n = sum(len(b) for b in read_packets(path, problems))
    assert n == 10_000 and not problems.problems
    assert len(tried) < 20
    tried.clear()
    n, problems, _ = same_as_one_by_one(path, monkeypatch)
    assert n == 10_000 and problems == []


def test_only_simple_packet_blocks(tmp_path, monkeypatch):
    recs = [Record(r.ts_ns, r.data, block="spb") for r in records(1500, seed=12)]
    sec = Section(interfaces=[Interface(LINKTYPE_ETHERNET, snaplen=1000)], records=recs)
    path = write_bytes(tmp_path / "spb.pcapng", pcapng_bytes([sec]))
    n, problems, chased = same_as_one_by_one(path, monkeypatch)
    assert n == 1500 and chased == 0
