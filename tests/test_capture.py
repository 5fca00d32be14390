"""Capture readers and the vectorised parser on captures built with known contents."""

import gzip
import struct

import numpy as np
import pytest

from dmfnet.capture import parse_packets, read_packets
from dmfnet.capture.packets import PacketBatch
from dmfnet.problems import ProblemLog
from pcapbuild import (
    ETHERTYPE_ARP,
    ETHERTYPE_MPLS,
    ETHERTYPE_PPPOE_SESSION,
    IPV6_AH,
    IPV6_DESTINATION,
    IPV6_HOP_BY_HOP,
    IPV6_MOBILITY,
    IPV6_ROUTING,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NFLOG,
    LINKTYPE_NULL,
    LINKTYPE_PPP,
    LINKTYPE_RAW,
    LINKTYPE_RAW_12,
    LINKTYPE_RAW_14,
    Interface,
    Record,
    Section,
    bsd_null,
    ethernet,
    interface_statistics_block,
    ipv4,
    ipv4_mapped,
    ipv6,
    ipv6_fragment,
    linux_sll,
    mpls,
    name_resolution_block,
    pcap_bytes,
    pcapng_block,
    pcapng_bytes,
    pppoe_session,
    tcp,
    tcp_conversation,
    udp,
    udp_exchange,
    wrap,
    write_bytes,
    write_pcap,
    write_pcapng,
)

T0 = 1_700_000_000_123_456_789  # ns
C4, S4 = ("10.1.2.3", 40001), ("192.0.2.80", 443)
C6, S6 = ("2001:db8::1", 40002), ("2001:db8:ffff::2", 8443)


def read_all(path, **kw):
    problems = ProblemLog()
    batches = list(read_packets(path, problems, **kw))
    return batches, problems


def column(batches, name):
    """A ParsedPackets field (or a PacketBatch field) over all batches."""
    parts = []
    for b in batches:
        parts.append(getattr(b, name) if hasattr(b, name) else getattr(b.batch, name))
    return np.concatenate(parts) if parts else np.zeros(0)


def conversation(client, server):
    """A TCP conversation and a UDP exchange, with the expected fields of each packet."""
    tcp_recs = tcp_conversation(
        client, server, [("c", b"x" * 100), ("s", b"y" * 1000)], start_ns=T0, gap_ns=1_234_567
    )
    udp_recs = udp_exchange(client, (server[0], 53), [("c", b"q" * 30)], start_ns=T0 + 10**9)
    return tcp_recs + udp_recs


def expected(records, client, server):
    c, s = ipv4_mapped(client[0]), ipv4_mapped(server[0])
    v = 6 if ":" in client[0] else 4
    iphdr = 40 if v == 6 else 20
    rows = []
    for i, r in enumerate(records):
        from_client = i in (0, 2, 3, 5, 7, 8)
        is_udp = i == 8
        payload = {3: 100, 4: 1000, 8: 30}.get(i, 0)
        rows.append(
            dict(
                ip_version=v,
                src_ip=c if from_client else s,
                dst_ip=s if from_client else c,
                protocol=17 if is_udp else 6,
                src_port=client[1] if from_client else (53 if is_udp else server[1]),
                dst_port=(53 if is_udp else server[1]) if from_client else client[1],
                ip_len=iphdr + (8 if is_udp else 20) + payload,
                header_len=iphdr + (8 if is_udp else 20),
                payload_len=payload,
                ts_ns=r.ts_ns,
            )
        )
    return rows


def assert_rows(batches, rows):
    assert sum(len(b) for b in batches) == len(rows)
    for name in rows[0]:
        got = column(batches, name)
        want = [r[name] for r in rows]
        if name in ("src_ip", "dst_ip"):
            assert [bytes(x) for x in got] == want, name
        else:
            assert got.tolist() == want, name


ALL_LINKTYPES = [
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    LINKTYPE_RAW_12,
    LINKTYPE_RAW_14,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_NULL,
    LINKTYPE_LOOP,
    LINKTYPE_PPP,
    LINKTYPE_NFLOG,
]


