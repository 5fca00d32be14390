"""Flow labels for the IoT Sentinel captures: each device's own flows, nothing else.

IoT Sentinel (one folder per device, ``_iotdevice-mac.txt`` giving the device's MAC) records
the setup phase of each device, and much of each capture is other hosts' DHCP, DNS, SSDP and
mDNS. Labelling by folder would teach a model those neighbours. This script lists the TCP/UDP
5-tuples of the frames the device itself sent or received (by MAC) and writes a flow CSV for
``dmfnet prepare --labels``. Capture names repeat across device folders, so the captures are
linked under unique names (``<Device>__<file>``) in ``OUT/captures``::

    python scripts/iot_sentinel_labels.py ../shared/data/iot-sentinel -o /tmp/iot
    dmfnet prepare /tmp/iot/captures -o data/iot --labels /tmp/iot/labels.csv

Needs dpkt (installed with ``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
from pathlib import Path

import dpkt


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.strip().split(":"))


def _ip_text(ip: dpkt.ip.IP | dpkt.ip6.IP6) -> tuple[str, str]:
    family = socket.AF_INET6 if isinstance(ip, dpkt.ip6.IP6) else socket.AF_INET
    return socket.inet_ntop(family, ip.src), socket.inet_ntop(family, ip.dst)


def device_flows(capture: Path, mac: bytes) -> set[tuple[str, str, int, str, int]]:
    """``(protocol, src_ip, src_port, dst_ip, dst_port)`` of the frames to or from ``mac``."""
    flows = set()
    with open(capture, "rb") as fh:
        try:
            reader = dpkt.pcap.Reader(fh)
        except ValueError:
            reader = dpkt.pcapng.Reader(fh)
        for _, frame in reader:
            try:
                eth = dpkt.ethernet.Ethernet(frame)
            except (dpkt.UnpackError, IndexError):
                continue
            if mac not in (eth.src, eth.dst):
                continue
            ip = eth.data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                continue
            l4 = ip.data
            if isinstance(l4, dpkt.tcp.TCP):
                proto = "TCP"
            elif isinstance(l4, dpkt.udp.UDP):
                proto = "UDP"
            else:
                continue
            src, dst = _ip_text(ip)
            flows.add((proto, src, int(l4.sport), dst, int(l4.dport)))
    return flows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the iot-sentinel folder (one folder per device)")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    links = args.out / "captures"
    links.mkdir(parents=True, exist_ok=True)
    rows = 0
    with open(args.out / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "protocol", "src_ip", "src_port", "dst_ip", "dst_port", "label"])
        for device in sorted(p for p in args.root.iterdir() if p.is_dir()):
            mac_file = device / "_iotdevice-mac.txt"
            if not mac_file.exists():
                continue
            mac = _mac(mac_file.read_text().split()[0])
            for capture in sorted(device.glob("*.pcap*")):
                name = f"{device.name}__{capture.name}"
                link = links / name
                if not link.exists():
                    os.symlink(capture.resolve(), link)
                for flow in sorted(device_flows(capture, mac)):
                    writer.writerow([name, *flow, device.name])
                    rows += 1
    print(f"{rows} device 5-tuples -> {args.out / 'labels.csv'}; captures in {links}")


if __name__ == "__main__":
    main()
