"""The first packets' bytes of open flows, kept compact until the flows are emitted.

A flow's byte columns (``bytes``, ``payload_packet_bytes``, ``flow_head``, ``payload_head``)
are a few kB wide, but most flows are short: a two-packet UDP exchange carries a few hundred
bytes. Instead of a zero-padded row per open flow, the bytes each early packet contributes
(from its IP header on, as far as any byte column reaches) are copied once into one buffer,
each into a window of a power-of-two width; the byte columns are laid out only when the
flow is emitted. The buffer is compacted when most of it belongs to flows already emitted,
so its size follows the open flows, not the capture.

All copies are window copies (a row of ``width`` bytes at a time, through a strided view
of every window), never a per-byte index: that is what makes them fast.
"""

from __future__ import annotations

import functools
import mmap

import numpy as np

_MIN_WIDTH = 64  # smallest window a snippet gets
_COMPACT_MIN_BYTES = 8 << 20  # dead bytes below this never trigger a compaction
# Address space the buffer starts with: its pages exist (and count in RSS) only once written,
# so this costs a small capture nothing and spares a large one the copies of growing.
_RESERVED_BYTES = 256 << 20
_COMPACT_BLOCK = 4096  # snippets moved at once


def _windows(buffer: np.ndarray, width: int) -> np.ndarray:
    """Every ``width``-byte window of a contiguous 1-D uint8 array, as a view.

    What ``sliding_window_view`` gives (writeable when ``buffer`` is), built directly:
    it is called thousands of times per capture and the numpy helper costs 10 us a call.
    """
    return np.ndarray((len(buffer) - width + 1, width), np.uint8, buffer=buffer, strides=(1, 1))


def _window_items(buffer: np.ndarray, width: int) -> np.ndarray:
    """Every ``width``-byte window as one item of a ``width``-byte void dtype, as a view.

    Indexing it copies a window with one ``memcpy``, where the 2-D view of :func:`_windows`
    pays an inner loop per row: 3-5x faster up to a few hundred bytes.
    """
    return np.ndarray((len(buffer) - width + 1,), f"V{width}", buffer=buffer, strides=(1,))


def _take_windows(src: np.ndarray, start: np.ndarray, width: int) -> np.ndarray:
    """``(k, width)`` copy of ``src[s : s + width]`` per start (all inside ``src``)."""
    return _window_items(src, width)[start].view(np.uint8).reshape(len(start), width)


def _put_windows(dst: np.ndarray, start: np.ndarray, rows: np.ndarray) -> None:
    """``dst[s : s + width] = row`` per start, in order, for ``(k, width)`` rows."""
    width = rows.shape[1]
    if width <= 512:
        items = np.ascontiguousarray(rows).view(f"V{width}").reshape(-1)
        _window_items(dst, width)[start] = items
    else:  # the void copy is the slower one for wide rows
        _windows(dst, width)[start] = rows


def zero_windows(dst: np.ndarray, start: np.ndarray, width: int) -> None:
    """``dst[s : s + width] = 0`` per start, one window write each."""
    if len(start):
        _window_items(dst, width)[start] = np.zeros(1, f"V{width}")


def gather_windows(
    src: np.ndarray, start: np.ndarray, n: np.ndarray, width: int, pad: bool = True
) -> np.ndarray:
    """``(k, width)`` rows: ``src[s:s+n]`` zero-padded, copied a row at a time (no per-byte index).

    With ``pad`` false the bytes after ``n`` are whatever follows in ``src``. The rows are
    those of a buffer twice as wide: the padding is then one more window copy (of zeros,
    starting at ``n``) per row instead of a per-byte mask.
    """
    k = len(start)
    inside = (start >= 0) & (start + width <= len(src))
    if not pad and inside.all() and len(src) >= width:
        return _take_windows(src, start, width)
    scratch = np.empty((k, 2 * width if pad else width), dtype=np.uint8)
    out = scratch[:, :width]
    if inside.all() and len(src) >= width:
        out[...] = _take_windows(src, start, width)
    else:
        out[...] = 0
        if inside.any():
            out[inside] = _take_windows(src, start[inside], width)
        edge = np.flatnonzero(~inside & (n > 0))  # rows at the ends of the buffer
        idx = np.clip(start[edge, None] + np.arange(width), 0, len(src) - 1)
        out[edge] = src[idx]
    if pad and k:
        tail = np.arange(0, 2 * width * k, 2 * width, dtype=np.int64)
        tail += np.minimum(np.maximum(n, 0), width)
        _windows(scratch.reshape(-1), width)[tail] = _zeros(width)
    return out