@pytest.mark.parametrize("linktype", ALL_LINKTYPES)
@pytest.mark.parametrize(
    "fmt", ["pcap-le-us", "pcap-be-ns", "pcapng-le-ns", "pcapng-be-us", "gz-pcap-le-ns"]
)
def test_every_link_type_and_format_reads_back_exactly(tmp_path, linktype, fmt):
    client, server = (C6, S6) if linktype == LINKTYPE_IPV6 else (C4, S4)
    records = conversation(client, server)
    framed = wrap(records, linktype)
    nanosecond = fmt.endswith("ns")
    big = "-be-" in fmt
    path = tmp_path / "capture.bin"
    if "pcapng" in fmt:
        iface = Interface(linktype, tsresol=9 if nanosecond else 6)
        write_pcapng(path, [Section([iface], framed, big_endian=big)])
    else:
        write_pcap(
            path,
            framed,
            linktype=linktype,
            big_endian=big,
            nanosecond=nanosecond,
            gzip=fmt.startswith("gz"),
        )
    batches, problems = read_all(path)
    assert problems.total == 0, problems.problems
    rows = expected(records, client, server)
    if not nanosecond:
        for r in rows:
            r["ts_ns"] -= r["ts_ns"] % 1000
    assert_rows(batches, rows)
    flags = column(batches, "tcp_flags").tolist()
    assert flags == [0x02, 0x12, 0x10, 0x18, 0x18, 0x11, 0x11, 0x10, 0]
    assert column(batches, "tcp_window").tolist() == [64240] * 8 + [0]
    assert column(batches, "tcp_seq").tolist()[:5] == [1000, 5000, 1001, 1001, 5001]
    assert column(batches, "caplen").tolist() == [len(r.data) for r in framed]
    assert column(batches, "wirelen").tolist() == [len(r.data) for r in framed]
    assert set(column(batches, "linktype").tolist()) == {linktype}
    assert not column(batches, "fragment").any()
    ts = column(batches, "ts")
    assert np.allclose(ts, column(batches, "ts_ns") / 1e9, rtol=0, atol=1e-6)
    # the IP header really is where l3_offset says
    b = batches[0]
    first = b.batch.data[b.l3_offset[0]]
    assert first >> 4 == (6 if linktype == LINKTYPE_IPV6 else 4)
    assert b.l3_caplen.tolist()[:1] == [len(records[0].data)]


def test_pcap_file_offsets_and_first_index_across_chunks(tmp_path):
    records = []
    for i in range(300):
        records += udp_exchange(("10.0.0.1", 1000 + i), S4, [("c", b"z" * 400)], start_ns=T0 + i)
    framed = wrap(records, LINKTYPE_ETHERNET)
    path = write_pcap(tmp_path / "c.pcap", framed)
    whole, _ = read_all(path)
    assert len(whole) == 1
    batches, problems = read_all(path, chunk_bytes=1)  # raised to the 64 KiB minimum
    assert problems.total == 0 and len(batches) > 1
    assert [b.batch.first_index for b in batches] == list(
        np.cumsum([0] + [len(b) for b in batches[:-1]])
    )
    sizes = [len(r.data) for r in framed]
    want = 24 + np.concatenate([[0], np.cumsum(np.array(sizes) + 16)[:-1]])
    assert column(batches, "file_offset").tolist() == want.tolist()
    assert column(batches, "src_port").tolist() == list(range(1000, 1300))


@pytest.mark.parametrize("inner", ["pcap", "pcapng"])
def test_gzip_chunks_carry_records_over_boundaries(tmp_path, inner):
    records = []
    for i in range(2000):
        payload = bytes([i % 251]) * (50 + (i * 37) % 1400)
        records += udp_exchange(("10.0.0.1", 1), ("10.0.0.2", i + 1), [("c", payload)])
    framed = wrap(records, LINKTYPE_ETHERNET)
    if inner == "pcap":
        image = pcap_bytes(framed)
    else:
        image = pcapng_bytes([Section(records=framed[:1000]), Section(records=framed[1000:])])
    plain = write_bytes(tmp_path / "plain", image)
    packed = write_bytes(tmp_path / "packed.pcap", image, gzip=True)
    want, _ = read_all(plain)
    seen = []
    got, problems = read_all(packed, chunk_bytes=1 << 16, progress=seen.append)
    assert problems.total == 0 and len(got) > 10
    for name in ("dst_port", "payload_len", "file_offset", "ts_ns", "caplen"):
        assert column(got, name).tolist() == column(want, name).tolist(), name
    assert sum(seen) == packed.stat().st_size


def test_progress_adds_up_to_the_file_size(tmp_path):
    framed = wrap(conversation(C4, S4) * 50, LINKTYPE_ETHERNET)
    path = write_pcap(tmp_path / "p.pcap", framed)
    seen = []
    read_all(path, chunk_bytes=1 << 16, progress=seen.append)
    assert sum(seen) == path.stat().st_size and all(n >= 0 for n in seen)


