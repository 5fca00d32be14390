"""The test capture builder writes what an independent reader (dpkt) reads back."""

import gzip
import io
import struct

import dpkt
import pytest

from pcapbuild import (
    ETHERTYPE_MPLS,
    ETHERTYPE_PPPOE_SESSION,
    IPV6_DESTINATION,
    IPV6_HOP_BY_HOP,
    IPV6_ROUTING,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_PPP,
    LINKTYPE_RAW,
    Interface,
    Record,
    Section,
    bsd_null,
    ethernet,
    interface_statistics_block,
    ip_bytes,
    ipv4,
    ipv6,
    ipv6_fragment,
    mpls,
    name_resolution_block,
    nflog,
    pcap_bytes,
    pcapng_bytes,
    pppoe_session,
    tcp,
    tcp_conversation,
    udp,
    udp_exchange,
    wrap,
    write_pcap,
    write_pcapng,
)

TS = 1_700_000_123_456_789_123  # ns


def _ip_of(linktype: int, frame: bytes):
    """The dpkt IP/IP6 object of a frame, decoded by dpkt's own link-layer classes."""
    if linktype == LINKTYPE_ETHERNET:
        return dpkt.ethernet.Ethernet(frame).data
    if linktype == LINKTYPE_LINUX_SLL:
        return dpkt.sll.SLL(frame).data
    if linktype == LINKTYPE_LINUX_SLL2:
        return dpkt.sll2.SLL2(frame).data
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return dpkt.loopback.Loopback(frame).data
    if linktype == LINKTYPE_PPP:
        return dpkt.ppp.PPP(frame).data
    return (dpkt.ip6.IP6 if frame[0] >> 4 == 6 else dpkt.ip.IP)(frame)


def test_tcp_over_ipv4_fields_and_checksums():
    seg = tcp(40000, 443, b"hello", seq=123456, ack=99, flags="PA", window=1234)
    pkt = dpkt.ip.IP(ipv4("10.0.0.1", "192.168.1.2", 6, seg, ttl=33, ident=7))
    assert pkt.src == ip_bytes("10.0.0.1") and pkt.dst == ip_bytes("192.168.1.2")
    assert (pkt.ttl, pkt.id, pkt.len, pkt.p) == (33, 7, 20 + 20 + 5, 6)
    t = pkt.data
    assert (t.sport, t.dport, t.seq, t.ack, t.win) == (40000, 443, 123456, 99, 1234)
    assert t.flags == dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK and t.data == b"hello"
    # dpkt recomputes zeroed checksums on serialisation: ours must already be the same
    raw = bytes(pkt)
    assert pkt.sum != 0 and t.sum != 0
    pkt.sum = 0
    t.sum = 0
    assert bytes(pkt) == raw


def test_ipv4_options_set_ihl():
    pkt = dpkt.ip.IP(ipv4("1.2.3.4", "5.6.7.8", 17, udp(53, 1000, b"x"), options=b"\x94\x04"))
    assert pkt.hl == 6 and pkt.data.sport == 53 and pkt.data.data == b"x"


def test_ipv6_extension_chain_is_walkable():
    ext = [(IPV6_HOP_BY_HOP, b"\x01\x02"), (IPV6_ROUTING, b"\x00" * 10), (IPV6_DESTINATION, b"")]
    pkt = ipv6("2001:db8::1", "2001:db8::2", 17, udp(5000, 6000, b"abc"), extensions=ext)
    p6 = dpkt.ip6.IP6(pkt)
    assert p6.nxt == IPV6_HOP_BY_HOP and p6.p == 17
    assert p6.plen == len(pkt) - 40 == 8 + 16 + 8 + 8 + 3
    assert (p6.data.sport, p6.data.dport, p6.data.data) == (5000, 6000, b"abc")


def test_ipv6_fragment_header():
    kind, body = ipv6_fragment(1448, True, 0xABCD)
    pkt = ipv6("::1", "::2", 6, b"z" * 16, extensions=[(kind, body)])
    assert pkt[6] == 44 and pkt[40] == 6
    off_m, ident = struct.unpack("!HI", pkt[42:48])
    assert (off_m & 0xFFF8, off_m & 1, ident) == (1448, 1, 0xABCD)


