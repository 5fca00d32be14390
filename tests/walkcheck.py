"""Reading a capture with and without the vectorised chase, for the fast-walk tests."""

import numpy as np

from dmfnet.capture import read_packets, reader
from dmfnet.problems import ProblemLog


def shrink_chase(monkeypatch) -> None:
    """Small segments and windows: captures of a few hundred kB hold hundreds of chains."""
    monkeypatch.setattr(reader, "CHASE_SEGMENT", 512)
    monkeypatch.setattr(reader, "CHASE_WINDOW", 256)
    monkeypatch.setattr(reader, "CHASE_MIN_BYTES", 1024)
    monkeypatch.setattr(reader, "CHASE_BURST", 8)
    monkeypatch.setattr(reader, "CHASE_YIELD", 1)


def count_chases(monkeypatch, walker) -> list[int]:
    """The positions ``walker``'s chase is tried at, as the returned list fills."""
    tried: list[int] = []
    original = walker._chase

    def counting(self, data, pos, limit):
        tried.append(pos)
        return original(self, data, pos, limit)

    monkeypatch.setattr(walker, "_chase", counting)
    return tried


def read(path, chase: bool, monkeypatch, walker=reader._PcapWalker, native=False, **kw):
    """Every batch's record fields and the problems, read with or without the chase (or,
    with ``native``, the compiled pcap walk).

    Returns (batches, problems as (offset, reason), records found by ``walker``'s chase).
    """
    monkeypatch.setattr(reader._PcapWalker, "chase", chase)
    monkeypatch.setattr(reader._PcapWalker, "native", native)
    monkeypatch.setattr(reader._PcapngWalker, "chase", chase)
    chased = []
    original = walker._chase

    def counting(self, data, pos, limit):
        result = original(self, data, pos, limit)  # the records come first
        chased.append(len(result[0]))
        return result

    monkeypatch.setattr(walker, "_chase", counting)
    problems = ProblemLog()
    batches = []
    for parsed in read_packets(path, problems, **kw):
        b = parsed.batch
        batches.append(
            {
                "file_offset": b.file_offset.copy(),
                "caplen": b.caplen.copy(),
                "wirelen": b.wirelen.copy(),
                "ts_ns": b.ts_ns.copy(),
                "linktype": b.linktype.copy(),
                "bytes": [
                    bytes(b.data[o : o + c]) for o, c in zip(b.offset, b.caplen, strict=True)
                ],
                "ip_version": parsed.ip_version.copy(),
                "src_port": parsed.src_port.copy(),
            }
        )
    listed = [(p.offset, p.reason) for p in problems.problems]
    return batches, listed, sum(chased)


def same_as_one_by_one(path, monkeypatch, walker=reader._PcapWalker, **kw):
    """Read ``path`` with the chase and one record at a time (and, for pcap, with the
    compiled walk when it is built), check they agree; return (records, problems, chased)."""
    fast, fast_problems, chased = read(path, True, monkeypatch, walker, **kw)
    slow, slow_problems, none = read(path, False, monkeypatch, walker, **kw)
    assert none == 0
    same_batches(fast, fast_problems, slow, slow_problems)
    if walker is reader._PcapWalker and reader.pcap_chain is not None:
        native, native_problems, none = read(path, True, monkeypatch, walker, True, **kw)
        assert none == 0
        same_batches(native, native_problems, slow, slow_problems)
    n = sum(len(b["caplen"]) for b in fast)
    return n, fast_problems, chased


def same_batches(fast, fast_problems, slow, slow_problems) -> None:
    """Two reads of one capture (see :func:`read`) found the same records and problems."""
    assert fast_problems == slow_problems
    assert len(fast) == len(slow)
    for f, s in zip(fast, slow, strict=True):
        assert f.keys() == s.keys()
        for k in f:
            if k == "bytes":
                assert f[k] == s[k]
            else:
                np.testing.assert_array_equal(f[k], s[k], err_msg=k)
