"""A flow as its first K packets show it: the input of an early decision.

A classifier beside a sensor decides a flow before it ends, after its first K packets
(``dmfnet classify --decide-after K``), and ``dmfnet evaluate --decide-after K`` measures
how good such decisions are on a prepared dataset. Both need the same record: the flow's
modalities and counters as they stood after its K-th packet, later packets zero as in a
short flow. Flow assembly builds it from the packets (``assemble_flows(...,
decide_after=K)``); :func:`first_packets` cuts a stored record to it, from the per-packet
columns, which hold the first ``m_packets`` packets.

The cut is exact for every column but the two heads of a capture with a snap length
shorter than its packets: a head is cut after the first K packets' IP (payload) lengths,
which then overstate what the capture held, so a few bytes of the next packet may stay.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from dmfnet.flows.config import FlowConfig

# Per-packet columns: the first m_packets packets, zero-padded.
PACKET_COLUMNS = ("lengths", "directions", "iat", "payload_lengths", "tcp_windows", "tcp_flags")
# Columns a cut needs besides those it changes: column -> the columns it is computed from.
_SOURCES: dict[str, tuple[str, ...]] = {
    "packets": ("packets",),
    "packets_c2s": ("packets", "directions"),
    "packets_s2c": ("packets", "directions"),
    "ip_bytes": ("packets", "lengths"),
    "ip_bytes_c2s": ("packets", "lengths", "directions"),
    "ip_bytes_s2c": ("packets", "lengths", "directions"),
    "payload_bytes": ("packets", "payload_lengths"),
    "payload_bytes_c2s": ("packets", "payload_lengths", "directions"),
    "payload_bytes_s2c": ("packets", "payload_lengths", "directions"),
    "end_time": ("packets", "start_time", "iat"),
    "payload_packet_bytes": ("payload_lengths",),
    "flow_head": ("lengths",),
    "payload_head": ("payload_lengths",),
}


def sources(columns: list[str] | tuple[str, ...]) -> list[str]:
    """The columns :func:`first_packets` needs to cut ``columns`` (they included)."""
    need = dict.fromkeys(columns)
    for name in columns:
        need.update(dict.fromkeys(_SOURCES.get(name, ())))
    return list(need)


def first_packets(
    columns: Mapping[str, np.ndarray], k: int, config: FlowConfig = FlowConfig()
) -> dict[str, np.ndarray]:
    """The columns of ``columns`` that change when flows are cut to their first ``k`` packets.

    ``columns`` holds flow records (a flow chunk or a dataset's columns, cut or not); the
    result maps each column that a cut changes to its new array (inputs are not modified).
    Columns other than modalities and counters (addresses, labels, ``start_time``...) do
    not change. ``k`` is 1 to ``config.m_packets``; a column whose sources are missing
    (:func:`sources`) raises ``KeyError`` naming them.
    """
    if not 1 <= k <= config.m_packets:
        raise ValueError(f"k must be between 1 and m_packets ({config.m_packets}), not {k}")
    present = [name for name in columns if name in _SOURCES or name in PACKET_COLUMNS]
    present += [name for name in ("bytes",) if name in columns]
    missing = sorted(set(sources(present)) - set(columns))
    if missing:
        raise KeyError(f"cutting flows to their first packets needs the columns {missing}")
    out: dict[str, np.ndarray] = {}
    if "packets" in columns:
        packets = np.asarray(columns["packets"])
        longer = packets > k  # the rows that change
        out["packets"] = np.minimum(packets, k).astype(packets.dtype)
    else:
        longer = None
    cut = {name: np.asarray(columns[name])[:, :k] for name in PACKET_COLUMNS if name in columns}

    def counted(name: str, values: np.ndarray) -> None:
        old = np.asarray(columns[name])
        out[name] = np.where(longer, values, old).astype(old.dtype)

    if longer is not None:
        if "directions" in cut:
            c2s = cut["directions"] == 1
            s2c = cut["directions"] == -1
            if "packets_c2s" in columns:
                counted("packets_c2s", c2s.sum(axis=1))
            if "packets_s2c" in columns:
                counted("packets_s2c", s2c.sum(axis=1))
        for total, per_packet in (("ip_bytes", "lengths"), ("payload_bytes", "payload_lengths")):
            if per_packet not in cut:
                continue
            size = np.abs(cut[per_packet].astype(np.int64))
            if total in columns:
                counted(total, size.sum(axis=1))
            if "directions" in cut:
                for side, mask in ((f"{total}_c2s", c2s), (f"{total}_s2c", s2c)):
                    if side in columns:
                        counted(side, (size * mask).sum(axis=1))
        if "end_time" in columns:
            elapsed = cut["iat"].astype(np.float64).sum(axis=1)
            counted("end_time", np.asarray(columns["start_time"], dtype=np.float64) + elapsed)

    for name in PACKET_COLUMNS:
        if name in columns and np.asarray(columns[name]).shape[1] > k:
            column = np.array(columns[name])
            column[:, k:] = 0
            out[name] = column
    slot = config.header_bytes + config.payload_bytes
    if "bytes" in columns and k < config.n_packets:
        column = np.array(columns["bytes"])
        column.reshape(len(column), -1, slot)[:, k:] = 0
        out["bytes"] = column
    if "payload_packet_bytes" in columns:
        # Slot j holds the j-th payload packet: those among the first k stay.
        kept = (cut["payload_lengths"] > 0).sum(axis=1)
        column = np.array(columns["payload_packet_bytes"])
        rows = column.reshape(len(column), -1, slot)
        rows[np.arange(rows.shape[1])[None, :] >= kept[:, None]] = 0
        out["payload_packet_bytes"] = column
    for head, per_packet in (("flow_head", "lengths"), ("payload_head", "payload_lengths")):
        if head in columns:
            end = np.abs(cut[per_packet].astype(np.int64)).sum(axis=1)
            column = np.array(columns[head])
            column[np.arange(column.shape[1])[None, :] >= end[:, None]] = 0
            out[head] = column
    return out
