"""Build real packets and write captures with known contents, for tests.

Dependency-free (``struct``, ``ipaddress``, ``gzip``): tests build exactly the packets they
assert on, in any link type and capture format the readers support, instead of shipping
binary fixtures. Layers compose from the inside out::

    seg = tcp(1234, 443, b"hello", seq=7, flags="PA")
    pkt = ipv4("10.0.0.1", "10.0.0.2", 6, seg)          # checksums filled in
    frame = ethernet(pkt, vlans=[(0x88A8, 10), (0x8100, 20)])
    write_pcap(path, [Record(1_700_000_000_123_456_789, frame)], nanosecond=True)

Timestamps are integer nanoseconds since the epoch everywhere, so tests can compare them
exactly. Conversations (:func:`tcp_conversation`, :func:`udp_exchange`) return
:class:`Record` lists of bare IP packets; :func:`wrap` puts each into a link layer.
"""

from __future__ import annotations

import gzip as _gzip
import ipaddress
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

# ----------------------------------------------------------------------------------------
# Link types (tcpdump.org LINKTYPE_ values; 12 and 14 are the two historical raw-IP DLTs)

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW_12 = 12
LINKTYPE_RAW_14 = 14
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_NFLOG = 239
LINKTYPE_LINUX_SLL2 = 276

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100
ETHERTYPE_QINQ = 0x88A8
ETHERTYPE_MPLS = 0x8847
ETHERTYPE_PPPOE_SESSION = 0x8864

TCP_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40, "C": 0x80}

# IPv6 extension header numbers
IPV6_HOP_BY_HOP = 0
IPV6_ROUTING = 43
IPV6_FRAGMENT = 44
IPV6_AH = 51
IPV6_DESTINATION = 60
IPV6_MOBILITY = 135


def tcp_flags(flags: str | int) -> int:
    """Flags byte from letters (``"SA"``, ``"FA"``, ``"PA"``) or an int."""
    if isinstance(flags, int):
        return flags
    value = 0
    for letter in flags.upper():
        value |= TCP_FLAGS[letter]
    return value


def ip_bytes(address: str) -> bytes:
    """Packed address (4 or 16 bytes) of an IPv4 or IPv6 address string."""
    return ipaddress.ip_address(address).packed


def ipv4_mapped(address: str) -> bytes:
    """The 16-byte form the readers store: IPv6 as is, IPv4 as ``::ffff:a.b.c.d``."""
    packed = ip_bytes(address)
    return packed if len(packed) == 16 else b"\x00" * 10 + b"\xff\xff" + packed


# ----------------------------------------------------------------------------------------
# Transport and network layers


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp(
    sport: int,
    dport: int,
    payload: bytes = b"",
    *,
    seq: int = 0,
    ack: int = 0,
    flags: str | int = "A",
    window: int = 65535,
    options: bytes = b"",
    urgent: int = 0,
) -> bytes:
    """A TCP segment (checksum left 0; :func:`ipv4`/:func:`ipv6` fill it in).

    ``options`` is zero-padded (end-of-options) to a multiple of 4 bytes; the data offset
    is then ``5 + len(options) // 4``.
    """
    if len(options) % 4:
        options += b"\x00" * (4 - len(options) % 4)
    data_offset = 5 + len(options) // 4
    header = struct.pack(
        "!HHIIBBHHH",
        sport,
        dport,
        seq & 0xFFFFFFFF,
        ack & 0xFFFFFFFF,
        data_offset << 4,
        tcp_flags(flags),
        window,
        0,
        urgent,
    )
    return header + options + payload


