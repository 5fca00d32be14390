"""A pipeline stage run ahead in a thread gives the same items and fails the same way."""

import threading
import time

import pytest

from dmfnet.background import run_ahead


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_items_come_in_order(depth):
    assert list(run_ahead(iter(range(100)), depth=depth)) == list(range(100))


def test_producer_runs_in_another_thread_and_ahead():
    seen = []

    def produce():
        for i in range(3):
            seen.append((i, threading.current_thread().name))
            yield i

    items = run_ahead(produce(), depth=1, name="reader")
    assert next(items) == 0
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:  # item 1 is made before it is asked
        time.sleep(0.01)
    assert [s[0] for s in seen] == [0, 1]
    assert {s[1] for s in seen} == {"reader"}
    assert list(items) == [1, 2]


def test_exception_reaches_the_consumer_after_the_items_before_it():
    def produce():
        yield 1
        yield 2
        raise ValueError("corrupt chunk")

    got = []
    with pytest.raises(ValueError, match="corrupt chunk"):
        for item in run_ahead(produce(), depth=2):
            got.append(item)
    assert got == [1, 2]


def test_stopping_early_stops_and_closes_the_producer():
    state = {"made": 0, "closed": False}

    def produce():
        try:
            for i in range(1_000_000):
                state["made"] += 1
                yield i
        finally:
            state["closed"] = True

    producer = produce()  # still referenced here: only an explicit close runs its finally
    items = run_ahead(producer, depth=1)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()  # returns once the producer thread has ended
    assert state["closed"]
    assert state["made"] <= 6
    assert not any(t.name == "dmfnet-ahead" for t in threading.enumerate())
