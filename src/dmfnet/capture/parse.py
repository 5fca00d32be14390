"""Vectorised link/network/transport header parsing of a whole :class:`PacketBatch`.

Every step works on arrays over the batch (numpy fancy indexing into the capture
buffer); there is no Python object per packet. The walk down the headers is:

1. link layer by link type → position of the next header and an ethertype;
2. 802.1Q / 802.1ad / QinQ tags (stacked), PPPoE session, MPLS label stacks;
3. IPv4 (options by IHL) or IPv6 (extension headers skipped, a bounded number of times);
4. TCP (data offset, flags, window, seq) or UDP ports.

Anything that is not IP, or too short to hold its IP header, keeps ``ip_version == 0``;
that is not an error (flow assembly counts those packets as non-IP).
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from dmfnet.capture.fields import rows, u8, u16be, u16le, u32be, u32le
from dmfnet.capture.packets import PacketBatch, ParsedPackets
from dmfnet.memory import page_slabs

# Link types whose packets are parsed; packets of others stay non-IP.
LINKTYPE_NAMES: dict[int, str] = {
    0: "BSD NULL",
    1: "Ethernet",
    9: "PPP",
    12: "raw IP",
    14: "raw IP",
    50: "PPP in HDLC framing",
    101: "raw IP",
    104: "Cisco HDLC",
    108: "BSD LOOP",
    113: "Linux cooked (SLL)",
    228: "IPv4",
    229: "IPv6",
    239: "Linux NFLOG",
    276: "Linux cooked v2 (SLL2)",
}
SUPPORTED_LINKTYPES = frozenset(LINKTYPE_NAMES)
RAW_IP = (12, 14, 101, 228, 229)  # link types whose packets start with the IP header

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
ETHERTYPE_MPLS = (0x8847, 0x8848)
ETHERTYPE_PPPOE_SESSION = 0x8864
PPP_IPV4 = 0x0021
PPP_IPV6 = 0x0057
PPP_MPLS = 0x0281
AF_INET = 2
AF_INET6 = (24, 28, 30)  # NetBSD/OpenBSD, FreeBSD, macOS
IPV4_MAPPED_WORD = np.frombuffer(b"\x00\x00\xff\xff", np.uint32)[0]  # bytes 8-11 of ::ffff:a.b.c.d

# IPv6 extension headers that are skipped to reach the transport header.
IPV6_EXTENSIONS = (0, 43, 44, 51, 60, 135)  # hop-by-hop, routing, fragment, AH, dest, mobility
MAX_VLAN_TAGS = 4
MAX_MPLS_LABELS = 8
MAX_IPV6_EXTENSIONS = 8
MAX_NFLOG_TLVS = 16
NFULA_PAYLOAD = 9

PROTO_TCP = 6
PROTO_UDP = 17


def _among(values: np.ndarray, choices: tuple[int, ...]) -> np.ndarray:
    """``np.isin`` for a few constants, without its sorting and set-up costs."""
    found = values == choices[0]
    for choice in choices[1:]:
        found |= values == choice
    return found


def _ethertype_from_ppp(proto: np.ndarray) -> np.ndarray:
    et = np.where(proto == PPP_IPV4, ETHERTYPE_IPV4, np.where(proto == PPP_IPV6, ETHERTYPE_IPV6, 0))
    et[proto == PPP_MPLS] = ETHERTYPE_MPLS[0]
    return et


def _ethertype_from_version(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    version = u8(data, pos) >> 4
    return np.where(version == 4, ETHERTYPE_IPV4, np.where(version == 6, ETHERTYPE_IPV6, 0))


def _link_layer(batch: PacketBatch) -> tuple[np.ndarray, np.ndarray]:
    """Position after the link header and the ethertype it announces (0 = unknown)."""
    data = batch.data
    start = batch.offset.astype(np.int64, copy=False)
    caplen = batch.caplen
    lt = batch.linktype
    n = len(start)
    pos = np.zeros(n, np.int64)
    et = np.zeros(n, np.int64)
    only = int(lt[0]) if n and lt.min() == lt.max() else None  # most captures: one link type
    present = {only} if only is not None else set(np.unique(lt).tolist())
    everything = np.arange(n)

    def group(types: tuple[int, ...], min_len: int) -> np.ndarray | slice:
        """The packets of these link types long enough for the header (a slice: all)."""
        if present.isdisjoint(types):
            return everything[:0]
        ok = caplen >= min_len
        if only is None:
            ok &= _among(lt, types)
        elif ok.all():
            return slice(None)  # no index arrays to gather and scatter with
        return np.flatnonzero(ok)

    s = group((1,), 14)  # Ethernet II
    et[s] = u16be(data, start[s] + 12)
    pos[s] = start[s] + 14
    s = group((113,), 16)  # Linux SLL: protocol at 14
    et[s] = u16be(data, start[s] + 14)
    pos[s] = start[s] + 16
    s = group((276,), 20)  # Linux SLL2: protocol first
    et[s] = u16be(data, start[s])
    pos[s] = start[s] + 20
    s = everything[group(RAW_IP, 1)]  # raw IP: version nibble decides
    pos[s] = start[s]
    et[s] = _ethertype_from_version(data, start[s])
    s4 = s[lt[s] == 229]
    et[s4[et[s4] != ETHERTYPE_IPV6]] = 0
    s6 = s[lt[s] == 228]
    et[s6[et[s6] != ETHERTYPE_IPV4]] = 0
    s = group((0, 108), 4)  # BSD NULL / LOOP: address family, either order
    le, be = u32le(data, start[s]), u32be(data, start[s])
    family = np.where(_among(le, (AF_INET, *AF_INET6)), le, be)
    et[s] = np.where(
        family == AF_INET, ETHERTYPE_IPV4, np.where(_among(family, AF_INET6), ETHERTYPE_IPV6, 0)
    )
    pos[s] = start[s] + 4
    s = group((9, 50), 2)  # PPP, with or without HDLC address/control
    hdlc = (u8(data, start[s]) == 0xFF) & (u8(data, start[s] + 1) == 0x03)
    head = start[s] + np.where(hdlc, 2, 0)
    et[s] = _ethertype_from_ppp(u16be(data, head))
    pos[s] = head + 2
    s = group((104,), 4)  # Cisco HDLC: address, control, ethertype
    et[s] = u16be(data, start[s] + 2)
    pos[s] = start[s] + 4
    s = everything[group((239,), 8)]
    if len(s):
        _nflog(data, s, start, start + caplen, pos, et)
    return pos, et


def _nflog(
    data: np.ndarray,
    s: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    pos: np.ndarray,
    et: np.ndarray,
) -> None:
    """Linux NFLOG: a 4-byte header, then TLVs (little-endian); the packet is TLV type 9."""
    cur = start[s] + 4
    active = np.arange(len(s))
    for _ in range(MAX_NFLOG_TLVS):
        active = active[cur[active] + 4 <= end[s[active]]]
        if not len(active):
            break
        c = cur[active]
        length = u16le(data, c)
        payload = (u16le(data, c + 2) & 0x7FFF) == NFULA_PAYLOAD
        found = s[active[payload]]
        pos[found] = c[payload] + 4
        et[found] = _ethertype_from_version(data, pos[found])
        cur[active] = c + ((length + 3) & ~3)
        active = active[~payload & (length >= 4)]


def _encapsulations(data: np.ndarray, pos: np.ndarray, et: np.ndarray, end: np.ndarray) -> None:
    """Skip VLAN tags, PPPoE session headers and MPLS stacks in place."""
    for _ in range(MAX_VLAN_TAGS):
        s = np.flatnonzero(_among(et, VLAN_TPIDS))
        if not len(s):
            break
        short = pos[s] + 4 > end[s]
        et[s[short]] = 0
        s = s[~short]
        et[s] = u16be(data, pos[s] + 2)
        pos[s] += 4
    s = np.flatnonzero(et == ETHERTYPE_PPPOE_SESSION)
    if len(s):
        ok = pos[s] + 8 <= end[s]
        et[s[~ok]] = 0
        s = s[ok]
        et[s] = _ethertype_from_ppp(u16be(data, pos[s] + 6))
        pos[s] += 8
    active = np.flatnonzero(_among(et, ETHERTYPE_MPLS))
    et[active] = 0
    for _ in range(MAX_MPLS_LABELS):
        active = active[pos[active] + 4 <= end[active]]
        if not len(active):
            break
        bottom = (u8(data, pos[active] + 2) & 1).astype(bool)
        pos[active] += 4
        done = active[bottom]
        et[done] = _ethertype_from_version(data, pos[done])
        active = active[~bottom]


PARSE_SLICE = 16384  # packets parsed together (smaller temporaries, kinder to the caches)

Fragments = tuple[np.ndarray, np.ndarray, np.ndarray]  # (index, is first fragment, ident)


def parse_packets(batch: PacketBatch) -> ParsedPackets:
    """Parse link, IP and TCP/UDP headers of every packet in ``batch`` at once.

    Large batches are parsed in slices of :data:`PARSE_SLICE` packets, each written into
    its part of the batch's arrays; fragments find their first fragment across the whole
    batch.
    """
    n = len(batch)
    parsed = ParsedPackets(batch=batch, **_zeroed_fields(n))
    parsed.l3_offset[:] = -1
    names = [f.name for f in fields(ParsedPackets) if f.name != "batch"]
    parts = []
    for lo in range(0, n, PARSE_SLICE):
        hi = min(lo + PARSE_SLICE, n)
        part = ParsedPackets(batch=batch, **{k: getattr(parsed, k)[lo:hi] for k in names})
        index, first, ident = _parse(_slice(batch, lo, hi), part)
        parts.append((index + lo, first, ident))
    if len(parts) == 1:
        fragments = parts[0]
    else:
        fragments = tuple(np.concatenate(f) for f in zip(*parts, strict=True))
    _fragment_ports(parsed, *fragments)
    return parsed


_FIELDS: dict[str, tuple[type, int]] = {  # ParsedPackets' arrays: dtype, values a packet
    "ip_version": (np.uint8, 1),
    "l3_offset": (np.int64, 1),
    "l3_caplen": (np.int32, 1),
    "protocol": (np.uint8, 1),
    "src_ip": (np.uint8, 16),
    "dst_ip": (np.uint8, 16),
    "src_port": (np.uint16, 1),
    "dst_port": (np.uint16, 1),
    "ip_len": (np.int32, 1),
    "header_len": (np.int32, 1),
    "payload_len": (np.int32, 1),
    "tcp_flags": (np.uint8, 1),
    "tcp_window": (np.int32, 1),
    "tcp_seq": (np.uint32, 1),
    "fragment": (np.bool_, 1),
}


def _zeroed_fields(n: int) -> dict[str, np.ndarray]:
    """ParsedPackets' arrays for ``n`` packets, zeros, all slabs of one block of memory
    (several MiB for a large batch: see :mod:`dmfnet.memory`)."""
    layout = {k: ((n, w) if w > 1 else (n,), t) for k, (t, w) in _FIELDS.items()}
    return page_slabs(layout, zeros=True)


def _slice(batch: PacketBatch, lo: int, hi: int) -> PacketBatch:
    """Packets ``lo:hi`` of a batch, same buffer."""
    return PacketBatch(
        data=batch.data,
        offset=batch.offset[lo:hi],
        caplen=batch.caplen[lo:hi],
        wirelen=batch.wirelen[lo:hi],
        ts=batch.ts[lo:hi],
        linktype=batch.linktype[lo:hi],
        file_offset=batch.file_offset[lo:hi],
        first_index=batch.first_index + lo,
        ts_ns=None if batch.ts_ns is None else batch.ts_ns[lo:hi],
    )


def _parse(batch: PacketBatch, out: ParsedPackets) -> Fragments:
    """Headers of every packet into ``out`` (zeros, ``l3_offset`` -1); its fragments."""
    data = batch.data
    end = batch.offset.astype(np.int64) + batch.caplen
    pos, et = _link_layer(batch)
    _encapsulations(data, pos, et, end)

    version = out.ip_version
    l3 = out.l3_offset
    protocol = out.protocol
    src_ip = out.src_ip
    dst_ip = out.dst_ip
    fragment = out.fragment

    # IPv4 -------------------------------------------------------------------------------
    # Read and stored over the whole slice (rows of other packets are read, then masked
    # out): cheaper than gathering and scattering the IPv4 packets, nearly all of them.
    head = rows(data, pos, 20)  # (n, 20): the header without options, one gather
    first_byte = head[:, 0]
    ihl = (first_byte & 0x0F).astype(np.int64) * 4
    v4 = (et == ETHERTYPE_IPV4) & (pos + 20 <= end) & (first_byte >> 4 == 4) & (ihl >= 20)
    version[:] = np.where(v4, 4, 0)
    l3[:] = np.where(v4, pos, -1)
    half = head.view(">u2")  # (n, 10) network-order 16-bit fields
    total = half[:, 1].astype(np.int64)
    ip_len = np.where(v4, np.where(total == 0, end - pos, total), 0)  # 0: TCP segmentation offload
    protocol[:] = np.where(v4, head[:, 9], 0)
    src_words, dst_words = src_ip.view(np.uint32), dst_ip.view(np.uint32)  # (n, 4)
    src_words[:, 2] = dst_words[:, 2] = np.where(v4, IPV4_MAPPED_WORD, 0)
    quad = head.view(np.uint32)  # (n, 5) raw 4-byte groups, stored as they are
    src_words[:, 3] = np.where(v4, quad[:, 3], 0)
    dst_words[:, 3] = np.where(v4, quad[:, 4], 0)
    l4 = np.where(v4, pos + ihl, 0)
    flags_offset = half[:, 3]
    fragment[:] = v4 & ((flags_offset & 0x1FFF) != 0)
    in4 = v4 & ((flags_offset & 0x3FFF) != 0)  # more fragments, or an offset
    frag_idx = [np.flatnonzero(in4)]
    frag_first = [(flags_offset[in4] & 0x1FFF) == 0]
    frag_id = [half[in4, 2].astype(np.int64)]

    # IPv6 -------------------------------------------------------------------------------
    s = np.flatnonzero((et == ETHERTYPE_IPV6) & (pos + 40 <= end))
    head = rows(data, pos[s], 40)  # (m, 40): the fixed header, one gather
    ok = head[:, 0] >> 4 == 6
    if not ok.all():
        s, head = s[ok], head[ok]
    p = pos[s]
    version[s] = 6
    l3[s] = p
    plen = head.view(">u2")[:, 2].astype(np.int64)
    ip_len[s] = np.where(plen == 0, end[s] - p, 40 + plen)  # 0: jumbogram
    src_ip[s] = head[:, 8:24]
    dst_ip[s] = head[:, 24:40]
    nh = head[:, 6].astype(np.int64)
    cur = p + 40
    active = np.arange(len(s))
    for _ in range(MAX_IPV6_EXTENSIONS):
        inside = cur[active] + 8 <= np.minimum(end[s[active]], p[active] + ip_len[s[active]])
        active = active[_among(nh[active], IPV6_EXTENSIONS) & inside]
        if not len(active):
            break
        c = cur[active]
        kind = nh[active]
        length = u8(data, c + 1)
        step = np.where(kind == 44, 8, np.where(kind == 51, (length + 2) * 4, (length + 1) * 8))
        is_frag = kind == 44
        if is_frag.any():
            fa, fc = active[is_frag], c[is_frag]
            word = u16be(data, fc + 2)
            frag_idx.append(s[fa])
            frag_first.append((word & 0xFFF8) == 0)
            frag_id.append(u32be(data, fc + 4))
            fragment[s[fa[(word & 0xFFF8) != 0]]] = True
        nh[active] = u8(data, c)
        cur[active] = c + step
        # after a non-first fragment's header come data bytes, not headers
        active = active[~fragment[s[active]]]
    protocol[s] = nh
    l4[s] = cur

    # TCP / UDP --------------------------------------------------------------------------
    # Whole-slice arithmetic (values of non-IP packets are computed, then masked out): it
    # is cheaper than gathering and scattering the IP packets, nearly all of them.
    is_ip = version != 0
    # transport bytes present: captured, and inside the IP packet by its length field
    avail = np.minimum(end, l3 + ip_len) - l4
    is_tcp = (protocol == PROTO_TCP) & is_ip & ~fragment
    is_udp = (protocol == PROTO_UDP) & is_ip & ~fragment
    src_port, dst_port = out.src_port, out.dst_port
    tcp_flags, tcp_window, tcp_seq = out.tcp_flags, out.tcp_window, out.tcp_seq
    has_ports = (is_tcp | is_udp) & (avail >= 4)
    # one gather of 16 bytes at every packet's transport header (l4 is 0 where there is
    # none: those rows are read, then masked out), fields stored over the whole slice
    head = rows(data, l4, 16)  # (n, 16): ports and the TCP fields
    half = head.view(">u2")  # (n, 8)
    src_port[:] = np.where(has_ports, half[:, 0], 0)
    dst_port[:] = np.where(has_ports, half[:, 1], 0)
    tcp_seq[:] = np.where(is_tcp & (avail >= 8), head.view(">u4")[:, 1], 0)  # if captured
    k = is_tcp & (avail >= 14)
    tcp_flags[:] = np.where(k, head[:, 13], 0)
    tcp_window[:] = np.where(is_tcp & (avail >= 16), half[:, 7], 0)
    # TCP: 20 when the data offset is not captured or is invalid
    words = head[:, 12] >> 4
    tcp_len = np.where(k & (words >= 5), words.astype(np.int64) * 4, 20)
    transport_len = np.where(is_tcp, tcp_len, np.where(is_udp, 8, 0))
    header_len = np.where(is_ip, l4 - l3 + transport_len, 0)
    payload_len = np.where(is_ip, np.maximum(ip_len - header_len, 0), 0)

    out.l3_caplen[:] = np.where(is_ip, end - l3, 0)
    out.ip_len[:] = ip_len
    out.header_len[:] = header_len
    out.payload_len[:] = payload_len
    return np.concatenate(frag_idx), np.concatenate(frag_first), np.concatenate(frag_id)


def _fragment_ports(
    parsed: ParsedPackets, index: np.ndarray, first: np.ndarray, ident: np.ndarray
) -> None:
    """Give non-first fragments the ports of the batch's first fragment of their packet.

    Fragments of one packet share (source, destination, protocol, identification); a
    non-first fragment whose first fragment is in another batch (or lost) keeps ports 0.
    """
    if not len(index) or first.all() or not first.any():
        return
    key = np.zeros((len(index), 37), np.uint8)
    key[:, :16] = parsed.src_ip[index]
    key[:, 16:32] = parsed.dst_ip[index]
    key[:, 32] = parsed.protocol[index]
    key[:, 33:] = ident.astype(">u4").view(np.uint8).reshape(-1, 4)
    _, group = np.unique(key.view("V37").ravel(), return_inverse=True)
    group = group.ravel()
    n_groups = int(group.max()) + 1
    known = np.zeros(n_groups, bool)
    sport = np.zeros(n_groups, np.uint16)
    dport = np.zeros(n_groups, np.uint16)
    known[group[first]] = True
    sport[group[first]] = parsed.src_port[index[first]]
    dport[group[first]] = parsed.dst_port[index[first]]
    later = ~first & known[group]
    parsed.src_port[index[later]] = sport[group[later]]
    parsed.dst_port[index[later]] = dport[group[later]]
