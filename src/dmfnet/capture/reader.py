"""Read pcap and pcapng captures (plain or gzip) as a stream of parsed packet batches.

The format is recognised by its magic bytes, never by the file name. Plain files are
memory-mapped and walked in place; gzip files are decompressed in bounded chunks (a record
cut by a chunk boundary is carried over to the next chunk), so memory stays bounded however
large the capture is.

The walk over records follows the length fields to collect record positions. In pcap it
goes one record at a time in C (``pcap_chain`` of the small extension ``_records``, built at
install where a C compiler is found), or else follows thousands of record chains at once
with numpy (see ``_PcapWalker._chase``), as pcapng blocks are always followed; in Python it
goes one record at a time only around what needs a closer look (a corrupt or truncated
record, a chunk's end). Everything else (header fields,
timestamps, link types) is decoded with numpy over the whole chunk, then
:func:`parse_packets` parses the packets.

Bad data never raises: a truncated last record, a corrupt length, an unknown link type, a
file that is not a capture, an empty or unreadable file each become a :class:`Problem`
(file, offset, reason) in the caller's :class:`ProblemLog`, and everything readable before
and after is kept. A corrupt record length is followed by a resynchronisation: the walk
scans forward for the next plausible record (whose successor must be plausible too).
"""

from __future__ import annotations

import mmap
import os
import select
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from dmfnet.capture.fields import rows as header_rows
from dmfnet.capture.fields import u32
from dmfnet.capture.packets import PacketBatch, ParsedPackets
from dmfnet.capture.parse import SUPPORTED_LINKTYPES, parse_packets
from dmfnet.problems import ProblemLog

try:  # the compiled record walk (built at install when a C compiler is there)
    from dmfnet.capture._records import pcap_chain
except ImportError:  # pragma: no cover - without it the numpy chase walks the records
    pcap_chain = None

MAX_CAPLEN = 256 * 1024  # no real link carries a larger captured packet
MAX_BLOCK = 16 << 20  # a pcapng block larger than this is taken for corrupt
RESYNC_WINDOW = 1 << 20  # bytes scanned per step when looking for the next good record
MAX_CLOCK_JUMP_S = 30 * 86400  # a resync candidate's time must be this close to the last one
NS = 1_000_000_000
CHASE_SEGMENT = 16 << 10  # bytes per record chain followed at once by the vectorised walk
CHASE_WINDOW = 1024  # bytes searched for a record header at each segment's start
CHASE_MIN_BYTES = 1 << 20  # regions smaller than this are walked one record at a time
CHASE_BURST = 64  # records walked one by one after a chase stops before it is tried again
CHASE_YIELD = 16  # records per chase step below which the chase backs off (see walk)
CHAIN_BLOCK = 1 << 16  # record positions the compiled walk returns per call

PCAP_MAGICS = {  # magic as read little-endian -> (big endian, nanosecond, record header size)
    0xA1B2C3D4: (False, False, 16),
    0xD4C3B2A1: (True, False, 16),
    0xA1B23C4D: (False, True, 16),
    0x4D3CB2A1: (True, True, 16),
    0xA1B2CD34: (False, False, 24),  # Kuznetzov's modified pcap (extra per-record fields)
    0x34CDB2A1: (True, False, 24),
}
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER = 0x1A2B3C4D
PCAPNG_IDB, PCAPNG_PB, PCAPNG_SPB, PCAPNG_EPB = 1, 2, 3, 6
PCAPNG_PACKET_BLOCKS = (PCAPNG_PB, PCAPNG_SPB, PCAPNG_EPB)
PCAPNG_KNOWN_BLOCKS = frozenset(
    {PCAPNG_SHB, 1, 2, 3, 4, 5, 6, 7, 9, 10, 0x80000001, 0x00000BAD, 0x40000BAD}
)
GZIP_MAGIC = b"\x1f\x8b"
OTHER_COMPRESSION = {
    b"BZh": "bzip2",
    b"\xfd7zXZ": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
    b"\x04\x22\x4d\x18": "lz4",
}

Progress = Callable[[int], None]


@dataclass
class _Records:
    """Records found by one walk step: positions plus vectorised header fields."""

    offset: np.ndarray  # start of the captured bytes in the buffer
    caplen: np.ndarray
    wirelen: np.ndarray
    ts_ns: np.ndarray
    linktype: np.ndarray
    interface: np.ndarray  # global interface number (pcap: 0)
    record_pos: np.ndarray  # start of the record (header) in the buffer


def _empty_records() -> _Records:
    z = np.zeros(0, np.int64)
    return _Records(z, z, z, z, z, z, z)


def _words(data: np.ndarray, big_endian: bool) -> np.ndarray:
    """32-bit words of the given byte order at every byte offset of ``data``."""
    return np.ndarray((max(len(data) - 3, 0),), ">u4" if big_endian else "<u4", data, 0, (1,))


def _cross(
    ids: np.ndarray,
    nxt: np.ndarray,
    bound: np.ndarray,
    heads: np.ndarray,
    limit: int,
    cur: np.ndarray,
    land: np.ndarray,
) -> np.ndarray | None:
    """Chains whose next record reaches their bound (the next guessed head, or ``limit``).

    A chain that lands exactly on a guessed head links to it (``land``) and stops; one that
    jumps past it gets the following head as its new bound. ``cur``, ``land`` and ``bound``
    are updated in place. Returns which live chains go on, or None when none crossed.
    """
    cross = nxt >= bound
    if not cross.any():
        return None
    crossing, there = ids[cross], nxt[cross]
    cur[crossing] = there
    n_heads = len(heads)
    k = np.searchsorted(heads, there)
    head = heads[np.minimum(k, n_heads - 1)]
    landed = head == there
    land[crossing[landed]] = k[landed]
    bound[cross] = np.where(k < n_heads, head, limit)
    keep = ~cross
    keep[cross] = ~landed & (there < limit)
    return keep


def _follow(
    heads: np.ndarray,
    limit: int,
    max_steps: int,
    step: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None, np.ndarray | None]],
) -> tuple[np.ndarray, int, np.ndarray | None, int] | None:
    """Follow one chain per head, all a step at a time, and link those reached from head 0.

    ``step(at)`` reads the records at ``at`` and returns where each next one starts, which
    chains may go on (None: all) and a row per record to keep (or None). A chain stops when
    its step refuses it, when it lands exactly on a later head (the chains are linked there)
    or at ``limit``; chains still live after ``max_steps`` stop too. Returns the records of
    the chains linked from head 0 in file order, where the walk goes on, their rows and the
    steps taken; None when every chain stopped at its first record.
    """
    n_heads = len(heads)
    land = np.full(n_heads, -1, np.int64)  # the head each chain landed on
    early = np.zeros(n_heads, bool)  # stopped before landing or reaching the limit
    cur = heads.copy()  # where each chain stopped
    at = heads.copy()  # the live chains: where they are,
    ids = np.arange(n_heads)  # which they are,
    bound = np.append(heads[1:], limit)  # and where they next check where they are
    steps: list[np.ndarray] = []
    chains: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    for _ in range(max_steps):
        nxt, good, row = step(at)
        if good is not None and not good.all():
            bad = ~good
            early[ids[bad]] = True
            cur[ids[bad]] = at[bad]
            ids, at, nxt, bound = ids[good], at[good], nxt[good], bound[good]
            if row is not None:
                row = row[good]
            if not len(ids):
                break
        steps.append(at)
        chains.append(ids)
        if row is not None:
            rows.append(row)
        keep = _cross(ids, nxt, bound, heads, limit, cur, land)
        if keep is not None:
            ids, nxt, bound = ids[keep], nxt[keep], bound[keep]
            if not len(ids):
                break
        at = nxt
    else:
        early[ids] = True
        cur[ids] = at
    if not steps:
        return None
    found, nxt, kept_rows = _linked(steps, chains, early, land, cur, rows or None)
    return found, nxt, kept_rows, len(steps)


