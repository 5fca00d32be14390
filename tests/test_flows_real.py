"""Flow assembly on real captures from ../shared, against a plain dpkt reference of the same rules.

Skipped when ../shared (beside the repository) is absent.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from dmfnet.capture import read_packets
from dmfnet.flows import FlowConfig, assemble_flows
from dmfnet.flows import assemble as assemble_module
from dmfnet.problems import ProblemLog

SHARED = Path(__file__).resolve().parents[2] / "shared"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is not available")
dpkt = pytest.importorskip("dpkt")

REFERENCE_CAPTURES = [
    "data/slips/test-cc/test-cc-capture-1.pcap",
    "data/ndpi/pcaps/1kxun.pcap",
    "data/ndpi/pcaps/alexa-app.pcapng",
    "data/ndpi/pcaps/teams.pcap",
    "data/nfstream/pcaps/skype.pcap",
    "data/nfstream/pcaps/coap_mqtt.pcap",
]
TLS_CAPTURES = [
    "fixtures/zeek/tls/chrome-34-google.pcap",
    "fixtures/zeek/tls/chrome-1250-tls-x25519-kyber.pcap",
    "fixtures/zeek/tls/ecdhe.pcap",
    "fixtures/zeek/tls/dhe.pcap",
    "fixtures/zeek/tls/cert-no-cn.pcap",
    "fixtures/zeek/tls/google-duplicate.pcap",
    "fixtures/zeek/tls/ecdsa-cert.pcap",
    "fixtures/ja4/tls-sni.pcapng",
    "fixtures/ja4/tls12.pcap",
    "fixtures/ja4/browsers-x509.pcapng",
    "data/ndpi/pcaps/1kxun.pcap",
]


def assemble(path: Path, config: FlowConfig | None = None) -> dict[str, np.ndarray]:
    chunks = list(assemble_flows(read_packets(path, ProblemLog()), config or FlowConfig(), "x"))
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def dpkt_packets(path: Path):
    """(ts, IP or IP6 object) of each IP packet of an Ethernet capture, via dpkt."""
    with open(path, "rb") as fh:
        reader = dpkt.pcapng.Reader(fh) if path.suffix == ".pcapng" else dpkt.pcap.Reader(fh)
        try:
            first = next(iter(reader))
        except StopIteration:
            return
        link = reader.datalink()
        for ts, buf in [first, *reader]:
            if link == dpkt.pcap.DLT_EN10MB:
                pkt = dpkt.ethernet.Ethernet(buf).data
            elif link in (dpkt.pcap.DLT_RAW, 101):
                pkt = dpkt.ip.IP(buf) if buf[0] >> 4 == 4 else dpkt.ip6.IP6(buf)
            else:
                continue
            if isinstance(pkt, (dpkt.ip.IP, dpkt.ip6.IP6)):
                yield ts, pkt


def reference_flows(path: Path, idle: float = 120.0, active: float = 1800.0) -> list[tuple]:
    """The same flow rules as dmfnet.flows, one packet at a time over a dict."""
    open_flows: dict[tuple, dict] = {}
    done: list[dict] = []
    for ts, ip in dpkt_packets(path):
        if isinstance(ip, dpkt.ip.IP):
            if ip.offset:
                continue  # non-first fragment
            src, dst, proto = (
                b"\0" * 10 + b"\xff\xff" + ip.src,
                b"\0" * 10 + b"\xff\xff" + ip.dst,
                ip.p,
            )
            ip_payload = ip.len - ip.hl * 4
            ip_len = ip.len
        else:
            src, dst, proto = ip.src, ip.dst, ip.p
            ip_payload = ip.plen - (len(ip) - 40 - len(ip.data))
            ip_len = 40 + ip.plen
        l4 = ip.data
        sport = dport = flags = 0
        payload = 0
        if proto == 6 and isinstance(l4, dpkt.tcp.TCP):
            sport, dport, flags = l4.sport, l4.dport, l4.flags
            payload = max(ip_payload - l4.off * 4, 0)
        elif proto == 17 and isinstance(l4, dpkt.udp.UDP):
            sport, dport = l4.sport, l4.dport
        elif proto in (6, 17):
            continue
        a, b = (src, sport), (dst, dport)
        key = (proto, min(a, b), max(a, b))
        f = open_flows.get(key)
        straggler = proto == 6 and payload == 0 and not flags & 0x02
        if f is not None and (
            ts - f["last"] > idle or ts - f["start"] > active or (f["closed"] and not straggler)
        ):
            done.append(open_flows.pop(key))
            f = None
        if f is None:
            client = b if proto == 6 and flags & 0x12 == 0x12 else a
            f = {"key": key, "client": client, "start": ts, "packets": 0, "closed": False}
            f["lengths"] = []
            f.update(fins=set(), rst=False)
            open_flows[key] = f
        f["packets"] += 1
        f["last"] = ts
        if len(f["lengths"]) < 30:
            f["lengths"].append(ip_len)
        if proto == 6:
            if flags & 0x01:
                f["fins"].add(a)
            f["rst"] |= bool(flags & 0x04)
            f["closed"] = f["rst"] or len(f["fins"]) == 2
    done.extend(open_flows.values())
    return sorted(
        (f["key"][0], f["client"][0][-4:], f["client"][1], f["packets"], tuple(f["lengths"]))
        for f in done
    )


@pytest.mark.parametrize("capture", REFERENCE_CAPTURES)
def test_flows_match_a_dpkt_reference(capture):
    """Same flows, clients, packet counts and length sequences as a plain dpkt reading."""
    path = SHARED / capture
    config = FlowConfig(
        drop_failed_handshake=False,
        drop_no_payload=False,
        drop_dns=False,
        drop_llmnr=False,
        drop_non_tcp_udp=False,
    )
    cols = assemble(path, config)
    counts = cols["packets"].tolist()
    lengths = [
        tuple(row[: min(n, 30)]) for row, n in zip(cols["lengths"].tolist(), counts, strict=True)
    ]
    client = [ipaddress.ip_address(a).packed[-4:] for a in cols["client_ip"]]
    ours = sorted(
        zip(
            cols["protocol"].tolist(),
            client,
            cols["client_port"].tolist(),
            counts,
            lengths,
            strict=True,
        )
    )
    reference = reference_flows(path)
    assert len(ours) == len(reference)
    assert ours == reference


@pytest.mark.parametrize("capture", REFERENCE_CAPTURES[:3])
def test_real_capture_in_small_batches_gives_identical_flows(capture, monkeypatch):
    whole = assemble(SHARED / capture)
    monkeypatch.setattr(assemble_module, "SLICE_PACKETS", 97)
    split = assemble(SHARED / capture)
    order_w = np.lexsort((whole["client_port"], whole["start_time"]))
    order_s = np.lexsort((split["client_port"], split["start_time"]))
    for name in whole:
        assert np.array_equal(whole[name][order_w], split[name][order_s]), name


def _server_names(path: Path) -> set[bytes]:
    """SNI host names of the ClientHellos that dpkt can parse from single segments."""
    names = set()
    for _, ip in dpkt_packets(path):
        tcp = ip.data
        if not isinstance(tcp, dpkt.tcp.TCP) or tcp.data[:1] != b"\x16":
            continue
        try:
            record = dpkt.ssl.TLSRecord(tcp.data)
            hs = dpkt.ssl.TLSHandshake(record.data)
        except (dpkt.NeedData, dpkt.UnpackError, dpkt.ssl.SSL3Exception, ValueError):
            continue
        if not isinstance(hs.data, dpkt.ssl.TLSClientHello):
            continue
        for ext_type, ext in getattr(hs.data, "extensions", []):
            if ext_type == 0 and len(ext) > 5:
                (name_len,) = struct.unpack("!H", ext[3:5])
                names.add(bytes(ext[5 : 5 + name_len]))
    return names


_CERT_MSG = re.compile(rb"\x0b(...)(...)(...)\x30\x82", re.DOTALL)


def _certificate_samples(path: Path) -> set[bytes]:
    """16-byte pieces from inside certificates that start within one TCP segment."""
    samples = set()
    for _, ip in dpkt_packets(path):
        tcp = ip.data
        if not isinstance(tcp, dpkt.tcp.TCP):
            continue
        data = bytes(tcp.data)
        for m in _CERT_MSG.finditer(data):
            l1, l2, l3 = (int.from_bytes(g, "big") for g in m.groups())
            if l1 != l2 + 3 or l3 + 3 > l2:
                continue
            der = data[m.end() - 2 :]
            for k in range(32, min(len(der), l3) - 16, 64):
                samples.add(der[k : k + 16])
    return samples


@pytest.mark.parametrize("capture", TLS_CAPTURES)
def test_no_server_name_or_certificate_byte_in_real_tls(capture):
    path = SHARED / capture
    names = _server_names(path)
    certs = _certificate_samples(path)
    cols = assemble(path, FlowConfig(drop_no_payload=False, drop_failed_handshake=False))
    blobs = [cols[name].tobytes() for name in ("bytes", "flow_head", "payload_head")]
    for name in names:
        assert all(name not in blob for blob in blobs), name
    for piece in certs:
        assert all(piece not in blob for blob in blobs), piece
    assert names or certs, "the capture should hold a server name or a certificate"