def test_vlan_stack_mpls_pppoe():
    inner = ipv4("10.1.1.1", "10.1.1.2", 17, udp(1, 2))
    eth = dpkt.ethernet.Ethernet(ethernet(inner, vlans=[(0x88A8, 10), (0x8100, 20)]))
    assert [t.id for t in eth.vlan_tags] == [10, 20] and isinstance(eth.data, dpkt.ip.IP)
    eth = dpkt.ethernet.Ethernet(ethernet(mpls(inner, [16, 17]), ethertype=ETHERTYPE_MPLS))
    assert [m.val for m in eth.mpls_labels] == [16, 17] and isinstance(eth.data, dpkt.ip.IP)
    eth = dpkt.ethernet.Ethernet(ethernet(pppoe_session(inner), ethertype=ETHERTYPE_PPPOE_SESSION))
    assert eth.data.data.data.src == ip_bytes("10.1.1.1")


@pytest.mark.parametrize(
    "linktype",
    [
        LINKTYPE_ETHERNET,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_LINUX_SLL2,
        LINKTYPE_RAW,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_NULL,
        LINKTYPE_LOOP,
        LINKTYPE_PPP,
    ],
)
@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_pcap_round_trip(tmp_path, linktype, big_endian, nanosecond):
    client = ("2001:db8::10", 5555) if linktype == LINKTYPE_IPV6 else ("10.0.0.1", 5555)
    server = ("2001:db8::20", 80) if linktype == LINKTYPE_IPV6 else ("10.0.0.2", 80)
    records = wrap(tcp_conversation(client, server, start_ns=TS), linktype)
    path = write_pcap(
        tmp_path / "x.pcap",
        records,
        linktype=linktype,
        big_endian=big_endian,
        nanosecond=nanosecond,
    )
    reader = dpkt.pcap.Reader(open(path, "rb"))
    assert reader.datalink() == linktype
    got = list(reader)
    assert len(got) == len(records) == 3 + 2 + 3
    for (ts, frame), r in zip(got, records, strict=True):
        assert frame == r.data
        if nanosecond:  # dpkt gives a Decimal: exact
            assert int(ts * 10**9) == r.ts_ns
        else:
            assert round(ts * 1e6) == r.ts_ns // 1000
        pkt = _ip_of(linktype, frame)
        assert isinstance(pkt.data, dpkt.tcp.TCP)
    first = _ip_of(linktype, got[0][1])
    assert first.src == ip_bytes(client[0]) and first.data.sport == 5555
    assert first.data.flags == dpkt.tcp.TH_SYN


def test_tcp_conversation_sequence_numbers_and_close():
    recs = tcp_conversation(("10.0.0.1", 1), ("10.0.0.2", 2), [("c", b"ab"), ("s", b"xyz")])
    segs = [dpkt.ip.IP(r.data).data for r in recs]
    flags = [s.flags for s in segs]
    syn, ack, fin, psh, rst = (dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, 8, 4)
    assert flags == [syn, syn | ack, ack, psh | ack, psh | ack, fin | ack, fin | ack, ack]
    assert segs[3].seq == 1001 and segs[4].seq == 5001 and segs[5].seq == 1003
    assert segs[6].ack == 1004 and segs[7].ack == 5005
    assert [r.ts_ns for r in recs] == [recs[0].ts_ns + i * 1_000_000 for i in range(8)]
    rst_close = tcp_conversation(("10.0.0.1", 1), ("10.0.0.2", 2), [], close="rst")
    assert dpkt.ip.IP(rst_close[-1].data).data.flags == rst and len(rst_close) == 4


def test_udp_exchange_directions():
    recs = udp_exchange(("::1", 1000), ("::2", 53), [("c", b"q"), ("s", b"a"), ("s", b"b")])
    pkts = [dpkt.ip6.IP6(r.data) for r in recs]
    assert [(p.data.sport, p.data.dport, p.data.data) for p in pkts] == [
        (1000, 53, b"q"),
        (53, 1000, b"a"),
        (53, 1000, b"b"),
    ]


def test_gzip_pcap(tmp_path):
    records = wrap(udp_exchange(("10.0.0.1", 1), ("10.0.0.2", 2)), LINKTYPE_ETHERNET)
    path = write_pcap(tmp_path / "x.bin", records, gzip=True)
    with gzip.open(path) as fh:
        got = [frame for _, frame in dpkt.pcap.Reader(fh)]
    assert got == [r.data for r in records]


def test_pcap_wirelen_and_snaplen():
    image = pcap_bytes([Record(TS, b"\x00" * 10, wirelen=1500)], snaplen=10, linktype=LINKTYPE_RAW)
    assert struct.unpack("<IHHiIII", image[:24])[5:] == (10, LINKTYPE_RAW)
    assert struct.unpack("<IIII", image[24:40])[2:] == (10, 1500)


