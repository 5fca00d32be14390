"""One progress bar over bytes read, for every command that reads captures."""

from __future__ import annotations

import sys
from typing import Any


class _Silent:
    """A bar that is not shown: it only counts (tqdm is not even imported: 25 ms)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str) -> None:
        """tqdm's note after the bar (tasks done, say): nothing to show."""

    def close(self) -> None:
        pass


def byte_progress(total: int, desc: str, enabled: bool = True) -> Any:
    """A tqdm bar on stderr counting bytes of captures read; a silent stand-in when disabled
    or when stderr is not a terminal (a log file or a pipe gets no bar redrawn in it)."""
    if not enabled or not _is_terminal(sys.stderr):
        return _Silent(total)
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
