"""Vectorised reads of fixed-width integers at many positions of one byte buffer.

Record walks and header parsing read the same field (a caplen, an ethertype, a port) at
thousands of positions at once; these gathers do it with numpy fancy indexing. A field of
``w`` bytes is read in one gather from a view of the buffer as ``w``-byte integers starting
at every byte offset (stride 1). Positions past the buffer's end are clamped byte by byte
(callers mask those results out), so a gather never raises on short records; that slower
path is taken only when some position needs it. Where the compiled part of dmfnet is
built, gathers of positions all inside the buffer are copies in C instead: about twice as
fast (each field is a cache miss, and the C loop asks for the next ones ahead).
"""

from __future__ import annotations

import numpy as np

try:  # the compiled gather (built at install when a C compiler is there)
    from dmfnet.capture._records import gather_rows
except ImportError:  # pragma: no cover - numpy fancy indexing does the same
    gather_rows = None


def _at(data: np.ndarray, pos: np.ndarray, k: int) -> np.ndarray:
    idx = pos + k
    np.clip(idx, 0, len(data) - 1, out=idx)
    return data[idx]


def _inside(data: np.ndarray, pos: np.ndarray, width: int) -> bool:
    """Whether ``width`` bytes from every position lie in the buffer."""
    return not len(pos) or (int(pos.min()) >= 0 and int(pos.max()) <= len(data) - width)


def _view(data: np.ndarray, dtype: str, width: int) -> np.ndarray:
    """``data`` as ``width``-byte integers starting at every byte offset."""
    return np.ndarray((len(data) - width + 1,), dtype, data, 0, (1,))


def _whole(data: np.ndarray, pos: np.ndarray, dtype: str, width: int) -> np.ndarray:
    """The ``width``-byte integers at ``pos`` (all inside ``data``) as int64."""
    if gather_rows is not None:
        return _copied_rows(data, pos, width).view(dtype).reshape(pos.shape).astype(np.int64)
    return _view(data, dtype, width)[pos].astype(np.int64)


def _copied_rows(data: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """``(len(pos), width)`` copy of the bytes at ``pos`` (all inside ``data``), in C."""
    pos = np.ascontiguousarray(pos, np.int64)
    out = np.empty((pos.size, width), np.uint8)
    gather_rows(np.ascontiguousarray(data), pos, width, out)
    return out


def u8(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Bytes at ``pos`` as int64."""
    return _at(data, pos, 0).astype(np.int64)


def u16be(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Big-endian (network order) 16-bit values at ``pos`` as int64."""
    if _inside(data, pos, 2):
        return _whole(data, pos, ">u2", 2)
    return (_at(data, pos, 0).astype(np.int64) << 8) | _at(data, pos, 1)


def u16le(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Little-endian 16-bit values at ``pos`` as int64."""
    if _inside(data, pos, 2):
        return _whole(data, pos, "<u2", 2)
    return (_at(data, pos, 1).astype(np.int64) << 8) | _at(data, pos, 0)


def u32be(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Big-endian 32-bit values at ``pos`` as int64."""
    if _inside(data, pos, 4):
        return _whole(data, pos, ">u4", 4)
    return (u16be(data, pos) << 16) | u16be(data, pos + 2)


def u32le(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Little-endian 32-bit values at ``pos`` as int64."""
    if _inside(data, pos, 4):
        return _whole(data, pos, "<u4", 4)
    return (u16le(data, pos + 2) << 16) | u16le(data, pos)


def u16(data: np.ndarray, pos: np.ndarray, big_endian: bool) -> np.ndarray:
    """16-bit values in the given byte order."""
    return u16be(data, pos) if big_endian else u16le(data, pos)


def u32(data: np.ndarray, pos: np.ndarray, big_endian: bool) -> np.ndarray:
    """32-bit values in the given byte order."""
    return u32be(data, pos) if big_endian else u32le(data, pos)


def rows(data: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """``(len(pos), width)`` uint8 array of the bytes ``data[p : p + width]`` for each ``p``."""
    if _inside(data, pos, width):
        if gather_rows is not None and pos.ndim == 1:
            return _copied_rows(data, pos, width)
        # gathered as opaque items: twice as fast as 2-D rows
        items = np.ndarray((len(data) - width + 1,), f"V{width}", data, 0, (1,))[pos]
        return items.view(np.uint8).reshape(len(pos), width)
    out = np.empty((len(pos), width), np.uint8)
    whole = (pos >= 0) & (pos <= len(data) - width)
    if whole.any():
        out[whole] = rows(data, pos[whole], width)
    edge = ~whole  # byte by byte, clamped
    idx = pos[edge][:, None] + np.arange(width, dtype=np.int64)
    np.clip(idx, 0, len(data) - 1, out=idx)
    out[edge] = data[idx]
    return out