def test_pcapng_single_section_tsresol_read_by_dpkt(tmp_path):
    recs = wrap(tcp_conversation(("10.0.0.1", 1), ("10.0.0.2", 2), start_ns=TS), bsd_null)
    recs[2] = Record(recs[2].ts_ns, recs[2].data, block="pb")
    sec = Section(
        interfaces=[Interface(LINKTYPE_NULL, tsresol=9)],
        records=recs,
        extra_blocks=[(1, name_resolution_block()), (3, interface_statistics_block())],
    )
    path = write_pcapng(tmp_path / "x.pcapng", [sec])
    got = list(dpkt.pcapng.Reader(open(path, "rb")))
    assert [frame for _, frame in got] == [r.data for r in recs]
    for (ts, _), r in zip(got, recs, strict=True):  # float seconds: sub-µs precision only
        assert abs(ts - r.ts_ns / 1e9) < 1e-6


def _walk_pcapng(image: bytes):
    """Independent walk: yields (section, block type, dpkt block object or raw body)."""
    pos, section, le = 0, -1, True
    while pos < len(image):
        btype = struct.unpack("<I", image[pos : pos + 4])[0]
        if btype == 0x0A0D0D0A:
            section += 1
            le = image[pos + 8 : pos + 12] == b"\x4d\x3c\x2b\x1a"
        bo = "<" if le else ">"
        btype, blen = struct.unpack(bo + "II", image[pos : pos + 8])
        block = image[pos : pos + blen]
        cls = {
            1: dpkt.pcapng.InterfaceDescriptionBlockLE
            if le
            else dpkt.pcapng.InterfaceDescriptionBlock,
            6: dpkt.pcapng.EnhancedPacketBlockLE if le else dpkt.pcapng.EnhancedPacketBlock,
        }.get(btype)
        yield section, btype, (cls(block) if cls else block)
        pos += blen


def test_pcapng_sections_interfaces_spb():
    eth = wrap(udp_exchange(("10.0.0.1", 1), ("10.0.0.2", 2), start_ns=TS), LINKTYPE_ETHERNET)
    raw6 = wrap(udp_exchange(("::1", 3), ("::2", 4), start_ns=TS + 5), LINKTYPE_RAW)
    sec1 = Section(
        interfaces=[Interface(LINKTYPE_ETHERNET), Interface(LINKTYPE_RAW, tsresol=0x80 | 20)],
        records=[eth[0], Record(raw6[0].ts_ns, raw6[0].data, interface=1), eth[1]],
    )
    sec2 = Section(
        interfaces=[Interface(LINKTYPE_LINUX_SLL2, snaplen=64)],
        records=[Record(0, b"\x01" * 30, wirelen=100, block="spb")],
        big_endian=True,
    )
    image = pcapng_bytes([sec1, sec2])
    blocks = list(_walk_pcapng(image))
    assert [(s, t) for s, t, _ in blocks] == [
        (0, 0x0A0D0D0A),
        (0, 1),
        (0, 1),
        (0, 6),
        (0, 6),
        (0, 6),
        (1, 0x0A0D0D0A),
        (1, 1),
        (1, 3),
    ]
    idbs = [b for _, t, b in blocks if t == 1]
    assert [i.linktype for i in idbs] == [LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL2]
    assert [o.data for o in idbs[1].opts if o.code == 9] == [bytes([0x80 | 20])]
    assert idbs[2].snaplen == 64
    epbs = [b for _, t, b in blocks if t == 6]
    assert [e.iface_id for e in epbs] == [0, 1, 0]
    assert epbs[1].pkt_data == raw6[0].data
    assert (epbs[1].ts_high << 32 | epbs[1].ts_low) == ((TS + 5) << 20) // 10**9
    assert (epbs[0].ts_high << 32 | epbs[0].ts_low) == TS // 1000
    spb = blocks[-1][2]
    assert struct.unpack(">I", spb[8:12])[0] == 100 and spb[12:42] == b"\x01" * 30


def test_gzip_pcapng_is_pcapng_inside(tmp_path):
    path = write_pcapng(tmp_path / "x", [Section()], gzip=True)
    image = gzip.decompress(path.read_bytes())
    assert image[:4] == b"\x0a\x0d\x0d\x0a" and image == pcapng_bytes([Section()])
    assert list(dpkt.pcapng.Reader(io.BytesIO(image))) == []


def test_nflog_tlvs_lead_to_the_packet():
    pkt = ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2, b"abc"))
    frame = nflog(pkt)
    assert frame[0] == 2  # AF_INET
    pos, kinds = 4, []
    while pos < len(frame):
        length, kind = struct.unpack("<HH", frame[pos : pos + 4])
        kinds.append(kind)
        if kind == 9:
            assert frame[pos + 4 : pos + length] == pkt
        pos += length + (-length % 4)
    assert kinds == [1, 10, 9] and pos == len(frame)