def udp(sport: int, dport: int, payload: bytes = b"", *, length: int | None = None) -> bytes:
    """A UDP datagram; ``length`` overrides the header's length field (for broken packets)."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload) if length is None else length, 0) + (
        payload
    )


def _fill_transport_checksum(proto: int, l4: bytes, pseudo: bytes) -> bytes:
    pos = {6: 16, 17: 6}.get(proto)
    if pos is None or len(l4) < pos + 2 or l4[pos : pos + 2] != b"\x00\x00":
        return l4
    csum = _checksum(pseudo + l4)
    if proto == 17 and csum == 0:
        csum = 0xFFFF
    return l4[:pos] + struct.pack("!H", csum) + l4[pos + 2 :]


def ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    *,
    ttl: int = 64,
    ident: int = 0,
    tos: int = 0,
    dont_fragment: bool = False,
    more_fragments: bool = False,
    fragment_offset: int = 0,
    options: bytes = b"",
    total_length: int | None = None,
    checksums: bool = True,
) -> bytes:
    """An IPv4 packet around ``payload`` (header and TCP/UDP checksums filled in).

    ``fragment_offset`` is in bytes (a multiple of 8). ``options`` is zero-padded to a multiple
    of 4; IHL follows. ``total_length`` overrides the header field (for broken packets).
    """
    if len(options) % 4:
        options += b"\x00" * (4 - len(options) % 4)
    ihl = 5 + len(options) // 4
    length = ihl * 4 + len(payload) if total_length is None else total_length
    flags_frag = (fragment_offset // 8) | (0x4000 if dont_fragment else 0)
    flags_frag |= 0x2000 if more_fragments else 0
    s, d = ip_bytes(src), ip_bytes(dst)
    if checksums and fragment_offset == 0 and not more_fragments:
        pseudo = s + d + struct.pack("!BBH", 0, proto, len(payload))
        payload = _fill_transport_checksum(proto, payload, pseudo)
    header = struct.pack(
        "!BBHHHBBH4s4s", (4 << 4) | ihl, tos, length, ident, flags_frag, ttl, proto, 0, s, d
    )
    header += options
    if checksums:
        header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + payload


def ipv6_extension(kind: int, next_header: int, body: bytes = b"") -> bytes:
    """One IPv6 extension header of type ``kind`` pointing at ``next_header``.

    Hop-by-hop, routing, destination and mobility headers are padded to a multiple of 8
    bytes (length in 8-octet units minus 1); AH to a multiple of 4 (4-octet units minus 2);
    a fragment header is always 8 bytes (``body`` = offset/flags(2) + identification(4)).
    """
    if kind == IPV6_FRAGMENT:
        body = (body + b"\x00" * 6)[:6]
        return struct.pack("!BB", next_header, 0) + body
    if kind == IPV6_AH:
        total = 2 + len(body)
        total += -total % 4
        total = max(total, 12)
        body = body.ljust(total - 2, b"\x00")
        return struct.pack("!BB", next_header, total // 4 - 2) + body
    total = 2 + len(body)
    total += -total % 8
    body = body.ljust(total - 2, b"\x00")
    return struct.pack("!BB", next_header, total // 8 - 1) + body


def ipv6_fragment(offset: int, more: bool, ident: int) -> tuple[int, bytes]:
    """An ``extensions`` entry for :func:`ipv6`: a fragment header (``offset`` in bytes)."""
    return IPV6_FRAGMENT, struct.pack("!HI", (offset // 8) << 3 | int(more), ident)


def ipv6(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    *,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
    extensions: Sequence[tuple[int, bytes]] = (),
    payload_length: int | None = None,
    checksums: bool = True,
) -> bytes:
    """An IPv6 packet; ``extensions`` is a chain of ``(kind, body)`` before the transport.

    Bodies are padded to each header's unit (see :func:`ipv6_extension`); for a fragment
    header use :func:`ipv6_fragment`. ``payload_length`` overrides the header field
    (0 = jumbogram, or broken packets). TCP/UDP checksums are filled in unless fragmented.
    """
    s, d = ip_bytes(src), ip_bytes(dst)
    fragmented = False
    for kind, body in extensions:
        if kind == IPV6_FRAGMENT and len(body) >= 2 and (body[0] << 8 | body[1]) & 0xFFF9:
            fragmented = True
    if checksums and not fragmented:
        pseudo = s + d + struct.pack("!II", len(payload), proto)
        payload = _fill_transport_checksum(proto, payload, pseudo)
    chain = b""
    kinds = [k for k, _ in extensions] + [proto]
    for i, (kind, body) in enumerate(extensions):
        chain += ipv6_extension(kind, kinds[i + 1], body)
    first = kinds[0]
    plen = len(chain) + len(payload) if payload_length is None else payload_length
    vtf = (6 << 28) | (traffic_class << 20) | flow_label
    return struct.pack("!IHBB16s16s", vtf, plen, first, hop_limit, s, d) + chain + payload


def ip(src: str, dst: str, proto: int, payload: bytes, **kw) -> bytes:
    """IPv4 or IPv6 by the address family of ``src``."""
    build = ipv6 if ":" in src else ipv4
    return build(src, dst, proto, payload, **kw)


# ----------------------------------------------------------------------------------------
# Link layers


def _ethertype_of(packet: bytes) -> int:
    return ETHERTYPE_IPV6 if packet and packet[0] >> 4 == 6 else ETHERTYPE_IPV4


def ethernet(
    packet: bytes,
    *,
    src_mac: bytes = b"\x02\x00\x00\x00\x00\x01",
    dst_mac: bytes = b"\x02\x00\x00\x00\x00\x02",
    ethertype: int | None = None,
    vlans: Sequence[tuple[int, int]] = (),
) -> bytes:
    """An Ethernet II frame; ``vlans`` = outermost-first ``(tpid, vlan_id)`` tags.

    TPIDs 0x8100 (802.1Q), 0x88A8 (802.1ad) and 0x9100 (old QinQ) are the usual ones.
    ``ethertype`` defaults to IPv4/IPv6 by the packet's version nibble.
    """
    inner = _ethertype_of(packet) if ethertype is None else ethertype
    tags = b"".join(struct.pack("!HH", tpid, vid & 0x0FFF) for tpid, vid in vlans)
    return dst_mac + src_mac + tags + struct.pack("!H", inner) + packet


def mpls(packet: bytes, labels: Sequence[int] = (100,), *, ttl: int = 64) -> bytes:
    """An MPLS label stack (bottom-of-stack set on the last label) before ``packet``.

    Wrap it in ``ethernet(..., ethertype=ETHERTYPE_MPLS)``.
    """
    out = b""
    for i, label in enumerate(labels):
        bos = 1 if i == len(labels) - 1 else 0
        out += struct.pack("!I", (label << 12) | (bos << 8) | ttl)
    return out + packet


def pppoe_session(packet: bytes, *, session_id: int = 1) -> bytes:
    """A PPPoE session header + PPP protocol before ``packet``.

    Wrap it in ``ethernet(..., ethertype=ETHERTYPE_PPPOE_SESSION)``.
    """
    proto = 0x0057 if packet and packet[0] >> 4 == 6 else 0x0021
    return struct.pack("!BBHHH", 0x11, 0, session_id, len(packet) + 2, proto) + packet


def ppp(packet: bytes) -> bytes:
    """PPP in HDLC-like framing (address 0xff, control 0x03) for LINKTYPE_PPP."""
    proto = 0x0057 if packet and packet[0] >> 4 == 6 else 0x0021
    return struct.pack("!BBH", 0xFF, 0x03, proto) + packet


def linux_sll(
    packet: bytes,
    *,
    packet_type: int = 0,
    protocol: int | None = None,
    address: bytes = b"\x02\x00\x00\x00\x00\x01",
    arphrd: int = 1,
) -> bytes:
    """A Linux cooked-capture v1 header (16 bytes) for LINKTYPE_LINUX_SLL."""
    proto = _ethertype_of(packet) if protocol is None else protocol
    return (
        struct.pack("!HHH", packet_type, arphrd, len(address))
        + address.ljust(8, b"\x00")[:8]
        + struct.pack("!H", proto)
        + packet
    )


def linux_sll2(
    packet: bytes,
    *,
    protocol: int | None = None,
    interface_index: int = 1,
    packet_type: int = 0,
    address: bytes = b"\x02\x00\x00\x00\x00\x01",
    arphrd: int = 1,
) -> bytes:
    """A Linux cooked-capture v2 header (20 bytes) for LINKTYPE_LINUX_SLL2."""
    proto = _ethertype_of(packet) if protocol is None else protocol
    return (
        struct.pack("!HHIHBB", proto, 0, interface_index, arphrd, packet_type, len(address))
        + address.ljust(8, b"\x00")[:8]
        + packet
    )


def bsd_null(packet: bytes, *, family: int | None = None, big_endian: bool = False) -> bytes:
    """A 4-byte BSD NULL/LOOP address-family header.

    NULL (0) stores the family in the capturing host's byte order (either may appear);
    LOOP (108) always in network order (``big_endian=True``). IPv6 families are 24, 28
    or 30 depending on the BSD; default 2 (IPv4) or 30.
    """
    if family is None:
        family = 30 if packet and packet[0] >> 4 == 6 else 2
    return struct.pack(">I" if big_endian else "<I", family) + packet


def nflog(packet: bytes, *, prefix: bytes = b"dmfnet") -> bytes:
    """A Linux NFLOG record (LINKTYPE_NFLOG): header, then little-endian TLVs.

    A packet-header TLV (type 1) and a log-prefix TLV (type 10) come before the payload
    TLV (type 9), so readers must walk the TLVs to find the packet.
    """
    family = 10 if packet and packet[0] >> 4 == 6 else 2

    def tlv(kind: int, value: bytes) -> bytes:
        return _pad4(struct.pack("<HH", 4 + len(value), kind) + value)

    hw = struct.pack("!HBB", _ethertype_of(packet), 3, 0)
    return (
        struct.pack("!BBH", family, 0, 0) + tlv(1, hw) + tlv(10, prefix + b"\x00") + tlv(9, packet)
    )


LINK_WRAPPERS: dict[int, Callable[[bytes], bytes]] = {
    LINKTYPE_ETHERNET: ethernet,
    LINKTYPE_LINUX_SLL: linux_sll,
    LINKTYPE_LINUX_SLL2: linux_sll2,
    LINKTYPE_RAW: lambda p: p,
    LINKTYPE_RAW_12: lambda p: p,
    LINKTYPE_RAW_14: lambda p: p,
    LINKTYPE_IPV4: lambda p: p,
    LINKTYPE_IPV6: lambda p: p,
    LINKTYPE_NULL: bsd_null,
    LINKTYPE_LOOP: lambda p: bsd_null(p, big_endian=True),
    LINKTYPE_PPP: ppp,
    LINKTYPE_NFLOG: nflog,
}


def link_frame(linktype: int, packet: bytes) -> bytes:
    """``packet`` in the default header of ``linktype`` (see :data:`LINK_WRAPPERS`)."""
    return LINK_WRAPPERS[linktype](packet)


# ----------------------------------------------------------------------------------------
# Records and conversations


@dataclass(frozen=True)
class Record:
    """One captured packet: timestamp in integer ns, captured bytes, original length.

    ``interface`` picks the pcapng interface (ignored by pcap); ``block`` is ``"epb"``,
    ``"spb"`` (simple packet block: interface 0, no timestamp) or ``"pb"`` (obsolete).
    """

    ts_ns: int
    data: bytes
    wirelen: int | None = None
    interface: int = 0
    block: str = "epb"

    @property
    def original_length(self) -> int:
        return len(self.data) if self.wirelen is None else self.wirelen


def wrap(records: Iterable[Record], link: Callable[[bytes], bytes] | int) -> list[Record]:
    """Put each record's bytes into a link layer (a wrapper function or a LINKTYPE)."""
    fn = (lambda p: link_frame(link, p)) if isinstance(link, int) else link
    out = []
    for r in records:
        framed = fn(r.data)
        extra = len(framed) - len(r.data)
        wirelen = None if r.wirelen is None else r.wirelen + extra
        out.append(replace(r, data=framed, wirelen=wirelen))
    return out