def test_pcapng_sections_interfaces_blocks_and_resolutions(tmp_path):
    eth = wrap(udp_exchange(C4, S4, [("c", b"a"), ("s", b"bb")], start_ns=T0), ethernet)
    raw6 = wrap(udp_exchange(C6, S6, [("c", b"ccc")], start_ns=T0 + 7), LINKTYPE_RAW)
    sll = wrap(udp_exchange(C4, S4, [("s", b"dddd")], start_ns=T0 + 9), linux_sll)
    null = wrap(udp_exchange(C4, S4, [("c", b"eeeee")], start_ns=T0 + 11), bsd_null)
    sec1 = Section(
        interfaces=[Interface(LINKTYPE_ETHERNET), Interface(LINKTYPE_RAW, tsresol=9)],
        records=[eth[0], Record(raw6[0].ts_ns, raw6[0].data, interface=1), eth[1]],
        extra_blocks=[(1, name_resolution_block()), (3, interface_statistics_block())],
    )
    sec2 = Section(
        interfaces=[Interface(LINKTYPE_LINUX_SLL, tsresol=0x80 | 20), Interface(LINKTYPE_NULL)],
        records=[
            Record(sll[0].ts_ns, sll[0].data, block="pb"),
            Record(null[0].ts_ns, null[0].data, interface=1),
            Record(0, null[0].data, wirelen=len(null[0].data), interface=1, block="epb"),
        ],
        big_endian=True,
    )
    sec3 = Section(
        interfaces=[Interface(LINKTYPE_ETHERNET, snaplen=20)],
        records=[Record(0, eth[0].data[:20], wirelen=len(eth[0].data), block="spb")],
    )
    path = write_pcapng(tmp_path / "multi.pcapng", [sec1, sec2, sec3])
    batches, problems = read_all(path)
    assert problems.total == 0, problems.problems
    assert column(batches, "linktype").tolist() == [1, 101, 1, 113, 0, 0, 1]
    assert column(batches, "payload_len").tolist()[:6] == [1, 3, 2, 4, 5, 5]
    assert column(batches, "dst_port").tolist()[:6] == [S4[1], S6[1], C4[1], C4[1], S4[1], S4[1]]
    ts = column(batches, "ts_ns").tolist()
    assert ts[0] == T0 - T0 % 1000 and ts[1] == T0 + 7  # µs and ns interfaces
    assert ts[3] == ((T0 + 9) << 20) // 10**9 * 10**9 >> 20  # 2^-20 s, floored
    assert ts[4] == T0 + 11 - (T0 + 11) % 1000 and ts[5] == 0
    assert ts[6] == ts[5]  # a simple packet block has no time: the previous packet's
    # the SPB keeps min(original length, snap length) bytes; its IP header is cut short
    assert column(batches, "caplen").tolist()[6] == 20
    assert column(batches, "wirelen").tolist()[6] == len(eth[0].data)
    assert column(batches, "ip_version").tolist() == [4, 6, 4, 4, 4, 4, 0]
    assert [bytes(x) for x in column(batches, "src_ip")][1] == ipv4_mapped(C6[0])


def test_vlan_qinq_mpls_pppoe_and_ipv4_options(tmp_path):
    inner = ipv4(
        "10.9.9.9", "10.8.8.8", 6, tcp(1111, 2222, b"p" * 7, flags="PA"), options=b"\x01" * 8
    )
    frames = [
        ethernet(inner, vlans=[(0x8100, 5)]),
        ethernet(inner, vlans=[(0x88A8, 5), (0x8100, 6)]),
        ethernet(inner, vlans=[(0x9100, 5), (0x9100, 6), (0x8100, 7)]),
        ethernet(mpls(inner, [16, 17, 18]), ethertype=ETHERTYPE_MPLS),
        ethernet(pppoe_session(inner), ethertype=ETHERTYPE_PPPOE_SESSION),
        ethernet(pppoe_session(inner), ethertype=ETHERTYPE_PPPOE_SESSION, vlans=[(0x8100, 9)]),
    ]
    path = write_pcap(tmp_path / "tags.pcap", [Record(T0, f) for f in frames])
    batches, problems = read_all(path)
    assert problems.total == 0
    n = len(frames)
    assert column(batches, "ip_version").tolist() == [4] * n
    assert column(batches, "src_port").tolist() == [1111] * n
    assert column(batches, "dst_port").tolist() == [2222] * n
    assert column(batches, "header_len").tolist() == [28 + 20] * n
    assert column(batches, "payload_len").tolist() == [7] * n
    assert column(batches, "ip_len").tolist() == [len(inner)] * n
    assert column(batches, "tcp_flags").tolist() == [0x18] * n


