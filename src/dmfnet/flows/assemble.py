"""Bidirectional flows from packet batches: vectorised per batch, streaming, bounded memory.

The rules (SPEC §Pipeline 2-5):

* key = IP protocol + the two (address, port) endpoints in canonical (sorted) order; for
  protocols other than TCP and UDP the ports are 0, so ICMP, GRE, ESP... form flows keyed by
  protocol + addresses (removed by the ``non_tcp_udp`` filter unless it is switched off);
* the client is the sender of the flow's first packet, except that a first packet that is a
  TCP SYN/ACK makes its receiver the client;
* a flow ends after ``idle_timeout`` without a packet of its key, when a packet arrives more
  than ``active_timeout`` after the flow's first packet (that packet starts a new flow), after
  a TCP RST, or after a TCP FIN from both sides; a later packet with the same key starts a
  new flow;
* after a close (RST, or FIN both ways) the packets that finish the close handshake - TCP
  segments without payload and without SYN (the last ACK, a FIN/ACK or RST sent in reply) -
  still belong to the closed flow: the first segment with payload or a SYN starts a new one;
* packets are taken in file order, never sorted by timestamp (timestamps can go backwards
  in real captures); inter-arrival times are then what the capture says, possibly negative.
  The idle gap is measured between a key's consecutive packets. Open flows are emitted once
  the capture's clock (the running maximum of each batch's median timestamp) is past their
  idle timeout; only in a capture whose time jumps back by more than the idle timeout can
  a flow then end differently depending on where batches start;
* non-IP records and non-first IP fragments (no transport header: their flow cannot be
  told from the packet alone) are counted in :class:`AssemblyStats` and left out.

How it is fast: each batch is processed with numpy, not per packet or per flow. Packets and
the flows still open from earlier batches get a 64-bit hash of their key; a stable argsort
groups each key's packets in file order (hash collisions are checked exactly and fall back
to a full lexicographic sort); key changes and idle gaps split flows in one vectorised pass;
the rare sequential cases (a close followed by a new connection on the same key, the active
timeout) are resolved by an iterative pass over only the affected runs. Per-flow sums use
``np.add.reduceat``, the first packets' fields are scattered by rank within the flow, and
bytes are copied only for the first packets of each flow, once, into a compact snippet
buffer (:mod:`dmfnet.flows.snippets`); the zero-padded byte columns are laid out only when
a flow is emitted, in chunks of at most ``EMIT_ROWS`` flows, each laid out when the
consumer takes it.

How memory stays bounded: a flow still open at the end of a batch is kept as one row of a
small table of counters, close state and its first packets' per-packet fields, plus the
snippets of the bytes its first packets contribute (a power-of-two window per packet, about
as long as the packet up to the byte columns' reach); it continues in the next batch. A
flow is emitted as soon as it has ended (or its idle timeout has passed on the capture's
clock) and its row is reused and its snippets dropped (the buffer is compacted once most of
it is dropped), so memory grows with the number of concurrently open flows, never with the
capture size: about 0.7 kB per open flow plus its snippets (a two-packet UDP exchange of
100 and 180 bytes: 0.4 kB; at most about 9 kB for a flow whose first packets fill every
byte column), e.g. about 0.15 GB for a link that starts 1000 short flows a second and
keeps them open for the 120 s idle timeout.
"""

from __future__ import annotations

import functools
import gc
import itertools
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields, replace

import numpy as np

from dmfnet.capture.packets import ParsedPackets
from dmfnet.flows import schema
from dmfnet.flows.anonymise import (
    header_field_offsets,
    looks_like_tls,
    tls_zero_ranges_many,
    transport_offsets,
)
from dmfnet.flows.config import FlowConfig
from dmfnet.flows.early import first_packets
from dmfnet.flows.snippets import SnippetStore, place_pieces, reserve_zeros, zero_windows

FlowChunk = dict[str, np.ndarray]
"""Ended flows: every column of :mod:`dmfnet.flows.schema` plus ``filter_reason``."""

TCP, UDP, ICMPV6 = 6, 17, 58
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
DNS_PORT, LLMNR_PORT = 53, 5355

# ``open``: a record emitted before its flow ended (an early decision, ``decide_after``).
END_REASONS = ("idle", "active", "fin", "rst", "end_of_capture", "open")
END_IDLE, END_ACTIVE, END_FIN, END_RST, END_OF_CAPTURE, END_OPEN = range(6)
FILTER_REASONS = ("", "failed_handshake", "no_payload", "dns", "llmnr", "non_tcp_udp")

_TLS_UNDECIDED, _TLS_YES, _TLS_NO = 0, 1, 2
_TLS_STREAM_LIMIT = 16384  # bytes of each direction's stream kept for TLS parsing
_MAX_VECTOR_ROUNDS = 64  # reopenings of one key per batch resolved vectorised, then a loop
_BIG = np.iinfo(np.int64).max
SLICE_PACKETS = 1 << 16  # packets assembled at once: bounds temporaries and chunk size
EMIT_ROWS = 1 << 12  # flows per output chunk at most
_ADDRESS_TEXTS = 1 << 16  # IPv4 address texts kept for later chunks at most
# First size of the row pool (it doubles as needed). Its pages are made only when written,
# so a small capture pays for the rows it uses, and a large one copies nothing to grow.
_POOL_START_ROWS = 1 << 19

# Laid out from snippets at emission.
_BYTE_COLUMNS = ("bytes", "payload_packet_bytes", "flow_head", "payload_head")
_KEY_FIELDS = ("h", "proto", "ipv", "lo_hi", "lo_lo", "hi_hi", "hi_lo", "ports")
_STATE_DTYPES: dict[str, type] = {
    "h": np.uint64,
    "proto": np.uint8,
    "ipv": np.uint8,
    "lo_hi": np.uint64,
    "lo_lo": np.uint64,
    "hi_hi": np.uint64,
    "hi_lo": np.uint64,
    "ports": np.int64,  # lo_port << 16 | hi_port
    "client_is_lo": np.bool_,
    "start": np.float64,
    "last": np.float64,
    "first_index": np.int64,
    "packets": np.int64,
    "packets_c2s": np.int64,
    "ip_bytes": np.int64,
    "ip_bytes_c2s": np.int64,
    "payload_bytes": np.int64,
    "payload_bytes_c2s": np.int64,
    "syn_seen": np.bool_,
    "synack_seen": np.bool_,
    "handshake_complete": np.bool_,
    "fin_lo": np.bool_,
    "fin_hi": np.bool_,
    "rst": np.bool_,
    "flow_head_fill": np.int64,
    "payload_head_fill": np.int64,
    "payload_packets": np.int64,  # of the first m_packets, those with transport payload
    "tls_c2s": np.int8,
    "tls_s2c": np.int8,
    "slot": np.int64,
    "decided": np.bool_,  # with ``decide_after``: the flow's record was emitted early
}


@dataclass
class AssemblyStats:
    """What flow assembly saw and could not place; the caller reads it after the stream."""

    packets: int = 0  # records handed in
    ip_packets: int = 0  # packets placed in flows
    non_ip: int = 0  # records that are not IP (ARP, LLDP, unparseable...)
    unplaced_fragments: int = 0  # non-first IP fragments (no ports: flow unknown)
    flows: int = 0  # flows emitted, kept and removed
    removed: dict[str, int] = field(default_factory=dict)  # filter reason -> flows
    peak_open_flows: int = 0


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads key bits over the whole hash."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _key_hash(
    proto: np.ndarray,
    lo_hi: np.ndarray,
    lo_lo: np.ndarray,
    hi_hi: np.ndarray,
    hi_lo: np.ndarray,
    ports: np.ndarray,
) -> np.ndarray:
    with np.errstate(over="ignore"):
        k = np.uint64(0x9E3779B97F4A7C15)
        a = _mix64(lo_lo + lo_hi * k)
        b = _mix64(hi_lo + hi_hi * k)
        c = ports.astype(np.uint64) << np.uint64(8) | proto.astype(np.uint64)
        return _mix64(a * k + b + _mix64(c))


def _address_words(addresses: np.ndarray, which: np.ndarray) -> np.ndarray:
    """16-byte addresses ``(n, 16)`` of packets ``which`` as two big-endian words ``(k, 2)``.

    Each address is gathered as one 16-byte item (a 2-D gather copies byte by byte).
    """
    items = np.ascontiguousarray(addresses).view("V16").reshape(-1)
    return items[which].view(">u8").reshape(-1, 2).astype(np.uint64)


def _stable_order(values: np.ndarray, bound: int | None = None) -> np.ndarray:
    """``np.argsort(values, kind="stable")`` for integers in ``[0, bound)`` (the values' max
    when None): below 2**32, two stable sorts of 16-bit digits (counting sorts, much faster
    than the merge sort numpy uses for wider integers)."""
    if bound is None:
        bound = int(values.max()) + 1 if len(values) else 0
    if bound > 1 << 32:
        return np.argsort(values, kind="stable")
    if bound <= 1 << 16:
        return np.argsort(values.astype(np.uint16), kind="stable")
    order = np.argsort((values & 0xFFFF).astype(np.uint16), kind="stable")
    return order[np.argsort((values[order] >> 16).astype(np.uint16), kind="stable")]


