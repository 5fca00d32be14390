"""Capture readers on real captures from ../shared, checked against dpkt.

Skipped when ../shared (beside the repository) is absent.
"""

import struct
from pathlib import Path

import dpkt
import numpy as np
import pytest

from dmfnet.capture import read_packets
from dmfnet.problems import ProblemLog

SHARED = Path(__file__).resolve().parents[2] / "shared"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is not available")


def _dpkt_ip(linktype: int, frame: bytes):
    """The IP layer of a frame as dpkt decodes it (None when not IP)."""
    try:
        if linktype == 1:
            pkt = dpkt.ethernet.Ethernet(frame).data
        elif linktype == 113:
            pkt = dpkt.sll.SLL(frame).data
        elif linktype == 276:
            pkt = dpkt.sll2.SLL2(frame).data
        elif linktype in (0, 108):
            pkt = dpkt.loopback.Loopback(frame).data
        elif linktype in (101, 228, 229):
            version = frame[0] >> 4
            pkt = dpkt.ip.IP(frame) if version == 4 else dpkt.ip6.IP6(frame)
        else:
            return None
    except (dpkt.UnpackError, IndexError, struct.error):
        return None
    return pkt if isinstance(pkt, (dpkt.ip.IP, dpkt.ip6.IP6)) else None


def _five_tuple(pkt):
    """(src, dst, protocol, sport, dport) with ports None for non-TCP/UDP and fragments."""
    if pkt is None:
        return None
    if isinstance(pkt, dpkt.ip.IP):
        src, dst = b"\x00" * 10 + b"\xff\xff" + pkt.src, b"\x00" * 10 + b"\xff\xff" + pkt.dst
        if pkt.offset:
            return (src, dst, pkt.p, None, None)
    else:
        src, dst = pkt.src, pkt.dst
    t = pkt.data
    if not isinstance(t, (dpkt.tcp.TCP, dpkt.udp.UDP)):
        return (src, dst, pkt.p, None, None)
    return (src, dst, pkt.p, t.sport, t.dport)


def _dpkt_pcap(path):
    """(timestamp seconds, link type, frame) of each record, by dpkt's pcap reader."""
    with open(path, "rb") as fh:
        reader = dpkt.pcap.Reader(fh)
        lt = reader.datalink()
        return [(float(ts), lt, frame) for ts, frame in reader]


def _dpkt_pcapng(path):
    """Same for pcapng, every section and interface, from dpkt's block classes."""
    image = Path(path).read_bytes()
    out, pos, le, ifaces = [], 0, True, []
    while pos + 12 <= len(image):
        if image[pos : pos + 4] == b"\x0a\x0d\x0d\x0a":
            le = image[pos + 8 : pos + 12] == b"\x4d\x3c\x2b\x1a"
            ifaces = []
        btype, blen = struct.unpack(("<" if le else ">") + "II", image[pos : pos + 8])
        block = image[pos : pos + blen]
        if btype == 1:
            idb = (
                dpkt.pcapng.InterfaceDescriptionBlockLE
                if le
                else dpkt.pcapng.InterfaceDescriptionBlock
            )(block)
            resol = [o.data[0] for o in idb.opts if o.code == 9] or [6]
            ifaces.append((idb.linktype, resol[0]))
        elif btype == 6:
            epb = (dpkt.pcapng.EnhancedPacketBlockLE if le else dpkt.pcapng.EnhancedPacketBlock)(
                block
            )
            lt, resol = ifaces[epb.iface_id]
            units = epb.ts_high << 32 | epb.ts_low
            ts = units / (2 ** (resol & 0x7F) if resol & 0x80 else 10**resol)
            out.append((ts, lt, epb.pkt_data))
        pos += blen
    return out


def _ours(path):
    problems = ProblemLog()
    rows = []
    for b in read_packets(path, problems, chunk_bytes=1 << 16):
        ports = np.isin(b.protocol, (6, 17)) & ~b.fragment
        for i in range(len(b)):
            row = None
            if b.ip_version[i]:
                row = (
                    b.src_ip[i].tobytes(),
                    b.dst_ip[i].tobytes(),
                    int(b.protocol[i]),
                    int(b.src_port[i]) if ports[i] else None,
                    int(b.dst_port[i]) if ports[i] else None,
                )
            rows.append((float(b.batch.ts_ns[i]) / 1e9, int(b.batch.linktype[i]), row))
    return rows, problems


