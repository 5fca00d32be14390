"""What the byte modalities must not carry: addresses, ports, checksums, TLS names and certificates.

Zeroing keeps lengths, so every offset in the byte columns stays valid (SPEC §Pipeline 4).

* IPv4/IPv6 source and destination addresses and TCP/UDP ports are zeroed.
* The IPv4 header checksum and the TCP, UDP and ICMPv6 checksums are zeroed too: they are
  computed over the addresses (pseudo-header), so they would let a model (or a reader) check
  guesses of the hidden addresses.
* TLS (1.0-1.2 and the plaintext part of 1.3) over TCP: the host names of the ClientHello
  ``server_name`` extension and the bodies of Certificate handshake messages are zeroed.
  Each direction's TCP byte stream is rebuilt from sequence numbers (so retransmissions and
  records or messages that span segments are handled) and walked record by record.
  DTLS and QUIC are not parsed (QUIC's Initial packets are encrypted anyway; DTLS certificates
  in the clear are left as they are). Addresses quoted inside ICMP error payloads are not
  zeroed (such flows are removed by the non-TCP/UDP filter by default).
"""

from __future__ import annotations

import numpy as np

TLS_CHANGE_CIPHER_SPEC = 20
TLS_HANDSHAKE = 22
TLS_CLIENT_HELLO = 1
TLS_SERVER_HELLO = 2
TLS_CERTIFICATE = 11
TLS_SNI_EXTENSION = 0

# IPv6 extension headers whose length field counts 8-octet units beyond the first 8 octets.
_IPV6_EXT_8 = np.zeros(256, dtype=bool)
_IPV6_EXT_8[[0, 43, 60, 135, 139, 140, 253, 254]] = True
_IPV6_FRAGMENT = 44
_IPV6_AH = 51

_IPV4_FIELDS = np.array([10, 11, *range(12, 20)], dtype=np.int64)  # checksum, addresses
_IPV6_FIELDS = np.arange(8, 40, dtype=np.int64)  # addresses
_TCP_FIELDS = np.array([0, 1, 2, 3, 16, 17], dtype=np.int64)  # ports, checksum
_UDP_FIELDS = np.array([0, 1, 2, 3, 6, 7], dtype=np.int64)  # ports, checksum
_ICMPV6_FIELDS = np.array([2, 3, -1, -1, -1, -1], dtype=np.int64)  # checksum


def transport_offsets(
    data: np.ndarray,
    l3_offset: np.ndarray,
    l3_caplen: np.ndarray,
    ip_version: np.ndarray,
    protocol: np.ndarray,
) -> np.ndarray:
    """Offset of the transport header from the IP header, per packet (int64).

    IPv4: the IHL. IPv6: 40 plus the extension headers before ``protocol`` (walked
    vectorised; only packets that have extension headers take part in the walk).
    """
    n = len(l3_offset)
    l4 = np.full(n, 40, dtype=np.int64)
    end = len(data)
    v4 = ip_version == 4
    if v4.any():
        first = data[np.minimum(l3_offset[v4], end - 1)]
        l4[v4] = (first & 0x0F).astype(np.int64) * 4
    v6 = np.flatnonzero(ip_version == 6)
    if len(v6):
        base = l3_offset[v6]
        cap = l3_caplen[v6].astype(np.int64)
        nxt = data[np.minimum(base + 6, end - 1)].astype(np.int64)
        off = np.full(len(v6), 40, dtype=np.int64)
        walking = (nxt != protocol[v6]) & (
            _IPV6_EXT_8[nxt] | (nxt == _IPV6_FRAGMENT) | (nxt == _IPV6_AH)
        )
        for _ in range(16):
            w = np.flatnonzero(walking & (off + 2 <= cap))
            if not len(w):
                break
            at = base[w] + off[w]
            ext_next = data[np.minimum(at, end - 1)].astype(np.int64)
            ext_len = data[np.minimum(at + 1, end - 1)].astype(np.int64)
            kind = nxt[w]
            size = np.where(kind == _IPV6_FRAGMENT, 8, (ext_len + 1) * 8)
            size = np.where(kind == _IPV6_AH, (ext_len + 2) * 4, size)
            off[w] += size
            nxt[w] = ext_next
            walking[w] = (ext_next != protocol[v6][w]) & (
                _IPV6_EXT_8[ext_next] | (ext_next == _IPV6_FRAGMENT) | (ext_next == _IPV6_AH)
            )
        l4[v6] = off
    return l4


def header_field_offsets(
    ip_version: np.ndarray, protocol: np.ndarray, l4_offset: np.ndarray
) -> np.ndarray:
    """Offsets (from the IP header) of the bytes to zero per packet, ``(n, 38)``, -1 unused."""
    n = len(ip_version)
    ip_part = np.full((n, 32), -1, dtype=np.int64)
    ip_part[ip_version == 6] = _IPV6_FIELDS
    ip_part[ip_version == 4, : len(_IPV4_FIELDS)] = _IPV4_FIELDS
    l4_part = np.full((n, 6), -1, dtype=np.int64)
    for proto, fields in ((6, _TCP_FIELDS), (17, _UDP_FIELDS), (58, _ICMPV6_FIELDS)):
        sel = protocol == proto
        if sel.any():
            rel = l4_offset[sel, None] + fields[None, :]
            l4_part[sel] = np.where(fields[None, :] >= 0, rel, -1)
    return np.concatenate([ip_part, l4_part], axis=1)