def tcp_conversation(
    client: tuple[str, int],
    server: tuple[str, int],
    exchanges: Sequence[tuple[str, bytes]] = (("c", b"hello"), ("s", b"world")),
    *,
    start_ns: int = 1_700_000_000_000_000_000,
    gap_ns: int = 1_000_000,
    close: str | None = "fin",
    handshake: bool = True,
    client_isn: int = 1000,
    server_isn: int = 5000,
    window: int = 64240,
    server_window: int | None = None,
) -> list[Record]:
    """A whole TCP conversation as bare IP packets, one every ``gap_ns``.

    ``exchanges`` is a list of ``("c" | "s", payload)``: data from client or server, each
    segment PSH/ACK. ``close``: ``"fin"`` (FIN from client, FIN/ACK from server, final ACK),
    ``"rst"`` (RST from client) or ``None`` (left open). Sequence numbers are consistent.
    """
    (cip, cport), (sip, sport) = client, server
    swin = window if server_window is None else server_window
    cseq, sseq = client_isn, server_isn
    out: list[Record] = []
    t = start_ns

    def emit(from_client: bool, flags: str, payload: bytes = b"") -> None:
        nonlocal t
        if from_client:
            seg = tcp(cport, sport, payload, seq=cseq, ack=sseq, flags=flags, window=window)
            data = ip(cip, sip, 6, seg)
        else:
            seg = tcp(sport, cport, payload, seq=sseq, ack=cseq, flags=flags, window=swin)
            data = ip(sip, cip, 6, seg)
        out.append(Record(t, data))
        t += gap_ns

    if handshake:
        emit(True, "S")
        cseq += 1
        emit(False, "SA")
        sseq += 1
        emit(True, "A")
    for side, payload in exchanges:
        from_client = side == "c"
        emit(from_client, "PA", payload)
        if from_client:
            cseq += len(payload)
        else:
            sseq += len(payload)
    if close == "fin":
        emit(True, "FA")
        cseq += 1
        emit(False, "FA")
        sseq += 1
        emit(True, "A")
    elif close == "rst":
        emit(True, "R")
    elif close is not None:
        raise ValueError(f"close must be 'fin', 'rst' or None, not {close!r}")
    return out


