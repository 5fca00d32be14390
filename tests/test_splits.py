"""Splits: stratified 8:1:1, whole captures apart, test duplicates of training flows removed."""

import warnings

import numpy as np
import pytest

from dmfnet.data.splits import drop_test_duplicates, split_by_file, split_random


def _is_partition(parts, n):
    every = np.concatenate(parts)
    return len(every) == n and np.array_equal(np.sort(every), np.arange(n))


def test_random_split_is_stratified_and_deterministic():
    y = np.array(["a"] * 100 + ["b"] * 50 + ["c"] * 10)
    train, val, test = split_random(y, seed=3)
    assert _is_partition((train, val, test), len(y))
    for part, share in ((train, 0.8), (val, 0.1), (test, 0.1)):
        for label, n in (("a", 100), ("b", 50), ("c", 10)):
            assert (y[part] == label).sum() == round(n * share)
    again = split_random(y, seed=3)
    assert all(np.array_equal(p, q) for p, q in zip((train, val, test), again, strict=True))
    other = split_random(y, seed=4)
    assert not np.array_equal(test, other[2])


def test_tiny_class_goes_to_training_with_a_warning():
    y = np.array([0] * 20 + [1] * 2 + [2] * 3)
    with pytest.warns(UserWarning, match="too small.*1 \\(2\\)"):
        train, val, test = split_random(y, seed=0)
    assert set(np.flatnonzero(y == 1)) <= set(train)
    # a class of 3 still gets one flow in each part
    assert [(y[p] == 2).sum() for p in (train, val, test)] == [1, 1, 1]


def test_bad_ratios_are_refused():
    with pytest.raises(ValueError, match="summing to 1"):
        split_random(np.zeros(10), seed=0, ratios=(0.8, 0.1, 0.2))


def test_file_split_keeps_captures_apart_near_the_ratios():
    rng = np.random.default_rng(0)
    captures, y = [], []
    for label in ("a", "b"):
        for f in range(20):
            n = int(rng.integers(20, 60))
            captures += [f"{label}-{f}.pcap"] * n
            y += [label] * n
    captures, y = np.array(captures), np.array(y)
    train, val, test = split_by_file(captures, y, seed=1)
    assert _is_partition((train, val, test), len(y))
    sets = [set(captures[p]) for p in (train, val, test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    for label in ("a", "b"):
        total = (y == label).sum()
        shares = [(y[p] == label).sum() / total for p in (train, val, test)]
        assert abs(shares[0] - 0.8) < 0.06 and abs(shares[1] - 0.1) < 0.06
        assert abs(shares[2] - 0.1) < 0.06
    again = split_by_file(captures, y, seed=1)
    assert all(np.array_equal(p, q) for p, q in zip((train, val, test), again, strict=True))


def test_file_split_gives_each_part_a_capture_when_it_can():
    # 3 captures of very different size: the greedy pass alone would put all in training
    captures = np.array(["big"] * 100 + ["mid"] * 10 + ["small"] * 2)
    y = np.zeros(len(captures), dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parts = split_by_file(captures, y, seed=0)
    assert all(len(p) for p in parts)
    one = np.array(["x"] * 5)
    with pytest.warns(UserWarning, match="single capture"):
        train, val, test = split_by_file(one, np.zeros(5), seed=0)
    assert len(train) == 5 and len(val) == len(test) == 0


def test_file_split_of_two_captures_holds_the_smaller_out():
    captures = np.array(["big"] * 60 + ["small"] * 40)
    with pytest.warns(UserWarning, match="two captures"):
        train, val, test = split_by_file(captures, np.zeros(100), seed=0)
    assert set(captures[train]) == {"big"} and len(train) == 60
    assert set(captures[val]) | set(captures[test]) == {"small"}
    assert len(val) > 5 and len(test) > 5 and len(val) + len(test) == 40


def test_duplicate_removal_with_an_empty_test_set():
    kept, removed = drop_test_duplicates(
        np.arange(3), np.array([], dtype=int), {"x": np.ones((3, 2))}
    )
    assert (len(kept), removed) == (0, 0)


def test_duplicates_of_training_flows_leave_the_test_set():
    rng = np.random.default_rng(0)
    bytes_ = rng.integers(0, 256, (10, 16), dtype=np.uint8)
    lengths = rng.integers(0, 1500, (10, 4)).astype(np.int32)
    bytes_[7] = bytes_[1]  # same bytes and lengths as training flow 1: a duplicate
    lengths[7] = lengths[1]
    bytes_[8] = bytes_[2]  # same bytes, other lengths: not a duplicate
    bytes_[9] = bytes_[6]  # duplicate of a test flow only: kept
    lengths[9] = lengths[6]
    train, test = np.arange(0, 6), np.arange(6, 10)
    kept, removed = drop_test_duplicates(train, test, {"bytes": bytes_, "lengths": lengths})
    assert removed == 1
    assert kept.tolist() == [6, 8, 9]
    kept, removed = drop_test_duplicates(train, test, {"bytes": bytes_})
    assert (kept.tolist(), removed) == ([6, 9], 2)