def test_ipv6_extension_headers_are_skipped():
    seg = udp(5353, 5354, b"hello")
    chains = [
        [(IPV6_HOP_BY_HOP, b"\x00" * 4)],
        [(IPV6_HOP_BY_HOP, b""), (IPV6_ROUTING, b"\x00" * 20), (IPV6_DESTINATION, b"\x00" * 6)],
        [(IPV6_AH, b"\x00" * 14), (IPV6_MOBILITY, b"")],
        [ipv6_fragment(0, False, 1)],  # atomic fragment: transport header follows
    ]
    packets = [ipv6(C6[0], S6[0], 17, seg, extensions=c) for c in chains]
    ext_len = [len(p) - 40 - len(seg) for p in packets]
    parsed = parse_packets(_batch(packets, LINKTYPE_IPV6))
    assert parsed.protocol.tolist() == [17] * 4
    assert parsed.src_port.tolist() == [5353] * 4
    assert parsed.header_len.tolist() == [40 + e + 8 for e in ext_len]
    assert parsed.payload_len.tolist() == [5] * 4
    assert parsed.ip_len.tolist() == [len(p) for p in packets]
    assert not parsed.fragment.any()


def _batch(packets, linktype, caplens=None):
    buf = b"".join(packets)
    starts = np.cumsum([0] + [len(p) for p in packets[:-1]]).astype(np.int64)
    n = len(packets)
    caplen = np.array(caplens or [len(p) for p in packets], np.int32)
    return PacketBatch(
        data=np.frombuffer(buf, np.uint8),
        offset=starts,
        caplen=caplen,
        wirelen=caplen.copy(),
        ts=np.zeros(n),
        linktype=np.full(n, linktype, np.int32),
        file_offset=starts,
        first_index=0,
    )


def test_fragments_take_ports_of_their_first_fragment():
    seg = udp(7000, 7001, b"F" * 64)
    v4 = [
        ipv4(C4[0], S4[0], 17, seg[:32], ident=77, more_fragments=True),
        ipv4(C4[0], S4[0], 17, seg[32:], ident=77, fragment_offset=32),
        ipv4(C4[0], S4[0], 17, seg[32:], ident=78, fragment_offset=32),  # first one lost
    ]
    v6 = [
        ipv6(C6[0], S6[0], 17, seg[:32], extensions=[ipv6_fragment(0, True, 9)]),
        ipv6(C6[0], S6[0], 17, seg[32:], extensions=[ipv6_fragment(32, False, 9)]),
    ]
    parsed = parse_packets(_batch(v4 + v6, LINKTYPE_RAW))
    assert parsed.fragment.tolist() == [False, True, True, False, True]
    assert parsed.src_port.tolist() == [7000, 7000, 0, 7000, 7000]
    assert parsed.dst_port.tolist() == [7001, 7001, 0, 7001, 7001]
    assert parsed.protocol.tolist() == [17] * 5
    assert parsed.payload_len.tolist() == [24, 40, 40, 24, 40]
    assert parsed.header_len.tolist() == [28, 20, 20, 56, 48]


def test_non_ip_short_and_odd_packets():
    ok = ipv4(C4[0], S4[0], 6, tcp(1, 2, b"abc"))
    frames = [
        ethernet(b"\x00" * 28, ethertype=ETHERTYPE_ARP),  # ARP: not IP
        ethernet(ok)[:20],  # IPv4 header cut by the snap length
        ethernet(ok)[: 14 + 20 + 10],  # TCP header cut: ports and seq only
        ethernet(ipv4(C4[0], S4[0], 6, tcp(1, 2, b"abc"), total_length=0)),  # TSO: length 0
        ethernet(ipv6(C6[0], S6[0], 17, udp(1, 2, b"ab"), payload_length=0)),  # jumbo
        ethernet(ipv4(C4[0], S4[0], 6, tcp(1, 2), total_length=30)),  # length below headers
        ethernet(b"\x60" + b"\x00" * 10),  # IPv6 ethertype, too short
        ethernet(ipv4(C4[0], S4[0], 1, b"\x08\x00" + b"\x00" * 30)),  # ICMP: no ports
        b"\x01\x02",  # shorter than an Ethernet header
    ]
    parsed = parse_packets(_batch(frames, LINKTYPE_ETHERNET))
    assert parsed.ip_version.tolist() == [0, 0, 4, 4, 6, 4, 0, 4, 0]
    assert parsed.l3_offset.tolist()[:2] == [-1, -1]
    assert parsed.src_port.tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 0]
    assert parsed.tcp_flags.tolist()[2] == 0  # not captured
    assert parsed.header_len.tolist()[2] == 40 and parsed.payload_len.tolist()[2] == 3
    assert parsed.ip_len.tolist()[3:5] == [len(frames[3]) - 14, len(frames[4]) - 14]
    assert parsed.payload_len.tolist()[3:6] == [3, 2, 0]
    assert parsed.protocol.tolist()[7] == 1 and parsed.header_len.tolist()[7] == 20
    assert parsed.payload_len.tolist()[7] == 32