def udp_exchange(
    client: tuple[str, int],
    server: tuple[str, int],
    exchanges: Sequence[tuple[str, bytes]] = (("c", b"query"), ("s", b"answer")),
    *,
    start_ns: int = 1_700_000_000_000_000_000,
    gap_ns: int = 1_000_000,
) -> list[Record]:
    """UDP datagrams between two endpoints as bare IP packets, one every ``gap_ns``."""
    (cip, cport), (sip, sport) = client, server
    out = []
    for i, (side, payload) in enumerate(exchanges):
        if side == "c":
            data = ip(cip, sip, 17, udp(cport, sport, payload))
        else:
            data = ip(sip, cip, 17, udp(sport, cport, payload))
        out.append(Record(start_ns + i * gap_ns, data))
    return out


# ----------------------------------------------------------------------------------------
# pcap


def pcap_bytes(
    records: Iterable[Record],
    *,
    linktype: int = LINKTYPE_ETHERNET,
    big_endian: bool = False,
    nanosecond: bool = False,
    snaplen: int = 262144,
) -> bytes:
    """A classic pcap file image (either byte order, µs or ns timestamps)."""
    bo = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    parts = [struct.pack(bo + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    div = 1 if nanosecond else 1000
    for r in records:
        sec, frac = divmod(r.ts_ns, 1_000_000_000)
        parts.append(
            struct.pack(bo + "IIII", sec, frac // div, len(r.data), r.original_length) + r.data
        )
    return b"".join(parts)


def write_bytes(path: str | Path, image: bytes, *, gzip: bool = False) -> Path:
    """Write a capture image to ``path``, gzip-compressed if asked (any file name)."""
    path = Path(path)
    path.write_bytes(_gzip.compress(image) if gzip else image)
    return path


def write_pcap(
    path: str | Path,
    records: Iterable[Record],
    *,
    linktype: int = LINKTYPE_ETHERNET,
    big_endian: bool = False,
    nanosecond: bool = False,
    snaplen: int = 262144,
    gzip: bool = False,
) -> Path:
    """Write a pcap file (see :func:`pcap_bytes`), optionally gzipped."""
    image = pcap_bytes(
        records, linktype=linktype, big_endian=big_endian, nanosecond=nanosecond, snaplen=snaplen
    )
    return write_bytes(path, image, gzip=gzip)


# ----------------------------------------------------------------------------------------
# pcapng


@dataclass(frozen=True)
class Interface:
    """A pcapng interface: link type, snap length, timestamp resolution.

    ``tsresol`` is the if_tsresol option byte: ``6`` = µs (the default, then no option is
    written), ``9`` = ns, high bit set = a power of two (``0x80 | 20`` = 2^-20 s).
    """

    linktype: int = LINKTYPE_ETHERNET
    snaplen: int = 262144
    tsresol: int = 6


@dataclass
class Section:
    """A pcapng section: its interfaces, records and extra raw blocks (e.g. to skip)."""

    interfaces: list[Interface] = field(default_factory=lambda: [Interface()])
    records: list[Record] = field(default_factory=list)
    big_endian: bool = False
    # (index in the record list before which to insert, block bytes) for unusual blocks
    extra_blocks: list[tuple[int, bytes]] = field(default_factory=list)


def _pad4(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)


def pcapng_block(block_type: int, body: bytes, *, big_endian: bool = False) -> bytes:
    """One pcapng block: type, total length, body (padded to 4), total length."""
    bo = ">" if big_endian else "<"
    body = _pad4(body)
    total = 12 + len(body)
    return struct.pack(bo + "II", block_type, total) + body + struct.pack(bo + "I", total)


def _option(bo: str, code: int, value: bytes) -> bytes:
    return struct.pack(bo + "HH", code, len(value)) + _pad4(value)


def _ts_units(ts_ns: int, tsresol: int) -> int:
    if tsresol & 0x80:
        return (ts_ns << (tsresol & 0x7F)) // 1_000_000_000
    return ts_ns * 10**tsresol // 1_000_000_000


def name_resolution_block(*, big_endian: bool = False) -> bytes:
    """A Name Resolution Block (one IPv4 entry), a block readers must skip."""
    bo = ">" if big_endian else "<"
    record = struct.pack(bo + "HH", 1, 4 + 10) + _pad4(bytes([10, 0, 0, 1]) + b"host.test\x00")
    return pcapng_block(4, record + struct.pack(bo + "HH", 0, 0), big_endian=big_endian)


def interface_statistics_block(interface: int = 0, *, big_endian: bool = False) -> bytes:
    """An Interface Statistics Block, a block readers must skip."""
    bo = ">" if big_endian else "<"
    return pcapng_block(5, struct.pack(bo + "III", interface, 0, 0), big_endian=big_endian)


def pcapng_bytes(sections: Sequence[Section]) -> bytes:
    """A pcapng file image: each section's SHB, IDBs, then its records and extra blocks."""
    parts = []
    for sec in sections:
        bo = ">" if sec.big_endian else "<"
        be = sec.big_endian
        shb = struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1) + _option(bo, 0, b"")
        parts.append(pcapng_block(0x0A0D0D0A, shb, big_endian=be))
        for iface in sec.interfaces:
            body = struct.pack(bo + "HHI", iface.linktype, 0, iface.snaplen)
            if iface.tsresol != 6:
                body += _option(bo, 9, bytes([iface.tsresol]))
            body += _option(bo, 0, b"")
            parts.append(pcapng_block(1, body, big_endian=be))
        extra = dict.fromkeys(range(len(sec.records) + 1), b"")
        for index, block in sec.extra_blocks:
            extra[index] = extra.get(index, b"") + block
        for i, r in enumerate(sec.records):
            parts.append(extra[i])
            parts.append(_pcapng_record(r, sec, bo))
        parts.append(extra[len(sec.records)])
    return b"".join(parts)


def _pcapng_record(r: Record, sec: Section, bo: str) -> bytes:
    be = sec.big_endian
    if r.block == "spb":
        return pcapng_block(3, struct.pack(bo + "I", r.original_length) + r.data, big_endian=be)
    units = _ts_units(r.ts_ns, sec.interfaces[r.interface].tsresol)
    hi, lo = units >> 32, units & 0xFFFFFFFF
    if r.block == "epb":
        head = struct.pack(bo + "IIIII", r.interface, hi, lo, len(r.data), r.original_length)
        return pcapng_block(6, head + r.data, big_endian=be)
    if r.block == "pb":
        head = struct.pack(bo + "HHIIII", r.interface, 0, hi, lo, len(r.data), r.original_length)
        return pcapng_block(2, head + r.data, big_endian=be)
    raise ValueError(f"block must be 'epb', 'spb' or 'pb', not {r.block!r}")


def write_pcapng(path: str | Path, sections: Sequence[Section], *, gzip: bool = False) -> Path:
    """Write a pcapng file (see :func:`pcapng_bytes`), optionally gzipped."""
    return write_bytes(path, pcapng_bytes(sections), gzip=gzip)
