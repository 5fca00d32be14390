"""The flow record: one row per bidirectional flow, the contract between ingest and models.

Every stage downstream of flow assembly (Parquet dataset, training, classification) reads
these columns by these names. Arrays named here as ``(N, K)`` are stored in Parquet as
fixed-width binary (``uint8`` columns) or lists (numeric columns) and loaded back as 2-D
numpy arrays by :func:`dmfnet.data.dataset.load_dataset`.

Packet-sequence columns hold the first ``RECORDED_PACKETS`` packets of the flow in time
order, zero-padded; direction is +1 for client→server, -1 for server→client, 0 for padding.
The length modality and the per-packet baseline fields read ``M_PACKETS`` of them: the
first 30, or (DMF's default) the first 30 that carry payload, which for a TCP flow with
many pure ACKs lie past packet 30.
"""

from __future__ import annotations

N_PACKETS = 5  # packets that enter the raw-byte modality (SPEC: N = 5)
HEADER_BYTES = 80  # L_h: network + transport header bytes per packet
PAYLOAD_BYTES = 240  # L_p: transport payload bytes per packet
BYTES_LEN = N_PACKETS * (HEADER_BYTES + PAYLOAD_BYTES)  # 1600
M_PACKETS = 30  # packets in the length modality and the per-packet baseline fields
RECORDED_PACKETS = 60  # packets recorded in the per-packet columns (FlowConfig.m_packets)
HEAD_BYTES = 1024  # bytes of the flow_head / payload_head columns

# Model inputs and per-packet fields: name -> (numpy dtype, width per row).
SEQUENCE_COLUMNS: dict[str, tuple[str, int]] = {
    "bytes": ("uint8", BYTES_LEN),  # DMF raw-byte modality, anonymised (SPEC §Pipeline 5)
    # The layout of ``bytes`` (header cut/padded to L_h, then payload cut/padded to L_p, per
    # packet) and its anonymisation, but its N slots are the flow's first N packets that
    # carry transport payload (header's payload length > 0) among its first M packets, in
    # time order; slots past the last such packet are zero. For TCP the handshake's SYN,
    # SYN/ACK and ACK (and later pure ACKs) are skipped. Absent when
    # ``FlowConfig.payload_packet_bytes`` is off (see OPTIONAL_COLUMNS).
    "payload_packet_bytes": ("uint8", BYTES_LEN),
    "lengths": ("int32", RECORDED_PACKETS),  # IP length of each of the first packets
    "directions": ("int8", RECORDED_PACKETS),  # +1 client->server, -1 server->client, 0 pad
    "iat": ("float32", RECORDED_PACKETS),  # seconds since the flow's previous packet (0 first)
    "payload_lengths": ("int32", RECORDED_PACKETS),  # transport payload length
    "tcp_windows": ("int32", RECORDED_PACKETS),  # TCP window field (0 for UDP)
    "tcp_flags": ("uint8", RECORDED_PACKETS),  # TCP flags byte (0 for UDP)
    # Concatenation of the first packets from the IP header on, anonymised, zero-padded.
    "flow_head": ("uint8", HEAD_BYTES),
    # Concatenation of the first packets' transport payloads, anonymised, zero-padded.
    "payload_head": ("uint8", HEAD_BYTES),
}

# Sequence columns that a FlowConfig switch can leave out: flow chunks and dataset files
# then have no such column (every other column is always there).
OPTIONAL_COLUMNS: tuple[str, ...] = ("payload_packet_bytes",)

# One value per flow: name -> numpy dtype.
SCALAR_COLUMNS: dict[str, str] = {
    "capture": "str",  # path of the capture file the flow came from
    "protocol": "uint8",  # IP protocol number (6 TCP, 17 UDP, ...)
    "ip_version": "uint8",
    "client_ip": "str",  # the sender of the flow's first packet (of the SYN for TCP)
    "client_port": "int32",
    "server_ip": "str",
    "server_port": "int32",
    # Epoch seconds of the first / last packet in memory; in dataset files a UTC timestamp
    # in microseconds (dmfnet.data.dataset.TIME_TYPE).
    "start_time": "float64",
    "end_time": "float64",
    "packets": "int64",
    "packets_c2s": "int64",
    "packets_s2c": "int64",
    "ip_bytes": "int64",  # sum of IP lengths, both directions
    "ip_bytes_c2s": "int64",
    "ip_bytes_s2c": "int64",
    "payload_bytes": "int64",
    "payload_bytes_c2s": "int64",
    "payload_bytes_s2c": "int64",
    "syn_seen": "bool",  # a SYN from the client was seen
    "handshake_complete": "bool",  # SYN, SYN/ACK and the client's ACK were seen
    "end_reason": "str",  # idle | active | fin | rst | end_of_capture
}

# Added by the dataset stage.
LABEL_COLUMN = "label"
