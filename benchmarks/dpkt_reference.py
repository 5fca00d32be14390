"""The yardstick for ``dmfnet prepare``: the same job written plainly with dpkt.

What a careful user would write with dpkt objects and a dict of flows: read the capture
with ``dpkt.pcap.Reader``, decode each packet into dpkt objects, assemble bidirectional
flows (idle and active timeout, FIN from both sides, RST), keep per flow the IP lengths of
the first 30 packets and, for the first 5 packets, 80 header + 240 payload bytes with
addresses, ports and checksums zeroed, drop non-TCP/UDP, DNS/LLMNR, failed handshakes and TCP
flows without payload, and write one Parquet row per flow. After a close, TCP segments
without payload and without SYN (the last ACK of the close) still belong to the closed flow;
the first one with payload or a SYN starts a new flow. It does not zero TLS SNI or
certificates and reads only pcap/pcapng with Ethernet, raw IP or Linux SLL link types.

Run: ``python benchmarks/dpkt_reference.py CAPTURE -o OUT.parquet``; prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
import pyarrow as pa
import pyarrow.parquet as pq

IDLE_TIMEOUT = 120.0  # seconds without a packet that end a flow
ACTIVE_TIMEOUT = 1800.0  # seconds after its first packet that end a flow
N_PACKETS = 5  # packets in the raw-byte modality
HEADER_BYTES = 80  # network + transport header bytes per packet
PAYLOAD_BYTES = 240  # transport payload bytes per packet
M_PACKETS = 30  # packets in the length modality
SWEEP_EVERY = 10.0  # capture seconds between sweeps for idle flows
IGNORED_PORTS = (53, 5355)  # DNS, LLMNR
WRITE_ROWS = 8192  # flows per Parquet row group

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = (101, 228, 229, 12, 14)
LINKTYPE_LINUX_SLL = 113


@dataclass
class Flow:
    """One bidirectional flow while it is open."""

    protocol: int
    client: tuple[bytes, int]  # (address, port) of the flow's first sender (SYN for TCP)
    server: tuple[bytes, int]
    start: float
    last: float
    lengths: list[int] = field(default_factory=list)
    packet_bytes: list[bytes] = field(default_factory=list)
    packets: int = 0
    ip_bytes: int = 0
    payload_bytes: int = 0
    syn: bool = False
    syn_ack: bool = False
    handshake: bool = False
    fin_client: bool = False
    fin_server: bool = False
    closed: str = ""  # "fin" or "rst" once the flow is closed


@dataclass
class Summary:
    """Counts printed at the end, so the benchmark can compare with ``dmfnet prepare``."""

    packets: int = 0
    undecodable: int = 0
    not_tcp_udp: int = 0
    dns_llmnr: int = 0
    flows: int = 0
    failed_handshake: int = 0
    no_payload: int = 0
    kept: int = 0
    end_reasons: dict[str, int] = field(default_factory=dict)


def _packet_record(ip: dpkt.Packet, l4: dpkt.Packet, version: int) -> bytes:
    """80 header bytes + 240 payload bytes of one packet, addresses, ports, checksums zeroed."""
    raw = bytearray(bytes(ip))
    payload = bytes(l4.data)
    transport_start = len(raw) - len(l4)
    header = raw[: len(raw) - len(payload)]
    if version == 4:
        header[10:20] = bytes(10)  # checksum, addresses
    else:
        header[8:40] = bytes(32)
    header[transport_start : transport_start + 4] = bytes(4)  # ports
    checksum = transport_start + (16 if isinstance(l4, dpkt.tcp.TCP) else 6)
    header[checksum : checksum + 2] = bytes(len(header[checksum : checksum + 2]))
    return bytes(header[:HEADER_BYTES]).ljust(HEADER_BYTES, b"\0") + payload[:PAYLOAD_BYTES].ljust(
        PAYLOAD_BYTES, b"\0"
    )


def _decoder(linktype: int):
    """The dpkt class that decodes one record of this link type down to IP."""
    if linktype == LINKTYPE_ETHERNET:
        return lambda buf: dpkt.ethernet.Ethernet(buf).data
    if linktype == LINKTYPE_LINUX_SLL:
        return lambda buf: dpkt.sll.SLL(buf).data

    def raw_ip(buf: bytes) -> dpkt.Packet:
        return dpkt.ip.IP(buf) if buf[0] >> 4 == 4 else dpkt.ip6.IP6(buf)

    if linktype in LINKTYPE_RAW:
        return raw_ip
    raise ValueError(f"link type {linktype} is not supported by the dpkt reference")


def _records(path: Path) -> Iterator[tuple[float, bytes, int]]:
    with open(path, "rb") as f:
        magic = f.read(4)
        f.seek(0)
        if magic == b"\x0a\x0d\x0d\x0a":
            reader = dpkt.pcapng.Reader(f)
        else:
            reader = dpkt.pcap.Reader(f)
        linktype = reader.datalink()
        for ts, buf in reader:
            yield ts, buf, linktype


def read_flows(path: Path, summary: Summary) -> Iterator[tuple[Flow, str]]:
    """Assemble the capture's bidirectional flows; yield each ended flow with its end reason."""
    flows: dict[tuple, Flow] = {}
    next_sweep = None
    decoders: dict[int, object] = {}
    for ts, buf, linktype in _records(path):
        summary.packets += 1
        decode = decoders.get(linktype)
        if decode is None:
            decode = decoders[linktype] = _decoder(linktype)
        try:
            ip = decode(buf)
        except (dpkt.UnpackError, dpkt.NeedData, IndexError):
            summary.undecodable += 1
            continue
        if isinstance(ip, dpkt.ip.IP):
            version, ip_len = 4, ip.len
        elif isinstance(ip, dpkt.ip6.IP6):
            version, ip_len = 6, 40 + ip.plen
        else:
            summary.not_tcp_udp += 1
            continue
        l4 = ip.data
        if isinstance(l4, dpkt.tcp.TCP):
            protocol, flags = 6, l4.flags
        elif isinstance(l4, dpkt.udp.UDP):
            protocol, flags = 17, 0
        else:
            summary.not_tcp_udp += 1
            continue
        sport, dport = l4.sport, l4.dport
        if sport in IGNORED_PORTS or dport in IGNORED_PORTS:
            summary.dns_llmnr += 1
            continue

        if next_sweep is None:
            next_sweep = ts + SWEEP_EVERY
        elif ts >= next_sweep:
            for key in [k for k, f in flows.items() if ts - f.last > IDLE_TIMEOUT]:
                flow = flows.pop(key)
                yield flow, flow.closed or "idle"
            next_sweep = ts + SWEEP_EVERY

        src, dst = (ip.src, sport), (ip.dst, dport)
        key = (protocol, src, dst) if src <= dst else (protocol, dst, src)
        flow = flows.get(key)
        if flow is not None:
            if ts - flow.last > IDLE_TIMEOUT:
                yield flows.pop(key), flow.closed or "idle"
                flow = None
            elif flow.closed and (len(l4.data) or flags & SYN):
                yield flows.pop(key), flow.closed
                flow = None
            elif ts - flow.start > ACTIVE_TIMEOUT:
                yield flows.pop(key), flow.closed or "active"
                flow = None
        if flow is None:
            client, server = src, dst
            if flags & SYN and flags & ACK:  # first packet seen is the server's SYN/ACK
                client, server = dst, src
            flow = flows[key] = Flow(protocol, client, server, ts, ts)

        from_client = src == flow.client
        payload_len = len(l4.data)
        flow.last = ts
        flow.packets += 1
        flow.ip_bytes += ip_len
        flow.payload_bytes += payload_len
        if len(flow.lengths) < M_PACKETS:
            flow.lengths.append(ip_len)
        if len(flow.packet_bytes) < N_PACKETS:
            flow.packet_bytes.append(_packet_record(ip, l4, version))
        if protocol == 6 and not flow.closed:
            if flags & SYN and not flags & ACK and from_client:
                flow.syn = True
            elif flags & SYN and flags & ACK and not from_client:
                flow.syn_ack = True
            elif flags & ACK and from_client and flow.syn_ack:
                flow.handshake = True
            if flags & RST:
                flow.closed = "rst"
            elif flags & FIN:
                if from_client:
                    flow.fin_client = True
                else:
                    flow.fin_server = True
                if flow.fin_client and flow.fin_server:
                    flow.closed = "fin"
    for flow in flows.values():
        yield flow, flow.closed or "end_of_capture"