def _median(values: np.ndarray) -> float:
    """``np.median`` of a non-empty array without NaN, the same value.

    ``np.median`` imports ``numpy.ma`` on its first call (10 ms in every worker process).
    """
    k = len(values) // 2
    if len(values) % 2:
        return float(np.partition(values, k)[k])
    part = np.partition(values, (k - 1, k))
    return float((part[k - 1] + part[k]) / 2)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each pair, vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    first = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) + np.repeat(starts - first, lengths)


def _zero_ranges(dst: np.ndarray, start: np.ndarray, n: np.ndarray) -> None:
    keep = n > 0
    if keep.any():
        dst[_ranges(start[keep], n[keep])] = 0


def _segment_cumsum(x: np.ndarray, seg_first: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum restarting at each segment start."""
    c = np.cumsum(x, dtype=np.int64)
    return c - np.repeat(c[seg_first] - x[seg_first], lengths)


class _RowPool:
    """Rows of the state and sequence columns of open flows, reused after a flow is emitted."""

    def __init__(self, widths: dict[str, tuple[type, int]]) -> None:
        self.widths = widths  # width 0: one value per row
        self.arrays = {
            name: np.zeros(self._shape(0, w), dtype=dt) for name, (dt, w) in widths.items()
        }
        self.free = np.empty(0, dtype=np.int64)  # emitted rows, to be reused
        self.used = 0  # rows from here on were never used (still zero)

    @staticmethod
    def _shape(rows: int, width: int) -> tuple[int, ...]:
        return (rows, width) if width else (rows,)

    def allocate(self, k: int) -> np.ndarray:
        """``k`` rows: released rows first, then never-used ones.

        The sequence columns of the rows are zero (the caller zeroes a row's sequence
        columns before releasing it); one-value columns keep what an emitted flow left
        (the caller writes them before reading).
        """
        reused = self.free[len(self.free) - min(k, len(self.free)) :]
        self.free = self.free[: len(self.free) - len(reused)]
        fresh = k - len(reused)
        cap = len(next(iter(self.arrays.values())))
        if self.used + fresh > cap:
            new_cap = max(2 * cap, self.used + fresh, _POOL_START_ROWS)
            for name, (dt, w) in self.widths.items():
                shape = self._shape(new_cap, w)
                grown = reserve_zeros(int(np.prod(shape)) * np.dtype(dt).itemsize)
                grown = grown.view(dt).reshape(shape)
                grown[: self.used] = self.arrays[name][: self.used]
                self.arrays[name] = grown
        new_rows = np.arange(self.used, self.used + fresh, dtype=np.int64)
        self.used += fresh
        return np.concatenate([reused, new_rows])

    def release(self, slots: np.ndarray) -> None:
        self.free = np.concatenate([self.free, slots])


def _split_sequential(
    run_start: np.ndarray,
    ts: np.ndarray,
    start: np.ndarray,
    rst: np.ndarray,
    fin_lo: np.ndarray,
    fin_hi: np.ndarray,
    straggler: np.ndarray,
    active_timeout: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Split runs (one key, no idle gap) at reopenings after a close and at active timeouts.

    Returns the flow-start mask and, per flow start, whether the previous flow ended by
    the active timeout. Only runs with a close event or longer than the active timeout are
    looked at; each round resolves one split per run, vectorised over all such runs.
    """
    n = len(run_start)
    flow_start = run_start.copy()
    active_mark = np.zeros(n, dtype=bool)
    rs = np.flatnonzero(run_start)
    re = np.append(rs[1:], n)
    events = rst | fin_lo | fin_hi
    has_event = np.logical_or.reduceat(events, rs)
    too_long = np.maximum.reduceat(ts, rs) - start[rs] > active_timeout
    pending = (has_event | too_long) & (re - rs > 1)
    a, b = rs[pending], re[pending]
    head_start = start[a]
    rounds = 0
    while len(a):
        rounds += 1
        if rounds > _MAX_VECTOR_ROUNDS:
            _split_loop(a, b, head_start, ts, rst, fin_lo, fin_hi, straggler, active_timeout,
                        flow_start, active_mark)  # fmt: skip
            break
        lengths = b - a
        idx = _ranges(a, lengths)
        seg_first = np.cumsum(lengths) - lengths
        c_rst = _segment_cumsum(rst[idx], seg_first, lengths)
        c_fl = _segment_cumsum(fin_lo[idx], seg_first, lengths)
        c_fh = _segment_cumsum(fin_hi[idx], seg_first, lengths)
        closed = (c_rst > 0) | ((c_fl > 0) & (c_fh > 0))
        prev_closed = np.empty_like(closed)
        prev_closed[0] = False
        prev_closed[1:] = closed[:-1]
        prev_closed[seg_first] = False
        close_cand = prev_closed & ~straggler[idx]
        act_cand = ts[idx] - np.repeat(head_start, lengths) > active_timeout
        act_cand[seg_first] = False
        cand = close_cand | act_cand
        first = np.minimum.reduceat(
            np.where(cand, np.arange(len(idx), dtype=np.int64), _BIG), seg_first
        )
        hit = first < _BIG
        j = first[hit]
        g = idx[j]
        flow_start[g] = True
        active_mark[g] = ~close_cand[j]
        a, b, head_start = g, b[hit], start[g]
        longer = b - a > 1
        a, b, head_start = a[longer], b[longer], head_start[longer]
    return flow_start, active_mark


def _split_loop(
    a: np.ndarray,
    b: np.ndarray,
    head_start: np.ndarray,
    ts: np.ndarray,
    rst: np.ndarray,
    fin_lo: np.ndarray,
    fin_hi: np.ndarray,
    straggler: np.ndarray,
    active_timeout: float,
    flow_start: np.ndarray,
    active_mark: np.ndarray,
) -> None:
    """The rules of :func:`_split_sequential`, one packet at a time (keys reopened very often)."""
    for lo, hi, t0 in zip(a.tolist(), b.tolist(), head_start.tolist(), strict=True):
        seen_rst, seen_lo, seen_hi = bool(rst[lo]), bool(fin_lo[lo]), bool(fin_hi[lo])
        for i in range(lo + 1, hi):
            closed = seen_rst or (seen_lo and seen_hi)
            close_split = closed and not straggler[i]
            if close_split or ts[i] - t0 > active_timeout:
                flow_start[i] = True
                active_mark[i] = not close_split
                t0 = float(ts[i])
                seen_rst = seen_lo = seen_hi = False
            seen_rst |= bool(rst[i])
            seen_lo |= bool(fin_lo[i])
            seen_hi |= bool(fin_hi[i])


@functools.cache
def _header_field_runs(
    ip_version: int, protocol: int, l4_offset: int
) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """Sorted offsets of the header fields to zero, and their runs of adjacent bytes
    (first offset, length): e.g. IPv4's checksum and addresses are one run of 10 bytes."""
    cols = header_field_offsets(
        np.array([ip_version]), np.array([protocol]), np.array([l4_offset])
    )[0]
    cols = np.sort(cols[cols >= 0])
    first = np.flatnonzero(np.diff(cols, prepend=-2) != 1)
    length = np.diff(first, append=len(cols))
    return cols, tuple(zip(cols[first].tolist(), length.tolist(), strict=True))


_OCTET = np.array([str(i) for i in range(256)], dtype=object)
_OCTET_DOT = np.array([f"{i}." for i in range(256)], dtype=object)


class _AddressText:
    """Text form of 16-byte addresses (IPv4 as dotted quad), each distinct one formatted once.

    IPv4 texts are kept from chunk to chunk (sorted by address, up to ``_ADDRESS_TEXTS``
    of them, then started afresh): a capture's flows mostly share a few addresses.
    """

    def __init__(self) -> None:
        self.v4 = np.empty(0, dtype=np.uint32)
        self.v4_text = np.empty(0, dtype=object)

    def __call__(self, hi: np.ndarray, lo: np.ndarray, ipv: np.ndarray) -> np.ndarray:
        out = np.empty(len(hi), dtype=object)
        v4 = (ipv == 4) & (hi == 0)
        if v4.any():
            address = (lo[v4] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
            order = _stable_order(address, 1 << 32)  # distinct ones sorted: searched in order
            address = address[order]
            distinct = np.ones(len(address), dtype=bool)
            distinct[1:] = address[1:] != address[:-1]
            inverse = np.empty(len(address), dtype=np.int64)
            inverse[order] = np.cumsum(distinct) - 1
            address = address[distinct]
            at = np.searchsorted(self.v4, address)
            known = np.zeros(len(address), dtype=bool)
            if len(self.v4):
                known = self.v4[np.minimum(at, len(self.v4) - 1)] == address
            if not known.all():
                new = address[~known]
                if len(self.v4) + len(new) > _ADDRESS_TEXTS:  # afresh, with this chunk's
                    self.v4, self.v4_text, new = self.v4[:0], self.v4_text[:0], address
                octet = new.astype(">u4").view(np.uint8).reshape(-1, 4)
                text = _OCTET_DOT[octet[:, 0]] + _OCTET_DOT[octet[:, 1]]  # "a." + "b."...
                text += _OCTET_DOT[octet[:, 2]] + _OCTET[octet[:, 3]]
                where = np.searchsorted(self.v4, new)
                self.v4 = np.insert(self.v4, where, new)
                self.v4_text = np.insert(self.v4_text, where, text)
                at = np.searchsorted(self.v4, address)
            out[v4] = self.v4_text[at][inverse]
        other = ~v4
        if other.any():
            pair = np.stack([hi[other], lo[other]], axis=1)
            uniq, inverse = np.unique(pair, axis=0, return_inverse=True)
            raw = uniq.astype(">u8").tobytes()
            text = [
                socket.inet_ntop(socket.AF_INET6, raw[i : i + 16]) for i in range(0, len(raw), 16)
            ]
            out[other] = np.array(text, dtype=object)[inverse.reshape(-1)]
        return out


def _slice(parsed: ParsedPackets, lo: int, hi: int) -> ParsedPackets:
    """Packets ``lo:hi`` of a batch as a batch of their own (views, sharing the data)."""
    if lo == 0 and hi >= len(parsed):
        return parsed
    b = parsed.batch
    per_record = {
        f.name: getattr(b, f.name)[lo:hi]
        for f in fields(b)
        if f.name != "data" and isinstance(getattr(b, f.name), np.ndarray)
    }
    batch = replace(b, **per_record, first_index=b.first_index + lo)
    return ParsedPackets(
        batch=batch,
        **{f.name: getattr(parsed, f.name)[lo:hi] for f in fields(parsed) if f.name != "batch"},
    )


@dataclass(frozen=True)
class Buckets:
    """Flows split into ``count`` buckets by a hash of their key; an assembler keeps ``[lo, hi)``.

    Several processes can assemble one capture, each reading all of it and keeping the
    flows of its buckets. Every decision of the assembler is per flow, or taken from all
    of a slice's packets (the capture's clock), so each bucket gets the same flows in the
    same order however the buckets are shared out; the emitted chunks then carry a
    ``bucket`` column. Packets that enter no flow are counted by the assembler holding
    bucket 0 only, so counts add up over a capture's assemblers.
    """

    count: int = 1
    lo: int = 0
    hi: int = 1

    def __post_init__(self) -> None:
        if not (self.count >= 1 and 0 <= self.lo < self.hi <= self.count):
            raise ValueError(f"buckets [{self.lo}, {self.hi}) of {self.count}: not a range")

    @property
    def everything(self) -> bool:
        return self.lo == 0 and self.hi == self.count

    @property
    def primary(self) -> bool:
        """Holds bucket 0: counts what belongs to no flow."""
        return self.lo == 0

    def of(self, h: np.ndarray) -> np.ndarray:
        """The bucket of each key hash."""
        return (h % np.uint64(self.count)).astype(np.int16)


class FlowAssembler:
    """Turns a capture's packet batches into flows; push batches, then :meth:`finish`."""

    def __init__(
        self,
        config: FlowConfig,
        capture: str,
        buckets: Buckets = Buckets(),
        decide_after: int | None = None,
        decide_early: bool = False,
    ) -> None:
        self.config = config
        self.capture = str(capture)
        self.buckets = buckets
        if decide_after is not None and not 1 <= decide_after <= config.m_packets:
            raise ValueError(
                f"decide_after must be between 1 and m_packets ({config.m_packets}), "
                f"not {decide_after}"
            )
        # Early decisions (see :func:`assemble_flows`): only the first ``decide_after``
        # packets enter a flow's modalities, and its record is emitted once it has them.
        self.decide_after = decide_after
        self.decide_early = decide_early or decide_after is not None
        self.stats = AssemblyStats()
        c = config
        self._pool = _RowPool(
            {
                "lengths": (np.int32, c.m_packets),
                "directions": (np.int8, c.m_packets),
                "iat": (np.float32, c.m_packets),
                "payload_lengths": (np.int32, c.m_packets),
                "tcp_windows": (np.int32, c.m_packets),
                "tcp_flags": (np.uint8, c.m_packets),
                **{name: (dt, 0) for name, dt in _STATE_DTYPES.items()},
            }
        )
        # The open flows: their key hashes, sorted, and their rows in the pool.
        self._index_h = np.empty(0, dtype=np.uint64)
        self._index_slot = np.empty(0, dtype=np.int64)
        self._clock = -np.inf
        self._latest = -np.inf  # latest timestamp seen: ends the capture's last flows
        self._tls: dict[tuple[int, bool], tuple[int, bytes]] = {}
        # Early packets' bytes of the open flows; header fields to zero in ``flow_head``
        # only (they lie past the packet's header, e.g. the ICMPv6 checksum): row, position.
        self._snippets = SnippetStore()
        self._address_text = _AddressText()
        self._head_zero_slot = np.empty(0, dtype=np.int64)
        self._head_zero_at = np.empty(0, dtype=np.int64)

    # ------------------------------------------------------------------ public
    def push(self, parsed: ParsedPackets) -> list[FlowChunk]:
        """Add one batch (file order); returns chunks of the flows that ended meanwhile."""
        return list(self.iter_push(parsed))

    def iter_push(self, parsed: ParsedPackets) -> Iterator[FlowChunk]:
        """Add one batch (file order), yielding chunks of the flows that end meanwhile.

        Large batches are processed in slices of ``SLICE_PACKETS`` packets so that the
        temporary arrays stay small whatever the reader's batch size. A slice is processed
        only once the chunks of the previous one have been taken, and each chunk is laid
        out when it is taken: at most one chunk exists at a time.
        """
        if self.buckets.primary:
            self.stats.packets += len(parsed)
        for lo in range(0, len(parsed), SLICE_PACKETS):
            was_enabled = gc.isenabled()
            gc.disable()  # many short-lived arrays, no reference cycles
            try:
                emissions = self._push(_slice(parsed, lo, lo + SLICE_PACKETS))
            finally:
                if was_enabled:
                    gc.enable()
            for emission in emissions:
                yield from emission

    def finish(self) -> list[FlowChunk]:
        """End of capture: every flow still open is emitted (chunks in first-packet order)."""
        return list(self.iter_finish())

    def iter_finish(self) -> Iterator[FlowChunk]:
        """:meth:`finish`, one chunk at a time."""
        if len(self._index_slot):
            yield from self._emit_open(np.ones(len(self._index_slot), dtype=bool), END_OF_CAPTURE)

    def _emit_open(self, which: np.ndarray, default_reason: int) -> Iterator[FlowChunk]:
        """Emit the open flows at index positions ``which`` (bool) and drop them from the index."""
        slots = self._index_slot[which]
        self._index_h = self._index_h[~which]
        self._index_slot = self._index_slot[~which]
        if self.decide_early:  # decided flows were emitted already
            decided = self._pool.arrays["decided"][slots]
            self._pool.release(slots[decided])
            slots = slots[~decided]
        # In first-packet order (the order of the output), each column gathered once.
        slots = slots[_stable_order(self._pool.arrays["first_index"][slots])]
        st = {name: self._pool.arrays[name][slots] for name in _STATE_DTYPES}
        tcp = st["proto"] == TCP
        closed = tcp & (st["rst"] | (st["fin_lo"] & st["fin_hi"]))
        now = self._latest if default_reason == END_OF_CAPTURE else self._clock
        idle = now - st["last"] > self.config.idle_timeout
        reason = np.where(idle, END_IDLE, default_reason)
        reason = np.where(closed, np.where(st["rst"], END_RST, END_FIN), reason)
        if self.decide_early:
            st["decision_time"] = np.where(closed, st["last"], now)
            st["decided_packets"] = st["packets"]
        return self._emit(st, reason.astype(np.int8), in_order=True)

    # ------------------------------------------------------------------ batch
    def _push(self, parsed: ParsedPackets) -> list[Iterator[FlowChunk]]:
        cfg = self.config
        self._snippets.compact()  # the previous slice's chunks have all been taken
        batch = parsed.batch
        data = batch.data
        n = len(parsed)
        is_ip = parsed.ip_version != 0
        frag = parsed.fragment & is_ip
        if self.buckets.primary:
            self.stats.non_ip += int(n - np.count_nonzero(is_ip))
            self.stats.unplaced_fragments += int(np.count_nonzero(frag))
        use = np.flatnonzero(is_ip & ~frag)
        m = len(use)
        if m == 0:  # nothing to place; the capture's clock has not moved either
            return []

        # Per packet: canonical key, direction relative to the key.
        proto = parsed.protocol[use]
        ipv = parsed.ip_version[use]
        has_ports = (proto == TCP) | (proto == UDP)
        sport = np.where(has_ports, parsed.src_port[use], 0).astype(np.int64)
        dport = np.where(has_ports, parsed.dst_port[use], 0).astype(np.int64)
        src = _address_words(parsed.src_ip, use)
        dst = _address_words(parsed.dst_ip, use)
        s_hi, s_lo, d_hi, d_lo = src[:, 0], src[:, 1], dst[:, 0], dst[:, 1]
        src_is_lo = (s_hi < d_hi) | (
            (s_hi == d_hi) & ((s_lo < d_lo) | ((s_lo == d_lo) & (sport <= dport)))
        )
        lo_hi = np.where(src_is_lo, s_hi, d_hi)
        lo_lo = np.where(src_is_lo, s_lo, d_lo)
        hi_hi = np.where(src_is_lo, d_hi, s_hi)
        hi_lo = np.where(src_is_lo, d_lo, s_lo)
        ports = np.where(src_is_lo, sport << 16 | dport, dport << 16 | sport)
        h = _key_hash(proto, lo_hi, lo_lo, hi_hi, hi_lo, ports)
        ts = batch.ts[use].astype(np.float64)
        # The capture's clock, for expiring open flows: the median timestamp of the batch,
        # never going back. (A median, so that one packet with a wild timestamp does not
        # expire every open flow.)
        self._clock = max(self._clock, _median(ts))
        self._latest = max(self._latest, float(ts.max()))
        if not self.buckets.everything:  # the clock above is the whole slice's
            bucket = self.buckets.of(h)
            mine = np.flatnonzero((bucket >= self.buckets.lo) & (bucket < self.buckets.hi))
            if len(mine) < m:
                use, proto, ipv, src_is_lo, lo_hi, lo_lo, hi_hi, hi_lo, ports, h, ts = (
                    x[mine]
                    for x in (use, proto, ipv, src_is_lo, lo_hi, lo_lo, hi_hi, hi_lo, ports, h, ts)
                )
                m = len(mine)
                if m == 0:
                    return self._expire_open()
        self.stats.ip_packets += m

        # The packets in the order of the hash's high bits (those above the bits of a packet
        # index), file order kept within equal bits: a radix sort, 16 bits a pass (stable
        # sorts of 16-bit digits are counting sorts).
        bits = max(m.bit_length(), 1)
        high = ~np.uint64((1 << bits) - 1)
        masked = h & high
        by_hash = np.arange(m, dtype=np.int64)
        for shift in range(16 * (bits // 16), 64, 16):
            digit = (masked[by_hash] >> np.uint64(shift)).astype(np.uint16)
            by_hash = by_hash[np.argsort(digit, kind="stable")]
        packet_high = masked[by_hash]
        # The open flows whose key hash some packet of the batch has.
        queries = h[by_hash]  # sorted queries: each search starts where the last ended
        queries = queries[np.r_[True, queries[1:] != queries[:-1]]]  # a key's packets: once
        lo = np.searchsorted(self._index_h, queries, "left")
        hi = np.searchsorted(self._index_h, queries, "right")
        hit = hi > lo
        touched_pos = np.unique(_ranges(lo[hit], (hi - lo)[hit]))
        touched = self._index_slot[touched_pos]
        op = {name: self._pool.arrays[name][touched] for name in _STATE_DTYPES}
        fc = len(touched)
        keys = {
            "h": h,
            "proto": proto,
            "ipv": ipv,
            "lo_hi": lo_hi,
            "lo_lo": lo_lo,
            "hi_hi": hi_hi,
            "hi_lo": hi_lo,
            "ports": ports,
        }
        # Items: those open flows (as summaries) first, then the batch's packets, grouped by
        # key with file order kept inside each key.
        item_keys = {k: np.concatenate([op[k], v.astype(op[k].dtype)]) for k, v in keys.items()}
        order, same = self._group_by_key(item_keys, fc, by_hash, packet_high, high)
        nitems = len(order)
        is_pkt = order >= fc
        pi = np.where(is_pkt, order - fc, 0)  # packet index (valid where is_pkt)

        def items(open_values: np.ndarray, packet_values: np.ndarray) -> np.ndarray:
            return np.concatenate([open_values, packet_values])[order]

        zeros_fc = np.zeros(fc, dtype=bool)
        flags = items(np.zeros(fc, np.uint8), parsed.tcp_flags[use])
        tcp = items(op["proto"] == TCP, proto == TCP)
        src_lo = items(zeros_fc, src_is_lo)
        payload_len = items(np.zeros(fc, np.int64), parsed.payload_len[use].astype(np.int64))
        ip_len = items(np.zeros(fc, np.int64), parsed.ip_len[use].astype(np.int64))
        ts_i = items(op["last"], ts)
        start_i = items(op["start"], ts)
        tcp_pkt = tcp & is_pkt
        rst_e = items(op["rst"], (parsed.tcp_flags[use] & RST) != 0) & tcp
        fin = (flags & FIN) != 0
        fin_lo_e = (tcp_pkt & fin & src_lo) | (~is_pkt & items(op["fin_lo"], np.zeros(m, bool)))
        fin_hi_e = (tcp_pkt & fin & ~src_lo) | (~is_pkt & items(op["fin_hi"], np.zeros(m, bool)))
        straggler = tcp_pkt & (payload_len == 0) & ((flags & SYN) == 0)

        key_start = np.ones(nitems, dtype=bool)
        key_start[1:] = ~same
        run_start = key_start.copy()
        run_start[1:] |= np.diff(ts_i) > cfg.idle_timeout
        flow_start, active_mark = _split_sequential(
            run_start, ts_i, start_i, rst_e, fin_lo_e, fin_hi_e, straggler, cfg.active_timeout
        )

        # Flows of this batch: continuing open flows and new ones.
        fpos = np.flatnonzero(flow_start)
        nf = len(fpos)
        fid = np.cumsum(flow_start) - 1
        fend = np.append(fpos[1:], nitems) - 1
        has_next = np.zeros(nf, dtype=bool)
        has_next[:-1] = ~key_start[fend[:-1] + 1]
        cont = ~is_pkt[fpos]
        crow = order[fpos[cont]]  # open-flow row of each continuing flow

        def carried(name: str) -> np.ndarray:
            """The open flows' value of ``name`` for continuing flows, 0 for new ones."""
            out = np.zeros(nf, dtype=op[name].dtype)
            out[cont] = op[name][crow]
            return out

        head_flags = flags[fpos]
        synack_first = tcp[fpos] & ((head_flags & (SYN | ACK)) == (SYN | ACK))
        client_is_lo = np.where(cont, carried("client_is_lo"), src_lo[fpos] ^ synack_first)
        c2s = src_lo == client_is_lo[fid]

        st: dict[str, np.ndarray] = {k: item_keys[k][order[fpos]] for k in _KEY_FIELDS}
        st["client_is_lo"] = client_is_lo
        st["start"] = start_i[fpos]
        st["last"] = ts_i[fend]
        first_index = batch.first_index + use[pi[fpos]]
        st["first_index"] = np.where(cont, carried("first_index"), first_index)

        def per_flow_sum(values: np.ndarray) -> np.ndarray:
            return np.add.reduceat(values, fpos)

        pk = is_pkt.astype(np.int64)
        c2s_pk = pk * c2s
        st["packets"] = carried("packets") + per_flow_sum(pk)
        st["packets_c2s"] = carried("packets_c2s") + per_flow_sum(c2s_pk)
        st["ip_bytes"] = carried("ip_bytes") + per_flow_sum(ip_len)
        st["ip_bytes_c2s"] = carried("ip_bytes_c2s") + per_flow_sum(ip_len * c2s_pk)
        st["payload_bytes"] = carried("payload_bytes") + per_flow_sum(payload_len)
        st["payload_bytes_c2s"] = carried("payload_bytes_c2s") + per_flow_sum(payload_len * c2s_pk)

        syn_only = (flags & (SYN | ACK)) == SYN
        syn_any = np.logical_or.reduceat(tcp_pkt & c2s & syn_only, fpos)
        st["syn_seen"] = syn_any | carried("syn_seen")
        pos = np.arange(nitems, dtype=np.int64)
        synack_item = (tcp_pkt & ~c2s & ((flags & (SYN | ACK)) == (SYN | ACK))) | (
            ~is_pkt & items(op["synack_seen"], np.zeros(m, bool))
        )
        first_synack = np.minimum.reduceat(np.where(synack_item, pos, _BIG), fpos)
        ack_item = tcp_pkt & c2s & ((flags & (SYN | ACK)) == ACK)
        last_ack = np.maximum.reduceat(np.where(ack_item, pos, -1), fpos)
        st["synack_seen"] = first_synack < _BIG
        st["handshake_complete"] = carried("handshake_complete") | (
            st["syn_seen"] & (first_synack < last_ack)
        )
        st["fin_lo"] = np.logical_or.reduceat(fin_lo_e, fpos)
        st["fin_hi"] = np.logical_or.reduceat(fin_hi_e, fpos)
        st["rst"] = np.logical_or.reduceat(rst_e, fpos)

        # Rows for the sequence and byte columns.
        slot = np.zeros(nf, dtype=np.int64)
        slot[cont] = op["slot"][crow]
        slot[~cont] = self._pool.allocate(int(np.count_nonzero(~cont)))
        st["slot"] = slot
        st["flow_head_fill"] = carried("flow_head_fill")
        st["payload_head_fill"] = carried("payload_head_fill")
        st["payload_packets"] = carried("payload_packets")
        st["tls_c2s"] = carried("tls_c2s").astype(np.int8)
        st["tls_s2c"] = carried("tls_s2c").astype(np.int8)

        # Packets that enter the per-packet columns: rank < m_packets within their flow.
        local = pos - fpos[fid]
        base = carried("packets") - cont
        rank = base[fid] + local
        known = cfg.m_packets if self.decide_after is None else min(cfg.m_packets, self.decide_after)
        early = np.flatnonzero(is_pkt & (rank < known))
        if len(early):
            self._fill_sequences(parsed, use, pi, early, fid, rank, c2s, ts_i, local, st, data)

        # Which flows ended: a later flow of the same key exists, or the idle timeout has
        # passed on the capture's clock.
        closed = (st["proto"] == TCP) & (st["rst"] | (st["fin_lo"] & st["fin_hi"]))
        expired = ~has_next & (self._clock - st["last"] > cfg.idle_timeout)
        ended = has_next | expired
        next_start = np.minimum(fend + 1, nitems - 1)
        reason = np.where(has_next & active_mark[next_start], END_ACTIVE, END_IDLE)
        reason = np.where(closed, np.where(st["rst"], END_RST, END_FIN), reason).astype(np.int8)
        decided_before = carried("decided")
        st["decided"] = decided_before
        if self.decide_early:
            found, when, at_packet = self._decision_points(
                is_pkt, tcp, rank, payload_len, ts_i, fpos, fid, carried("payload_bytes")
            )
            # A closed flow is decided at its close: the packets that may follow only
            # finish the close handshake.
            when = np.where(found, when, st["last"])
            at_packet = np.where(found, at_packet, st["packets"])
            deciding = (found | closed) & ~decided_before
            st["decided"] = decided_before | deciding
            # Undecided flows that end now are decided at their end: the closing packet
            # or, for an idle timeout, the capture's clock.
            end_time = np.where(expired & ~closed, self._clock, st["last"])
            st["decision_time"] = np.where(deciding, when, end_time)
            st["decided_packets"] = np.where(deciding, at_packet, st["packets"])

        # Flows still open go (back) to their rows and into the index.
        keep = np.flatnonzero(~ended)
        pool = self._pool.arrays
        for name in _STATE_DTYPES:
            pool[name][st["slot"][keep]] = st[name][keep]
        rest = np.ones(len(self._index_h), dtype=bool)
        rest[touched_pos] = False
        old_h, old_slot = self._index_h[rest], self._index_slot[rest]
        by_hash = np.argsort(st["h"][keep], kind="stable")
        new_h, new_slot = st["h"][keep][by_hash], st["slot"][keep][by_hash]
        at = np.searchsorted(old_h, new_h)
        self._index_h = np.insert(old_h, at, new_h)
        self._index_slot = np.insert(old_slot, at, new_slot)

        emissions = []
        if self.decide_early:
            # Flows decided in an earlier slice were emitted then; their end frees the row.
            early_records = np.flatnonzero(st["decided"] & ~decided_before & ~ended)
            self._pool.release(st["slot"][ended & decided_before])
            ended &= ~decided_before
            if len(early_records):
                # Emitted now and kept open; their snippets and TLS state go with the record.
                reason_open = np.where(closed, reason, END_OPEN).astype(np.int8)
                emissions.append(self._emit(st, reason_open, early_records, release=False))
        if ended.any():
            emissions.append(self._emit(st, reason, np.flatnonzero(ended)))
        emissions += self._expire_open()
        self.stats.peak_open_flows = max(self.stats.peak_open_flows, len(self._index_slot))
        return emissions

    def _expire_open(self) -> list[Iterator[FlowChunk]]:
        """Emit the open flows whose idle timeout has passed on the capture's clock."""
        last = self._pool.arrays["last"][self._index_slot]
        expired = self._clock - last > self.config.idle_timeout
        return [self._emit_open(expired, END_IDLE)] if expired.any() else []

    def _decision_points(
        self,
        is_pkt: np.ndarray,
        tcp: np.ndarray,
        rank: np.ndarray,
        payload_len: np.ndarray,
        ts: np.ndarray,
        fpos: np.ndarray,
        fid: np.ndarray,
        payload_before: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where each flow of the slice can be decided: (found, capture time, packets).

        A flow is decided at its ``decide_after``-th packet; a TCP flow that has carried no
        payload yet waits for its first payload packet (without payload it would be removed
        by the ``no_payload`` filter, so its decision would be lost), its modalities still
        holding its first ``decide_after`` packets only.
        """
        if self.decide_after is None:  # decided at the end only
            none = np.zeros(len(fpos), dtype=bool)
            return none, np.zeros(len(fpos)), np.zeros(len(fpos), dtype=np.int64)
        lengths = np.diff(np.append(fpos, len(is_pkt)))
        seen = payload_before[fid] + _segment_cumsum(payload_len, fpos, lengths)
        eligible = is_pkt & (rank >= self.decide_after - 1) & (~tcp | (seen > 0))
        pos = np.arange(len(is_pkt), dtype=np.int64)
        first = np.minimum.reduceat(np.where(eligible, pos, _BIG), fpos)
        found = first < _BIG
        at = np.where(found, first, 0)
        return found, ts[at], rank[at] + 1

    def _group_by_key(
        self,
        item_keys: dict[str, np.ndarray],
        fc: int,
        by_hash: np.ndarray,
        packet_high: np.ndarray,
        high: np.uint64,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stable order grouping equal keys; ``same[i]``: item i+1 has item i's key.

        The items are ``fc`` open flows (in index order, so sorted by hash) and then the
        packets, ``by_hash`` their order by the high bits of the hash (``packet_high``,
        sorted). Merging the two sorted runs (open flows first on equal high bits) is the
        stable order by the high bits; the keys of neighbours are then checked exactly.
        """
        h = item_keys["h"]
        m = len(by_hash)
        open_high = h[:fc] & high
        open_at = np.searchsorted(packet_high, open_high, "left") + np.arange(fc)
        packet_at = np.searchsorted(open_high, packet_high, "right") + np.arange(m)
        order = np.empty(fc + m, dtype=np.int64)
        order[open_at] = np.arange(fc)
        order[packet_at] = by_hash + fc
        hs = np.empty(fc + m, dtype=np.uint64)
        hs[open_at] = open_high
        hs[packet_at] = packet_high
        same = hs[1:] == hs[:-1]
        dup = np.flatnonzero(same)
        exact = np.ones(len(dup), dtype=bool)
        first, second = order[dup], order[dup + 1]
        for k in _KEY_FIELDS[1:]:
            v = item_keys[k]
            exact &= v[first] == v[second]
        if exact.all():
            return order, same
        # A hash collision (never seen in practice): sort by the full key instead.
        cols = [item_keys[k] for k in reversed(_KEY_FIELDS[1:])]
        order = np.lexsort([np.arange(len(h)), *cols])
        same = np.ones(len(h) - 1 if len(h) else 0, dtype=bool)
        for k in _KEY_FIELDS[1:]:
            v = item_keys[k][order]
            same &= v[1:] == v[:-1]
        return order, same

    def _fill_sequences(
        self,
        parsed: ParsedPackets,
        use: np.ndarray,
        pi: np.ndarray,
        early: np.ndarray,
        fid: np.ndarray,
        rank: np.ndarray,
        c2s: np.ndarray,
        ts_i: np.ndarray,
        local: np.ndarray,
        st: dict[str, np.ndarray],
        data: np.ndarray,
    ) -> None:
        """Per-packet columns, bytes, heads and their anonymisation for the early packets."""
        cfg = self.config
        pool = self._pool.arrays
        p = use[pi[early]]  # index in the parsed batch
        f = fid[early]
        r = rank[early]
        rows = st["slot"][f]
        direction = np.where(c2s[early], 1, -1).astype(np.int8)
        ip_len = parsed.ip_len[p].astype(np.int64)
        cell = rows * cfg.m_packets + r  # (row, rank) in the flattened columns

        def put(name: str, values: np.ndarray) -> None:
            pool[name].reshape(-1)[cell] = values

        put("lengths", ip_len * direction if cfg.signed_lengths else ip_len)
        put("directions", direction)
        prev = np.maximum(early - 1, 0)
        put("iat", np.where(local[early] > 0, ts_i[early] - ts_i[prev], 0.0))
        put("payload_lengths", parsed.payload_len[p])
        put("tcp_windows", parsed.tcp_window[p])
        put("tcp_flags", parsed.tcp_flags[p])

        l3 = parsed.l3_offset[p].astype(np.int64)
        cap = np.maximum(parsed.l3_caplen[p].astype(np.int64), 0)
        hlen = parsed.header_len[p].astype(np.int64)
        header_avail = np.minimum(hlen, cap)
        payload_avail = np.clip(np.minimum(parsed.payload_len[p], cap - hlen), 0, None)
        payload_at = l3 + header_avail

        # What each byte column takes of the packet: a header and a payload prefix in
        # ``bytes`` (first N packets) and in ``payload_packet_bytes`` (first N packets with
        # payload), a prefix of the whole packet in ``flow_head`` and of its payload in
        # ``payload_head`` (while the heads are not full).
        lh, lp = cfg.header_bytes, cfg.payload_bytes
        in_bytes = r < cfg.n_packets
        hdr_cut = np.minimum(header_avail, lh)
        pay_cut = np.minimum(payload_avail, lp)
        b_hdr = np.where(in_bytes, hdr_cut, 0)
        b_pay = np.where(in_bytes, pay_cut, 0)
        head = cfg.head_bytes
        # The packet's rank among its flow's packets with payload (earlier slices' too), and
        # where it starts in each head.
        carries = parsed.payload_len[p] > 0
        (
            (pp_rank, st["payload_packets"]),
            (fh_off, st["flow_head_fill"]),
            (ph_off, st["payload_head_fill"]),
        ) = self._running_offsets(
            f,
            (carries, st["payload_packets"]),
            (cap, st["flow_head_fill"]),
            (payload_avail, st["payload_head_fill"]),
        )
        if cfg.payload_packet_bytes:
            in_pp = carries & (pp_rank < cfg.n_packets)
            pp_rank = np.where(in_pp, pp_rank, -1)
            pp_hdr = np.where(in_pp, hdr_cut, 0)
            pp_pay = np.where(in_pp, pay_cut, 0)
            b_hdr_any, b_pay_any = np.maximum(b_hdr, pp_hdr), np.maximum(b_pay, pp_pay)
        else:
            pp_rank = np.full(len(p), -1, dtype=np.int64)
            pp_pay = np.zeros(len(p), dtype=np.int64)
            b_hdr_any, b_pay_any = b_hdr, b_pay
        fh_n = np.clip(np.minimum(cap, head - fh_off), 0, None)
        ph_n = np.clip(np.minimum(payload_avail, head - ph_off), 0, None)

        # The snippet: the packet from its IP header to the furthest byte any column takes.
        pay_need = np.maximum(b_pay_any, ph_n)
        need = np.maximum(
            np.maximum(fh_n, b_hdr_any), np.where(pay_need > 0, header_avail + pay_need, 0)
        )
        kept = np.flatnonzero(need > 0)
        if not len(kept):
            return
        anonymise = cfg.anonymise
        values = {
            "slot": rows[kept],
            "rank": r[kept],
            "header": header_avail[kept],
            "bytes_header": b_hdr[kept],
            "bytes_payload": b_pay[kept],
            "payload_packet_rank": pp_rank[kept],
            "payload_packet_payload": pp_pay[kept],
            "flow_head_at": fh_off[kept],
            "flow_head_n": fh_n[kept],
            "payload_head_at": ph_off[kept],
            "payload_head_n": ph_n[kept],
        }
        start = np.full(len(p), -1, dtype=np.int64)
        start[kept] = self._snippets.add(data, l3[kept], need[kept], values)
        if not anonymise:
            return
        ipv, proto = parsed.ip_version[p[kept]], parsed.protocol[p[kept]]
        self._zero_header_fields(
            start[kept],
            ipv,
            proto,
            transport_offsets(data, l3[kept], cap[kept], ipv, proto),
            header_avail[kept],
            need[kept],
            rows[kept],
            fh_off[kept],
            fh_n[kept],
        )

        # TLS server names and certificates, in payload coordinates of each packet. Only
        # packets with payload bytes in a byte column matter (of the packets with payload,
        # they are a prefix of the flow's: a stream has no gap before the last of them).
        has_payload = (pay_need > 0) | (fh_n > header_avail)
        zp, za, zb = self._tls_ranges(parsed, p, f, c2s[early], payload_at, payload_avail,
                                      has_payload, st, data)  # fmt: skip
        if not len(zp):
            return
        stored = need[zp] - header_avail[zp]  # payload bytes in the snippet
        lo = np.clip(za, 0, stored)
        hi = np.clip(zb, 0, stored)
        _zero_ranges(self._snippets.buffer, start[zp] + header_avail[zp] + lo, hi - lo)

    def _zero_header_fields(
        self,
        start: np.ndarray,
        ip_version: np.ndarray,
        protocol: np.ndarray,
        l4_offset: np.ndarray,
        header: np.ndarray,
        need: np.ndarray,
        slot: np.ndarray,
        head_at: np.ndarray,
        head_n: np.ndarray,
    ) -> None:
        """Zero addresses, ports and checksums in stored snippets (each starts with an IP header).

        A field inside the packet's header is zeroed in the snippet (so in every column); a
        field past it (the ICMPv6 checksum: its header length counts no transport header)
        is zeroed in ``flow_head`` only, as the payload columns carry it as it is. Snippets
        are grouped by (version, protocol, transport offset): a few groups, each zeroed
        with one index over all its snippets and fields.
        """
        if not len(start):
            return
        buffer = self._snippets.buffer
        stored = np.minimum(header, need)  # header bytes the snippet holds
        # Only TCP, UDP and ICMPv6 have transport fields to zero: other protocols group
        # with the protocol and transport offset left out.
        fields_l4 = (protocol == TCP) | (protocol == UDP) | (protocol == ICMPV6)
        code = ip_version.astype(np.int64) << 24 | np.where(
            fields_l4, protocol.astype(np.int64) << 16 | l4_offset, 0
        )
        groups = np.unique(code).tolist()
        for c in groups:
            cols, runs = _header_field_runs(c >> 24, (c >> 16) & 0xFF, c & 0xFFFF)
            if not len(cols):
                continue
            members = np.flatnonzero(code == c) if len(groups) > 1 else np.arange(len(start))
            m_start, m_stored, m_header = start[members], stored[members], header[members]
            for first, n in runs:  # one window write per run of adjacent fields
                whole = m_stored >= first + n
                zero_windows(buffer, m_start[whole] + first, n)
                part = np.flatnonzero(~whole & (m_stored > first))
                if len(part):  # a header cut short inside the run: its stored bytes only
                    run = first + np.arange(n)
                    at = m_start[part, None] + run
                    buffer[at[run < m_stored[part, None]]] = 0
            if cols[-1] < m_header.min():
                continue
            # Fields past the header: kept in the snippet, zeroed in flow_head only.
            in_head = (cols >= m_header[:, None]) & (cols < head_n[members, None])
            r_idx, c_idx = np.nonzero(in_head)
            if len(r_idx):
                self._head_zero_slot = np.append(self._head_zero_slot, slot[members[r_idx]])
                self._head_zero_at = np.append(
                    self._head_zero_at, head_at[members[r_idx]] + cols[c_idx]
                )

    @staticmethod
    def _running_offsets(
        f: np.ndarray, *counts: tuple[np.ndarray, np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each (contribution, fill) pair: where each early packet starts in its flow's
        running total (the flow's fill from earlier slices + its earlier packets'
        contributions), and each flow's new fill.

        ``f`` (each packet's flow) is non-decreasing: a flow's packets are one run. Fills
        are per flow; the new ones are new arrays.
        """
        first = np.ones(len(f), dtype=bool)
        first[1:] = f[1:] != f[:-1]
        at = np.flatnonzero(first)
        run = np.diff(np.append(at, len(f)))
        out = []
        for contribution, fill in counts:
            contribution = contribution.astype(np.int64, copy=False)
            excl = np.cumsum(contribution)
            excl -= contribution
            new_fill = fill.astype(np.int64)  # a copy
            new_fill[f[at]] += np.add.reduceat(contribution, at)
            out.append((excl + np.repeat(fill[f[at]] - excl[at], run), new_fill))
        return out

    def _tls_ranges(
        self,
        parsed: ParsedPackets,
        p: np.ndarray,
        f: np.ndarray,
        c2s: np.ndarray,
        payload_at: np.ndarray,
        payload_avail: np.ndarray,
        kept: np.ndarray,
        st: dict[str, np.ndarray],
        data: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ranges to zero (early-packet index, start, end) for TLS names and certificates."""
        empty = np.empty(0, dtype=np.int64)
        cand = np.flatnonzero((parsed.protocol[p] == TCP) & (payload_avail > 0) & kept)
        if not len(cand):
            return empty, empty, empty
        group = f[cand] * 2 + c2s[cand]
        order = np.argsort(group, kind="stable")
        cand, group = cand[order], group[order]
        firsts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        gflow, gc2s = group[firsts] // 2, (group[firsts] % 2).astype(bool)
        state = np.where(gc2s, st["tls_c2s"][gflow], st["tls_s2c"][gflow])
        undecided = state == _TLS_UNDECIDED
        if undecided.any():
            first_pkt = cand[firsts[undecided]]
            at = payload_at[first_pkt]
            head3 = data[np.minimum(at[:, None] + np.arange(3), len(data) - 1)]
            ok = looks_like_tls(head3) & (payload_avail[first_pkt] >= 3)
            state[undecided] = np.where(ok, _TLS_YES, _TLS_NO)
            st["tls_c2s"][gflow[gc2s]] = state[gc2s]
            st["tls_s2c"][gflow[~gc2s]] = state[~gc2s]
        # The packets of the TLS streams, stream by stream (file order within a stream).
        yes = np.flatnonzero(state == _TLS_YES)
        lengths = np.append(firsts, len(cand))[yes + 1] - firsts[yes]
        first = np.cumsum(lengths) - lengths
        stream_of = np.repeat(np.arange(len(yes)), lengths)
        pk = cand[_ranges(firsts[yes], lengths)]
        seq = parsed.tcp_seq[p[pk]].astype(np.int64)
        # A new stream starts at its lowest sequence number (modulo 2**32, seen from its
        # first packet): a retransmission or reordering may come first.
        rel = (seq - seq[first][stream_of] + 2**31) % 2**32 - 2**31
        new_base = (
            ((seq[first] + np.minimum.reduceat(rel, first)) % 2**32).tolist() if len(pk) else []
        )
        keys = list(zip(st["slot"][gflow[yes]].tolist(), gc2s[yes].tolist(), strict=True))
        streams = [self._tls.get(key) for key in keys]  # (base, bytes so far) or None
        base_list = [
            b if known is None else known[0] for known, b in zip(streams, new_base, strict=True)
        ]
        old = [b"" if known is None else known[1] for known in streams]
        base = np.array(base_list, dtype=np.int64)
        pos = (seq - base[stream_of]) % 2**32  # in the stream
        avail = payload_avail[pk]
        copied = np.where(pos < _TLS_STREAM_LIMIT, np.minimum(avail, _TLS_STREAM_LIMIT - pos), 0)
        end = np.where(copied > 0, pos + copied, 0)  # bytes of the stream known after them
        end = np.maximum.reduceat(end, first).tolist() if len(pk) else []
        # All streams rebuilt in one flat buffer: each starts with what earlier slices saw
        # (zeros up to this slice's furthest byte), then its segments are copied in. A
        # stream whose segments overlap (retransmissions) takes them one by one in file
        # order (a later copy of a byte wins); the others all at once.
        size = np.maximum(np.array([len(b) for b in old], dtype=np.int64), end)
        at = np.cumsum(size) - size
        joined = b"".join(old)
        flat = np.zeros(int(size.sum()), dtype=np.uint8)
        if joined:
            old_len = np.array([len(b) for b in old], dtype=np.int64)
            has = np.flatnonzero(old_len)
            src = np.frombuffer(joined, dtype=np.uint8)  # read only
            src_at = np.cumsum(old_len) - old_len
            place_pieces(flat, at[has], np.zeros(len(has), np.int64), src, src_at[has],
                         old_len[has], _BIG)  # fmt: skip
        seg = np.flatnonzero(copied > 0)
        by_pos = seg[np.lexsort((pos[seg], stream_of[seg]))]
        same = stream_of[by_pos[1:]] == stream_of[by_pos[:-1]]
        overlap = same & (pos[by_pos[1:]] < pos[by_pos[:-1]] + copied[by_pos[:-1]])
        one_by_one = np.zeros(len(yes), dtype=bool)
        one_by_one[stream_of[by_pos[1:][overlap]]] = True
        bulk = seg[~one_by_one[stream_of[seg]]]
        place_pieces(flat, at[stream_of[bulk]] + pos[bulk], np.zeros(len(bulk), np.int64), data,
                     payload_at[pk[bulk]], copied[bulk], _BIG)  # fmt: skip
        if one_by_one.any():
            view, flat_view = memoryview(data), memoryview(flat)
            for i in seg[one_by_one[stream_of[seg]]].tolist():  # file order within a stream
                k, q, src_at = (
                    int(copied[i]),
                    int(at[stream_of[i]] + pos[i]),
                    int(payload_at[pk[i]]),
                )
                flat_view[q : q + k] = view[src_at : src_at + k]
        rs, za, zb = tls_zero_ranges_many(flat, at, size)
        # What each stream holds now, for the next slices; streams of flows whose later
        # packets cannot reach a byte column are forgotten.
        cfg = self.config
        head = cfg.head_bytes
        done = (st["packets"] >= cfg.m_packets) | (
            (st["packets"] >= cfg.n_packets)
            & (st["flow_head_fill"] >= head)
            & (st["payload_head_fill"] >= head)
            & ((not cfg.payload_packet_bytes) | (st["payload_packets"] >= cfg.n_packets))
        )
        done = done[gflow[yes]].tolist()
        flat_view = memoryview(flat)
        self._tls.update(
            (key, (b, bytes(flat_view[a : a + n])))
            for key, b, a, n, gone in zip(
                keys, base_list, at.tolist(), size.tolist(), done, strict=True
            )
            if not gone
        )
        for key in [
            key
            for key, known, gone in zip(keys, streams, done, strict=True)
            if gone and known is not None
        ]:
            del self._tls[key]
        # Each range, against every packet of its stream (in stream coordinates).
        idx = _ranges(first[rs], lengths[rs])
        za, zb = np.repeat(za, lengths[rs]), np.repeat(zb, lengths[rs])
        hit = (za < pos[idx] + avail[idx]) & (zb > pos[idx])
        idx, za, zb = idx[hit], za[hit], zb[hit]
        out = (pk[idx], za - pos[idx], zb - pos[idx])
        return out

    # ------------------------------------------------------------------ output
    def _take_snippets(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """The snippets of the flows in rows ``slots`` (output row ``row``, sorted by it) and
        their header fields to zero in ``flow_head``; the store forgets them."""
        row_of_slot = np.full(self._pool.used, -1, dtype=np.int64)
        row_of_slot[slots] = np.arange(len(slots))
        store = self._snippets
        idx, row = store.take(row_of_slot)
        by_row = _stable_order(row, len(slots))
        idx = idx[by_row]
        sn = {name: arr[idx] for name, arr in store.fields.items() if name not in ("slot", "width")}
        sn["row"] = row[by_row]
        zr = row_of_slot[self._head_zero_slot]
        done = zr >= 0
        by_row = np.argsort(zr[done], kind="stable")
        sn["zero_row"] = zr[done][by_row]
        sn["zero_at"] = self._head_zero_at[done][by_row]
        self._head_zero_slot = self._head_zero_slot[~done]
        self._head_zero_at = self._head_zero_at[~done]
        return sn

    def _byte_columns(
        self, snippets: dict[str, np.ndarray], buf: np.ndarray, lo: int, hi: int
    ) -> FlowChunk:
        """``bytes``, ``payload_packet_bytes`` (when configured), ``flow_head`` and
        ``payload_head`` of output rows ``lo:hi``, laid out from their snippets."""
        cfg = self.config
        n = hi - lo
        lh, lp, head = cfg.header_bytes, cfg.payload_bytes, cfg.head_bytes
        a, b = np.searchsorted(snippets["row"], [lo, hi])
        sn = {name: arr[a:b] for name, arr in snippets.items() if not name.startswith("zero")}
        row = sn["row"] - lo
        start, rank = sn["start"], sn["rank"].astype(np.int64)

        # Every piece is placed exactly (nothing after it) and pieces do not overlap, so all
        # of a column's pieces are placed at once: a packet's header and payload in its row
        # of ``bytes`` (and in its row of ``payload_packet_bytes``), and each flow's pieces
        # back to back in its heads. The packet columns are rows of one array (``bytes``
        # first), and so are both heads (flow_head rows first).
        slots = n * cfg.n_packets
        with_pp = cfg.payload_packet_bytes
        by_packet = np.zeros((2 if with_pp else 1, slots, lh + lp), dtype=np.uint8)
        packet_at = (row * cfg.n_packets + rank) * (lh + lp)  # (bytes_* are 0 from rank N on)
        dst_at, src_at = [packet_at, packet_at], [start, start + sn["header"]]
        count = [sn["bytes_header"], sn["bytes_payload"]]
        if with_pp:
            pp = np.flatnonzero(sn["payload_packet_rank"] >= 0)
            pp_rank = sn["payload_packet_rank"][pp].astype(np.int64)
            pp_at = (slots + row[pp] * cfg.n_packets + pp_rank) * (lh + lp)
            dst_at += [pp_at, pp_at]
            src_at += [start[pp], start[pp] + sn["header"][pp]]
            count += [np.minimum(sn["header"][pp], lh), sn["payload_packet_payload"][pp]]
        place_pieces(
            by_packet.reshape(-1),
            np.concatenate(dst_at),
            np.repeat(np.array([0, lh] * (len(dst_at) // 2), np.int64), [len(d) for d in dst_at]),
            buf,
            np.concatenate(src_at),
            np.concatenate(count),
            lh + lp,
        )
        heads = np.zeros((2, n, head), dtype=np.uint8)
        flow_head, payload_head = heads[0], heads[1]
        flat_fh = flow_head.reshape(-1)
        place_pieces(
            heads.reshape(-1),
            np.concatenate([row, row + n]) * head,
            np.concatenate([sn["flow_head_at"], sn["payload_head_at"]]),
            buf,
            np.concatenate([start, start + sn["header"]]),
            np.concatenate([sn["flow_head_n"], sn["payload_head_n"]]),
            head,
        )
        za, zb = np.searchsorted(snippets["zero_row"], [lo, hi])
        if zb > za:
            zero_row = snippets["zero_row"][za:zb] - lo
            flat_fh[zero_row * head + snippets["zero_at"][za:zb]] = 0
        out = {"bytes": by_packet[0].reshape(n, -1)}
        if with_pp:
            out["payload_packet_bytes"] = by_packet[1].reshape(n, -1)
        out.update(flow_head=flow_head, payload_head=payload_head)
        return out

    def _emit(
        self,
        st: dict[str, np.ndarray],
        reason: np.ndarray,
        which: np.ndarray | None = None,
        in_order: bool = False,
        release: bool = True,
    ) -> Iterator[FlowChunk]:
        """Output chunks (at most ``EMIT_ROWS`` flows each) of ended flows; frees their rows.

        The flows are those at ``which`` in ``st`` (all when None), put in first-packet
        order unless ``in_order`` says they are.

        The flows leave the open-flow state now; their chunks are laid out as they are taken,
        from pool rows (released once read) and snippets that stay as they are until the
        next slice (which starts with the snippet buffer's compaction). Small chunks keep every
        temporary small enough for the allocator to reuse its memory: writing fresh pages
        costs more than laying out the columns. ``release=False`` (an early decision) keeps
        the rows, their sequence columns zeroed: the flow stays open to find its end.
        """
        if not in_order:
            first = st["first_index"] if which is None else st["first_index"][which]
            order = _stable_order(first)
            order = order if which is None else which[order]
            st = {k: v[order] for k, v in st.items()}
            reason = reason[order]
        slots = st["slot"]
        snippets = self._take_snippets(slots)
        buffer = self._snippets.buffer
        if self._tls:
            tls_rows = np.flatnonzero((st["tls_c2s"] == _TLS_YES) | (st["tls_s2c"] == _TLS_YES))
            rows = slots[tls_rows].tolist()
            gone = set(zip(rows, itertools.repeat(True))) | set(zip(rows, itertools.repeat(False)))
            for key in self._tls.keys() & gone:
                del self._tls[key]
        return self._chunks(st, reason, snippets, buffer, release)

    def _chunks(
        self,
        st: dict[str, np.ndarray],
        reason: np.ndarray,
        snippets: dict[str, np.ndarray],
        buffer: np.ndarray,
        release: bool,
    ) -> Iterator[FlowChunk]:
        n = len(reason)
        slots = st["slot"]
        for lo in range(0, n, EMIT_ROWS):
            hi = min(lo + EMIT_ROWS, n)
            rows = slots[lo:hi]
            out: FlowChunk = {}
            for name in schema.SEQUENCE_COLUMNS:
                if name not in _BYTE_COLUMNS:
                    # Each row as one item of a void dtype: one memcpy a row, not a loop.
                    column = self._pool.arrays[name]
                    row_items = column.view(f"V{column.strides[0]}").reshape(-1)
                    out[name] = row_items[rows].view(column.dtype).reshape(len(rows), -1)
                    row_items[rows] = np.zeros(1, row_items.dtype)  # while in the cache
            if release:
                self._pool.release(rows)
            out.update(self._byte_columns(snippets, buffer, lo, hi))
            yield self._flow_columns(out, {k: v[lo:hi] for k, v in st.items()}, reason[lo:hi])

    def _flow_columns(
        self, out: FlowChunk, st: dict[str, np.ndarray], reason: np.ndarray
    ) -> FlowChunk:
        """Add the per-flow columns and the filter verdict of ended flows to ``out``."""
        cfg = self.config
        n = len(reason)

        client_lo = st["client_is_lo"]
        lo_port = (st["ports"] >> 16).astype(np.int32)
        hi_port = (st["ports"] & 0xFFFF).astype(np.int32)
        both = self._address_text(
            np.concatenate([st["lo_hi"], st["hi_hi"]]),
            np.concatenate([st["lo_lo"], st["hi_lo"]]),
            np.concatenate([st["ipv"], st["ipv"]]),
        )  # each distinct address formatted once
        lo_ip, hi_ip = both[:n], both[n:]
        proto = st["proto"]
        packets = st["packets"]
        out["capture"] = np.full(n, self.capture, dtype=object)
        out["protocol"] = proto.astype(np.uint8)
        out["ip_version"] = st["ipv"].astype(np.uint8)
        out["client_ip"] = np.where(client_lo, lo_ip, hi_ip)
        out["client_port"] = np.where(client_lo, lo_port, hi_port).astype(np.int32)
        out["server_ip"] = np.where(client_lo, hi_ip, lo_ip)
        out["server_port"] = np.where(client_lo, hi_port, lo_port).astype(np.int32)
        out["start_time"] = st["start"]
        out["end_time"] = st["last"]
        out["packets"] = packets
        out["packets_c2s"] = st["packets_c2s"]
        out["packets_s2c"] = packets - st["packets_c2s"]
        out["ip_bytes"] = st["ip_bytes"]
        out["ip_bytes_c2s"] = st["ip_bytes_c2s"]
        out["ip_bytes_s2c"] = st["ip_bytes"] - st["ip_bytes_c2s"]
        out["payload_bytes"] = st["payload_bytes"]
        out["payload_bytes_c2s"] = st["payload_bytes_c2s"]
        out["payload_bytes_s2c"] = st["payload_bytes"] - st["payload_bytes_c2s"]
        out["syn_seen"] = st["syn_seen"].copy()
        out["handshake_complete"] = st["handshake_complete"].copy()
        out["end_reason"] = np.array(END_REASONS, dtype=object)[reason]
        if "decision_time" in st:
            out["decided_packets"] = st["decided_packets"]
            out["decision_time"] = st["decision_time"]
        if self.buckets.count > 1:
            out["bucket"] = self.buckets.of(st["h"])

        # Filters, first matching rule wins (order: what the flow is, then how it went).
        tcp = proto == TCP
        # A SYN that never led to a complete handshake nor to any data: a failed attempt.
        # (Data without a seen handshake, e.g. a capture of one direction only, is kept.)
        failed_handshake = (
            tcp & st["syn_seen"] & ~st["handshake_complete"] & (st["payload_bytes"] == 0)
        )
        rule = np.zeros(n, dtype=np.int8)
        checks = [
            (cfg.drop_non_tcp_udp, (proto != TCP) & (proto != UDP), 5),
            (cfg.drop_dns, (lo_port == DNS_PORT) | (hi_port == DNS_PORT), 3),
            (cfg.drop_llmnr, (lo_port == LLMNR_PORT) | (hi_port == LLMNR_PORT), 4),
            (cfg.drop_failed_handshake, failed_handshake, 1),
            (cfg.drop_no_payload, tcp & (st["payload_bytes"] == 0), 2),
        ]
        for enabled, match, code in checks:
            if enabled:
                rule = np.where((rule == 0) & match, code, rule).astype(np.int8)
        out["filter_reason"] = np.array(FILTER_REASONS, dtype=object)[rule]
        if self.decide_after is not None:  # filters judged what was seen, the record is cut
            out.update(first_packets(out, self.decide_after, cfg))
        self.stats.flows += n
        counts = np.bincount(rule, minlength=len(FILTER_REASONS))
        for code in np.flatnonzero(counts[1:]) + 1:
            name = FILTER_REASONS[code]
            self.stats.removed[name] = self.stats.removed.get(name, 0) + int(counts[code])
        return out


class FlowStream(Iterator[FlowChunk]):
    """Iterator over a capture's flow chunks; ``stats`` is complete once it is exhausted."""

    def __init__(
        self,
        packets: Iterable[ParsedPackets],
        config: FlowConfig,
        capture: str,
        buckets: Buckets = Buckets(),
        decide_after: int | None = None,
        decide_early: bool = False,
    ) -> None:
        self._packets = iter(packets)
        self._assembler = FlowAssembler(config, capture, buckets, decide_after, decide_early)
        self._done = False
        self._current: Iterator[FlowChunk] = iter(())

    @property
    def stats(self) -> AssemblyStats:
        return self._assembler.stats

    def __iter__(self) -> FlowStream:
        return self

    def __next__(self) -> FlowChunk:
        while True:
            chunk = next(self._current, None)
            if chunk is not None:
                return chunk
            if self._done:
                raise StopIteration
            try:
                parsed = next(self._packets)
            except StopIteration:
                self._done = True
                self._current = self._assembler.iter_finish()
                continue
            self._current = self._assembler.iter_push(parsed)


def assemble_flows(
    packets: Iterable[ParsedPackets],
    config: FlowConfig,
    capture: str,
    buckets: Buckets = Buckets(),
    decide_after: int | None = None,
    decide_early: bool = False,
) -> FlowStream:
    """Stream a capture's flows: chunks of ended flows as they end, the rest at the end.

    ``capture`` names the source file in every flow. Removed flows are included with their
    ``filter_reason``; read ``.stats`` of the returned iterator for what could not be placed.
    ``buckets`` keeps only the flows of some buckets (see :class:`Buckets`).

    ``decide_after=K`` (at most ``config.m_packets``) is for classifying traffic as it
    arrives: a flow's record holds only its first K packets (modalities, counters and end
    time, as :func:`dmfnet.flows.early.first_packets` cuts a stored flow) and is emitted as
    soon as the flow has them, with ``end_reason`` ``open`` when the flow goes on; a TCP
    flow without payload so far waits for its first payload packet, and a TCP flow closed
    (FIN both ways, or RST) is emitted at once, without waiting for the stragglers of its
    close or its idle timeout. An emitted flow that goes on keeps only its counters and
    close state, to find its end, and is not emitted again. Flows
    that end sooner are emitted at their end. Every record has two more columns:
    ``decided_packets`` (packets seen at the decision) and ``decision_time`` (capture time
    of the decision: the deciding packet, the closing packet, or the capture's clock when
    the idle timeout or the capture ends). ``decide_early`` alone gives the same records
    as without it, but a closed flow is emitted at its close, and with the two columns.
    """
    return FlowStream(packets, config, capture, buckets, decide_after, decide_early)