def _linked(
    steps: list[np.ndarray],
    chains: list[np.ndarray],
    early: np.ndarray,
    land: np.ndarray,
    cur: np.ndarray,
    rows: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, int, np.ndarray | None]:
    """Records of the chains linked from chain 0, in file order, where the walk goes on, and
    the records' ``rows`` (read at each step, as ``steps``) in the same order.

    ``steps[k]``/``chains[k]``: the positions and chain numbers of the live chains at step
    ``k``; ``land``: the head each chain landed on (-1: none); ``early``: the chain stopped
    before landing or reaching the limit; ``cur``: where each chain stopped.
    """
    early_at, land_at = early.tolist(), land.tolist()
    path = [0]
    i = 0
    while not early_at[i] and land_at[i] >= 0:
        i = land_at[i]
        path.append(i)
    in_path = np.zeros(len(early_at), bool)
    in_path[path] = True
    at = np.concatenate(steps)
    chain = np.concatenate(chains)
    if len(early_at) <= 1 << 16:
        chain = chain.astype(np.uint16)  # sorted by radix
    kept = np.flatnonzero(in_path[chain])
    order = kept[np.argsort(chain[kept], kind="stable")]  # by chain, then step
    return at[order], int(cur[i]), None if rows is None else np.concatenate(rows)[order]


@dataclass
class _Interface:
    linktype: int
    snaplen: int
    tsresol: int = 6  # if_tsresol byte
    tsoffset: int = 0  # seconds


@dataclass
class _Walker:
    """State shared by the format walkers: file name, problems, interfaces, last time."""

    name: str
    problems: ProblemLog
    interfaces: list[_Interface] = field(default_factory=list)
    reported_linktypes: set[int] = field(default_factory=set)  # global interface numbers
    last_ts_ns: int | None = None
    resyncing: bool = False
    resync_start: int = 0  # offset in the (decompressed) file where resynchronising began
    base: int = 0  # offset in the (decompressed) file of the walked buffer's first byte

    def report(self, offset: int, reason: str) -> None:
        """Report a problem at ``offset`` in the walked buffer."""
        self.problems.add(self.name, self.base + offset, reason)

    def corrupt(self, offset: int, reason: str) -> None:
        """Report a corrupt record or block at ``offset`` and start resynchronising."""
        self.report(offset, reason)
        self.resyncing, self.resync_start = True, self.base + offset

    def check_linktypes(self, recs: _Records) -> None:
        """Report each interface whose link type cannot be parsed, once, at its first packet."""
        lt = recs.linktype
        if not len(lt) or (lt.min() == lt.max() and int(lt[0]) in SUPPORTED_LINKTYPES):
            return
        bad = ~np.isin(lt, list(SUPPORTED_LINKTYPES))
        if not bad.any():
            return
        for iface in np.unique(recs.interface[bad]).tolist():
            if iface in self.reported_linktypes:
                continue
            self.reported_linktypes.add(iface)
            first = int(np.flatnonzero(bad & (recs.interface == iface))[0])
            lt = self.interfaces[iface].linktype
            self.report(
                int(recs.record_pos[first]),
                f"unsupported link type {lt} on interface {iface}: its packets are skipped",
            )

    def resynchronised(self, found: int) -> None:
        self.resyncing = False
        skipped = self.base + found - self.resync_start
        self.report(found, f"resynchronised: skipped {skipped} bytes after a corrupt record")


# ----------------------------------------------------------------------------------------
# pcap