@pytest.mark.parametrize(
    "relpath",
    [
        "data/ndpi/pcaps/443-firefox.pcap",  # Ethernet, TLS
        "data/ndpi/pcaps/log4j-webapp-exploit.pcap",  # Linux SLL
        "data/nfstream/pcaps/mdns.pcap",  # Linux SLL, IPv6
        "fixtures/zeek/linux_dlt_sll2.pcap",  # Linux SLL2
        "data/ndpi/pcaps/http_ipv6.pcap",  # IPv6
        "data/ndpi/pcaps/sites.pcapng",  # pcapng, 22 interfaces, µs and ns
        "fixtures/zeek/pcapng-multi-interface.pcapng",
        "data/nfstream/pcaps/dhcp_big_endian.pcapng",  # big-endian pcapng
    ],
)
def test_same_packets_and_five_tuples_as_dpkt(relpath):
    path = SHARED / relpath
    if not path.exists():
        pytest.skip(f"{relpath} not in ../shared")
    ref = _dpkt_pcapng(path) if path.suffix == ".pcapng" else _dpkt_pcap(path)
    ours, problems = _ours(path)
    if "big_endian" in relpath:  # its writer put a bogus 64-bit time in every block
        assert [p.reason for p in problems.problems] == [
            "timestamp out of range on interface 0 (set to 0)"
        ]
    else:
        assert problems.total == 0, problems.problems
    assert len(ours) == len(ref) > 0
    assert [lt for _, lt, _ in ours] == [lt for _, lt, _ in ref]
    if "big_endian" not in relpath:
        assert np.allclose([t for t, _, _ in ours], [t for t, _, _ in ref], rtol=0, atol=2e-6)
    want = [_five_tuple(_dpkt_ip(lt, frame)) for _, lt, frame in ref]
    got = [row for _, _, row in ours]
    assert sum(w is not None for w in want) > 0
    assert got == want


def test_every_tcpdump_fixture_reads_without_an_exception():
    folder = SHARED / "fixtures" / "tcpdump"
    if not folder.is_dir():
        pytest.skip("no tcpdump fixtures")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    assert len(files) > 100
    packets = 0
    problems = ProblemLog()
    for path in files:
        for batch in read_packets(path, problems):
            packets += len(batch)
            assert len(batch.src_ip) == len(batch) == len(batch.batch.ts_ns)
            assert (batch.l3_caplen >= 0).all() and (batch.payload_len >= 0).all()
    assert packets > 5000
    # odd link types and broken files are reported, never raised
    assert problems.total > 0
    assert all(p.file.startswith(str(folder)) and p.reason for p in problems.problems)


def test_real_capture_with_a_corrupt_record_resynchronises():
    path = SHARED / "data" / "ndpi" / "pcaps" / "fuzz-2021-10-13.pcap"
    if not path.exists():
        pytest.skip("fuzzed capture not in ../shared")
    problems = ProblemLog()
    batches = list(read_packets(path, problems))
    reasons = [p.reason for p in problems.problems]
    assert any("corrupt record" in r for r in reasons)
    assert any("resynchronised" in r for r in reasons)
    assert sum(len(b) for b in batches) == len(_dpkt_pcap(path))


def test_linux_nflog_capture():
    path = SHARED / "fixtures" / "zeek" / "nflog-http.pcap"
    if not path.exists():
        pytest.skip("NFLOG capture not in ../shared")
    problems = ProblemLog()
    batches = list(read_packets(path, problems))
    assert problems.total == 0
    assert sum(len(b) for b in batches) == len(_dpkt_pcap(path)) == 13
    for b in batches:
        assert (b.ip_version == 4).all() and (b.protocol == 6).all()
        assert ((b.src_port == 80) | (b.dst_port == 80)).all()


def test_chase_and_walk_one_by_one_agree_on_every_shared_file(monkeypatch):
    """Records (offsets, lengths, times) and problems match with the chase on and off.

    The chase's segments are made small, so it runs on these small captures too.
    """
    from dmfnet.capture import reader
    from walkcheck import shrink_chase

    shrink_chase(monkeypatch)

    def read(path, chase):
        monkeypatch.setattr(reader._PcapWalker, "chase", chase)
        monkeypatch.setattr(reader._PcapngWalker, "chase", chase)
        problems = ProblemLog()
        batches = [p.batch for p in read_packets(path, problems)]
        fields = [
            np.concatenate([getattr(b, f) for b in batches]).tolist() if batches else []
            for f in ("file_offset", "caplen", "ts_ns")
        ]
        return fields, [(p.offset, p.reason) for p in problems.problems]

    files = [p for d in ("data", "fixtures") for p in sorted((SHARED / d).rglob("*"))]
    files = [p for p in files if p.is_file()]
    for path in files:
        assert read(path, True) == read(path, False), path
    assert len(files) > 2000