def looks_like_tls(first_bytes: np.ndarray) -> np.ndarray:
    """Whether a direction's first payload starts a TLS handshake record: ``(n, 3)`` -> bool."""
    return (
        (first_bytes[:, 0] == TLS_HANDSHAKE) & (first_bytes[:, 1] == 3) & (first_bytes[:, 2] <= 4)
    )


def _map_handshake_range(
    a: int, b: int, pieces: list[tuple[int, int, int]], out: list[tuple[int, int]]
) -> None:
    """Turn a range of the handshake-message stream into ranges of the TCP byte stream.

    ``pieces`` maps handshake-stream spans to record bodies. Beyond the last known record
    the range continues contiguously (the next record header is then zeroed too: a few
    bytes too many rather than a certificate byte too few).
    """
    hs_end = s_end = 0
    for hs_start, s_start, length in pieces:
        lo, hi = max(a, hs_start), min(b, hs_start + length)
        if lo < hi:
            out.append((s_start + lo - hs_start, s_start + hi - hs_start))
        hs_end, s_end = hs_start + length, s_start + length
    if b > hs_end:
        lo = max(a, hs_end)
        out.append((s_end + lo - hs_end, s_end + b - hs_end))


def _client_hello_names(hs: bytes, body: int, body_end: int) -> list[tuple[int, int]]:
    """Ranges (handshake-stream coordinates) of the server_name host names of a ClientHello."""
    end = min(body_end, len(hs))
    p = body + 34  # client_version, random
    if p + 1 > end:
        return []
    p += 1 + hs[p]  # session_id
    if p + 2 > end:
        return []
    p += 2 + (hs[p] << 8 | hs[p + 1])  # cipher_suites
    if p + 1 > end:
        return []
    p += 1 + hs[p]  # compression_methods
    if p + 2 > end:
        return []
    ext_end = min(end, p + 2 + (hs[p] << 8 | hs[p + 1]))
    p += 2
    names: list[tuple[int, int]] = []
    while p + 4 <= ext_end:
        ext_type = hs[p] << 8 | hs[p + 1]
        ext_len = hs[p + 2] << 8 | hs[p + 3]
        if ext_type == TLS_SNI_EXTENSION:
            q, sni_end = p + 6, p + 4 + ext_len  # skip server_name_list length
            while q + 3 <= min(sni_end, len(hs)):
                name_len = hs[q + 1] << 8 | hs[q + 2]
                names.append((q + 3, q + 3 + name_len))
                q += 3 + name_len
        p += 4 + ext_len
    return names


def tls_zero_ranges(stream: bytes | bytearray) -> list[tuple[int, int]]:
    """Ranges ``[start, end)`` of one direction's TCP stream to zero: SNI names, certificates.

    ``stream`` starts at the direction's first payload byte; missing data is zeros (it stops
    the walk). Ranges may reach past the end of ``stream`` (a certificate longer than what
    was seen so far). The walk goes over handshake and ChangeCipherSpec records and stops at
    the first other record (alert, application data). After a ChangeCipherSpec the handshake
    may be encrypted (TLS 1.2 Finished) or plain (TLS 1.3 ClientHello after a
    HelloRetryRequest): a later run of handshake records is only read when its first message
    is a well-formed ClientHello, ServerHello or Certificate.
    """
    pos, n = 0, len(stream)
    ranges: list[tuple[int, int]] = []
    after_ccs = False
    while pos + 5 <= n and stream[pos + 1] == 3:
        if stream[pos] == TLS_CHANGE_CIPHER_SPEC:
            pos += 5 + (stream[pos + 3] << 8 | stream[pos + 4])
            after_ccs = True
            continue
        if stream[pos] != TLS_HANDSHAKE:
            break
        # One run of consecutive handshake records: one handshake-message stream.
        hs = bytearray()
        pieces: list[tuple[int, int, int]] = []
        logical = 0
        while pos + 5 <= n and stream[pos] == TLS_HANDSHAKE and stream[pos + 1] == 3:
            length = stream[pos + 3] << 8 | stream[pos + 4]
            pieces.append((logical, pos + 5, length))
            hs += stream[pos + 5 : pos + 5 + length]
            logical += length
            pos += 5 + length
        if after_ccs and not _plain_handshake(hs, logical):
            continue
        _handshake_ranges(hs, pieces, ranges)
    return ranges


def _plain_handshake(hs: bytearray, logical: int) -> bool:
    """Whether a run of handshake records after ChangeCipherSpec is readable, not encrypted."""
    if len(hs) < 4 or hs[0] not in (TLS_CLIENT_HELLO, TLS_SERVER_HELLO, TLS_CERTIFICATE):
        return False
    msg_len = hs[1] << 16 | hs[2] << 8 | hs[3]
    return msg_len + 4 <= logical and (len(hs) < 6 or hs[4] == 3)


def _handshake_ranges(
    hs: bytearray, pieces: list[tuple[int, int, int]], ranges: list[tuple[int, int]]
) -> None:
    h = 0
    while h + 4 <= len(hs):
        msg_type = hs[h]
        msg_len = hs[h + 1] << 16 | hs[h + 2] << 8 | hs[h + 3]
        body = h + 4
        if msg_type == TLS_CERTIFICATE:
            _map_handshake_range(body, body + msg_len, pieces, ranges)
        elif msg_type == TLS_CLIENT_HELLO:
            for a, b in _client_hello_names(hs, body, body + msg_len):
                _map_handshake_range(a, b, pieces, ranges)
        h = body + msg_len