def test_null_loopback_families_in_both_byte_orders():
    p4 = ipv4(C4[0], S4[0], 17, udp(1, 2))
    p6 = ipv6(C6[0], S6[0], 17, udp(1, 2))
    frames = [
        bsd_null(p4, family=2),
        bsd_null(p4, family=2, big_endian=True),
        bsd_null(p6, family=24),
        bsd_null(p6, family=28, big_endian=True),
        bsd_null(p6, family=30),
        bsd_null(p4, family=7),
    ]
    parsed = parse_packets(_batch(frames, LINKTYPE_NULL))
    assert parsed.ip_version.tolist() == [4, 4, 6, 6, 6, 0]
    parsed = parse_packets(_batch(frames, LINKTYPE_LOOP))
    assert parsed.ip_version.tolist() == [4, 4, 6, 6, 6, 0]


def test_raw_link_types_check_the_ip_version():
    p4 = ipv4(C4[0], S4[0], 17, udp(1, 2))
    p6 = ipv6(C6[0], S6[0], 17, udp(1, 2))
    assert parse_packets(_batch([p4, p6], LINKTYPE_IPV4)).ip_version.tolist() == [4, 0]
    assert parse_packets(_batch([p4, p6], LINKTYPE_IPV6)).ip_version.tolist() == [0, 6]
    sll2 = parse_packets(_batch([b"\x08\x00" + b"\x00" * 18 + p4], LINKTYPE_LINUX_SLL2))
    assert sll2.ip_version.tolist() == [4]


# ---------------------------------------------------------------------------------------
# Bad input: reported with file, offset and reason; everything readable kept


def _eth_records(n=5):
    recs = []
    for i in range(n):
        recs += udp_exchange(C4, (S4[0], 100 + i), [("c", b"u" * 20)], start_ns=T0 + i * 10**6)
    return wrap(recs, LINKTYPE_ETHERNET)


def test_truncated_last_record_is_kept_and_reported(tmp_path):
    image = pcap_bytes(_eth_records())
    path = write_bytes(tmp_path / "t.pcap", image[:-10])
    batches, problems = read_all(path)
    assert column(batches, "dst_port").tolist() == [100, 101, 102, 103, 104]
    assert column(batches, "caplen").tolist()[-1] == 14 + 28 + 20 - 10
    assert problems.total == 1
    p = problems.problems[0]
    last_record = len(image) - (16 + 62)
    assert (p.file, p.offset) == (str(path), last_record) and "truncated" in p.reason
    # a cut record header: nothing to keep of it
    path = write_bytes(tmp_path / "h.pcap", image[: last_record + 7])
    batches, problems = read_all(path)
    assert len(column(batches, "dst_port")) == 4 and problems.problems[0].offset == last_record


def test_corrupt_record_length_resynchronises(tmp_path):
    recs = _eth_records(6)
    image = bytearray(pcap_bytes(recs))
    third = 24 + 2 * (16 + len(recs[0].data))
    struct.pack_into("<I", image, third + 8, 0x7FFFFF00)  # captured length
    path = write_bytes(tmp_path / "c.pcap", bytes(image))
    batches, problems = read_all(path)
    assert column(batches, "dst_port").tolist() == [100, 101, 103, 104, 105]
    reasons = [(p.offset, p.reason) for p in problems.problems]
    assert reasons[0][0] == third and "corrupt record" in reasons[0][1]
    assert reasons[1][0] == third + 16 + len(recs[0].data) and "resynchronised" in reasons[1][1]
    assert problems.total == 2


def test_record_longer_than_twice_the_snap_length(tmp_path):
    recs = _eth_records(3)
    # a wrong snap length in the header alone does not lose records
    batches, problems = read_all(write_pcap(tmp_path / "s.pcap", recs, snaplen=20))
    assert len(column(batches, "dst_port")) == 3 and problems.total == 0
    # but a length that leads nowhere is corrupt
    image = bytearray(pcap_bytes(recs, snaplen=40))
    second = 24 + 16 + len(recs[0].data)
    struct.pack_into("<I", image, second + 8, 200)
    batches, problems = read_all(write_bytes(tmp_path / "s2.pcap", bytes(image)))
    assert column(batches, "dst_port").tolist() == [100, 102]
    assert "twice the snap length" in problems.problems[0].reason


