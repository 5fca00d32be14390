"""The compiled pcap record walk stops exactly where the walk one record at a time in
Python would, and reads real captures the same (see walkcheck for whole captures)."""

import random
import struct

import numpy as np
import pytest

from dmfnet.capture import fields, reader
from pcapbuild import Record, pcap_bytes, write_bytes
from walkcheck import count_chases, read, same_batches

pytestmark = pytest.mark.skipif(
    reader.pcap_chain is None, reason="the compiled record walk is not built (no C compiler)"
)


def one_by_one(data: bytes, pos: int, limit: int, hs: int, max_caplen: int, be: bool, room: int):
    """The reference: the loop of ``_PcapWalker.walk`` over whole, sane records."""
    found = []
    caplen_at = struct.Struct((">" if be else "<") + "I").unpack_from
    while pos < limit and len(found) < room:
        try:
            caplen = caplen_at(data, pos + 8)[0]
        except struct.error:
            break
        nxt = pos + hs + caplen
        if caplen > max_caplen or nxt > len(data):
            break
        found.append(pos)
        pos = nxt
    return found, pos


def chain(data: bytes, pos: int, limit: int, hs: int, max_caplen: int, be: bool, room: int):
    out = np.full(room, -1, np.int64)
    arr = np.frombuffer(data, np.uint8)
    n, pos = reader.pcap_chain(arr, pos, limit, hs, max_caplen, be, out)
    assert (out[n:] == -1).all()  # nothing written past what it reports
    return out[:n].tolist(), pos


def random_chain(rng: random.Random, be: bool, hs: int) -> bytes:
    """Records of random lengths, some lengths broken, the last perhaps cut short."""
    out = bytearray()
    for _ in range(rng.randrange(1, 60)):
        caplen = rng.choice((0, rng.randrange(1, 100), rng.randrange(100, 2000)))
        if rng.random() < 0.03:
            caplen = rng.choice((5000, 70000, 2**32 - 1))  # past the limit
        head = struct.pack((">" if be else "<") + "IIII", 1, 2, caplen, caplen)
        out += head + bytes(hs - 16) + rng.randbytes(min(caplen, 3000))
    return bytes(out[: len(out) - rng.randrange(0, 30)])


@pytest.mark.parametrize("be", [False, True])
@pytest.mark.parametrize("hs", [16, 24])
def test_stops_where_the_python_walk_stops(be, hs):
    rng = random.Random(hs + be)
    for _ in range(400):
        data = random_chain(rng, be, hs)
        pos = rng.choice((0, 0, rng.randrange(len(data) + 1)))
        limit = rng.choice((len(data), rng.randrange(len(data) + 1)))
        max_caplen = rng.choice((4096, 65535, 262144))
        room = rng.choice((1, 3, 10_000))
        args = (data, pos, limit, hs, max_caplen, be, room)
        assert chain(*args) == one_by_one(*args), args


def test_stops_at_the_limit():
    """A record that starts at ``limit`` is left for the next call, as in the walk."""
    two = (struct.pack("<IIII", 1, 2, 4, 4) + b"abcd") * 2
    assert chain(two, 0, 20, 16, 100, False, 8) == ([0], 20)
    assert chain(two, 0, 21, 16, 100, False, 8) == ([0, 20], 40)


def test_header_past_the_end_and_empty_buffer():
    record = struct.pack("<IIII", 1, 2, 4, 4) + b"abcd"
    assert chain(record, 0, 100, 16, 100, False, 8) == ([0], 20)
    assert chain(record + bytes(11), 0, 100, 16, 100, False, 8) == ([0], 20)  # 11-byte tail
    assert chain(b"", 0, 10, 16, 100, False, 8) == ([], 0)


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        reader.pcap_chain(np.zeros(64, np.uint8), 0, 64, 16, 100, False, np.zeros(3, np.uint8))
    with pytest.raises(TypeError):  # the output must be writable
        reader.pcap_chain(np.zeros(64, np.uint8), 0, 64, 16, 100, False, b"\0" * 64)


def test_the_compiled_walk_does_the_work(tmp_path, monkeypatch):
    """On a large clean capture the compiled walk finds every record and the chase runs
    never; the result is the numpy chase's."""
    rng = random.Random(7)
    t0 = 1_700_000_000 * 10**9
    recs = [Record(t0 + i * 1000, rng.randbytes(rng.randrange(40, 1500))) for i in range(4000)]
    path = write_bytes(tmp_path / "big.pcap", pcap_bytes(recs))
    calls = []
    compiled = reader.pcap_chain

    def counting(*args):
        n, pos = compiled(*args)
        calls.append(n)
        return n, pos

    monkeypatch.setattr(reader, "pcap_chain", counting)
    tried = count_chases(monkeypatch, reader._PcapWalker)
    native, native_problems, _ = read(path, True, monkeypatch, native=True)
    assert sum(calls) == 4000 and tried == []
    monkeypatch.setattr(reader, "pcap_chain", compiled)
    chased, chased_problems, n_chased = read(path, True, monkeypatch)
    assert n_chased > 3000
    same_batches(native, native_problems, chased, chased_problems)


def test_gather_rows_copies_the_bytes_at_each_position():
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, 5000, dtype=np.uint8)
    for width in (1, 2, 4, 16, 40):
        pos = rng.integers(0, len(data) - width + 1, 3000)
        out = np.empty((len(pos), width), np.uint8)
        fields.gather_rows(data, pos, width, out)
        np.testing.assert_array_equal(out, data[pos[:, None] + np.arange(width)])


def test_gather_rows_refuses_positions_outside_and_wrong_sizes():
    data = np.arange(100, dtype=np.uint8)
    out = np.zeros((2, 4), np.uint8)
    for pos in ([0, 97], [-1, 0]):  # 97 + 4 runs past the end
        with pytest.raises(ValueError):
            fields.gather_rows(data, np.array(pos, np.int64), 4, out)
        assert not out.any()  # nothing copied
    with pytest.raises(ValueError):  # room for 2 rows of 4, asked for 2 rows of 3
        fields.gather_rows(data, np.array([0, 1], np.int64), 3, out)


@pytest.mark.parametrize("name", ["u16be", "u16le", "u32be", "u32le"])
def test_field_reads_match_with_and_without_the_compiled_gather(name, monkeypatch):
    """Every reader of fixed-width fields gives numpy's values, positions near the end of
    the buffer (clamped byte by byte) included."""
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, 3000, dtype=np.uint8)
    inside = rng.integers(0, len(data) - 4, 2000)
    edge = np.array([len(data) - 3, len(data) - 1, 0, len(data) - 4])
    read = getattr(fields, name)
    compiled = [read(data, pos) for pos in (inside, edge)] + [fields.rows(data, inside, 24)]
    compiled.append(fields.rows(data, edge, 8))
    monkeypatch.setattr(fields, "gather_rows", None)
    plain = [read(data, pos) for pos in (inside, edge)] + [fields.rows(data, inside, 24)]
    plain.append(fields.rows(data, edge, 8))
    for a, b in zip(compiled, plain, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