def _address(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


SCHEMA = pa.schema(
    [
        ("capture", pa.string()),
        ("protocol", pa.uint8()),
        ("client_ip", pa.string()),
        ("client_port", pa.int32()),
        ("server_ip", pa.string()),
        ("server_port", pa.int32()),
        ("start_time", pa.float64()),
        ("end_time", pa.float64()),
        ("packets", pa.int64()),
        ("ip_bytes", pa.int64()),
        ("end_reason", pa.string()),
        ("bytes", pa.binary(N_PACKETS * (HEADER_BYTES + PAYLOAD_BYTES))),
        ("lengths", pa.list_(pa.int32(), M_PACKETS)),
    ]
)


def prepare(capture: Path, output: Path) -> Summary:
    """Turn one capture into a Parquet file of flows with both modalities."""
    summary = Summary()
    rows: list[dict] = []
    width = N_PACKETS * (HEADER_BYTES + PAYLOAD_BYTES)
    with pq.ParquetWriter(output, SCHEMA) as writer:
        for flow, reason in read_flows(capture, summary):
            summary.flows += 1
            summary.end_reasons[reason] = summary.end_reasons.get(reason, 0) + 1
            # A failed handshake: a SYN, no completed handshake and no data (a capture of
            # one direction only still shows data).
            if flow.protocol == 6 and flow.syn and not flow.handshake and not flow.payload_bytes:
                summary.failed_handshake += 1
                continue
            if flow.protocol == 6 and flow.payload_bytes == 0:
                summary.no_payload += 1
                continue
            summary.kept += 1
            rows.append(
                {
                    "capture": str(capture),
                    "protocol": flow.protocol,
                    "client_ip": _address(flow.client[0]),
                    "client_port": flow.client[1],
                    "server_ip": _address(flow.server[0]),
                    "server_port": flow.server[1],
                    "start_time": flow.start,
                    "end_time": flow.last,
                    "packets": flow.packets,
                    "ip_bytes": flow.ip_bytes,
                    "end_reason": reason,
                    "bytes": b"".join(flow.packet_bytes).ljust(width, b"\0"),
                    "lengths": flow.lengths + [0] * (M_PACKETS - len(flow.lengths)),
                }
            )
            if len(rows) >= WRITE_ROWS:
                writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
                rows = []
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("capture", type=Path, help="pcap or pcapng file")
    parser.add_argument("-o", "--output", type=Path, required=True, help="Parquet file to write")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    summary = prepare(args.capture, args.output)
    result = {**summary.__dict__, "seconds": round(time.perf_counter() - started, 3)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