@functools.cache
def _zeros(width: int) -> np.ndarray:
    zeros = np.zeros(width, dtype=np.uint8)
    zeros.flags.writeable = False
    return zeros


def place_pieces(
    dst: np.ndarray,
    row_start: np.ndarray,
    offset: np.ndarray,
    src: np.ndarray,
    src_start: np.ndarray,
    n: np.ndarray,
    row_width: int,
) -> None:
    """``dst[r+o : r+o+n] = src[s : s+n]`` for pieces inside rows of ``row_width`` bytes.

    Exactly the pieces' bytes are written (a piece is cut at its row's end), nothing after
    them, so pieces that do not overlap may be placed in any order, all at once. A piece of
    ``n`` bytes is two window copies of the power of two ``w <= n < 2w``: its first and its
    last ``w`` bytes (they overlap with the same bytes). Pieces are grouped by ``w`` (a few
    widths), never copied byte by byte.
    """
    n = np.minimum(n, row_width - offset)
    keep = np.flatnonzero(n > 0)
    if not len(keep):
        return
    n = n[keep].astype(np.int64)
    at = (row_start[keep] + offset[keep]).astype(np.int64)
    src_at = src_start[keep].astype(np.int64)
    exponent = (np.frexp(n)[1] - 1).astype(np.int8)  # w = 2**exponent <= n < 2w
    by_width = np.argsort(exponent, kind="stable")
    bounds = np.cumsum(np.bincount(exponent, minlength=1))
    lo = 0
    for e, hi in enumerate(bounds.tolist()):
        if hi == lo:
            continue
        which = by_width[lo:hi]
        lo = hi
        d, s, tail = at[which], src_at[which], n[which] - (1 << e)
        d, s = np.concatenate([d, d + tail]), np.concatenate([s, s + tail])
        _put_windows(dst, d, _take_windows(src, s, 1 << e))


def reserve_zeros(size: int) -> np.ndarray:
    """``size`` zero bytes backed by a private anonymous memory map: pages are made when
    written. (Not huge pages: on captures of short flows, with much of the buffer in use,
    they cost more memory and time than their fewer page faults save.)"""
    return np.frombuffer(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE), dtype=np.uint8)


def window_width(n: np.ndarray) -> np.ndarray:
    """Power-of-two window width (at least 64) that holds ``n`` bytes."""
    n = np.maximum(n.astype(np.int64), _MIN_WIDTH)
    return np.left_shift(1, np.ceil(np.log2(n)).astype(np.int64))


# Per snippet: which flow row and packet it belongs to, where it lies, and the extents
# of the byte columns it feeds (header and payload of ``bytes``, its pieces of the heads).
SNIPPET_FIELDS: dict[str, type] = {
    "slot": np.int64,  # the flow's row
    "rank": np.int32,  # the packet's order in its flow
    "start": np.int64,  # where the snippet starts in the buffer
    "width": np.int64,  # window reserved for it
    "header": np.int32,  # bytes of network + transport header captured (payload follows)
    "bytes_header": np.int32,  # header bytes in ``bytes``
    "bytes_payload": np.int32,  # payload bytes in ``bytes``
    # the packet's slot in ``payload_packet_bytes`` (-1: none; its header bytes there are
    # those it has in ``bytes``'s layout, the header cut at L_h) and its payload bytes there
    "payload_packet_rank": np.int32,
    "payload_packet_payload": np.int32,
    "flow_head_at": np.int32,  # where the packet starts in ``flow_head``
    "flow_head_n": np.int32,  # bytes of the packet in ``flow_head``
    "payload_head_at": np.int32,
    "payload_head_n": np.int32,
}


