"""Capture layer: pcap/pcapng files (plain or gzip) → vectorised packet header fields."""

from dmfnet.capture.packets import PacketBatch, ParsedPackets
from dmfnet.capture.parse import SUPPORTED_LINKTYPES, parse_packets
from dmfnet.capture.reader import StopSignal, read_packets, read_stream

__all__ = ["PacketBatch", "ParsedPackets", "SUPPORTED_LINKTYPES", "parse_packets", "read_packets", "read_stream", "StopSignal"]
