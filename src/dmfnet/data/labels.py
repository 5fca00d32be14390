"""Class labels for flows: from the capture's folder, its file name, or a CSV of flows.

Datasets label traffic in one of three ways: one folder per class (``Botnet/a.pcap``),
one capture per class (USTC-TFC2016's ``SMB-1.pcap``, ``SMB-2.pcap``), or a table of
flows (5-tuples) next to the captures (nDPI's and CIC's ground truth). A
:class:`Labeller` turns a flow chunk into one label per flow; ``""`` means unlabelled.
"""

from __future__ import annotations

import csv
import functools
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

UNLABELLED = "unlabelled"  # label of flows kept without a CSV match (keep_unlabelled)
BAD_LINES_KEPT = 20  # line numbers of skipped label CSV rows kept for the card
BAD_LINES_SHOWN = 5  # ... and named in the warning

# The label CSV's header, with the dataset's names for the endpoints (either may be named
# first: flows match in both directions). ``protocol`` is a number (6) or a name (TCP).
CSV_COLUMNS = ("file", "protocol", "client_ip", "client_port", "server_ip", "server_port", "label")
# Other accepted names for the endpoint columns (nDPI's and CIC's tables use these).
CSV_ALIASES = {
    "src_ip": "client_ip",
    "src_port": "client_port",
    "dst_ip": "server_ip",
    "dst_port": "server_port",
}

PROTOCOL_NUMBERS = {
    "icmp": 1,
    "igmp": 2,
    "tcp": 6,
    "udp": 17,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "sctp": 132,
    "udplite": 136,
}

# Capture file extensions stripped by the ``file`` mode, innermost last.
CAPTURE_EXTENSIONS = (".pcap", ".pcapng", ".cap", ".dmp", ".erf", ".trace")
COMPRESSION_EXTENSIONS = (".gz", ".gzip", ".bz2", ".xz", ".zst", ".lz4")
_PART_SUFFIX = re.compile(r"[-_]\d+$")


def label_from_folder(capture: str | Path) -> str:
    """Name of the folder holding the capture (``Botnet/a.pcap`` -> ``Botnet``)."""
    return Path(os.path.abspath(capture)).parent.name


def label_from_file(capture: str | Path) -> str:
    """Capture file name without extensions and without a numeric part suffix.

    ``SMB-1.pcap`` and ``SMB-2.pcap.gz`` -> ``SMB``; ``Nsis-ay.pcap`` stays ``Nsis-ay``.
    """
    name = Path(capture).name
    lowered = name.lower()
    for group in (COMPRESSION_EXTENSIONS, CAPTURE_EXTENSIONS):
        for ext in group:
            if lowered.endswith(ext) and len(name) > len(ext):
                name, lowered = name[: -len(ext)], lowered[: -len(ext)]
                break
    stem = _PART_SUFFIX.sub("", name)
    return stem or name


def _without_compression(name: str) -> str:
    lowered = name.lower()
    for ext in COMPRESSION_EXTENSIONS:
        if lowered.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def protocol_number(value: str | int) -> int:
    """IP protocol number from a name (``TCP``, ``udp``) or a number (``6``, ``"17"``)."""
    if isinstance(value, int):
        number = value
    else:
        text = value.strip().lower()
        if text.isdigit():
            number = int(text)
        elif text in PROTOCOL_NUMBERS:
            number = PROTOCOL_NUMBERS[text]
        else:
            raise ValueError(f"unknown protocol {value!r} (use a name like TCP/UDP or a number)")
    if not 0 <= number <= 255:
        raise ValueError(f"protocol number {number} is not in 0..255")
    return number


def canonical_ip(text: str) -> str:
    """One spelling per address: IPv4-mapped IPv6 as IPv4, IPv6 compressed, lower case."""
    address = ipaddress.ip_address(text.strip())
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