def test_pcapng_corrupt_block_length_resynchronises(tmp_path):
    recs = _eth_records(4)
    image = bytearray(pcapng_bytes([Section(records=recs)]))
    blocks = len(pcapng_bytes([Section()]))  # SHB and IDB
    epb = 32 + len(recs[0].data) + (-len(recs[0].data) % 4)
    struct.pack_into("<I", image, blocks + epb + 4, 0xFFFFFFF0)  # a "negative" length
    batches, problems = read_all(write_bytes(tmp_path / "c.pcapng", bytes(image)))
    assert column(batches, "dst_port").tolist() == [100, 102, 103]
    assert problems.problems[0].offset == blocks + epb
    assert "block length" in problems.problems[0].reason
    assert problems.problems[1].offset == blocks + 2 * epb


def test_pcapng_truncated_last_block_kept(tmp_path):
    image = pcapng_bytes([Section(records=_eth_records(2))])
    batches, problems = read_all(write_bytes(tmp_path / "t.pcapng", image[:-12]))
    assert column(batches, "dst_port").tolist() == [100, 101]
    assert problems.total == 1 and "truncated last block" in problems.problems[0].reason


def test_unknown_link_type_reported_once_per_interface(tmp_path):
    recs = _eth_records(2)
    sec = Section(
        interfaces=[Interface(LINKTYPE_ETHERNET), Interface(147), Interface(148)],
        records=[
            recs[0],
            Record(T0, b"\x00" * 30, interface=1),
            Record(T0, b"\x00" * 30, interface=1),
            Record(T0, b"\x00" * 30, interface=2),
            recs[1],
        ],
    )
    batches, problems = read_all(write_pcapng(tmp_path / "u.pcapng", [sec]))
    assert column(batches, "ip_version").tolist() == [4, 0, 0, 0, 4]
    reasons = sorted(p.reason for p in problems.problems)
    assert len(reasons) == 2
    assert "link type 147 on interface 1" in reasons[0] and "148" in reasons[1]
    # a pcap of an unknown link type: one report
    batches, problems = read_all(write_pcap(tmp_path / "u.pcap", recs, linktype=147))
    assert problems.total == 1 and len(column(batches, "ip_version")) == 2


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"hello world, this is not a capture at all", "not a pcap or pcapng"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "truncated pcap file header"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00", "truncated pcapng section header"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00" + b"\x00" * 20, "byte-order magic"),
        (b"BZh91AY&SY" + b"\x00" * 30, "bzip2"),
        (gzip.compress(b"just text, gzipped, long enough"), "not a pcap or pcapng"),
    ],
)
def test_files_that_are_not_captures(tmp_path, content, reason):
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    seen = []
    batches, problems = read_all(path, progress=seen.append)
    assert batches == [] and problems.total == 1
    assert sum(seen) == len(content)  # a progress bar over many files still completes
    assert reason in problems.problems[0].reason and problems.problems[0].file == str(path)


def test_unreadable_files(tmp_path):
    batches, problems = read_all(tmp_path / "missing.pcap")
    assert batches == [] and "cannot open" in problems.problems[0].reason
    assert problems.problems[0].offset == -1
    batches, problems = read_all(tmp_path)  # a folder
    assert batches == [] and "cannot" in problems.problems[0].reason


