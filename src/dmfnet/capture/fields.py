"""Vectorised reads of fixed-width integers at many positions of one byte buffer.

Record walks and header parsing read the same field (a caplen, an ethertype, a port) at
thousands of positions at once; these gathers do it with numpy fancy indexing, one array
operation per byte. Positions past the buffer's end are clamped (callers mask those
results out), so a gather never raises on short records.
"""

from __future__ import annotations

import numpy as np


def _at(data: np.ndarray, pos: np.ndarray, k: int) -> np.ndarray:
    idx = pos + k
    np.clip(idx, 0, len(data) - 1, out=idx)
    return data[idx]


def u8(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Bytes at ``pos`` as int64."""
    return _at(data, pos, 0).astype(np.int64)


def u16be(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Big-endian (network order) 16-bit values at ``pos`` as int64."""
    return (_at(data, pos, 0).astype(np.int64) << 8) | _at(data, pos, 1)


def u16le(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Little-endian 16-bit values at ``pos`` as int64."""
    return (_at(data, pos, 1).astype(np.int64) << 8) | _at(data, pos, 0)


def u32be(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Big-endian 32-bit values at ``pos`` as int64."""
    return (u16be(data, pos) << 16) | u16be(data, pos + 2)


def u32le(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Little-endian 32-bit values at ``pos`` as int64."""
    return (u16le(data, pos + 2) << 16) | u16le(data, pos)


def u16(data: np.ndarray, pos: np.ndarray, big_endian: bool) -> np.ndarray:
    """16-bit values in the given byte order."""
    return u16be(data, pos) if big_endian else u16le(data, pos)


def u32(data: np.ndarray, pos: np.ndarray, big_endian: bool) -> np.ndarray:
    """32-bit values in the given byte order."""
    return u32be(data, pos) if big_endian else u32le(data, pos)


def rows(data: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """``(len(pos), width)`` uint8 array of the bytes ``data[p : p + width]`` for each ``p``."""
    idx = pos[:, None] + np.arange(width, dtype=np.int64)
    np.clip(idx, 0, len(data) - 1, out=idx)
    return data[idx]
