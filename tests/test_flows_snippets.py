"""The snippet buffer behind the byte columns: window copies, padding, take and compaction."""

import numpy as np

from dmfnet.flows import snippets
from dmfnet.flows.snippets import SnippetStore, gather_windows, place_pieces, window_width


def _values(k: int, slot: np.ndarray) -> dict[str, np.ndarray]:
    zeros = np.zeros(k, dtype=np.int64)
    names = [n for n in snippets.SNIPPET_FIELDS if n not in ("slot", "start", "width")]
    return {"slot": slot, **{n: zeros for n in names}}


def test_gather_windows_pads_with_zeros_and_reads_the_buffer_ends():
    src = np.arange(1, 21, dtype=np.uint8)
    rows = gather_windows(src, np.array([0, 5, 18]), np.array([3, 0, 2]), 4)
    assert rows.tolist() == [[1, 2, 3, 0], [0, 0, 0, 0], [19, 20, 0, 0]]
    raw = gather_windows(src, np.array([2]), np.array([1]), 4, pad=False)
    assert raw.tolist() == [[3, 4, 5, 6]]


def test_place_pieces_concatenates_pieces_in_rows_and_keeps_other_rows():
    src = np.arange(1, 101, dtype=np.uint8)
    dst = np.zeros(2 * 70, dtype=np.uint8)
    rows = np.array([0, 70])
    place_pieces(dst, rows, np.array([0, 0]), src, np.array([0, 50]), np.array([30, 10]), 70)
    place_pieces(dst, rows[:1], np.array([30]), src, np.array([90]), np.array([10]), 70)
    expected = np.zeros(140, dtype=np.uint8)
    expected[:30] = src[:30]
    expected[30:40] = src[90:100]
    expected[70:80] = src[50:60]
    assert dst.tolist() == expected.tolist()


def test_window_width_is_a_power_of_two_of_at_least_64():
    assert window_width(np.array([0, 1, 64, 65, 200, 1025])).tolist() == [
        64, 64, 64, 128, 256, 2048,
    ]  # fmt: skip


def test_store_keeps_bytes_through_take_and_compaction(monkeypatch):
    monkeypatch.setattr(snippets, "_COMPACT_MIN_BYTES", 0)
    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, 5000, dtype=np.uint8)
    store = SnippetStore()
    starts = np.array([0, 100, 1000, 3000])
    need = np.array([10, 300, 70, 5])
    at = store.add(src, starts, need, _values(4, np.array([7, 8, 9, 7])))
    for a, s, k in zip(at, starts, need, strict=True):
        assert (store.buffer[a : a + k] == src[s : s + k]).all()
    row_of_slot = np.array([-1] * 7 + [1, 0, -1])  # emit the flows in rows 7 and 8
    idx, row = store.take(row_of_slot)
    assert idx.tolist() == [0, 1, 3] and row.tolist() == [1, 0, 1]
    store.compact()  # most of the buffer is dead: row 9's snippet moves to the front
    assert store.count == 1 and store.dead == 0 and store.fields["start"][0] == 0
    assert (store.buffer[:70] == src[1000:1070]).all()
    assert store.fields["slot"][:1].tolist() == [9]
    assert store.take(np.array([-1] * 9 + [0]))[0].tolist() == [0]
