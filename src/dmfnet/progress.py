"""One progress bar over bytes read, for every command that reads captures."""

from __future__ import annotations

import sys
from typing import Any


def byte_progress(total: int, desc: str, enabled: bool = True) -> Any:
    """A tqdm bar on stderr counting bytes of captures read (disabled: a silent stand-in)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
    )
