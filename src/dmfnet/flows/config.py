"""Flow assembly parameters, named as nfstream names them, with the defaults SPEC.md settles."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dmfnet.flows import schema


@dataclass(frozen=True)
class FlowConfig:
    """How packets become flows, which flows are removed, and what the modalities hold.

    Timeouts are in seconds. A flow ends when no packet of its key arrived for
    ``idle_timeout``, when ``active_timeout`` has passed since its first packet (the next
    packet starts a new flow), after a TCP RST, or after a FIN from both sides.

    The ``drop_*`` switches name the paper's filters; a removed flow is still emitted with
    its ``filter_reason`` so the dataset can count removals per class.
    """

    idle_timeout: float = 120.0
    active_timeout: float = 1800.0
    # Modalities (SPEC §Pipeline 5). The schema's column widths follow the defaults; other
    # values change the widths of ``bytes`` (n_packets * (header_bytes + payload_bytes)) and
    # of the per-packet columns (m_packets).
    n_packets: int = schema.N_PACKETS
    header_bytes: int = schema.HEADER_BYTES
    payload_bytes: int = schema.PAYLOAD_BYTES
    # Packets recorded per flow: models read 30 of them (schema.M_PACKETS), DMF the first 30
    # that carry payload, so a flow's record looks past its first 30 packets.
    m_packets: int = schema.RECORDED_PACKETS
    head_bytes: int = schema.HEAD_BYTES
    # Write ``payload_packet_bytes``: the layout of ``bytes`` filled from the first
    # n_packets packets that carry transport payload (among the first m_packets), so that
    # a TCP flow's slots are not spent on its handshake. Off: the column is left out.
    payload_packet_bytes: bool = True
    # Filters (SPEC §Pipeline 3): each one can be switched off.
    # client SYN seen, handshake never completed and no payload at all (a flow that carried
    # data is kept even when the capture missed part of its handshake, e.g. one direction only)
    drop_failed_handshake: bool = True
    drop_no_payload: bool = True  # TCP flow that never carried transport payload
    drop_dns: bool = True  # either port 53 (TCP or UDP)
    drop_llmnr: bool = True  # either port 5355
    drop_non_tcp_udp: bool = True  # ICMP, GRE, ESP, ... (flows keyed by protocol + addresses)
    # Zero addresses, ports, checksums, TLS SNI and certificates in the byte columns.
    anonymise: bool = True
    # ``lengths`` signed by direction (+ client->server, - server->client) instead of plain.
    signed_lengths: bool = False

    def __post_init__(self) -> None:
        for name in ("idle_timeout", "active_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        for name in ("n_packets", "header_bytes", "payload_bytes", "m_packets", "head_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_packets > self.m_packets:
            raise ValueError(
                f"n_packets ({self.n_packets}) must not exceed m_packets ({self.m_packets})"
            )

    @property
    def bytes_len(self) -> int:
        """Width of the raw-byte modality (``bytes``, and ``payload_packet_bytes``): N packets
        x (header + payload) bytes."""
        return self.n_packets * (self.header_bytes + self.payload_bytes)


def recorded_flow_config(card: Mapping[str, Any] | None) -> FlowConfig:
    """The :class:`FlowConfig` a dataset was prepared with, from its card (``dataset.json``);
    the defaults for a dataset without one (built in memory)."""
    recorded = ((card or {}).get("parameters") or {}).get("flow_config") or {}
    known = {f.name for f in dataclasses.fields(FlowConfig)}
    return FlowConfig(**{k: v for k, v in recorded.items() if k in known})