class _PcapWalker(_Walker):
    """Classic pcap: one file header, then (header, captured bytes) records."""

    file_header_size = 24
    chase = True  # follow record chains with numpy (False: one by one; tests compare both)
    native = pcap_chain is not None  # the compiled walk one by one instead of the chase

    def __init__(self, name: str, problems: ProblemLog, header: bytes) -> None:
        super().__init__(name, problems)
        magic = struct.unpack("<I", header[:4])[0]
        self.big_endian, self.nanosecond, self.header_size = PCAP_MAGICS[magic]
        bo = ">" if self.big_endian else "<"
        snaplen, linkfield = struct.unpack(bo + "II", header[16:24])
        self.linktype = linkfield & 0xFFFF  # upper bits: FCS length flags
        self.max_caplen = MAX_CAPLEN
        if 0 < snaplen < MAX_CAPLEN // 2:
            self.max_caplen = 2 * snaplen
        self.interfaces = [_Interface(self.linktype, snaplen)]
        self._caplen_at = struct.Struct(bo + "I").unpack_from
        self.frac_limit = NS if self.nanosecond else 1_000_000

    def walk(
        self, buf: bytes | mmap.mmap, data: np.ndarray, pos: int, limit: int, final: bool
    ) -> tuple[_Records, int]:
        """Collect the records that start in ``[pos, limit)``; return them and the next pos.

        With ``final`` false the buffer is a chunk of a stream: the walk stops before a
        record that is not complete in it (the caller carries it over to the next chunk).
        Stretches of whole, sane records are found by :meth:`_chase`; the loop one record
        at a time below (the reference: ``chase = False`` runs only it) handles the rest.
        """
        end = len(data)
        hs = self.header_size
        max_caplen = self.max_caplen
        caplen_at = self._caplen_at
        chased: list[np.ndarray] = []  # records found by the chain chase, in file order
        headers: list[np.ndarray | None] = []  # their 16-byte headers (None: not read yet)
        found: list[int] = []  # records found one by one since the last chase
        append = found.append
        truncated_caplen = -1
        burst = CHASE_BURST  # records walked one by one before the chase is tried again
        while pos < limit:
            if self.resyncing:
                nxt, confirmed = self._resync(data, pos, final)
                pos = nxt
                if not confirmed:
                    break
                self.resynchronised(pos)
                continue
            got = None
            if self.native:  # compiled, one by one: needs no chase
                got, pos = self._chain(data, pos, limit)
                got_headers = None
            elif self.chase and limit - pos >= CHASE_MIN_BYTES:
                got, got_headers, pos, steps = self._chase(data, pos, limit)
            if got is not None and len(got):
                if found:
                    chased.append(np.array(found, np.int64))
                    headers.append(None)
                    found.clear()
                chased.append(got)
                headers.append(got_headers)
            if got is not None and not self.native:
                # a chase that found few records per step (few true heads: odd lengths,
                # a corrupt stretch) costs more than the walk one by one: back off
                productive = len(got) >= max(CHASE_YIELD * steps, CHASE_BURST)
                burst = CHASE_BURST if productive else min(8 * burst, 1 << 20)
                if pos >= limit:
                    break
            stop = len(found) + burst if self.chase and not self.native else -1
            try:  # one by one: whole, sane records
                while pos < limit and len(found) != stop:
                    caplen = caplen_at(buf, pos + 8)[0]
                    nxt = pos + hs + caplen
                    if caplen > max_caplen or nxt > end:
                        break
                    append(pos)
                    pos = nxt
            except struct.error:  # the record header runs past the buffer's end
                pass
            if pos >= limit:
                break
            if pos + hs > end:
                if final:
                    self.report(pos, f"truncated record header ({end - pos} of {hs} bytes)")
                    pos = end
                break
            caplen = caplen_at(buf, pos + 8)[0]
            if caplen > max_caplen and not self._believable(data, pos, caplen, final):
                what = "twice the snap length" if max_caplen < MAX_CAPLEN else "the maximum"
                self.corrupt(
                    pos, f"corrupt record: captured length {caplen} exceeds {what} {max_caplen}"
                )
                pos += 1
                continue
            nxt = pos + hs + caplen
            if nxt > end:
                if final:
                    truncated_caplen = end - pos - hs
                    self.report(
                        pos,
                        f"truncated last record: {truncated_caplen} of {caplen} captured bytes "
                        "present (kept)",
                    )
                    append(pos)
                    pos = end
                break
            append(pos)
            pos = nxt
        if found:
            chased.append(np.array(found, np.int64))
            headers.append(None)
        if not chased:
            return _empty_records(), pos
        rows = [
            header_rows(data, q, 16) if h is None else h
            for q, h in zip(chased, headers, strict=True)
        ]
        records = np.concatenate(chased) if len(chased) > 1 else chased[0]
        rows = np.concatenate(rows) if len(rows) > 1 else rows[0]
        return self._decode(records, rows, truncated_caplen), pos

    def _chain(self, data: np.ndarray, pos: int, limit: int) -> tuple[np.ndarray, int]:
        """Whole, sane records from ``pos`` on, walked one by one by the compiled loop: it
        stops where the loop below would look closer (a length past the limits or the
        buffer's end), or at ``limit``."""
        blocks = []
        while pos < limit:
            out = np.empty(min(CHAIN_BLOCK, (limit - pos) // self.header_size + 1), np.int64)
            n, pos = pcap_chain(
                data, pos, limit, self.header_size, self.max_caplen, self.big_endian, out
            )
            blocks.append(out[:n])
            if n < len(out):
                break
        if len(blocks) == 1:
            return blocks[0], pos
        return np.concatenate(blocks) if blocks else np.zeros(0, np.int64), pos

    def _believable(self, data: np.ndarray, pos: int, caplen: int, final: bool) -> bool:
        """A record longer than twice the snap length, taken as real if what follows is.

        Some writers put a wrong snap length in the file header (libpcap reads such
        files too); a record is kept when it ends at the end of the capture or the
        next record header is plausible.
        """
        if caplen > MAX_CAPLEN:
            return False
        nxt = pos + self.header_size + caplen
        end = len(data)
        if nxt == end or (nxt > end and final):
            return bool(self._plausible(data, np.array([pos], np.int64))[0])
        if nxt + self.header_size > end:
            return not final  # decided when the next chunk is in (the walk waits)
        return bool(self._plausible(data, np.array([nxt], np.int64))[0])

    def _plausible(self, data: np.ndarray, q: np.ndarray) -> np.ndarray:
        be = self.big_endian
        caplen = u32(data, q + 8, be)
        wirelen = u32(data, q + 12, be)
        ok = (caplen > 0) & (caplen <= MAX_CAPLEN) & (caplen <= wirelen)
        ok &= (wirelen <= MAX_CAPLEN) & (u32(data, q + 4, be) < self.frac_limit)
        if self.last_ts_ns is not None:
            ok &= np.abs(u32(data, q, be) - self.last_ts_ns // NS) <= MAX_CLOCK_JUMP_S
        return ok

    def _resync(self, data: np.ndarray, pos: int, final: bool) -> tuple[int, bool]:
        """First position from ``pos`` holding a plausible record followed by another.

        Returns ``(position, True)`` when found (or the end of a final buffer), and
        ``(position, False)`` when the rest of the buffer cannot tell: wait for more data.
        """
        end = len(data)
        hs = self.header_size
        while True:
            stop = min(end - hs + 1, pos + RESYNC_WINDOW)
            if stop <= pos:
                if final:
                    self.report(pos, "no further valid record after a corrupt record")
                    return end, False
                return pos, False
            cand = np.arange(pos, stop, dtype=np.int64)
            cand = cand[self._plausible(data, cand)]
            if len(cand):
                nxt = cand + hs + u32(data, cand + 8, self.big_endian)
                inside = nxt + hs <= end
                ok = ~inside | (nxt == end)
                ok[inside] |= self._plausible(data, nxt[inside])
                first = np.flatnonzero(ok)
                if len(first):
                    q = int(cand[first[0]])
                    if inside[first[0]] or final:
                        return q, True
                    return q, False  # its successor is not in this chunk yet
            pos = stop

    def _chase(
        self, data: np.ndarray, pos: int, limit: int
    ) -> tuple[np.ndarray, np.ndarray | None, int, int]:
        """Records from ``pos`` on, found by following many record chains at once.

        The region ``[pos, limit)`` is cut into segments of :data:`CHASE_SEGMENT` bytes; in
        each segment after the first, the first plausible record header is a guess (a head)
        of where a record starts. One chain per head follows the captured lengths, all
        chains a step at a time with numpy, until it lands exactly on a later head (or
        reaches ``limit``). A chain that starts at a true record is the walk one by one, so
        a head it lands on is a true record and that head's chain is true too; the records
        returned are those of the chains linked that way from ``pos``. The chase stops at a
        record the walk must look at closely (a length past the limits or the buffer, an
        empty record) or where a chain runs too long; it returns the records, their
        headers' first 16 bytes (``(n, 16)``, read by the steps: decoded without a second
        gather), the position the walk goes on from and the steps taken. A wrong guess
        costs steps, never a wrong record.
        """
        end = len(data)
        hs = self.header_size
        last_head = end - hs  # chains stop before a header that does not fit in the buffer
        stop = min(limit, last_head)
        if pos >= stop:
            return np.zeros(0, np.int64), None, pos, 0
        starts = np.arange(pos + CHASE_SEGMENT, stop, CHASE_SEGMENT, dtype=np.int64)
        heads = np.concatenate((np.array([pos], np.int64), self._guesses(data, pos, starts, stop)))
        n_heads = len(heads)
        if n_heads * 8 < len(starts):  # few plausible headers: the chains would crawl
            return np.zeros(0, np.int64), None, pos, 1
        # each step reads the whole 16-byte record headers (one cache miss, as for the
        # length alone): the records' fields are decoded from them, not read again
        items = np.ndarray((end - 15,), "V16", data, 0, (1,))
        word = ">u4" if self.big_endian else "<u4"
        one = np.uint32(1)
        below = np.uint32(self.max_caplen)

        def step(at: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
            header = items[at]
            caplen = header.view(word)[2::4]
            nxt = at + caplen
            nxt += hs
            # an empty record stops a chain too (runs of zero bytes would make long false
            # chains); like every stop, the walk one by one then takes over
            good = None
            if caplen.min() == 0 or caplen.max() > below or nxt.max() > last_head:
                good = (caplen - one < below) & (nxt <= last_head)  # the next header fits
            return nxt, good, header

        chased = _follow(heads, limit, CHASE_SEGMENT // 16, step)
        if chased is None:  # every chain stopped at once, the first at ``pos``
            return np.zeros(0, np.int64), None, pos, 1
        found, nxt, rows, steps = chased
        return found, rows.view(np.uint8).reshape(-1, 16), nxt, steps

    def _guesses(self, data: np.ndarray, pos: int, starts: np.ndarray, stop: int) -> np.ndarray:
        """First plausible record header in :data:`CHASE_WINDOW` bytes from each start.

        Headers are looked for where the top byte of the seconds equals that of the record
        at ``pos`` (it changes every 194 days), then their lengths and fraction of a second
        are checked; a start with none in its window gets no guess (the chain before it
        follows its segment too). A wrong guess costs time, never a wrong record.
        """
        if not len(starts):
            return starts
        be = self.big_endian
        top = int(data[pos if be else pos + 3])
        width = min(CHASE_WINDOW, CHASE_SEGMENT)
        n = len(starts)
        first = int(starts[0]) + (0 if be else 3)
        room = len(data) - first - (n - 1) * CHASE_SEGMENT
        if room < width:  # the last window is cut by the buffer's end
            n -= 1
            if not n:
                return starts[:0]
        tops = np.lib.stride_tricks.as_strided(
            data[first:], shape=(n, width), strides=(CHASE_SEGMENT, 1), writeable=False
        )
        hit = np.flatnonzero(tops == top)
        segment = hit // width
        cand = starts[segment] + hit % width
        inside = cand < stop
        segment, cand = segment[inside], cand[inside]
        words = _words(data, self.big_endian)
        frac, caplen, wirelen = words[cand + 4], words[cand + 8], words[cand + 12]
        ok = (caplen > 0) & (caplen <= self.max_caplen)  # wirelen 0 happens: not compared
        ok &= (wirelen <= MAX_CAPLEN) & (frac < self.frac_limit)
        segment, cand = segment[ok], cand[ok]
        first_of_segment = np.ones(len(segment), bool)
        first_of_segment[1:] = segment[1:] != segment[:-1]
        return cand[first_of_segment]

    def _decode(self, pos: np.ndarray, rows: np.ndarray, truncated_caplen: int) -> _Records:
        """The fields of the records at ``pos`` from their headers' first 16 bytes (``rows``)."""
        words = rows.view(">u4" if self.big_endian else "<u4")  # (n, 4)
        sec, frac, caplen, wirelen = (words[:, i].astype(np.int64) for i in range(4))
        if truncated_caplen >= 0:
            caplen[-1] = truncated_caplen
        ts_ns = sec * NS + (frac if self.nanosecond else frac * 1000)
        self.last_ts_ns = int(ts_ns[-1])
        n = len(pos)
        return _Records(
            offset=pos + self.header_size,
            caplen=caplen,
            wirelen=wirelen,
            ts_ns=ts_ns,
            linktype=np.full(n, self.linktype, np.int64),
            interface=np.zeros(n, np.int64),
            record_pos=pos,
        )


# ----------------------------------------------------------------------------------------
# pcapng


class _PcapngWalker(_Walker):
    """pcapng: sections (SHB) of interfaces (IDB) and packet blocks (EPB, SPB, obsolete PB).

    Interfaces are numbered globally across sections; other blocks are skipped.
    """

    file_header_size = 0
    chase = True  # follow EPB chains with numpy (False: one by one; tests compare both)

    def __init__(self, name: str, problems: ProblemLog) -> None:
        super().__init__(name, problems)
        self.big_endian = False
        self.section_base = 0  # global number of the current section's interface 0
        self.bad_time_reported = False
        self._set_order(False)

    def _set_order(self, big_endian: bool) -> None:
        self.big_endian = big_endian
        self._u32 = struct.Struct(">I" if big_endian else "<I").unpack_from
        self._u32x2 = struct.Struct(">II" if big_endian else "<II").unpack_from

    def walk(
        self, buf: bytes | mmap.mmap, data: np.ndarray, pos: int, limit: int, final: bool
    ) -> tuple[_Records, int]:
        """Collect the packet blocks that start in ``[pos, limit)`` (see the pcap walk).

        A walk step ends at a section header so one step's records share a byte order.
        A non-packet block that runs past a non-final chunk is skipped: the returned
        position is then beyond the chunk's end.
        """
        end = len(data)
        chased: list[np.ndarray] = []  # blocks found by the chain chase, in file order
        found: list[int] = []  # blocks found one by one since the last chase
        append = found.append
        truncated = False
        burst = CHASE_BURST  # blocks walked one by one before the chase is tried again
        walked = burst  # blocks walked one by one since the chase was last tried
        while pos < limit:
            if self.resyncing:
                nxt, confirmed = self._resync(buf, data, pos, final)
                pos = nxt
                if not confirmed:
                    break
                self.resynchronised(pos)
                continue
            chasing = self.chase and limit - pos >= CHASE_MIN_BYTES
            if chasing and walked >= burst and self._whole_epb(data, pos):
                got, pos, steps = self._chase(data, pos, limit)
                if len(got):
                    if found:
                        chased.append(np.array(found, np.int64))
                        found.clear()
                    chased.append(got)
                if steps:  # few blocks per step (other blocks, a corrupt stretch): back off
                    productive = len(got) >= max(CHASE_YIELD * steps, CHASE_BURST)
                    burst = CHASE_BURST if productive else min(8 * burst, 1 << 20)
                walked = 0
                if pos >= limit:
                    break
                chasing = limit - pos >= CHASE_MIN_BYTES
            # one by one until the chase is due (none when it is due but no EPB is at pos)
            remaining = max(burst - walked, 0) if chasing else -1
            quota = len(found) + remaining if chasing else -1
            start = len(found)
            try:  # whole, consistent enhanced packet blocks (what the chase follows)
                head, tail = self._u32x2, self._u32
                while pos < limit and len(found) != quota:
                    btype, blen = head(buf, pos)
                    nxt = pos + blen
                    if btype != PCAPNG_EPB or blen & 3 or nxt > end or blen < 32:
                        break
                    if tail(buf, nxt - 4)[0] != blen:
                        break
                    append(pos)
                    pos = nxt
            except struct.error:  # the block header runs past the buffer's end
                pass
            taken = len(found) - start
            walked += taken + 1
            if chasing and taken == remaining > 0:
                continue  # the chase is due (the block at pos is looked at after it)
            if pos >= limit:
                break
            if pos + 12 > end:
                if final:
                    self.report(pos, f"truncated block header ({end - pos} of 12 bytes)")
                    pos = end
                break
            btype = self._u32(buf, pos)[0]
            if btype == PCAPNG_SHB:
                if found or chased:
                    break  # the records so far belong to the previous section
                order = struct.unpack_from("<I", buf, pos + 8)[0]
                if order not in (PCAPNG_BYTE_ORDER, 0x4D3C2B1A):
                    self.corrupt(pos, "section header with an invalid byte-order magic")
                    pos += 4
                    continue
                self._set_order(order != PCAPNG_BYTE_ORDER)
            blen = self._u32(buf, pos + 4)[0]
            if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                self.corrupt(pos, f"corrupt block: block length {blen} (type {btype:#x})")
                pos += 4
                continue
            if pos + blen > end:
                if not final:
                    if btype not in (PCAPNG_SHB, PCAPNG_IDB, *PCAPNG_PACKET_BLOCKS):
                        pos += blen  # skip it without buffering it
                    break
                if btype in PCAPNG_PACKET_BLOCKS and end - pos >= 28:
                    self.report(
                        pos, f"truncated last block: {end - pos} of {blen} bytes present (kept)"
                    )
                    append(pos)
                    truncated = True
                else:
                    self.report(pos, f"truncated last block: {end - pos} of {blen} bytes")
                pos = end
                break
            if self._u32(buf, pos + blen - 4)[0] != blen:
                self.corrupt(pos, f"corrupt block: trailing length differs from {blen}")
                pos += 4
                continue
            if btype in PCAPNG_PACKET_BLOCKS:
                append(pos)
            elif btype == PCAPNG_SHB:
                self.section_base = len(self.interfaces)
            elif btype == PCAPNG_IDB:
                self._interface(buf, pos, blen)
            pos += blen
        if found:
            chased.append(np.array(found, np.int64))
        blocks = np.concatenate(chased) if len(chased) > 1 else chased[0] if chased else None
        return self._decode(data, blocks, truncated), pos

    def _chase(self, data: np.ndarray, pos: int, limit: int) -> tuple[np.ndarray, int, int]:
        """Enhanced packet blocks from ``pos`` on, found by following many block chains at once.

        As in :meth:`_PcapWalker._chase`: one chain per head (``pos`` and the first
        plausible EPB in each later segment) follows the block lengths, all chains a step at
        a time, and the blocks returned are those of the chains linked from ``pos`` by
        landing exactly on a head. A chain stops where the walk one by one would stop taking
        blocks as they come: a block that is not an EPB, a length below 32 or not a multiple
        of 4, a block past the buffer, a trailing length that differs. Returns the blocks,
        the position the walk goes on from and the steps taken.
        """
        end = len(data)
        stop = min(limit, end - 8)  # chains stop before a block header that may not fit
        if pos >= stop:
            return np.zeros(0, np.int64), pos, 0
        starts = np.arange(pos + CHASE_SEGMENT, stop, CHASE_SEGMENT, dtype=np.int64)
        heads = np.concatenate((np.array([pos], np.int64), self._guesses(data, starts, stop)))
        n_heads = len(heads)
        if n_heads * 8 < len(starts):  # few plausible blocks: the chains would crawl
            return np.zeros(0, np.int64), pos, 1
        be = self.big_endian
        words = _words(data, be)
        # block type and length read as one 64-bit word: the type and the length's low two
        # bits are compared at once
        pairs = np.ndarray((end - 7,), ">u8" if be else "<u8", data, 0, (1,))
        if be:
            low, want, length_shift = np.uint64(0xFFFFFFFF00000003), np.uint64(6 << 32), 0
        else:
            low, want, length_shift = np.uint64(0x3FFFFFFFF), np.uint64(PCAPNG_EPB), 32
        ones = np.uint64(0xFFFFFFFF)

        def step(at: np.ndarray) -> tuple[np.ndarray, np.ndarray, None]:
            pair = pairs[at]
            blen = ((pair >> np.uint64(length_shift)) & ones).view(np.int64)
            nxt = at + blen
            good = (pair & low) == want
            good &= blen >= 32
            good &= nxt <= end
            good &= words[np.minimum(nxt, end) - 4] == blen
            return nxt, good, None

        chased = _follow(heads, stop, CHASE_SEGMENT // 32, step)
        if chased is None:  # every chain stopped at once, the first at ``pos``
            return np.zeros(0, np.int64), pos, 1
        found, nxt, _, steps = chased
        return found, nxt, steps

    def _whole_epb(self, data: np.ndarray, pos: int) -> bool:
        """Whether the walk one by one takes the block at ``pos`` as it comes (an EPB)."""
        btype, blen = self._u32x2(data, pos)
        nxt = pos + blen
        if btype != PCAPNG_EPB or blen & 3 or nxt > len(data) or blen < 32:
            return False
        return self._u32(data, nxt - 4)[0] == blen

    def _guesses(self, data: np.ndarray, starts: np.ndarray, stop: int) -> np.ndarray:
        """First plausible EPB in :data:`CHASE_WINDOW` bytes from each start.

        Looked for 4 bytes apart (every block of a chain lies a multiple of 4 from its
        start): the EPB type, a length of at least 32 and a multiple of 4, the same length
        at the block's end. A wrong guess costs time, never a wrong block.
        """
        if not len(starts):
            return starts
        end = len(data)
        words = _words(data, self.big_endian)
        width = min(CHASE_WINDOW, CHASE_SEGMENT) // 4
        n = len(starts)
        if int(starts[-1]) + 4 * width > len(words):  # the last window is cut by the end
            n -= 1
            if not n:
                return starts[:0]
        grid = np.lib.stride_tricks.as_strided(
            words[int(starts[0]) :], shape=(n, width), strides=(CHASE_SEGMENT, 4), writeable=False
        )
        hit = np.flatnonzero(grid == PCAPNG_EPB)
        segment = hit // width
        cand = starts[segment] + 4 * (hit % width)
        inside = cand < stop
        segment, cand = segment[inside], cand[inside]
        blen = words[cand + 4].astype(np.int64)
        ok = (blen >= 32) & (blen % 4 == 0) & (cand + blen <= end)
        segment, cand, blen = segment[ok], cand[ok], blen[ok]
        ok = words[cand + blen - 4] == blen
        segment, cand = segment[ok], cand[ok]
        first_of_segment = np.ones(len(segment), bool)
        first_of_segment[1:] = segment[1:] != segment[:-1]
        return cand[first_of_segment]

    def _interface(self, buf: bytes | mmap.mmap, pos: int, blen: int) -> None:
        bo = ">" if self.big_endian else "<"
        linktype, _, snaplen = struct.unpack_from(bo + "HHI", buf, pos + 8)
        iface = _Interface(linktype, snaplen)
        opt, stop = pos + 16, pos + blen - 4
        while opt + 4 <= stop:
            code, length = struct.unpack_from(bo + "HH", buf, opt)
            if code == 0 or opt + 4 + length > stop:
                break
            if code == 9 and length >= 1:
                iface.tsresol = buf[opt + 4]
            elif code == 14 and length >= 8:
                offset = struct.unpack_from(bo + "q", buf, opt + 4)[0]
                iface.tsoffset = offset if abs(offset) < 1 << 32 else 0
            opt += 4 + length + (-length % 4)
        self.interfaces.append(iface)

    def _resync(
        self, buf: bytes | mmap.mmap, data: np.ndarray, pos: int, final: bool
    ) -> tuple[int, bool]:
        """Next 4-aligned position holding a consistent block followed by a known block."""
        end = len(data)
        be = self.big_endian
        while True:
            count = min((end - 12 - pos) // 4 + 1, RESYNC_WINDOW // 4)
            if count <= 0:
                if final:
                    self.report(pos, "no further valid block after a corrupt block")
                    return end, False
                return pos, False
            cand = pos + 4 * np.arange(count, dtype=np.int64)
            btype = u32(data, cand, be)
            blen = u32(data, cand + 4, be)
            ok = np.isin(btype, list(PCAPNG_KNOWN_BLOCKS)) & (blen >= 12) & (blen % 4 == 0)
            ok &= blen <= MAX_BLOCK
            for q, length in zip(cand[ok].tolist(), blen[ok].tolist(), strict=True):
                nxt = q + length
                if nxt > end:
                    if final:
                        continue
                    return q, False
                if self._u32(buf, nxt - 4)[0] != length:
                    continue
                if nxt + 8 <= end:
                    t = self._u32(buf, nxt)[0]
                    if t not in PCAPNG_KNOWN_BLOCKS:
                        continue
                elif nxt != end and not final:
                    return q, False
                return q, True
            pos += 4 * count

    def _decode(self, data: np.ndarray, found: np.ndarray | None, truncated: bool) -> _Records:
        if found is None:
            return _empty_records()
        be = self.big_endian
        pos = found
        # The 28 bytes from each block's start (an SPB's are partly packet bytes, not used)
        # in one gather of rows, read as seven 32-bit words.
        rows = header_rows(data, pos, 28)
        words = rows.view(">u4" if be else "<u4")  # (n, 7)
        btype = words[:, 0]
        if btype.min() == btype.max() == PCAPNG_EPB:  # the common case: only EPBs
            simple = None
            local = words[:, 2].astype(np.int64)
        else:
            simple = btype == PCAPNG_SPB
            pb_local = rows[:, 8:10].copy().view(">u2" if be else "<u2")[:, 0]
            local = np.where(btype == PCAPNG_PB, pb_local, words[:, 2]).astype(np.int64)
            local[simple] = 0
        n_local = len(self.interfaces) - self.section_base
        known = local < n_local
        if not known.all():
            for i in np.flatnonzero(~known)[:3].tolist():
                self.report(int(pos[i]), f"packet of undefined interface {int(local[i])} skipped")
            if truncated and not known[-1]:
                truncated = False
            pos, words, local = pos[known], words[known], local[known]
            if simple is not None:
                simple = simple[known]
            if not len(pos):
                return _empty_records()
        n = len(pos)
        iface = local + self.section_base if self.section_base else local
        blen = words[:, 1].astype(np.int64)
        units = (words[:, 3].astype(np.int64) << 32) | words[:, 4]
        caplen = words[:, 5].astype(np.int64)
        wirelen = words[:, 6].astype(np.int64)
        start = pos + 28
        room = blen - 32
        if simple is not None and simple.any():
            wirelen[simple] = words[simple, 2]
            start[simple] = pos[simple] + 12
            room[simple] = blen[simple] - 16
            caplen[simple] = wirelen[simple]
        else:
            simple = None
        if truncated:
            room[-1] = len(data) - start[-1]
        if simple is not None:  # an SPB holds min(original length, snap length) bytes
            snaplen = np.array([i.snaplen for i in self.interfaces], np.int64)[iface]
            cut = simple & (snaplen > 0)
            caplen[cut] = np.minimum(caplen[cut], snaplen[cut])
        over = caplen > room
        if over.any():
            for i in np.flatnonzero(over)[:3].tolist():
                if truncated and i == n - 1:
                    continue
                self.report(
                    int(pos[i]),
                    f"corrupt block: captured length {int(caplen[i])} exceeds the block "
                    f"({int(room[i])} bytes; cut)",
                )
            caplen = np.minimum(caplen, np.maximum(room, 0))
        ts_ns = self._timestamps(units, iface, pos)
        if simple is not None:  # no timestamp: the previous packet's
            last = np.maximum.accumulate(np.where(simple, -1, np.arange(n)))
            previous = self.last_ts_ns if self.last_ts_ns is not None else 0
            ts_ns = np.where(last >= 0, ts_ns[np.maximum(last, 0)], previous)
        self.last_ts_ns = int(ts_ns[-1])
        if iface.min() == iface.max():
            linktype = np.full(n, self.interfaces[int(iface[0])].linktype, np.int64)
        else:
            linktype = np.array([i.linktype for i in self.interfaces], np.int64)[iface]
        return _Records(
            offset=start,
            caplen=caplen,
            wirelen=wirelen,
            ts_ns=ts_ns,
            linktype=linktype,
            interface=iface,
            record_pos=pos,
        )

    def _timestamps(self, units: np.ndarray, iface: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Epoch nanoseconds from each interface's timestamp units and offset.

        A time past what int64 nanoseconds hold (the year 2262) comes from a broken
        writer: it is reported once and set to 0.
        """
        one = int(iface[0]) if iface.min() == iface.max() else None
        ts_ns = np.zeros(len(units), np.int64) if one is None else None
        for i in np.unique(iface).tolist() if one is None else [one]:
            sel = iface == i if one is None else slice(None)
            u = units[sel]
            resol = self.interfaces[i].tsresol
            if resol & 0x80:  # 2^-k seconds
                k = min(resol & 0x7F, 62)
                seconds = u / 2.0**k
                with np.errstate(over="ignore"):
                    ns = (u >> k) * NS + (((u & ((1 << k) - 1)) * NS) >> k if k <= 32 else 0)
            else:  # 10^-r seconds
                r = min(resol, 30)
                seconds = u / 10.0**r
                with np.errstate(over="ignore"):
                    ns = u * 10 ** (9 - r) if r <= 9 else u // 10 ** min(r - 9, 18)
            bogus = (u < 0) | (seconds >= 9.2e9)
            if bogus.any():
                ns[bogus] = 0
                if not self.bad_time_reported:
                    self.bad_time_reported = True
                    first = int(pos[sel][np.flatnonzero(bogus)[0]])
                    self.report(first, f"timestamp out of range on interface {i} (set to 0)")
            if self.interfaces[i].tsoffset:
                ns += self.interfaces[i].tsoffset * NS
            if one is not None:
                return ns
            ts_ns[sel] = ns
        return ts_ns


# ----------------------------------------------------------------------------------------
# Opening files


def _format_problem(head: bytes) -> str:
    """Why a file that starts with ``head`` is not a readable capture."""
    for magic, name in OTHER_COMPRESSION.items():
        if head.startswith(magic):
            return f"compressed with {name}, which is not supported (decompress it first)"
    return f"not a pcap or pcapng capture (starts with {head[:4].hex(' ')})"


def _make_walker(
    name: str, problems: ProblemLog, head: bytes, where: str = ""
) -> _PcapWalker | _PcapngWalker | None:
    """The walker for a capture that starts with ``head``, or None (problem reported)."""
    if len(head) < 4:
        problems.add(name, 0, f"too short to be a capture ({len(head)} bytes){where}")
        return None
    magic = struct.unpack("<I", head[:4])[0]
    if magic in PCAP_MAGICS:
        if len(head) < 24:
            problems.add(name, 0, f"truncated pcap file header ({len(head)} of 24 bytes){where}")
            return None
        return _PcapWalker(name, problems, head)
    if magic == PCAPNG_SHB:
        if len(head) < 12:
            problems.add(name, 0, f"truncated pcapng section header ({len(head)} bytes){where}")
            return None
        if struct.unpack("<I", head[8:12])[0] not in (PCAPNG_BYTE_ORDER, 0x4D3C2B1A):
            problems.add(name, 0, f"pcapng section header without a valid byte-order magic{where}")
            return None
        return _PcapngWalker(name, problems)
    problems.add(name, 0, _format_problem(head) + where)
    return None


class _Batcher:
    """Turns walk results into parsed batches numbered across the whole capture."""

    def __init__(self, walker: _PcapWalker | _PcapngWalker) -> None:
        self.walker = walker
        self.next_index = 0

    def batch(self, data: np.ndarray, recs: _Records, base: int) -> ParsedPackets:
        self.walker.check_linktypes(recs)
        batch = PacketBatch(
            data=data,
            offset=recs.offset,
            caplen=recs.caplen.astype(np.int32),
            wirelen=np.minimum(recs.wirelen, 2**31 - 1).astype(np.int32),
            ts=recs.ts_ns / 1e9,
            linktype=recs.linktype.astype(np.int32),
            file_offset=recs.record_pos + base,
            first_index=self.next_index,
            ts_ns=recs.ts_ns,
        )
        self.next_index += len(recs.offset)
        return parse_packets(batch)


def read_packets(
    path: str | os.PathLike,
    problems: ProblemLog,
    *,
    chunk_bytes: int = 64 << 20,
    progress: Progress | None = None,
    read_ahead: bool = True,
) -> Iterator[ParsedPackets]:
    """Parsed packets of a pcap/pcapng capture (plain or gzip), one batch per chunk.

    ``chunk_bytes`` bounds the capture bytes behind one batch (and, for gzip input, the
    decompressed bytes held). ``progress(n)`` is called as the file is consumed, with the
    number of bytes of the file on disk consumed since the previous call; the calls add up
    to the file's size. Problems go to ``problems``; this never raises for bad data.
    ``read_ahead`` says the consumer may still read a batch when it asks for the next one
    (a reader thread runs ahead of it); when off, a batch's pages of a mapped file are
    let go as soon as the next is asked for.
    """
    name = str(path)
    chunk_bytes = max(int(chunk_bytes), 1 << 16)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below, the generator may stop early
    except OSError as exc:
        problems.add(name, -1, f"cannot open: {exc.strerror or exc}")
        return
    with fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(24)
        except OSError as exc:
            problems.add(name, -1, f"cannot read: {exc.strerror or exc}")
            return
        if size == 0 or not head:
            problems.add(name, 0, "empty file")
            return
        consumed = 0

        def relay(n: int) -> None:
            nonlocal consumed
            consumed += n
            if progress:
                progress(n)

        if head.startswith(GZIP_MAGIC):
            fh.seek(0)
            yield from _read_gzip(fh, name, problems, chunk_bytes, relay)
        else:
            yield from _read_mapped(fh, name, size, head, problems, chunk_bytes, relay, read_ahead)
        if progress and consumed < size:  # the rest was skipped (not a capture, errors)
            progress(size - consumed)


def _read_mapped(
    fh,
    name: str,
    size: int,
    head: bytes,
    problems: ProblemLog,
    chunk: int,
    progress: Progress,
    read_ahead: bool,
) -> Iterator[ParsedPackets]:
    walker = _make_walker(name, problems, head)
    if walker is None:
        return
    try:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        problems.add(name, -1, f"cannot map the file: {exc}")
        return
    data = np.frombuffer(mm, np.uint8)
    batcher = _Batcher(walker)
    pos = walker.file_header_size
    done = 0
    released = previous = 0
    step = min(chunk, max(chunk >> 4, 1 << 20))  # small first chunks: the next stage starts soon
    while pos < size:
        recs, new = walker.walk(mm, data, pos, min(size, pos + step), True)
        step = min(chunk, 2 * step)
        progress(new - done)
        done = new
        pos = max(new, pos + 1) if new <= pos else new
        start = int(recs.offset[0]) if len(recs.offset) else pos
        if len(recs.offset):
            yield batcher.batch(data, recs, 0)
        # Pages before the previous batch when a reader thread runs one batch ahead: the
        # consumer may still be reading the previous batch (re-faulting released pages).
        released = release_pages(mm, released, previous if read_ahead else pos)
        previous = start
    del data
    try:
        mm.close()
    except BufferError:  # batches still refer to it; the mapping closes when they go
        pass


def release_pages(mm: mmap.mmap, start: int, stop: int) -> int:
    """Let the kernel drop the mapped pages of ``[start, stop)`` from this process.

    Without this, every page of a multi-GB capture that was read counts in the process's
    resident memory until the end. The pages stay in the page cache and come back on the
    next access, so batches still holding views of them read the same bytes.
    """
    stop -= stop % mmap.PAGESIZE
    if stop <= start or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return start
    try:
        mm.madvise(mmap.MADV_DONTNEED, start, stop - start)
    except (OSError, ValueError):
        return start
    return stop


class _GzipStream:
    """Decompressed bytes of a (multi-member) gzip file, read in bounded pieces."""

    def __init__(self, fh, name: str, problems: ProblemLog, progress: Progress | None) -> None:
        self.fh, self.name, self.problems, self.progress = fh, name, problems, progress
        self.inflate = zlib.decompressobj(31)
        self.eof = False
        self.produced = 0  # decompressed bytes handed out or skipped

    def read(self, n: int) -> bytes:
        """Up to ``n`` decompressed bytes; fewer only at the end (then ``eof`` is set)."""
        parts, have = [], 0
        while have < n and not self.eof:
            piece = self._piece(n - have)
            parts.append(piece)
            have += len(piece)
        out = b"".join(parts)
        self.produced += len(out)
        return out

    def skip(self, n: int) -> None:
        """Decompress and drop ``n`` bytes (a block too large to buffer)."""
        while n > 0 and not self.eof:
            piece = self._piece(min(n, 1 << 20))
            n -= len(piece)
            self.produced += len(piece)

    def _piece(self, n: int) -> bytes:
        try:
            if self.inflate.unconsumed_tail:
                return self.inflate.decompress(self.inflate.unconsumed_tail, n)
            if self.inflate.eof:
                rest = self.inflate.unused_data
                if not rest.strip(b"\x00"):
                    rest = self._raw()
                    if not rest:
                        self.eof = True
                        return b""
                if not rest.startswith(GZIP_MAGIC):
                    self.problems.add(
                        self.name, self.produced, "bytes after the gzip stream ignored"
                    )
                    self.eof = True
                    return b""
                self.inflate = zlib.decompressobj(31)
                return self.inflate.decompress(rest, n)
            raw = self._raw()
            if not raw:
                self.problems.add(
                    self.name,
                    self.produced,
                    "gzip stream ends early (truncated file); kept what was there",
                )
                self.eof = True
                return b""
            return self.inflate.decompress(raw, n)
        except zlib.error as exc:
            self.problems.add(self.name, self.produced, f"corrupt gzip data: {exc}")
            self.eof = True
            return b""

    def _raw(self) -> bytes:
        try:
            raw = self.fh.read(1 << 20)
        except OSError as exc:
            self.problems.add(self.name, self.produced, f"cannot read: {exc.strerror or exc}")
            return b""
        if self.progress and raw:
            self.progress(len(raw))
        return raw


def _read_gzip(
    fh, name: str, problems: ProblemLog, chunk: int, progress
) -> Iterator[ParsedPackets]:
    stream = _GzipStream(fh, name, problems, progress)
    yield from _read_bytes(stream, name, problems, chunk, "gzip stream")


class StopSignal:
    """A request to stop reading a live stream, for signal handlers (SIGINT, SIGTERM).

    A handler calls :meth:`request`: a read that is waiting for bytes ends at once, one that
    is not ends before it waits again; the stream then ends as if its writer had closed it,
    so what was read is still assembled and decided.
    """

    def __init__(self) -> None:
        self.requested = False
        self.waiting = False

    def request(self) -> None:
        self.requested = True
        if self.waiting:
            raise _Stopped


class _Stopped(Exception):
    """Raised by a signal handler into a read that waits (see :class:`StopSignal`)."""


class _LiveStream:
    """Bytes of a pipe (standard input, a ``tcpdump -w -``) as they arrive.

    A read waits for the first byte only and returns what is there then, so that records
    are parsed as soon as their writer has flushed them; a fast writer still gives large
    reads. ``unread`` puts bytes back in front (the sniffed header).
    """

    def __init__(self, fd: int, name: str, problems: ProblemLog, stop: StopSignal) -> None:
        self.fd, self.name, self.problems, self.stop = fd, name, problems, stop
        self.eof = False
        self.produced = 0
        self.pending = b""

    def unread(self, data: bytes) -> None:
        self.pending = data + self.pending
        self.produced -= len(data)

    def read(self, n: int) -> bytes:
        parts, have = [self.pending], len(self.pending)
        self.pending = b""
        while have < n and not self.eof:
            if have and not select.select([self.fd], [], [], 0)[0]:
                break  # nothing more yet: hand over what is there
            piece = self._wait_and_read(n - have)
            parts.append(piece)
            have += len(piece)
        out = b"".join(parts)
        self.produced += len(out)
        return out

    def skip(self, n: int) -> None:
        while n > 0 and not self.eof:
            n -= len(self.read(min(n, 1 << 20)))

    def _wait_and_read(self, n: int) -> bytes:
        if self.stop.requested:
            self.eof = True
            return b""
        try:
            self.stop.waiting = True
            try:
                piece = os.read(self.fd, min(n, 1 << 20))
            finally:
                self.stop.waiting = False
        except _Stopped:
            piece = b""
        except OSError as exc:
            self.problems.add(self.name, self.produced, f"cannot read: {exc.strerror or exc}")
            piece = b""
        if not piece:
            self.eof = True
        return piece


def read_stream(
    fd: int,
    problems: ProblemLog,
    *,
    name: str = "-",
    chunk_bytes: int = 4 << 20,
    stop: StopSignal | None = None,
) -> Iterator[ParsedPackets]:
    """Parsed packets of a pcap/pcapng stream (plain or gzip) read from a pipe, as it comes.

    ``fd`` is a file descriptor (``sys.stdin.fileno()``, a ``tcpdump -w -`` pipe). Each
    batch holds the records that had arrived when it was read (at most about
    ``chunk_bytes``), so a packet reaches the caller as soon as the writer flushes it. The
    stream ends when the writer closes it or ``stop`` is requested. Problems go to
    ``problems`` (a record cut by the end of the stream included); this never raises for
    bad data.
    """
    chunk = max(int(chunk_bytes), 1 << 16)
    live = _LiveStream(fd, name, problems, stop or StopSignal())
    head = b""
    while len(head) < 4 and not live.eof:
        head += live.read(4 - len(head))
    live.unread(head)
    if head.startswith(GZIP_MAGIC):
        yield from _read_bytes(_GzipStream(live, name, problems, None), name, problems, chunk,
                               "gzip stream")  # fmt: skip
    else:
        yield from _read_bytes(live, name, problems, chunk, "stream")


def _read_bytes(
    stream: _GzipStream | _LiveStream, name: str, problems: ProblemLog, chunk: int, what: str
) -> Iterator[ParsedPackets]:
    """Batches of a capture read as a stream of bytes, a cut record carried over."""
    buf = stream.read(chunk)
    while len(buf) < 24 and not stream.eof:  # a live stream: the file header may come late
        buf += stream.read(24 - len(buf))
    if not buf:
        if stream.eof and stream.produced == 0 and problems.total == 0:
            problems.add(name, 0, f"empty {what}")
        return
    where = " (inside gzip)" if isinstance(stream, _GzipStream) else ""
    walker = _make_walker(name, problems, buf[:24], where)
    if walker is None:
        return
    batcher = _Batcher(walker)
    pos = walker.file_header_size
    base = 0  # decompressed offset of buf[0]
    want = chunk
    while True:
        final = stream.eof
        data = np.frombuffer(buf, np.uint8)
        start = pos
        while pos < len(buf):
            walker.base = base
            recs, new = walker.walk(buf, data, pos, len(buf), final)
            if len(recs.offset):
                yield batcher.batch(data, recs, base)
            if new <= pos:
                break
            pos = new
        if final:
            return
        if pos > len(buf):  # a block to skip runs past the chunk
            stream.skip(pos - len(buf))
            base += pos
            carry = b""
        else:
            carry = buf[pos:]
            base += pos
        # a record that did not fit: read a larger chunk next time
        want = chunk if pos > start or len(carry) < chunk // 2 else 2 * len(carry)
        pos = 0
        buf = carry + stream.read(max(want - len(carry), 1 << 16))