def test_truncated_and_corrupt_gzip_keep_what_was_there(tmp_path):
    recs = _eth_records(300)
    packed = gzip.compress(pcap_bytes(recs))
    path = write_bytes(tmp_path / "cut.gz", packed[: len(packed) * 2 // 3])
    batches, problems = read_all(path)
    n = len(column(batches, "dst_port"))
    assert 0 < n < 300
    assert any("gzip stream ends early" in p.reason for p in problems.problems)
    broken = bytearray(packed)
    broken[len(broken) // 2 : len(broken) // 2 + 64] = b"\xff" * 64
    seen = []
    batches, problems = read_all(
        write_bytes(tmp_path / "bad.gz", bytes(broken)), progress=seen.append
    )
    assert any("gzip" in p.reason for p in problems.problems)
    assert sum(seen) == len(broken)
    assert len(column(batches, "dst_port")) < 300


def test_multi_member_gzip_and_skipped_blocks(tmp_path):
    recs = _eth_records(4)
    image = pcapng_bytes([Section(records=recs[:2])])
    big_block = pcapng_block(0x00000BAD, b"\x00" * 300_000)  # custom block larger than a chunk
    image2 = big_block + pcapng_bytes([Section(records=recs[2:])])[0:]
    path = tmp_path / "two.gz"
    path.write_bytes(gzip.compress(image) + gzip.compress(image2))
    batches, problems = read_all(path, chunk_bytes=1 << 16)
    assert problems.total == 0, problems.problems
    assert column(batches, "dst_port").tolist() == [100, 101, 102, 103]


def test_large_batches_parse_in_slices_with_fragments_across_them():
    plain = ipv4(C4[0], S4[0], 17, udp(1, 2, b"d" * 10))
    seg = udp(7000, 7001, b"F" * 64)
    first = ipv4(C4[0], S4[0], 17, seg[:32], ident=5, more_fragments=True)
    later = ipv4(C4[0], S4[0], 17, seg[32:], ident=5, fragment_offset=32)
    n = 70_000
    packets = [plain] * n
    packets[32_767], packets[32_768], packets[65_600] = first, later, later
    parsed = parse_packets(_batch(packets, LINKTYPE_RAW))
    assert len(parsed) == n and parsed.src_port.shape == (n,) and parsed.src_ip.shape == (n, 16)
    assert (parsed.ip_version == 4).all()
    assert parsed.src_port[[0, 32_767, 32_768, 65_600, n - 1]].tolist() == [1, 7000, 7000, 7000, 1]
    assert parsed.fragment.sum() == 2
    assert parsed.payload_len[[0, 32_767, 32_768]].tolist() == [10, 24, 40]


def test_headers_longer_than_the_parse_window():
    seg = tcp(4000, 5000, b"P" * 900, seq=42, flags="PA", window=999)
    long_chain = [(IPV6_HOP_BY_HOP, b"\x00" * 198), (IPV6_DESTINATION, b"\x00" * 62)]
    frames = [
        ethernet(ipv6(C6[0], S6[0], 6, seg, extensions=long_chain)),
        ethernet(ipv4(C4[0], S4[0], 6, seg, options=b"\x01" * 40), vlans=[(0x8100, 1)] * 4),
        ethernet(ipv4(C4[0], S4[0], 6, seg, total_length=0)),  # segmentation offload
        ethernet(mpls(ipv4(C4[0], S4[0], 6, seg), list(range(16, 24))), ethertype=ETHERTYPE_MPLS),
    ]
    parsed = parse_packets(_batch(frames, LINKTYPE_ETHERNET))
    assert parsed.ip_version.tolist() == [6, 4, 4, 4]
    assert parsed.src_port.tolist() == [4000] * 4 and parsed.tcp_window.tolist() == [999] * 4
    assert parsed.tcp_seq.tolist() == [42] * 4 and parsed.tcp_flags.tolist() == [0x18] * 4
    assert parsed.payload_len.tolist() == [900] * 4
    assert parsed.header_len.tolist() == [40 + 264 + 20, 60 + 20, 40, 40]
    assert parsed.ip_len.tolist()[2] == len(frames[2]) - 14
    starts = np.cumsum([0] + [len(f) for f in frames[:-1]])
    assert (parsed.l3_offset - starts).tolist() == [14, 14 + 16, 14, 14 + 32]
    assert parsed.l3_caplen.tolist() == [
        len(f) - (o - s) for f, o, s in zip(frames, parsed.l3_offset, starts, strict=True)
    ]


def test_mutated_captures_never_raise(tmp_path):
    """Random damage (bytes flipped, cut, inserted, gzip cut) is reported, never raised."""
    rng = np.random.default_rng(7)
    recs = []
    for i in range(30):
        payload = b"x" * int(rng.integers(0, 300))
        recs += tcp_conversation(("10.0.0.1", 1000 + i), ("10.0.0.2", 80), [("c", payload)])
    eth = wrap(recs, LINKTYPE_ETHERNET)
    images = [
        pcap_bytes(eth),
        pcap_bytes(eth, big_endian=True, nanosecond=True),
        pcapng_bytes(
            [
                Section(records=eth[:100]),
                Section([Interface(LINKTYPE_RAW, tsresol=9)], recs[100:], big_endian=True),
            ]
        ),
    ]
    path = tmp_path / "damaged"
    kept = 0
    for trial in range(150):
        image = bytearray(images[trial % 3])
        for _ in range(int(rng.integers(1, 12))):
            at = int(rng.integers(0, max(len(image), 1)))
            op = rng.random()
            if op < 0.6:
                image[at : at + 4] = rng.bytes(4)
            elif op < 0.75:
                del image[at : at + int(rng.integers(1, 50))]
            elif op < 0.9:
                image[at:at] = rng.bytes(int(rng.integers(1, 50)))
            else:
                del image[at:]
        data = bytes(image)
        if trial % 4 == 0:
            data = gzip.compress(data)
            data = data[: int(rng.integers(len(data) // 2, len(data) + 1))]
        path.write_bytes(data)
        problems = ProblemLog()
        for batch in read_packets(path, problems, chunk_bytes=1 << 16):
            kept += len(batch)
            assert (batch.payload_len >= 0).all() and (batch.l3_caplen >= 0).all()
            assert (batch.batch.caplen >= 0).all()
    assert kept > 1000  # damage loses some packets, not everything


def test_transport_header_must_lie_inside_the_ip_length():
    seg = tcp(1, 2, b"abc", flags="S")
    frames = [
        ipv4(C4[0], S4[0], 6, seg, total_length=22),  # only 2 transport bytes by the header
        ipv4(C4[0], S4[0], 6, seg, total_length=32),  # ports and seq, no flags
        ipv6(C6[0], S6[0], 17, udp(1, 2), extensions=[(IPV6_DESTINATION, b"")], payload_length=4),
    ]
    parsed = parse_packets(_batch(frames, LINKTYPE_RAW))
    assert parsed.src_port.tolist() == [0, 1, 0]
    assert parsed.tcp_flags.tolist() == [0, 0, 0]
    assert parsed.payload_len.tolist() == [0, 0, 4]  # the IPv6 chain stops at its end
    assert parsed.protocol.tolist() == [6, 6, IPV6_DESTINATION]


@pytest.mark.parametrize("inner", ["pcap", "pcapng"])
def test_problems_in_gzip_name_offsets_of_the_decompressed_capture(tmp_path, inner):
    recs = _eth_records(3000)
    if inner == "pcap":
        image = bytearray(pcap_bytes(recs))
        record = 16 + len(recs[0].data)
        bad = 24 + 2000 * record  # well past the first 64 KiB chunk
        struct.pack_into("<I", image, bad + 8, 0x7FFFFF00)
    else:
        image = bytearray(pcapng_bytes([Section(records=recs)]))
        record = 32 + len(recs[0].data) + (-len(recs[0].data) % 4)
        bad = len(pcapng_bytes([Section()])) + 2000 * record
        struct.pack_into("<I", image, bad + 4, 0xFFFFFFF0)
    plain = write_bytes(tmp_path / "plain", bytes(image))
    packed = write_bytes(tmp_path / "packed", bytes(image), gzip=True)
    _, want = read_all(plain)
    batches, got = read_all(packed, chunk_bytes=1 << 16)
    assert [(p.offset, p.reason) for p in got.problems] == [
        (p.offset, p.reason) for p in want.problems
    ]
    assert [p.offset for p in got.problems] == [bad, bad + record]
    assert len(column(batches, "dst_port")) == 2999


def test_permission_denied_is_reported(tmp_path, monkeypatch):
    import dmfnet.capture.reader as reader

    path = write_pcap(tmp_path / "locked.pcap", _eth_records(2))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(reader, "open", denied, raising=False)
    batches, problems = read_all(path)
    assert batches == []
    assert [(p.file, p.offset, p.reason) for p in problems.problems] == [
        (str(path), -1, "cannot open: Permission denied")
    ]


def test_batches_read_the_same_bytes_after_their_pages_are_released(tmp_path):
    framed = _eth_records(3000)
    path = write_pcap(tmp_path / "big.pcap", framed)
    batches, problems = read_all(path, chunk_bytes=1 << 16)
    assert problems.total == 0 and len(batches) > 3
    got = [
        bytes(b.batch.data[o : o + c])
        for b in batches
        for o, c in zip(b.batch.offset.tolist(), b.batch.caplen.tolist(), strict=True)
    ]
    assert got == [r.data for r in framed]


@pytest.mark.parametrize("read_ahead", [True, False])
def test_mapped_pages_are_let_go_behind_the_batches_still_in_use(tmp_path, monkeypatch, read_ahead):
    from dmfnet.capture import reader

    recs = [r for i in range(6000) for r in _eth_records(1)]
    path = write_pcap(tmp_path / "p.pcap", recs)
    released = [0]
    original = reader.release_pages

    def spy(mm, start, stop):
        released.append(original(mm, start, stop))
        return released[-1]

    def page(offset):
        return int(offset) - int(offset) % reader.mmap.PAGESIZE

    monkeypatch.setattr(reader, "release_pages", spy)
    seen = []
    for parsed in read_packets(path, ProblemLog(), chunk_bytes=1 << 16, read_ahead=read_ahead):
        offsets = parsed.batch.offset
        # when a batch is handed out, the pages let go end before it, and before the
        # batch the consumer may still read when a reader thread runs ahead of it
        in_use = seen[-1] if read_ahead and seen else offsets
        assert released[-1] <= page(in_use[0])
        # and everything before that is let go
        if read_ahead and len(seen) >= 2:
            assert released[-1] == page(seen[-2][0])
        elif not read_ahead and seen:
            assert released[-1] >= page(seen[-1][-1])
        seen.append(offsets)
    assert len(seen) >= 6
