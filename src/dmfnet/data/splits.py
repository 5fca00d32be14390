"""Train / validation / test splits: stratified by class, by capture file, and de-duplicated.

The paper splits flows 8:1:1 at random, stratified by class. Flows of one capture share
hosts, sessions and timing, and identical flows are common in traffic datasets, so a
random split can reward memorising; a split that keeps whole captures apart and the
removal of test flows identical to a training flow give the honest figure beside it.
Every function is deterministic for a given ``seed``; returned indices are sorted.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

Split = tuple[np.ndarray, np.ndarray, np.ndarray]  # (train, validation, test) row indices
HELD_OUT = -1  # a capture whose flows validation and test share


def _check_ratios(ratios: Sequence[float]) -> np.ndarray:
    r = np.asarray(ratios, dtype=np.float64)
    if r.shape != (3,) or np.any(r < 0) or not np.isclose(r.sum(), 1.0, atol=1e-6):
        raise ValueError(f"ratios must be three non-negative numbers summing to 1, not {ratios}")
    if r[0] <= 0:
        raise ValueError(f"the training ratio must be positive, not {r[0]}")
    return r


def _class_codes(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, not shape {y.shape}")
    return np.unique(y, return_inverse=True)


def _sizes(n: int, ratios: np.ndarray) -> tuple[int, int]:
    """Validation and test counts of a class of ``n`` flows: at least one each when asked."""
    n_val = int(np.floor(n * ratios[1] + 0.5))
    n_test = int(np.floor(n * ratios[2] + 0.5))
    if ratios[1] > 0:
        n_val = max(n_val, 1)
    if ratios[2] > 0:
        n_test = max(n_test, 1)
    while n_val + n_test > n - 1:  # keep at least one training flow
        if n_val >= n_test and n_val > (1 if ratios[1] > 0 else 0):
            n_val -= 1
        elif n_test > (1 if ratios[2] > 0 else 0):
            n_test -= 1
        else:
            break
    return n_val, n_test


def split_random(y: np.ndarray, seed: int, ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> Split:
    """Stratified random split (the paper's 8:1:1 protocol).

    Each class is shuffled and cut by ``ratios``; a class too small to give every
    non-empty part at least one flow goes wholly to training, with a warning.
    """
    r = _check_ratios(ratios)
    classes, codes = _class_codes(y)
    rng = np.random.default_rng(seed)
    needed = 1 + int(r[1] > 0) + int(r[2] > 0)
    parts: list[list[np.ndarray]] = [[], [], []]
    small = []
    for c in range(len(classes)):
        rows = np.flatnonzero(codes == c)
        rows = rows[rng.permutation(len(rows))]
        if len(rows) < needed:
            parts[0].append(rows)
            small.append(f"{classes[c]} ({len(rows)})")
            continue
        n_val, n_test = _sizes(len(rows), r)
        parts[2].append(rows[:n_test])
        parts[1].append(rows[n_test : n_test + n_val])
        parts[0].append(rows[n_test + n_val :])
    if small:
        warnings.warn(
            f"{len(small)} class(es) too small for a {needed}-way split, all in training: "
            + _listing(small),
            stacklevel=2,
        )
    return tuple(_sorted(p) for p in parts)  # type: ignore[return-value]


def split_by_file(
    captures: np.ndarray,
    y: np.ndarray,
    seed: int,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
) -> Split:
    """Split keeping every capture file in one part, near ``ratios`` by flows per class.

    Each capture goes with its majority class; per class, captures are taken in a seeded
    random order and each goes to the part furthest below its share of that class's
    flows; with enough captures, each non-empty part gets at least one. A class with two
    captures (and three parts) trains on the larger; the smaller is held out and its flows
    are shared at random between validation and test, so training and test stay apart.
    A class with one capture goes wholly to training. Both cases are warned about.
    """
    r = _check_ratios(ratios)
    captures = np.asarray(captures)
    if captures.shape != np.shape(y):
        raise ValueError(f"captures {captures.shape} and labels {np.shape(y)} differ in shape")
    classes, codes = _class_codes(y)
    files, file_of_row = np.unique(captures, return_inverse=True)
    file_of_row = file_of_row.reshape(-1)
    n_classes = len(classes)
    # flows per (file, class) -> the majority class and size of each file
    per_file = np.zeros((len(files), max(n_classes, 1)), dtype=np.int64)
    np.add.at(per_file, (file_of_row, codes), 1)
    majority = per_file.argmax(axis=1)
    size = per_file.sum(axis=1)
    rng = np.random.default_rng(seed)
    wanted_parts = [k for k in range(3) if r[k] > 0]
    part_of_file = np.zeros(len(files), dtype=np.int64)
    short: list[str] = []
    shared: list[str] = []
    for c in range(n_classes):
        members = np.flatnonzero(majority == c)
        if len(members) == 0:
            continue
        members = members[rng.permutation(len(members))]
        target = r * size[members].sum()
        got = np.zeros(3)
        chosen: dict[int, int] = {}
        for f in members:
            k = int(np.argmax(np.where(r > 0, target - got, -np.inf)))
            chosen[int(f)] = k
            got[k] += size[f]
        if len(members) == 2 and len(wanted_parts) == 3:
            small, large = sorted(members.tolist(), key=lambda f: (size[f], f))
            chosen = {large: 0, small: HELD_OUT}
            shared.append(str(classes[c]))
        elif len(members) < len(wanted_parts):
            chosen = {int(f): 0 for f in members}
            short.append(str(classes[c]))
        else:
            _fill_empty_parts(chosen, size, wanted_parts)
        for f, k in chosen.items():
            part_of_file[f] = k
    if short:
        warnings.warn(
            f"{len(short)} class(es) with a single capture, all in training: " + _listing(short),
            stacklevel=2,
        )
    if shared:
        warnings.warn(
            f"{len(shared)} class(es) with two captures: the larger trains, the smaller is "
            "shared by validation and test: " + _listing(shared),
            stacklevel=2,
        )
    part_of_row = part_of_file[file_of_row]
    held = np.flatnonzero(part_of_row == HELD_OUT)
    to_test = rng.random(len(held)) < r[2] / (r[1] + r[2])
    part_of_row[held] = np.where(to_test, 2, 1)
    return tuple(np.flatnonzero(part_of_row == k) for k in range(3))  # type: ignore[return-value]


def _fill_empty_parts(chosen: dict[int, int], size: np.ndarray, wanted: list[int]) -> None:
    """Move the smallest capture of the most populated part into each empty wanted part."""
    for k in wanted:
        if k in chosen.values():
            continue
        counts = {p: sum(1 for v in chosen.values() if v == p) for p in wanted}
        donor = max(counts, key=lambda p: (counts[p], -p))
        candidates = [f for f, v in chosen.items() if v == donor]
        smallest = min(candidates, key=lambda f: (size[f], f))
        chosen[smallest] = k


def row_digests(inputs: Mapping[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """A 128-bit hash (``S16``) of each of ``rows`` over all ``inputs`` together (in name
    order): what two flows must share to count as duplicates."""
    arrays = [np.asarray(inputs[name]) for name in sorted(inputs)]
    n = None
    for name, a in zip(sorted(inputs), arrays, strict=True):
        if n is None:
            n = len(a)
        elif len(a) != n:
            raise ValueError(f"input {name!r} has {len(a)} rows, others {n}")
    out = np.empty(len(rows), dtype="S16")
    if len(rows) == 0:
        return out
    views = [np.ascontiguousarray(a[rows]).reshape(len(rows), -1) for a in arrays]
    for i in range(len(rows)):
        h = hashlib.blake2b(digest_size=16)
        for v in views:
            h.update(v[i].tobytes())
        out[i] = h.digest()
    return out


def drop_test_duplicates(
    train_idx: np.ndarray, test_idx: np.ndarray, inputs: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, int]:
    """Drop test flows whose model inputs are byte-identical to some training flow.

    ``inputs`` maps each model input (e.g. ``bytes``, ``lengths``) to its array over all
    flows; rows are compared by a 128-bit hash of all inputs together. Returns the kept
    test indices (in their given order) and how many were removed.
    """
    if not inputs:
        raise ValueError("no model inputs given to compare")
    train_idx = np.asarray(train_idx, dtype=np.int64)
    test_idx = np.asarray(test_idx, dtype=np.int64)
    train = row_digests(inputs, train_idx)
    test = row_digests(inputs, test_idx)
    return _unseen(test_idx, test, train)


def drop_duplicate_digests(
    train_idx: np.ndarray, test_idx: np.ndarray, digests: np.ndarray
) -> tuple[np.ndarray, int]:
    """:func:`drop_test_duplicates` on digests computed beforehand (:func:`row_digests` of
    every flow, e.g. row group by row group for a dataset larger than memory)."""
    train_idx = np.asarray(train_idx, dtype=np.int64)
    test_idx = np.asarray(test_idx, dtype=np.int64)
    return _unseen(test_idx, digests[test_idx], digests[train_idx])


def _unseen(test_idx: np.ndarray, test: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, int]:
    # Fixed-width byte strings: numpy compares all 16 bytes (equal trailing zeros match).
    keep = ~np.isin(test, train)
    return test_idx[keep], int(len(test_idx) - keep.sum())


def _listing(items: list[str], limit: int = 10) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _sorted(parts: list[np.ndarray]) -> np.ndarray:
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(parts)).astype(np.int64)
