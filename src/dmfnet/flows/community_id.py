"""Community ID v1: the flow hash that Zeek, Suricata, Arkime and others log.

A flow's Community ID lets a prediction of ``dmfnet classify`` be joined with the same
connection in a Zeek ``conn.log`` or a Suricata ``eve.json`` (their ``community_id``
field). The definition (corelight/community-id-spec, version 1)::

    "1:" + base64(SHA1(seed (2 bytes, big-endian) + src address + dst address
                       + protocol (1 byte) + 0 (1 byte) + src port (2) + dst port (2)))

with addresses in network byte order (4 bytes IPv4, 16 bytes IPv6) and the two endpoints
ordered so that the smaller (address, port) comes first: both directions of a flow get
one ID. Ports enter for TCP, UDP and SCTP; other protocols hash without them, except ICMP
and ICMPv6, whose rule uses the message type and code that dmfnet's flows do not keep:
their ID is ``""`` (dmfnet classifies TCP and UDP flows; the others are removed by the
``non_tcp_udp`` filter unless it is switched off). An endpoint that is not an address
(a dataset prepared with ``--addresses hash`` or ``drop``) also gives ``""``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import struct
from collections.abc import Iterable

VERSION = "1"
PORT_PROTOCOLS = frozenset({6, 17, 132})  # TCP, UDP, SCTP
ICMP_PROTOCOLS = frozenset({1, 58})  # ICMP, ICMPv6: need type and code, not kept


@functools.lru_cache(maxsize=1 << 16)
def _packed(address: str) -> bytes | None:
    try:
        return ipaddress.ip_address(str(address).strip()).packed
    except ValueError:
        return None


def community_id(
    protocol: int,
    src_ip: str,
    src_port: int,
    dst_ip: str,
    dst_port: int,
    seed: int = 0,
) -> str:
    """The Community ID v1 (base64 form) of one flow; ``""`` where it is not defined here.

    The direction does not matter: ``community_id(6, a, p, b, q) == community_id(6, b, q,
    a, p)``.
    """
    protocol = int(protocol)
    if protocol in ICMP_PROTOCOLS or not 0 <= seed <= 0xFFFF:
        return ""
    a, b = _packed(src_ip), _packed(dst_ip)
    if a is None or b is None or len(a) != len(b):
        return ""
    if protocol in PORT_PROTOCOLS:
        sport, dport = int(src_port), int(dst_port)
    else:
        sport = dport = None
    if (b, dport or 0) < (a, sport or 0):
        a, b, sport, dport = b, a, dport, sport
    data = struct.pack("!H", seed) + a + b + struct.pack("!BB", protocol, 0)
    if sport is not None:
        data += struct.pack("!HH", sport, dport)
    return f"{VERSION}:" + base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")


def community_ids(
    protocol: Iterable[int],
    client_ip: Iterable[str],
    client_port: Iterable[int],
    server_ip: Iterable[str],
    server_port: Iterable[int],
    seed: int = 0,
) -> list[str]:
    """:func:`community_id` of each flow of flow columns (one list entry per flow)."""
    return [
        community_id(p, a, pa, b, pb, seed)
        for p, a, pa, b, pb in zip(
            protocol, client_ip, client_port, server_ip, server_port, strict=True
        )
    ]