class Labeller:
    """Gives each flow of a chunk its label; ``""`` for a flow without one."""

    mode = ""

    def label_chunk(self, chunk: Mapping[str, np.ndarray], capture: str) -> np.ndarray:
        """Labels (object array of str) of the chunk's flows, read from ``capture``."""
        raise NotImplementedError

    def describe(self) -> dict:
        """How flows are labelled, for the dataset card."""
        return {"mode": self.mode}

    def warnings(self) -> list[str]:
        """Problems of the labels themselves (skipped rows of a label CSV), for the card."""
        return []


class CaptureLabeller(Labeller):
    """Every flow of a capture gets the capture's label (folder or file name)."""

    def __init__(self, mode: str) -> None:
        if mode not in ("folder", "file"):
            raise ValueError(f"label mode must be 'folder' or 'file', not {mode!r}")
        self.mode = mode
        self._label = label_from_folder if mode == "folder" else label_from_file

    def label_of(self, capture: str | Path) -> str:
        return self._label(capture)

    def label_chunk(self, chunk: Mapping[str, np.ndarray], capture: str) -> np.ndarray:
        n = _chunk_length(chunk)
        out = np.empty(n, dtype=object)
        out[:] = self._label(capture)
        return out


class FlowTableLabeller(Labeller):
    """Labels from a CSV of flows:
    ``file,protocol,client_ip,client_port,server_ip,server_port,label``.

    ``src_ip,src_port,dst_ip,dst_port`` are accepted for the endpoint columns too.
    ``file`` is matched by base name (empty: any capture); the two endpoints match in
    either direction, so the CSV may name the server first. Lookup is one dict probe per
    flow, so a chunk costs O(flows) whatever the size of the table.
    """

    mode = "csv"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.table: dict[tuple, str] = {}
        self.conflicts = 0  # rows naming an already listed flow with another label
        self.rows = 0
        self.bad_rows = 0  # rows skipped: bad protocol, port, address or label, fields astray
        self.first_bad: str | None = None
        self.bad_lines: list[int] = []  # line numbers of the first BAD_LINES_KEPT of them
        try:
            self._load()
        except UnicodeDecodeError:
            raise ValueError(f"{self.path}: {_not_utf8(self.path)}; save it as UTF-8") from None

    def _load(self) -> None:
        with open(self.path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{self.path}: empty label CSV")
            header = [h.strip().lower() for h in header]
            header = _canonical_header(header)
            missing = [c for c in CSV_COLUMNS if c not in header]
            if missing:
                raise ValueError(
                    f"{self.path}: label CSV lacks column(s) {', '.join(missing)}; "
                    f"header must be {','.join(CSV_COLUMNS)} "
                    "(src_ip,src_port,dst_ip,dst_port also accepted for the endpoints)"
                )
            pos = [header.index(c) for c in CSV_COLUMNS]
            width = len(header)
            for row in reader:
                line = reader.line_num
                if not row or all(not cell.strip() for cell in row):
                    continue
                try:
                    if len(row) < width:
                        raise ValueError(f"{len(row)} fields, the header has {width}")
                    if any(cell.strip() for cell in row[width:]):
                        raise ValueError(f"{len(row)} fields, the header has {width}")
                    file, proto, sip, sport, dip, dport, label = (row[i].strip() for i in pos)
                    if not label:
                        raise ValueError("empty label")
                    key = _flow_key(
                        Path(file).name if file else "",
                        protocol_number(proto),
                        _address_key(sip),
                        _port(sport),
                        _address_key(dip),
                        _port(dport),
                    )
                except (IndexError, ValueError) as exc:
                    self.bad_rows += 1
                    if len(self.bad_lines) < BAD_LINES_KEPT:
                        self.bad_lines.append(line)
                    if self.first_bad is None:
                        self.first_bad = f"line {line}: {exc or 'too few fields'}"
                    continue
                self.rows += 1
                previous = self.table.setdefault(key, label)
                if previous != label:
                    self.conflicts += 1
        if not self.rows and self.bad_rows:
            raise ValueError(f"{self.path}: no usable row ({self.first_bad})")
        self._any_file = any(key[0] == "" for key in self.table)

    def label_chunk(self, chunk: Mapping[str, np.ndarray], capture: str) -> np.ndarray:
        n = _chunk_length(chunk)
        out = np.empty(n, dtype=object)
        out[:] = ""
        if n == 0:
            return out
        name = Path(capture).name
        protos = np.asarray(chunk["protocol"]).tolist()
        cips = [_address_key(str(a)) for a in np.asarray(chunk["client_ip"]).tolist()]
        cports = np.asarray(chunk["client_port"]).tolist()
        sips = [_address_key(str(a)) for a in np.asarray(chunk["server_ip"]).tolist()]
        sports = np.asarray(chunk["server_port"]).tolist()
        # x.pcap.gz may be listed as x.pcap; rows with an empty file match any capture
        names = [name, _without_compression(name)] + ([""] if self._any_file else [])
        names = list(dict.fromkeys(names))
        table = self.table
        rows = zip(protos, cips, cports, sips, sports, strict=True)
        for i, (proto, cip, cport, sip, sport) in enumerate(rows):
            a, b = (cip, cport), (sip, sport)
            if b < a:
                a, b = b, a
            for file in names:
                label = table.get((file, proto, a[0], a[1], b[0], b[1]))
                if label is not None:
                    out[i] = label
                    break
        return out

    def describe(self) -> dict:
        return {
            "mode": self.mode,
            "csv": str(self.path),
            "rows": self.rows,
            "conflicting_rows": self.conflicts,
            "bad_rows": self.bad_rows,
            "first_bad_row": self.first_bad,
            "bad_lines": list(self.bad_lines),
        }

    def warnings(self) -> list[str]:
        if not self.bad_rows:
            return []
        lines = ", ".join(str(n) for n in self.bad_lines[:BAD_LINES_SHOWN])
        if self.bad_rows > BAD_LINES_SHOWN:
            lines += f" and {self.bad_rows - BAD_LINES_SHOWN:,} more"
        return [
            f"label CSV {self.path}: {self.bad_rows:,} malformed row(s) skipped (line(s) "
            f"{lines}; {self.first_bad})"
        ]


def _not_utf8(path: Path) -> str:
    """Where a file stops being UTF-8: ``label CSV is not UTF-8 text (byte 0xe9 on line 2)``."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return f"label CSV is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})"
    return "label CSV is not UTF-8 text"


def _canonical_header(header: list[str]) -> list[str]:
    """Header names with the aliases of :data:`CSV_ALIASES` replaced; an alias is left as
    it is when its canonical name is in the header too (that column wins)."""
    return [
        CSV_ALIASES[h] if h in CSV_ALIASES and CSV_ALIASES[h] not in header else h for h in header
    ]


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


@functools.lru_cache(maxsize=1 << 16)
def _address_key(text: str) -> str:
    """Canonical address, or the lower-cased text when it is not a valid address."""
    if _CANONICAL_IPV4.fullmatch(text):  # the common case, already canonical
        return text
    try:
        return canonical_ip(text)
    except ValueError:
        return text.strip().lower()


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is not in 0..65535")
    return port


def _flow_key(file: str, proto: int, ip_a: str, port_a: int, ip_b: str, port_b: int) -> tuple:
    a, b = (ip_a, int(port_a)), (ip_b, int(port_b))
    if b < a:
        a, b = b, a
    return (file, int(proto), a[0], a[1], b[0], b[1])


def _chunk_length(chunk: Mapping[str, np.ndarray]) -> int:
    for name in ("protocol", "capture", "client_ip", "bytes"):
        if name in chunk:
            return len(chunk[name])
    return len(next(iter(chunk.values()))) if chunk else 0


def make_labeller(labels: str | Path) -> Labeller:
    """``"folder"``, ``"file"`` or the path of a flow CSV -> the matching labeller."""
    text = str(labels)
    if text in ("folder", "file"):
        return CaptureLabeller(text)
    path = Path(text)
    if not path.is_file():
        raise ValueError(
            f"--labels {text!r}: use 'folder', 'file' or the path of an existing CSV of flows"
        )
    return FlowTableLabeller(path)
