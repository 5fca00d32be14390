"""Ingest speed and memory: ``dmfnet prepare`` against a plain dpkt implementation.

Builds a large capture of real traffic by replaying the Ethernet pcap captures under
``../shared/data`` (nDPI, nfstream and Slips test captures) back to back: each replay
rewrites the IPv4 and IPv6 addresses (so every replay's flows are distinct) and shifts
timestamps so the capture stays in time order (jumps of more than an hour inside a source
capture are shortened to an hour); nothing else is touched (checksums are left stale:
neither tool checks them). Then, in the same run, it times as subprocesses, with wall time,
CPU time and peak RSS and anonymous RSS of each:

- ``dmfnet prepare FILE -o OUT --workers 1`` on the capture (one core), and the same with
  the default ``--workers`` (all cores: a capture of 64 MiB or more is shared by several
  processes, each reading all of it and assembling the flows of some of its buckets);
- ``benchmarks/dpkt_reference.py`` on the same capture (the same job written with dpkt);
- ``dmfnet prepare`` on two half-size captures with ``--workers 1`` and ``--workers 2``
  (the parallel speed-up);
- ``dmfnet prepare`` on a capture twice the size (memory must not grow with file size),
  with one worker and with the default ``--workers``;
- ``dmfnet prepare`` on the capture's records written as pcapng (``--skip-pcapng``: not);

and prints MB/s (10^6 bytes of capture file per second), MB per CPU second, packets/s,
memory, the ratios, how many flows of both outputs agree, and a Markdown table. Big files
go to ``--workdir`` (default: a fresh folder under /tmp, removed at the end).

    .venv/bin/python benchmarks/ingest.py --repeat 3   # 200 MB, the figures in README
    .venv/bin/python benchmarks/ingest.py --quick      # 20 MB smoke run
    .venv/bin/python benchmarks/ingest.py --skip-prepare  # the dpkt reference alone
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SOURCE_FOLDERS = ("data/ndpi/pcaps", "data/nfstream", "data/slips")

LINKTYPE_ETHERNET = 1
PCAP_MAGIC = {  # magic -> (struct byte order, timestamp fraction per second)
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}
RECORD_HEADER = 16  # ts_sec, ts_usec, caplen, wirelen
ETHER_VLAN = (0x8100, 0x88A8, 0x9100)
ETHER_IPV4, ETHER_IPV6 = 0x0800, 0x86DD
START_EPOCH_US = 1_700_000_000 * 1_000_000  # capture time of the first replayed packet
SEGMENT_GAP_US = 1_000_000  # one second between two replayed source captures
# Longest jump kept between two records of one source capture. Some test captures join
# recordings made years apart; an hour is beyond every idle and active timeout, so
# shortening longer jumps changes no flow, and keeps replayed times inside pcap's 32 bits.
MAX_JUMP_US = 3600 * 1_000_000


# ---------------------------------------------------------------- capture builder


@dataclass
class SourceCapture:
    """One source capture, already in the output's record format (LE pcap, microseconds).

    ``records`` holds the records back to back (16-byte header + captured bytes); the other
    arrays say where each record starts and where its addresses lie, so a replay is a copy
    plus a few vectorised writes.
    """

    path: Path
    records: np.ndarray  # uint8, all records back to back
    record_start: np.ndarray  # int64 (n,), offset of each record header in ``records``
    ts_us: np.ndarray  # int64 (n,), microseconds from the first record, jumps shortened
    v4_octets: np.ndarray  # int64, positions of octets 2-3 of IPv4 source and destination
    v6_octets: np.ndarray  # int64, positions of bytes 12-13 of IPv6 source and destination

    @property
    def packets(self) -> int:
        return len(self.record_start)


def find_sources(places: list[Path] | None = None) -> list[Path]:
    """Every classic pcap with Ethernet link type in these files and folders (recursively).

    Default: the shared real-traffic folders (nDPI, nfstream and Slips test captures).
    """
    if places is None:
        places = [SHARED / folder for folder in SOURCE_FOLDERS]
    found = []
    for place in places:
        candidates = [place] if place.is_file() else sorted(place.rglob("*"))
        for path in candidates:
            if not path.is_file():
                continue
            with open(path, "rb") as f:
                head = f.read(24)
            if len(head) < 24 or head[:4] not in PCAP_MAGIC:
                continue
            order = PCAP_MAGIC[head[:4]][0]
            if struct.unpack(order + "I", head[20:24])[0] & 0x0FFFFFFF == LINKTYPE_ETHERNET:
                found.append(path)
    return found


def load_source(path: Path) -> SourceCapture:
    """Read a classic Ethernet pcap into replayable form; a truncated last record is dropped.

    Jumps between consecutive timestamps longer than :data:`MAX_JUMP_US` (either way) are
    shortened to it.
    """
    data = path.read_bytes()
    order, per_second = PCAP_MAGIC[data[:4]]
    record = struct.Struct(order + "IIII")
    out = bytearray()
    starts: list[int] = []
    stamps: list[int] = []
    v4: list[int] = []
    v6: list[int] = []
    pos = 24
    while pos + RECORD_HEADER <= len(data):
        sec, frac, caplen, wirelen = record.unpack_from(data, pos)
        body = data[pos + RECORD_HEADER : pos + RECORD_HEADER + caplen]
        if len(body) < caplen:
            break
        pos += RECORD_HEADER + caplen
        start = len(out)
        starts.append(start)
        stamps.append(sec * 1_000_000 + frac * 1_000_000 // per_second)
        out += struct.pack("<IIII", 0, 0, caplen, wirelen)
        out += body
        l3, ethertype = 14, int.from_bytes(body[12:14], "big") if caplen >= 14 else 0
        while ethertype in ETHER_VLAN and caplen >= l3 + 4:
            ethertype = int.from_bytes(body[l3 + 2 : l3 + 4], "big")
            l3 += 4
        base = start + RECORD_HEADER + l3
        if ethertype == ETHER_IPV4 and caplen >= l3 + 20 and body[l3] >> 4 == 4:
            v4 += (base + 13, base + 14, base + 17, base + 18)
        elif ethertype == ETHER_IPV6 and caplen >= l3 + 40 and body[l3] >> 4 == 6:
            v6 += (base + 20, base + 21, base + 36, base + 37)
    steps = np.clip(np.diff(np.asarray(stamps, dtype=np.int64)), -MAX_JUMP_US, MAX_JUMP_US)
    return SourceCapture(
        path=path,
        records=np.frombuffer(bytes(out), dtype=np.uint8),
        record_start=np.asarray(starts, dtype=np.int64),
        ts_us=np.concatenate([np.zeros(min(len(stamps), 1), dtype=np.int64), np.cumsum(steps)]),
        v4_octets=np.asarray(v4, dtype=np.int64),
        v6_octets=np.asarray(v6, dtype=np.int64),
    )


def replay(source: SourceCapture, replay_index: int, start_us: int) -> np.ndarray:
    """The source's records with addresses rewritten for this replay, starting at ``start_us``.

    Octets 2-3 of every IPv4 address (bytes 12-13 of every IPv6 address) are XORed with the
    replay number: a bijection within a replay, different between replays.
    """
    if not 0 <= replay_index < 0xFFFF:
        raise ValueError(f"replay index {replay_index} out of range 0..65534")
    key = np.frombuffer((replay_index + 1).to_bytes(2, "big"), dtype=np.uint8)
    out = source.records.copy()
    for positions in (source.v4_octets, source.v6_octets):
        out[positions] ^= np.tile(key, len(positions) // 2)
    ts = source.ts_us - source.ts_us.min() + start_us
    if ts.max() >= 2**32 * 1_000_000:
        raise ValueError("replayed timestamps would overflow pcap's 32-bit seconds")
    fields = np.empty((len(ts), 2), dtype="<u4")
    fields[:, 0] = ts // 1_000_000
    fields[:, 1] = ts % 1_000_000
    header = source.record_start[:, None] + np.arange(8)
    out[header] = fields.view(np.uint8).reshape(-1, 8)
    return out


@dataclass
class BuiltCapture:
    """A capture written by :func:`build_capture`."""

    path: str
    bytes: int
    packets: int
    replays: int  # replays begun (the last may be cut short)
    first_replay: int
    next_replay: int  # first replay number not used, for a capture with distinct flows


def build_capture(
    path: Path, size_bytes: int, sources: list[SourceCapture], first_replay: int = 0
) -> BuiltCapture:
    """Write a pcap of at least ``size_bytes`` (cut at a record boundary) from replays."""
    if not sources or all(s.packets == 0 for s in sources):
        raise ValueError("no source captures to replay")
    snaplen = 262144
    written = 24
    packets = 0
    cursor = START_EPOCH_US
    replay_index = first_replay
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        while written < size_bytes:
            for source in sources:
                if source.packets == 0:
                    continue
                segment = replay(source, replay_index, cursor)
                cursor += int(source.ts_us.max() - source.ts_us.min()) + SEGMENT_GAP_US
                missing = size_bytes - written
                count = source.packets
                if len(segment) > missing:  # cut after the record that reaches the size
                    ends = np.append(source.record_start[1:], len(segment))
                    count = int(np.searchsorted(ends, missing)) + 1
                    segment = segment[: ends[count - 1]]
                f.write(segment.tobytes())
                written += len(segment)
                packets += count
                if written >= size_bytes:
                    break
            replay_index += 1
    return BuiltCapture(
        path=str(path),
        bytes=written,
        packets=packets,
        replays=replay_index - first_replay,
        first_replay=first_replay,
        next_replay=replay_index,
    )


def convert_to_pcapng(pcap: Path, path: Path) -> BuiltCapture:
    """The same records as pcapng: one section, one Ethernet interface, enhanced packet blocks.

    Written as Wireshark and dumpcap write it (microsecond timestamps, the default
    ``if_tsresol``; packet data padded to 4 bytes), so ``dmfnet prepare`` reads the same
    packets through its pcapng walk.
    """
    data = np.fromfile(pcap, dtype=np.uint8)
    order, per_second = PCAP_MAGIC[data[:4].tobytes()]
    if order != "<" or per_second != 1_000_000:
        raise ValueError(f"{pcap}: expected a little-endian microsecond pcap")
    snaplen, linktype = struct.unpack_from("<II", data, 16)
    record = struct.Struct("<IIII")
    header = struct.Struct("<IIIIIII")
    packets = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28))
        f.write(struct.pack("<IIHHII", 1, 20, linktype, 0, snaplen, 20))
        out = bytearray()
        pos, end = 24, len(data)
        while pos + RECORD_HEADER <= end:
            sec, usec, caplen, wirelen = record.unpack_from(data, pos)
            body = data[pos + RECORD_HEADER : pos + RECORD_HEADER + caplen]
            pos += RECORD_HEADER + caplen
            ts = sec * 1_000_000 + usec
            pad = -caplen % 4
            size = 32 + caplen + pad
            out += header.pack(6, size, 0, ts >> 32, ts & 0xFFFFFFFF, caplen, wirelen)
            out += body.tobytes()
            out += bytes(pad) + size.to_bytes(4, "little")
            packets += 1
            if len(out) >= 1 << 24:
                f.write(out)
                out.clear()
        f.write(out)
        written = f.tell()
    return BuiltCapture(
        path=str(path), bytes=written, packets=packets, replays=0, first_replay=0, next_replay=0
    )


# ---------------------------------------------------------------- measured subprocesses


@dataclass
class Measurement:
    """Wall time and memory of one subprocess run.

    RSS counts the pages of a memory-mapped capture that the process has read (clean page
    cache the kernel drops under pressure), so a reader that maps the whole file shows an
    RSS that grows with the file; anonymous RSS (heap, arrays) is the memory it really holds.
    """

    wall_s: float
    cpu_s: float  # user + system time of the process and its waited-for children
    max_rss: int  # bytes, largest single process (kernel's ru_maxrss)
    tree_rss: int  # bytes, largest sampled RSS summed over the process and its descendants
    tree_anon_rss: int  # bytes, largest sampled anonymous RSS summed likewise
    returncode: int
    stdout: str
    stderr: str


def _process_tree(root: int) -> list[int]:
    """The process and all its descendants, from the parent ids in /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
                parents[int(entry)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = [root], {root}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier}
        tree += frontier
    return tree