class SnippetStore:
    """Buffer of early-packet snippets of open flows; see the module docstring."""

    def __init__(self) -> None:
        self.buffer = reserve_zeros(_RESERVED_BYTES)
        self.used = 0  # buffer bytes handed out
        self.dead = 0  # buffer bytes of snippets whose flow was emitted
        self.count = 0  # snippets stored (live and dead)
        self.fields = {name: np.empty(1 << 10, dtype=dt) for name, dt in SNIPPET_FIELDS.items()}
        self.live = np.zeros(1 << 10, dtype=bool)

    def add(
        self,
        src: np.ndarray,
        src_start: np.ndarray,
        need: np.ndarray,
        values: dict[str, np.ndarray],
    ) -> np.ndarray:
        """Copy ``src[s : s + need]`` per snippet; return where each starts in the buffer.

        ``values`` holds the other :data:`SNIPPET_FIELDS` per snippet. The window's bytes
        after ``need`` are not meant to be read (they are whatever followed in ``src``).
        """
        k = len(src_start)
        width = window_width(need)
        start = self.used + np.cumsum(width) - width
        end = self.used + int(width.sum())
        if end > len(self.buffer):
            grown = reserve_zeros(max(2 * len(self.buffer), end))
            grown[: self.used] = self.buffer[: self.used]
            self.buffer = grown
        for w in np.unique(width).tolist():
            which = np.flatnonzero(width == w)
            rows = gather_windows(src, src_start[which], need[which], w, pad=False)
            _put_windows(self.buffer, start[which], rows)
        self.used = end
        self._reserve(self.count + k)
        at = slice(self.count, self.count + k)
        for name, arr in self.fields.items():
            if name == "start":
                arr[at] = start
            elif name == "width":
                arr[at] = width
            else:
                arr[at] = values[name]
        self.live[at] = True
        self.count += k
        return start

    def _reserve(self, rows: int) -> None:
        cap = len(self.live)
        if rows <= cap:
            return
        cap = max(2 * cap, rows)
        for name, arr in self.fields.items():
            grown = np.empty(cap, dtype=arr.dtype)
            grown[: self.count] = arr[: self.count]
            self.fields[name] = grown
        live = np.zeros(cap, dtype=bool)
        live[: self.count] = self.live[: self.count]
        self.live = live

    def take(self, row_of_slot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Snippets of the flows whose row maps to an output row (``row_of_slot >= 0``).

        Returns their indices and output rows. They are marked dead: their bytes stay in
        ``buffer`` until the next :meth:`compact` (new snippets go after ``used``), so the
        caller reads them before it compacts.
        """
        n = self.count
        slot = self.fields["slot"][:n]
        row = np.full(n, -1, dtype=np.int64)
        live = np.flatnonzero(self.live[:n])
        row[live] = row_of_slot[slot[live]]
        idx = np.flatnonzero(row >= 0)
        self.live[idx] = False
        self.dead += int(self.fields["width"][idx].sum())
        return idx, row[idx]

    def compact(self) -> None:
        """Move the live snippets to the front when most of the buffer is dead.

        In place, in blocks in buffer order: a snippet never moves past its old end, so a
        block (read whole before it is written) only overwrites snippets already moved.
        """
        if self.dead < max(_COMPACT_MIN_BYTES, self.used - self.dead):
            return
        keep = np.flatnonzero(self.live[: self.count])
        width = self.fields["width"][keep]
        old_start = self.fields["start"][keep]
        start = np.cumsum(width) - width
        for lo in range(0, len(keep), _COMPACT_BLOCK):
            block = slice(lo, lo + _COMPACT_BLOCK)
            w_block, old_block, new_block = width[block], old_start[block], start[block]
            moves = []
            for w in np.unique(w_block).tolist():
                which = np.flatnonzero(w_block == w)
                moves.append((which, _take_windows(self.buffer, old_block[which], w)))
            for which, rows in moves:
                _put_windows(self.buffer, new_block[which], rows)
        self.used = int(width.sum())
        self.dead = 0
        k = len(keep)
        for name, arr in self.fields.items():
            arr[:k] = start if name == "start" else arr[keep]
        self.live[:k] = True
        self.live[k : self.count] = False
        self.count = k
