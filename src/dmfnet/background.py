"""Run one stage of a streaming pipeline in a background thread.

Reading and parsing a capture chunk, assembling flows and writing Parquet are each mostly
numpy or Arrow work that releases the GIL, so on a machine with a spare core one stage can
run ahead of the next. :func:`run_ahead` moves a producer (any iterator) into a thread
that keeps at most ``depth`` items ready; the consumer sees the same items in the same
order, the producer's exceptions are raised in the consumer at the point they happened,
and stopping the consumer early stops the producer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()
_POLL_S = 0.1  # how often a blocked producer checks whether the consumer has gone


class _Raised:
    """An exception of the producer, carried to the consumer."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def run_ahead(items: Iterable[T], depth: int = 1, name: str = "dmfnet-ahead") -> Iterator[T]:
    """The items of ``items``, produced in a background thread up to ``depth`` ahead.

    With ``depth`` 0 the items are produced in the calling thread (no thread at all).
    """
    if depth <= 0:
        yield from items
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Raised(exc))
            return
        finally:
            close = getattr(iterator, "close", None)
            if stop.is_set() and close is not None:
                close()
        put(_DONE)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