def _rss(pids: list[int]) -> tuple[int, int]:
    """Summed RSS and anonymous RSS of these processes, in bytes."""
    total = anon = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
                    elif line.startswith(b"RssAnon:"):
                        anon += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total, anon


def measure(
    command: list[str],
    sample_every: float = 0.1,
    on_sample: Callable[[int, int], None] | None = None,
) -> Measurement:
    """Run a command to its end; its wall time, CPU time and peak RSS (kernel and sampled).

    ``on_sample(rss, anonymous_rss)`` is called with each sample of the process tree.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        peak = [0, 0]
        done = threading.Event()

        def sample() -> None:
            pids, listed = [child.pid], time.perf_counter()
            while not done.wait(sample_every):
                # The /proc walk costs a few ms: at every sample for the first second
                # (worker processes start then), then once a second.
                now = time.perf_counter()
                if now - started < 1.0 or now - listed > 1.0:
                    pids, listed = _process_tree(child.pid), time.perf_counter()
                total, anon = _rss(pids)
                peak[0], peak[1] = max(peak[0], total), max(peak[1], anon)
                if on_sample is not None:
                    on_sample(total, anon)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        max_rss = usage.ru_maxrss * 1024  # KiB on Linux
        return Measurement(
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            max_rss=max_rss,
            tree_rss=max(peak[0], max_rss),
            tree_anon_rss=peak[1],
            returncode=child.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


# ---------------------------------------------------------------- the benchmark


@dataclass
class Run:
    """One timed job: what ran, on which captures, and its (median) measurement."""

    name: str
    command: list[str]
    captures: list[BuiltCapture]
    measurements: list[Measurement] = field(default_factory=list)
    flows: int | None = None  # flows written, when the tool reports it

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.captures)

    @property
    def packets(self) -> int:
        return sum(c.packets for c in self.captures)

    @property
    def wall_s(self) -> float:
        return statistics.median(m.wall_s for m in self.measurements)

    @property
    def cpu_s(self) -> float:
        return statistics.median(m.cpu_s for m in self.measurements)

    @property
    def max_rss(self) -> int:
        return max(m.max_rss for m in self.measurements)

    @property
    def tree_rss(self) -> int:
        return max(m.tree_rss for m in self.measurements)

    @property
    def anon_rss(self) -> int:
        return max(m.tree_anon_rss for m in self.measurements)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.wall_s

    @property
    def packets_per_s(self) -> float:
        return self.packets / self.wall_s


def _dmfnet_command() -> list[str]:
    beside = Path(sys.executable).with_name("dmfnet")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("dmfnet")
    return [found] if found else [sys.executable, "-m", "dmfnet.cli"]


def _prepared_flows(out: Path) -> int | None:
    """Flows written by ``dmfnet prepare``, read from its Parquet files."""
    try:
        import pyarrow.parquet as pq

        files = sorted(out.rglob("*.parquet"))
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files) if files else None
    except Exception:  # the count is informative only; a format change must not stop timing
        return None


REFERENCE_PACKETS = 30  # lengths per flow that dpkt_reference.py writes


def _flow_table(files: list[Path]) -> dict[tuple, list[tuple[list[int], bytes]]]:
    """Flow key (protocol, client, server, start in µs) -> [(lengths, bytes)] of Parquet files.

    A key can hold several flows (one-packet flows of one key at one instant).
    """
    import ipaddress

    import pyarrow.parquet as pq

    columns = ["protocol", "client_ip", "client_port", "server_ip", "server_port", "start_time"]
    table: dict[tuple, list[tuple[list[int], bytes]]] = {}
    for path in files:
        data = pq.read_table(path, columns=[*columns, "lengths", "bytes"]).to_pydict()
        for i in range(len(data["protocol"])):
            ips = []
            for name in ("client_ip", "server_ip"):
                address = ipaddress.ip_address(data[name][i])
                mapped = getattr(address, "ipv4_mapped", None)
                ips.append(str(mapped or address))
            key = (
                int(data["protocol"][i]),
                ips[0],
                int(data["client_port"][i]),
                ips[1],
                int(data["server_port"][i]),
                _micros(data["start_time"][i]),
            )
            # The dpkt reference records the first 30 lengths; dmfnet records 60 (RECORDED_PACKETS).
            flow = (list(data["lengths"][i])[:REFERENCE_PACKETS], bytes(data["bytes"][i]))
            table.setdefault(key, []).append(flow)
    return table


def _micros(value) -> int:
    """Epoch microseconds of a start time: a timestamp (dmfnet's datasets) or float seconds
    (the reference's output, and datasets made before times were timestamps)."""
    if hasattr(value, "timestamp"):
        epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
        return (value - epoch) // timedelta(microseconds=1)
    return round(float(value) * 1e6)


def compare_outputs(prepared: Path, reference_output: Path) -> dict[str, int]:
    """How far ``dmfnet prepare`` and the dpkt reference agree, flow by flow.

    Lengths must agree exactly; bytes differ where dmfnet also zeroes TLS SNI and
    certificates, which the reference does not.
    """
    ours = _flow_table(sorted(prepared.rglob("*.parquet")))
    theirs = _flow_table([reference_output])
    pairs = []
    for key, flows in ours.items():
        for shift in (0, -1, 1):  # start times may round one microsecond apart
            others = theirs.get((*key[:-1], key[-1] + shift))
            if others is not None:
                # In file order; flows beyond the shorter list stay unmatched.
                pairs += zip(flows, others, strict=False)
                break
    return {
        "flows_dmfnet": sum(map(len, ours.values())),
        "flows_dpkt": sum(map(len, theirs.values())),
        "flows_in_both": len(pairs),
        "same_lengths": sum(a[0] == b[0] for a, b in pairs),
        "same_bytes": sum(a[1] == b[1] for a, b in pairs),
    }


def _warm(paths: list[Path]) -> None:
    """Read the captures once so every tool starts from the page cache."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def _execute_once(run: Run, out: Path | None, log, repeat: int) -> bool:
    """Time one more run of ``run``; False when it failed (then it is not run again)."""
    _warm([Path(c.path) for c in run.captures])
    if out is not None and out.exists():
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    m = measure(run.command)
    run.measurements.append(m)
    if m.returncode != 0:
        tail = (m.stderr.strip().splitlines() or ["(no message)"])[-1]
        log(f"  {run.name}: exit {m.returncode}: {tail}")
        return False
    log(
        f"  {run.name} [{len(run.measurements)}/{repeat}]: {m.wall_s:.2f} s, "
        f"{run.bytes / 1e6 / m.wall_s:.1f} MB/s, {m.cpu_s:.2f} CPU s, peak RSS "
        f"{m.tree_rss / 2**20:.0f} MiB, anonymous {m.tree_anon_rss / 2**20:.0f} MiB"
    )
    return True


def _execute(jobs: list[tuple[Run, Path | None]], repeat: int, log) -> None:
    """Time every job ``repeat`` times, round by round (job 1, 2, ..., then again), so a
    slow spell of a shared machine falls on all jobs alike rather than on one. Each round
    starts one job further on, so that no job always runs first or right after the same
    one (on the development VM the first job of a round was often the slowest)."""
    failed: set[str] = set()
    for round_ in range(repeat):
        start = round_ % max(len(jobs), 1)
        for run, out in jobs[start:] + jobs[:start]:
            if run.name in failed:
                continue
            if not run.measurements:
                log(f"timing {run.name}: {shlex.join(run.command)}")
            if not _execute_once(run, out, log, repeat):
                failed.add(run.name)
    for run, out in jobs:
        if run.name.startswith("dpkt"):
            try:
                last = run.measurements[-1].stdout.strip().splitlines()[-1]
                run.flows = json.loads(last)["kept"]
            except (ValueError, KeyError, IndexError):
                run.flows = None
        elif out is not None and run.name not in failed:
            run.flows = _prepared_flows(out)


def _ok(run: Run) -> bool:
    return bool(run.measurements) and all(m.returncode == 0 for m in run.measurements)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def markdown_table(runs: list[Run]) -> str:
    """The figures as a Markdown table, one row per timed job."""
    lines = [
        "| job | input | workers | wall s | CPU s | MB/s | MB per CPU s | packets/s "
        "| peak RSS | peak anonymous RSS | flows |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        workers = (
            run.command[run.command.index("--workers") + 1]
            if "--workers" in run.command
            else f"default ({os.cpu_count()} cores)"
            if "prepare" in run.command
            else "1"
        )
        size = " + ".join(f"{c.bytes / 1e6:.0f} MB" for c in run.captures)
        if not _ok(run):
            lines.append(f"| {run.name} | {size} | {workers} | failed | | | | | | | |")
            continue
        lines.append(
            f"| {run.name} | {size}, {run.packets / 1e6:.2f} M packets | {workers} "
            f"| {run.wall_s:.2f} | {run.cpu_s:.2f} | {run.mb_per_s:.1f} "
            f"| {run.bytes / 1e6 / run.cpu_s:.1f} | {run.packets_per_s / 1e3:.0f} k "
            f"| {_mib(run.tree_rss)} | {_mib(run.anon_rss)} "
            f"| {run.flows if run.flows is not None else '?'} |"
        )
    return "\n".join(lines)


def summary_lines(runs: dict[str, Run]) -> list[str]:
    """The ratios the targets speak of: speed against dpkt, parallel speed-up, RSS growth."""
    lines = []
    prep, ref = runs.get("dmfnet prepare"), runs.get("dpkt reference")
    if prep and _ok(prep):
        lines.append(
            f"- dmfnet prepare, one worker: {prep.mb_per_s:.1f} MB/s by wall time, "
            f"{prep.bytes / 1e6 / prep.cpu_s:.1f} MB per CPU second (target >= 100 MB/s)"
        )
        lines.append(
            f"- dmfnet prepare peak RSS: {_mib(prep.tree_rss)}, anonymous {_mib(prep.anon_rss)} "
            "(target < 1 GiB)"
        )
    if ref and _ok(ref):
        lines.append(
            f"- dpkt reference: {ref.mb_per_s:.1f} MB/s, {ref.packets_per_s / 1e3:.0f} k packets/s "
            f"by wall time; {ref.bytes / 1e6 / ref.cpu_s:.1f} MB per CPU second"
        )
    if prep and ref and _ok(prep) and _ok(ref):
        lines.append(
            f"- speed ratio dmfnet / dpkt with one worker: {ref.wall_s / prep.wall_s:.1f}x by "
            f"wall time, {ref.cpu_s / prep.cpu_s:.1f}x by CPU time; "
            f"flows written: dmfnet {prep.flows}, dpkt {ref.flows}"
        )
    default = runs.get("dmfnet prepare, default workers")
    if default and ref and _ok(default) and _ok(ref):
        lines.append(
            f"- speed ratio dmfnet / dpkt as `dmfnet prepare` runs by default (--workers: all "
            f"{os.cpu_count()} cores): {ref.wall_s / default.wall_s:.1f}x by wall time, "
            f"{default.mb_per_s:.1f} MB/s (target >= 10x)"
        )
    one, two = runs.get("dmfnet prepare, halves"), runs.get("dmfnet prepare, halves, 2 workers")
    if one and two and _ok(one) and _ok(two):
        lines.append(
            f"- speed-up with --workers 2 on two files: {one.wall_s / two.wall_s:.2f}x by wall "
            f"time (near-linear: close to 2; CPU s {one.cpu_s:.2f} -> {two.cpu_s:.2f})"
        )
    ng = runs.get("dmfnet prepare, pcapng")
    if ng and _ok(ng):
        lines.append(
            f"- the same traffic as pcapng: {ng.mb_per_s:.1f} MB/s by wall time, "
            f"{ng.bytes / 1e6 / ng.cpu_s:.1f} MB per CPU second, {ng.packets_per_s / 1e3:.0f} k "
            "packets/s"
            + (
                f" ({ref.wall_s / ng.wall_s:.1f}x the dpkt reference on the pcap)"
                if ref and _ok(ref)
                else ""
            )
        )
    double = runs.get("dmfnet prepare, 2x size")
    if prep and double and _ok(prep) and _ok(double):
        lines.append(
            f"- at 2x file size: peak anonymous RSS {_mib(double.anon_rss)} vs "
            f"{_mib(prep.anon_rss)} ({double.anon_rss / max(prep.anon_rss, 1):.2f}x), peak RSS "
            f"{_mib(double.tree_rss)} vs {_mib(prep.tree_rss)} "
            f"({double.tree_rss / prep.tree_rss:.2f}x) (must not grow with file size)"
        )
    default_double = runs.get("dmfnet prepare, 2x size, default workers")
    if default and default_double and _ok(default) and _ok(default_double):
        lines.append(
            f"- default --workers at 2x file size: peak anonymous RSS "
            f"{_mib(default_double.anon_rss)} vs {_mib(default.anon_rss)}, peak RSS "
            f"{_mib(default_double.tree_rss)} vs {_mib(default.tree_rss)}"
        )
    return lines


_CPU_LOOP = "x = 0\nfor i in range(8_000_000):\n    x += i\n"


def machine_speedup(repeat: int) -> float:
    """What this machine gives two CPU-bound processes at once: ``2 x`` the wall time of
    one plain Python loop over the wall time of two at once (2.0: no contention), median
    of ``repeat`` interleaved rounds. The ceiling for ``--workers 2`` on two files."""

    def wall(copies: int) -> float:
        start = time.perf_counter()
        loops = [subprocess.Popen([sys.executable, "-c", _CPU_LOOP]) for _ in range(copies)]
        for loop in loops:
            loop.wait()
        return time.perf_counter() - start

    ratios = [2 * wall(1) / wall(2) for _ in range(repeat)]
    return statistics.median(ratios)


def _build_all(
    workdir: Path,
    size: int,
    with_halves: bool,
    with_double: bool,
    log,
    places: list[Path] | None = None,
    with_pcapng: bool = False,
) -> dict[str, list[BuiltCapture]]:
    """The captures of the run, reused from ``workdir`` when they were built the same way."""
    plan: dict = {"capture": [size]}
    if with_pcapng:
        plan["pcapng"] = "capture"  # the capture's records as pcapng
    if with_halves:
        plan["halves"] = [size // 2, size - size // 2]
    if with_double:
        plan["double"] = [2 * size]
    plan["sources"] = sorted(str(p.resolve()) for p in places) if places else "shared"
    manifest = workdir / "captures.json"
    if manifest.exists():
        try:
            saved = json.loads(manifest.read_text())
            if saved.get("plan") == plan and all(
                Path(c["path"]).exists() and Path(c["path"]).stat().st_size == c["bytes"]
                for group in saved["captures"].values()
                for c in group
            ):
                log(f"reusing captures in {workdir}")
                return {k: [BuiltCapture(**c) for c in v] for k, v in saved["captures"].items()}
        except (ValueError, KeyError, TypeError):
            pass
    paths = find_sources(places)
    if not paths:
        where = ", ".join(map(str, places)) if places else f"{SHARED}/data"
        raise SystemExit(f"no Ethernet pcap captures found in {where}")
    started = time.perf_counter()
    sources = [load_source(p) for p in paths]
    source_bytes = sum(len(s.records) for s in sources)
    log(
        f"loaded {len(sources)} source captures ({source_bytes / 1e6:.1f} MB, "
        f"{sum(s.packets for s in sources)} packets) in {time.perf_counter() - started:.1f} s"
    )
    built: dict[str, list[BuiltCapture]] = {}
    next_replay = 0
    for name, sizes in plan.items():
        if name in ("sources", "pcapng"):
            continue
        group = []
        for i, target in enumerate(sizes):
            path = workdir / (f"{name}.pcap" if len(sizes) == 1 else f"{name}-{i + 1}.pcap")
            started = time.perf_counter()
            capture = build_capture(path, target, sources, first_replay=next_replay)
            next_replay = capture.next_replay
            log(
                f"built {path} ({capture.bytes / 1e6:.1f} MB, {capture.packets} packets, "
                f"{capture.replays} replays) in {time.perf_counter() - started:.1f} s"
            )
            group.append(capture)
        built[name] = group
    if with_pcapng:
        started = time.perf_counter()
        converted = convert_to_pcapng(Path(built["capture"][0].path), workdir / "capture.pcapng")
        log(
            f"wrote {converted.path} ({converted.bytes / 1e6:.1f} MB) in "
            f"{time.perf_counter() - started:.1f} s"
        )
        built["pcapng"] = [converted]
    manifest.write_text(
        json.dumps(
            {"plan": plan, "captures": {k: [asdict(c) for c in v] for k, v in built.items()}}
        )
    )
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time dmfnet prepare against a plain dpkt implementation on replayed real traffic.",
    )
    parser.add_argument(
        "--size-mb", type=float, default=200.0, help="capture size in MB (default 200)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a 20 MB smoke run (sets --size-mb 20)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="folder for the captures and outputs (kept; default: temporary under /tmp)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each job, in rounds over all jobs; the median is reported",
    )
    parser.add_argument("--skip-prepare", action="store_true", help="time only the dpkt reference")
    parser.add_argument("--skip-dpkt", action="store_true", help="do not time the dpkt reference")
    parser.add_argument(
        "--skip-workers",
        action="store_true",
        help="no --workers 2 run on two halves, no default-workers run",
    )
    parser.add_argument("--skip-double", action="store_true", help="no run on a 2x size capture")
    parser.add_argument(
        "--skip-pcapng", action="store_true", help="no run on the capture written as pcapng"
    )
    parser.add_argument(
        "--source",
        action="append",
        type=Path,
        help="Ethernet pcap file or folder to replay, repeatable "
        "(default: ../shared/data/ndpi/pcaps, nfstream, slips)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    size_mb = 20.0 if args.quick else args.size_mb
    if size_mb <= 0 or args.repeat < 1:
        parser.error("--size-mb and --repeat must be positive")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dmfnet-ingest-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with_prepare = not args.skip_prepare
        captures = _build_all(
            workdir,
            int(size_mb * 1e6),
            with_halves=with_prepare and not args.skip_workers,
            with_double=with_prepare and not args.skip_double,
            log=log,
            places=args.source,
            with_pcapng=with_prepare and not args.skip_pcapng,
        )
        dmfnet = _dmfnet_command()
        main_capture = captures["capture"]
        jobs: list[tuple[Run, Path]] = []
        if with_prepare:
            out = workdir / "out-prepare"
            cmd = dmfnet + ["prepare", main_capture[0].path, "-o", str(out), "--workers", "1"]
            jobs.append((Run("dmfnet prepare", cmd, main_capture), out))
            if (os.cpu_count() or 1) > 1 and not args.skip_workers:
                out = workdir / "out-prepare-default"
                cmd = dmfnet + ["prepare", main_capture[0].path, "-o", str(out)]
                jobs.append((Run("dmfnet prepare, default workers", cmd, main_capture), out))
        if not args.skip_dpkt:
            out = workdir / "out-dpkt.parquet"
            cmd = [
                sys.executable,
                str(REPO / "benchmarks" / "dpkt_reference.py"),
                main_capture[0].path,
                "-o",
                str(out),
            ]
            jobs.append((Run("dpkt reference", cmd, main_capture), out))
        if "halves" in captures:
            halves = captures["halves"]
            for workers in (1, 2):
                out = workdir / f"out-halves-{workers}"
                cmd = dmfnet + [
                    "prepare",
                    *(c.path for c in halves),
                    "-o",
                    str(out),
                    "--workers",
                    str(workers),
                ]
                name = "dmfnet prepare, halves" + (", 2 workers" if workers == 2 else "")
                jobs.append((Run(name, cmd, halves), out))
        if "pcapng" in captures:
            out = workdir / "out-pcapng"
            cmd = dmfnet + ["prepare", captures["pcapng"][0].path, "-o", str(out), "--workers", "1"]
            jobs.append((Run("dmfnet prepare, pcapng", cmd, captures["pcapng"]), out))
        if "double" in captures:
            out = workdir / "out-double"
            cmd = dmfnet + ["prepare", captures["double"][0].path, "-o", str(out), "--workers", "1"]
            jobs.append((Run("dmfnet prepare, 2x size", cmd, captures["double"]), out))
            if (os.cpu_count() or 1) > 1 and not args.skip_workers:
                out = workdir / "out-double-default"
                cmd = dmfnet + ["prepare", captures["double"][0].path, "-o", str(out)]
                name = "dmfnet prepare, 2x size, default workers"
                jobs.append((Run(name, cmd, captures["double"]), out))

        # Compile every module once and keep the bytecode, as an installed package has it
        # (without this an editable install under PYTHONDONTWRITEBYTECODE compiles dmfnet's
        # sources in every timed run, about 0.05 s).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        subprocess.run(
            [sys.executable, "-c", "import dmfnet.cli, dmfnet.data.prepare"], check=False, env=env
        )
        load_before = os.getloadavg()[0]
        _execute(jobs, args.repeat, log)
        runs = {run.name: run for run, _ in jobs}

        command = shlex.join(
            [
                os.path.relpath(sys.executable, REPO)
                if sys.executable.startswith(str(REPO))
                else sys.executable,
                "benchmarks/ingest.py",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        )
        load_after = os.getloadavg()[0]
        print(f"## Ingest benchmark ({os.cpu_count()} CPU cores, median of {args.repeat})\n")
        print(
            f"Load average (1 min) before / after: {load_before:.2f} / {load_after:.2f}; "
            "other work on the machine slows wall times, CPU s is less affected.\n"
        )
        print(markdown_table(list(runs.values())))
        print()
        print("\n".join(summary_lines(runs)))
        if "dmfnet prepare, halves, 2 workers" in runs and (os.cpu_count() or 1) > 1:
            print(
                f"- this machine's own speed-up for two CPU-bound processes at once (a plain "
                f"Python loop, one vs two at a time): {machine_speedup(args.repeat):.2f}x"
            )
        agreement = None
        prep, ref = runs.get("dmfnet prepare"), runs.get("dpkt reference")
        if prep and ref and _ok(prep) and _ok(ref):
            try:
                agreement = compare_outputs(workdir / "out-prepare", workdir / "out-dpkt.parquet")
            except Exception as exc:  # the timings stand even if the outputs cannot be matched
                print(f"- outputs not compared: {exc}")
            else:
                print(
                    f"- same flows: {agreement['flows_in_both']} of {agreement['flows_dmfnet']} "
                    f"(dmfnet) / {agreement['flows_dpkt']} (dpkt); of those, identical lengths "
                    f"{agreement['same_lengths']}, identical bytes {agreement['same_bytes']} "
                    "(dmfnet also zeroes TLS SNI and certificates)"
                )
        print(f"\nCommand: `{command}`")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "command": command,
                        "agreement": agreement,
                        "runs": [
                            {
                                "name": r.name,
                                "command": r.command,
                                "captures": [asdict(c) for c in r.captures],
                                "wall_s": r.wall_s if _ok(r) else None,
                                "mb_per_s": r.mb_per_s if _ok(r) else None,
                                "packets_per_s": r.packets_per_s if _ok(r) else None,
                                "max_rss": r.max_rss if _ok(r) else None,
                                "tree_rss": r.tree_rss if _ok(r) else None,
                                "anon_rss": r.anon_rss if _ok(r) else None,
                                "flows": r.flows,
                                "returncodes": [m.returncode for m in r.measurements],
                            }
                            for r in runs.values()
                        ],
                    },
                    indent=2,
                )
            )
        return 0 if all(_ok(r) for r in runs.values()) else 1
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
