"""Large working arrays laid on huge pages, where the system offers them.

numpy asks the kernel for transparent huge pages for arrays of 4 MiB and more; the kernel
gives them only for whole 2 MiB pages inside the allocation, which malloc does not align,
so both ends of an array stay in 4 kB pages. A block that starts and ends on 2 MiB
boundaries is all huge pages: filling it costs a page fault per 2 MiB instead of one per
4 kB. Nothing changes where huge pages are off.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

HUGE_PAGE = 2 << 20


def page_block(nbytes: int, *, zeros: bool = False) -> np.ndarray:
    """``nbytes`` uint8 (zeros when asked), from a 2 MiB boundary when ``nbytes`` is at
    least 2 MiB (the allocation is rounded up to whole huge pages, plus one for alignment:
    address space, not memory, as its pages are only made when written)."""
    make = np.zeros if zeros else np.empty
    if nbytes < HUGE_PAGE:
        return make(nbytes, np.uint8)
    pages = -(-nbytes // HUGE_PAGE)
    raw = make((pages + 1) * HUGE_PAGE, np.uint8)
    skip = -raw.ctypes.data % HUGE_PAGE
    return raw[skip : skip + nbytes]


def page_slabs(
    layout: Mapping[str, tuple[tuple[int, ...], np.dtype | type]], *, zeros: bool = False
) -> dict[str, np.ndarray]:
    """Arrays of the given ``(shape, dtype)`` by name, each a slab of one :func:`page_block`
    (at a multiple of 64 bytes from its start): several arrays filled together with the page
    faults of one block."""
    sizes = {
        name: -(-int(np.prod(shape)) * np.dtype(dtype).itemsize // 64) * 64
        for name, (shape, dtype) in layout.items()
    }
    block = page_block(sum(sizes.values()), zeros=zeros)
    out, at = {}, 0
    for name, (shape, dtype) in layout.items():
        out[name] = np.ndarray(shape, dtype, buffer=block, offset=at)
        at += sizes[name]
    return out
