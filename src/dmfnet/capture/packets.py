"""Packet batches: the contract between the capture readers and flow assembly.

A capture is read as a stream of :class:`PacketBatch` (records of a chunk of the file,
in file order), and each batch is parsed, vectorised, into :class:`ParsedPackets`.
All arrays of one batch have the same length ``n``; nothing here is a Python object
per packet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PacketBatch:
    """Captured records of one chunk of a capture file, in file order."""

    data: np.ndarray  # uint8 buffer holding the records' captured bytes (mmap view or chunk)
    offset: np.ndarray  # int64 (n,), start of each record's captured bytes in ``data``
    caplen: np.ndarray  # int32 (n,), captured length
    wirelen: np.ndarray  # int32 (n,), original length on the wire
    ts: np.ndarray  # float64 (n,), epoch seconds
    linktype: np.ndarray  # int32 (n,), DLT/LINKTYPE of each record (pcapng interfaces differ)
    file_offset: np.ndarray  # int64 (n,), offset of each record in the (decompressed) file
    first_index: int  # index of the batch's first record in the whole capture
    ts_ns: np.ndarray | None = None  # int64 (n,), epoch nanoseconds (exact; ``ts`` rounds)

    def __len__(self) -> int:
        return len(self.offset)


@dataclass
class ParsedPackets:
    """Network and transport header fields of every packet of a batch (vectorised parse).

    IPv4 addresses are stored IPv4-mapped (``::ffff:a.b.c.d``) so both versions share one
    16-byte layout. Packets that are not IP have ``ip_version == 0`` and other fields 0.
    """

    batch: PacketBatch
    ip_version: np.ndarray  # uint8 (n,): 4, 6 or 0 (not IP / unparseable)
    l3_offset: np.ndarray  # int64 (n,): index of the IP header in ``batch.data`` (-1 if not IP)
    l3_caplen: np.ndarray  # int32 (n,): captured bytes from the IP header to the record's end
    protocol: np.ndarray  # uint8 (n,): transport protocol after IPv6 extension headers
    src_ip: np.ndarray  # uint8 (n, 16)
    dst_ip: np.ndarray  # uint8 (n, 16)
    src_port: np.ndarray  # uint16 (n,): 0 when the protocol has no ports
    dst_port: np.ndarray  # uint16 (n,)
    ip_len: np.ndarray  # int32 (n,): IP total length from the header (v6: 40 + payload length)
    header_len: np.ndarray  # int32 (n,): IP header + extension headers + transport header
    payload_len: np.ndarray  # int32 (n,): transport payload length by the headers' lengths
    tcp_flags: np.ndarray  # uint8 (n,): 0 for non-TCP
    tcp_window: np.ndarray  # int32 (n,): 0 for non-TCP
    tcp_seq: np.ndarray  # uint32 (n,): 0 for non-TCP
    fragment: np.ndarray  # bool (n,): a non-first IP fragment (no transport header)

    def __len__(self) -> int:
        return len(self.ip_version)
