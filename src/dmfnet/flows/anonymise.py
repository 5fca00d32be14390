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

from dmfnet.flows.snippets import place_pieces

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


_MANY_STEPS = 48  # steps of one vectorised walk; streams still walking then go one by one
_FOUR = np.arange(4)


def _u16(flat: np.ndarray, at: np.ndarray) -> np.ndarray:
    return flat[at].astype(np.int64) << 8 | flat[at + 1]


def tls_zero_ranges_many(
    flat: np.ndarray, start: np.ndarray, length: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`tls_zero_ranges` of many streams at once: (stream, start, end) arrays.

    Stream ``j`` is ``flat[start[j] : start[j] + length[j]]``. The walks (records, then the
    handshake messages of each run of handshake records, then ClientHello extensions and
    server names) advance every stream one step at a time with numpy, like a pointer chase:
    most streams have a few records and messages. A stream still walking after
    ``_MANY_STEPS`` steps of any walk is walked by :func:`tls_zero_ranges` instead. The
    ranges cover the same bytes as :func:`tls_zero_ranges` (possibly split differently, in
    another order, with empty ranges left out).
    """
    flat = np.concatenate([flat, np.zeros(8, dtype=np.uint8)])  # reads a few bytes past
    start = start.astype(np.int64)
    length = length.astype(np.int64)
    empty = np.empty(0, dtype=np.int64)
    slow = np.zeros(len(start), dtype=bool)

    # Records: each stream's position, whether a ChangeCipherSpec came, whether the last
    # record was a handshake record (so that the next one continues its run).
    pos = np.zeros(len(start), dtype=np.int64)
    after = np.zeros(len(start), dtype=bool)
    in_run = np.zeros(len(start), dtype=bool)
    run_of = np.full(len(start), -1, dtype=np.int64)
    rec_run, rec_body, rec_len, run_stream, run_after = [], [], [], [], []
    runs = 0
    live = np.flatnonzero(length >= 5)
    for _ in range(_MANY_STEPS):
        if not len(live):
            break
        p = pos[live]
        at = start[live] + np.minimum(p, length[live])
        ok = (p + 5 <= length[live]) & (flat[at + 1] == 3)
        kind = flat[at]
        ccs = ok & (kind == TLS_CHANGE_CIPHER_SPEC)
        hs = ok & (kind == TLS_HANDSHAKE)
        new = live[hs & ~in_run[live]]
        run_of[new] = runs + np.arange(len(new))
        runs += len(new)
        run_stream.append(new)
        run_after.append(after[new])
        size = _u16(flat, at + 3)
        rec_run.append(run_of[live[hs]])
        rec_body.append(p[hs] + 5)
        rec_len.append(size[hs])
        in_run[live] = hs
        after[live[ccs]] = True
        step = ccs | hs
        pos[live[step]] = p[step] + 5 + size[step]
        live = live[step & (pos[live] + 5 <= length[live])]
    slow[live] = True

    run_stream_a = np.concatenate([empty, *run_stream])
    run_after_a = np.concatenate([np.empty(0, dtype=bool), *run_after])
    rec_run_a = np.concatenate([empty, *rec_run])
    order = np.argsort(rec_run_a, kind="stable")  # records of a run together, in order
    rec_run_a = rec_run_a[order]
    rec_body_a = np.concatenate([empty, *rec_body])[order]
    rec_len_a = np.concatenate([empty, *rec_len])[order]
    first_rec = np.searchsorted(rec_run_a, np.arange(runs))
    last_rec = np.append(first_rec[1:], len(rec_run_a)) - 1
    rstream = run_stream_a[rec_run_a]
    avail = np.clip(length[rstream] - rec_body_a, 0, rec_len_a)  # body bytes in the stream
    logical_end = np.cumsum(rec_len_a)
    total = np.add.reduceat(rec_len_a, first_rec) if runs else empty
    run_base = logical_end[last_rec] - total if runs else empty
    logical = logical_end - rec_len_a - run_base[rec_run_a]  # piece start in its run
    hs_len = np.add.reduceat(avail, first_rec) if runs else empty
    # Each run's handshake-message stream (its record bodies back to back) in one buffer
    # after the streams: message and extension fields are then read with plain gathers. A
    # run of one record is read where its body lies in the streams, the others are copied.
    copy = (last_rec > first_rec)[rec_run_a]
    copy_len = np.where(last_rec > first_rec, hs_len, 0)
    hs_off = len(flat) + np.cumsum(copy_len) - copy_len
    single = last_rec == first_rec
    hs_off[single] = start[run_stream_a[single]] + rec_body_a[first_rec[single]]
    hs_flat = np.concatenate([flat, np.zeros(int(copy_len.sum()) + 8, dtype=np.uint8)])
    place_pieces(hs_flat, hs_off[rec_run_a[copy]] + logical[copy], np.zeros(int(copy.sum()),
                 np.int64), flat, start[rstream[copy]] + rec_body_a[copy], avail[copy],
                 1 << 62)  # fmt: skip
    last = len(hs_flat) - 1

    def hs_byte(run: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Byte ``x`` of each run's handshake stream (any byte when ``x >= hs_len``)."""
        return hs_flat[np.minimum(hs_off[run] + x, last)].astype(np.int64)

    def hs_u16(run: np.ndarray, x: np.ndarray) -> np.ndarray:
        at = np.minimum(hs_off[run] + x, last - 1)
        return hs_flat[at].astype(np.int64) << 8 | hs_flat[at + 1]

    # Runs after a ChangeCipherSpec are read only when they look like plain handshakes.
    r = np.arange(runs)
    keep = np.ones(runs, dtype=bool)
    if run_after_a.any():
        a = np.flatnonzero(run_after_a)
        b0, b4 = hs_byte(a, np.zeros(len(a), np.int64)), hs_byte(a, np.full(len(a), 4))
        msg_len = hs_byte(a, np.ones(len(a), np.int64)) << 16 | hs_u16(a, np.full(len(a), 2))
        plain = (hs_len[a] >= 4) & (
            (b0 == TLS_CLIENT_HELLO) | (b0 == TLS_SERVER_HELLO) | (b0 == TLS_CERTIFICATE)
        )
        plain &= (msg_len + 4 <= total[a]) & ((hs_len[a] < 6) | (b4 == 3))
        keep[a] = plain

    # Handshake messages of each run: certificates, ClientHellos.
    found_run, found_a, found_b = [], [], []  # handshake-stream ranges to zero
    hello_run, hello_body, hello_end = [], [], []
    h = np.zeros(runs, dtype=np.int64)
    live = r[keep & (hs_len >= 4)]
    for _ in range(_MANY_STEPS):
        if not len(live):
            break
        hl = h[live]
        msg_type = hs_byte(live, hl)
        msg_len = hs_byte(live, hl + 1) << 16 | hs_u16(live, hl + 2)
        body = hl + 4
        cert = msg_type == TLS_CERTIFICATE
        found_run.append(live[cert])
        found_a.append(body[cert])
        found_b.append(body[cert] + msg_len[cert])
        hello = msg_type == TLS_CLIENT_HELLO
        hello_run.append(live[hello])
        hello_body.append(body[hello])
        hello_end.append(body[hello] + msg_len[hello])
        h[live] = body + msg_len
        live = live[h[live] + 4 <= hs_len[live]]
    slow[run_stream_a[live]] = True

    # ClientHellos: skip the fixed part and the variable-length lists, then the extensions.
    cr = np.concatenate([empty, *hello_run])
    end = np.minimum(np.concatenate([empty, *hello_end]), hs_len[cr])
    p = np.concatenate([empty, *hello_body]) + 34
    ok = p + 1 <= end
    p[ok] += 1 + hs_byte(cr[ok], p[ok])
    ok &= p + 2 <= end
    p[ok] += 2 + hs_u16(cr[ok], p[ok])
    ok &= p + 1 <= end
    p[ok] += 1 + hs_byte(cr[ok], p[ok])
    ok &= p + 2 <= end
    cr, p, end = cr[ok], p[ok], end[ok]
    ext_end = np.minimum(end, p + 2 + hs_u16(cr, p))
    # The extension walk in buffer coordinates, on compact arrays of the hellos still
    # walking (every byte it reads lies before ``ext_end``, inside the run's stream).
    base = hs_off[cr]
    at, stop, walking = base + p + 2, base + ext_end, np.arange(len(cr))
    keep = at + 4 <= stop
    at, stop, walking = at[keep], stop[keep], walking[keep]
    sni_at, sni_stop, sni_hello = [], [], []
    for _ in range(_MANY_STEPS):
        if not len(walking):
            break
        head = hs_flat[at[:, None] + _FOUR].astype(np.int64)  # (k, 4): type, length
        ext_len = head[:, 2] << 8 | head[:, 3]
        sni = np.flatnonzero((head[:, 0] << 8 | head[:, 1]) == TLS_SNI_EXTENSION)
        if len(sni):
            which = walking[sni]
            sni_hello.append(which)
            sni_at.append(at[sni] + 6)
            sni_stop.append(np.minimum(at[sni] + 4 + ext_len[sni], base[which] + hs_len[cr[which]]))
        at = at + 4 + ext_len
        keep = at + 4 <= stop
        at, stop, walking = at[keep], stop[keep], walking[keep]
    slow[run_stream_a[cr[walking]]] = True
    sh = np.concatenate([empty, *sni_hello])
    q = np.concatenate([empty, *sni_at])
    q_stop = np.concatenate([empty, *sni_stop])
    keep = q + 3 <= q_stop
    q, q_stop, sh = q[keep], q_stop[keep], sh[keep]
    for _ in range(_MANY_STEPS):
        if not len(sh):
            break
        name_len = hs_flat[q + 1].astype(np.int64) << 8 | hs_flat[q + 2]
        run = cr[sh]
        found_run.append(run)
        found_a.append(q + 3 - hs_off[run])
        found_b.append(q + 3 + name_len - hs_off[run])
        q = q + 3 + name_len
        keep = q + 3 <= q_stop
        q, q_stop, sh = q[keep], q_stop[keep], sh[keep]
    slow[run_stream_a[cr[sh]]] = True

    # Handshake-stream ranges to stream ranges: the part in each record body of the run,
    # and past the run's last record, contiguously on.
    fr = np.concatenate([empty, *found_run])
    fa = np.concatenate([empty, *found_a])
    fb = np.concatenate([empty, *found_b])
    npieces = last_rec[fr] - first_rec[fr] + 1
    k = np.arange(int(npieces.sum()), dtype=np.int64)
    k += np.repeat(first_rec[fr] - (np.cumsum(npieces) - npieces), npieces)
    er, ea, eb = np.repeat(fr, npieces), np.repeat(fa, npieces), np.repeat(fb, npieces)
    lo = np.maximum(ea, logical[k])
    hi = np.minimum(eb, logical[k] + rec_len_a[k])
    inside = lo < hi
    k, er, lo, hi = k[inside], er[inside], lo[inside], hi[inside]
    out_stream = [run_stream_a[er]]
    out_a = [rec_body_a[k] + lo - logical[k]]
    out_b = [rec_body_a[k] + hi - logical[k]]
    past = fb > total[fr]
    fr, fa, fb = fr[past], fa[past], fb[past]
    s_end = rec_body_a[last_rec[fr]] + rec_len_a[last_rec[fr]]
    lo = np.maximum(fa, total[fr])
    out_stream.append(run_stream_a[fr])
    out_a.append(s_end + lo - total[fr])
    out_b.append(s_end + fb - total[fr])

    stream = np.concatenate(out_stream)
    za, zb = np.concatenate(out_a), np.concatenate(out_b)
    fast = ~slow[stream]
    stream, za, zb = [stream[fast]], [za[fast]], [zb[fast]]
    for j in np.flatnonzero(slow).tolist():
        s = int(start[j])
        for a, b in tls_zero_ranges(flat[s : s + int(length[j])].tobytes()):
            stream.append(np.array([j]))
            za.append(np.array([a]))
            zb.append(np.array([b]))
    return (
        np.concatenate(stream).astype(np.int64),
        np.concatenate(za).astype(np.int64),
        np.concatenate(zb).astype(np.int64),
    )
