"""dmfnet classify on live traffic: a pcap stream on standard input, an interface, early
decisions, signals; and flows cut to their first K packets."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pcapbuild as pb
from dmfnet.capture import read_packets
from dmfnet.classify import ClassifyError, classify_stream, packets_needed
from dmfnet.flows import assemble_flows
from dmfnet.flows.config import FlowConfig
from dmfnet.flows.early import first_packets
from dmfnet.problems import ProblemLog
from training_data import synthetic_flows

REPO = Path(__file__).resolve().parents[1]
DEMO_CAPTURES = sorted((REPO / "demo" / "captures").glob("*/*-1.pcap"))
START_NS = 1_700_000_000_000_000_000
WAIT_S = 120  # the command imports torch and loads the run first

LONG = ("10.2.0.5", 41000, "192.0.2.20", 443)  # 96 packets
SHORT = ("10.2.0.6", 41001, "192.0.2.21", 443)  # 9 packets, closed early on
UDP = ("10.2.0.7", 41002, "192.0.2.22", 4433)  # 2 datagrams, never closed


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run folder: DMF trained for one epoch on a tiny synthetic dataset."""
    from dmfnet.training.trainer import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("stream") / "run"
        train(synthetic_flows(n_per_class=20), out, epochs=1, batch_size=32, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def _traffic() -> tuple[bytes, int]:
    """A capture image and the byte offset in the middle of the long flow's 71st packet
    (the short flow closed and the UDP flow seen before it)."""
    short = pb.tcp_conversation(
        SHORT[:2], SHORT[2:], [("c", b"q" * 40), ("s", b"r" * 400), ("c", b"s" * 20)],
        start_ns=START_NS, gap_ns=1_000_000,
    )  # fmt: skip
    udp = pb.udp_exchange(UDP[:2], UDP[2:], start_ns=START_NS + 20_000_000)
    long = pb.tcp_conversation(
        LONG[:2], LONG[2:], [("c" if i % 3 == 0 else "s", bytes([i]) * (100 + i)) for i in range(90)],
        start_ns=START_NS + 30_000_000, gap_ns=1_000_000,
    )  # fmt: skip
    records = pb.wrap(sorted(short + udp + long, key=lambda r: r.ts_ns), pb.LINKTYPE_ETHERNET)
    offset = 24
    seen_long = 0
    for record in records:
        if record.data == pb.wrap([long[70]], pb.LINKTYPE_ETHERNET)[0].data:
            break
        offset += 16 + len(record.data)
        seen_long += record.ts_ns >= long[0].ts_ns
    assert seen_long == 70
    return pb.pcap_bytes(records), offset + 30


def _start(run_dir: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "dmfnet", "classify", str(run_dir), "-", "-o", "-"]
    return subprocess.Popen(
        [*command, "--format", "jsonl", *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _read_lines(process: subprocess.Popen, until, timeout: float = WAIT_S) -> list[dict]:
    """Lines of the process's output, read until ``until(lines)`` holds (or it ends)."""
    lines: list[dict] = []
    buffer = b""
    deadline = time.monotonic() + timeout
    fd = process.stdout.fileno()
    while not until(lines):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no such output within {timeout} s; got {lines}")
        if not select.select([fd], [], [], left)[0]:
            continue
        piece = os.read(fd, 65536)
        if not piece:
            break
        buffer += piece
        *complete, buffer = buffer.split(b"\n")
        lines += [json.loads(line) for line in complete if line]
    return lines


def _endpoints(line: dict) -> tuple:
    return line["client_ip"], line["client_port"], line["server_ip"], line["server_port"]


def test_a_stream_is_decided_as_it_arrives(run_dir: Path) -> None:
    image, cut = _traffic()
    process = _start(run_dir)
    try:
        # The first piece ends inside a record, in the long flow's 71st packet.
        process.stdin.write(image[: cut // 2])
        process.stdin.flush()
        time.sleep(0.5)
        process.stdin.write(image[cut // 2 : cut])
        process.stdin.flush()
        lines = _read_lines(process, lambda got: {LONG, SHORT} <= {_endpoints(x) for x in got})
        # Read while the writer still holds the rest of the long flow.
        long = next(x for x in lines if _endpoints(x) == LONG)
        m = FlowConfig().m_packets  # the per-packet columns are complete: 60 packets
        assert long["decided_packets"] == m and long["packets"] == m
        short = next(x for x in lines if _endpoints(x) == SHORT)
        assert short["packets"] == short["decided_packets"] == 9  # decided at its close
        assert UDP not in {_endpoints(x) for x in lines}  # still open, not yet decided
        process.stdin.write(image[cut:])
        process.stdin.close()
        lines += _read_lines(process, lambda got: False)
        assert process.wait(WAIT_S) == 0
    finally:
        process.kill()
    flows = [_endpoints(x) for x in lines]
    assert sorted(flows) == sorted([LONG, SHORT, UDP])  # each flow once
    udp = next(x for x in lines if _endpoints(x) == UDP)
    assert udp["packets"] == udp["decided_packets"] == 2
    # The UDP flow is decided when the stream ends: at the capture's last packet, long
    # after the long flow's 60th.
    assert long["decision_time"] < udp["decision_time"]
    stderr = process.stderr.read().decode()
    assert "3 flows classified" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_decides_the_open_flows_and_exits_0(run_dir: Path, sig: signal.Signals) -> None:
    image, cut = _traffic()
    process = _start(run_dir)
    try:
        process.stdin.write(image[:cut])
        process.stdin.flush()
        lines = _read_lines(process, lambda got: LONG in {_endpoints(x) for x in got})
        process.send_signal(sig)  # the writer keeps the pipe open
        lines += _read_lines(process, lambda got: False)
        assert process.wait(WAIT_S) == 0
    finally:
        process.kill()
    assert sorted(_endpoints(x) for x in lines) == sorted([LONG, SHORT, UDP])
    assert "Traceback" not in process.stderr.read().decode()


def test_a_truncated_stream_is_reported_not_a_traceback(run_dir: Path) -> None:
    image, cut = _traffic()
    process = subprocess.run(
        [sys.executable, "-m", "dmfnet", "classify", str(run_dir), "-", "-o", "-"],
        input=image[:cut],
        capture_output=True,
        timeout=WAIT_S,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert process.returncode == 0
    stderr = process.stderr.decode()
    assert "truncated last record" in stderr and "Traceback" not in stderr
    rows = process.stdout.decode().splitlines()
    assert rows[0].endswith("decided_packets,decision_time") and len(rows) == 4


def test_decide_after_and_bad_options(run_dir: Path, tmp_path: Path) -> None:
    image, _ = _traffic()
    capture = tmp_path / "traffic.pcap"
    capture.write_bytes(image)
    read, write = os.pipe()
    os.write(write, image)
    os.close(write)
    out = tmp_path / "early.jsonl"
    summary = classify_stream(run_dir, out, source=read, decide_after=5, handle_signals=False)
    os.close(read)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert summary.flows_classified == 3 and len(lines) == 3
    by_flow = {_endpoints(x): x for x in lines}
    assert by_flow[LONG]["packets"] == by_flow[LONG]["decided_packets"] == 5
    assert by_flow[UDP]["packets"] == 2
    with pytest.raises(ClassifyError, match="between 1 and 60"):  # the recorded packets
        classify_stream(run_dir, out, source=0, decide_after=61)
    with pytest.raises(ClassifyError, match="either a stream"):
        classify_stream(run_dir, out)
    from dmfnet.cli import main

    assert main(["classify", str(run_dir), "-", str(capture), "-o", str(out)]) != 0


def test_packets_needed_follows_the_model_inputs(run_dir: Path) -> None:
    from dmfnet.training.runs import load_run

    trained = load_run(run_dir)
    # DMF reads the lengths of the first 30 packets that carry payload: among the 60 recorded
    assert packets_needed(trained) == 60
    trained.inputs = ("bytes",)
    assert packets_needed(trained) == 5
    trained.inputs = ("packets", "lengths")
    assert packets_needed(trained) is None  # whole-flow statistics: at the end


# ------------------------------------------------------------------------------------------
# A flow's first K packets: built from the packets == cut from the stored flow


def _flows(path: Path, **kw) -> dict[str, np.ndarray]:
    chunks = list(assemble_flows(read_packets(path, ProblemLog(), chunk_bytes=1 << 16), FlowConfig(), capture=str(path), **kw))  # fmt: skip
    return {c: np.concatenate([x[c] for x in chunks]) for c in chunks[0]}


@pytest.mark.parametrize("capture", [None, *DEMO_CAPTURES], ids=lambda p: p and p.parent.name)
@pytest.mark.parametrize("k", [2, 5, 30])
def test_early_records_are_the_stored_flows_cut(capture: Path | None, k: int, tmp_path) -> None:
    """The demo captures have a snap length of 384 bytes: a head cut from a stored flow may
    keep bytes of the packet after the K-th there, nothing else differs."""
    snapped = capture is not None
    if capture is None:  # whole packets
        capture = tmp_path / "whole.pcap"
        capture.write_bytes(_traffic()[0])
    whole = _flows(capture)
    early = _flows(capture, decide_after=k)
    assert len(early["packets"]) == len(whole["packets"])
    key = ("client_ip", "client_port", "server_ip", "server_port", "start_time")
    index = {tuple(whole[c][i] for c in key): i for i in range(len(whole["packets"]))}
    rows = np.array([index[tuple(early[c][i] for c in key)] for i in range(len(early["packets"]))])
    cut = {**whole, **first_packets(whole, k)}
    for name in ("bytes", "payload_packet_bytes", "lengths", "directions", "payload_lengths",
                 "tcp_flags", "packets", "packets_s2c", "ip_bytes_c2s", "payload_bytes",
                 "filter_reason"):  # fmt: skip
        assert np.array_equal(early[name], cut[name][rows]), name
    for name in ("flow_head", "payload_head"):
        same = early[name] == cut[name][rows]
        assert same.all() if not snapped else (same | (early[name] == 0)).all(), name
    np.testing.assert_allclose(early["end_time"], cut["end_time"][rows], atol=1e-5)
    longer = whole["packets"][rows] > k
    assert longer.any()
    assert (early["packets"][longer] == k).all()
    assert (early["decided_packets"] >= early["packets"]).all()


def test_first_packets_by_hand() -> None:
    columns = {
        "packets": np.array([4, 2]),
        "packets_c2s": np.array([2, 1]),
        "ip_bytes": np.array([100 + 200 + 300 + 400, 50 + 60]),
        "lengths": np.array([[100, 200, 300, 400], [50, 60, 0, 0]], dtype=np.int32),
        "directions": np.array([[1, -1, 1, -1], [1, -1, 0, 0]], dtype=np.int8),
        "iat": np.array([[0, 0.5, 0.25, 1], [0, 2, 0, 0]], dtype=np.float32),
        "start_time": np.array([10.0, 20.0]),
        "end_time": np.array([11.75, 22.0]),
    }
    config = FlowConfig(m_packets=4, n_packets=2)
    cut = first_packets(columns, 2, config)
    assert cut["packets"].tolist() == [2, 2]
    assert cut["packets_c2s"].tolist() == [1, 1]
    assert cut["ip_bytes"].tolist() == [300, 110]
    assert cut["lengths"].tolist() == [[100, 200, 0, 0], [50, 60, 0, 0]]
    assert cut["end_time"].tolist() == [10.5, 22.0]
    assert columns["lengths"][0, 3] == 400  # the input is left as it was
    with pytest.raises(KeyError, match="payload_lengths"):
        first_packets({"payload_head": np.zeros((1, 8), np.uint8)}, 2, config)
    with pytest.raises(ValueError, match="between 1 and"):
        first_packets(columns, 5, config)


# ------------------------------------------------------------------------------------------
# A live interface, inside a private network namespace


LIVE_SCRIPT = textwrap.dedent(
    """
    import signal, socket, ssl, subprocess, sys, threading, time
    run, out, cert, key = sys.argv[1:5]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    classify = subprocess.Popen([sys.executable, "-m", "dmfnet", "classify", run,
                                 "--interface", "lo", "--capture-filter", "tcp port 8443",
                                 "-o", out], stderr=subprocess.PIPE)
    time.sleep(float(sys.argv[5]))  # tcpdump starts listening
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 8443))
    def serve():
        for _ in range(2):
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                while data := tls.recv(4096):
                    tls.sendall(data * 3)
    threading.Thread(target=serve, daemon=True).start()
    client_ctx = ssl.create_default_context(cafile=cert)
    client_ctx.check_hostname = False
    for _ in range(2):
        with client_ctx.wrap_socket(socket.create_connection(("127.0.0.1", 8443))) as tls:
            for i in range(5):
                tls.sendall(b"hello %d" % i * 20)
                tls.recv(4096)
    time.sleep(1.0)
    classify.send_signal(signal.SIGINT)
    _, err = classify.communicate(timeout=120)
    sys.stderr.write(err.decode())
    sys.exit(classify.returncode)
    """
)


def test_an_interface_is_classified_live(run_dir: Path, tmp_path: Path) -> None:
    for tool in ("tcpdump", "unshare", "openssl", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no private network namespace here: {probe.stderr.decode().strip()}")
    send = f"{sys.executable} -c \"import socket; socket.socket(2, 2).sendto(b'x', ('127.0.0.1', 9))\""
    probe = subprocess.run(
        ["unshare", "-n", "sh", "-c", "ip link set lo up && (timeout 20 tcpdump -i lo -c 1 -w "
         f"/dev/null udp & sleep 1; {send}; wait $!)"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"cannot capture on loopback here: {probe.stderr.decode().strip()[-200:]}")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    out = tmp_path / "live.jsonl"
    script = tmp_path / "live.py"
    script.write_text(LIVE_SCRIPT)
    result = subprocess.run(
        ["unshare", "-n", sys.executable, str(script), str(run_dir), str(out), str(cert),
         str(key), "5"],
        capture_output=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 2, lines
    for line in lines:
        assert line["client_ip"] == line["server_ip"] == "127.0.0.1"
        assert line["server_port"] == 8443 and line["protocol"] == 6
        assert line["capture"] == "interface lo"


# ------------------------------------------------------------------------------------------
# Early classification measured on a dataset


def test_evaluate_decides_after_k_packets(run_dir: Path, tmp_path: Path) -> None:
    from dmfnet.training.trainer import evaluate

    dataset = synthetic_flows(n_per_class=20, seed=1)
    whole = evaluate(run_dir, dataset, tmp_path / "whole")
    early = evaluate(run_dir, dataset, tmp_path / "early", decide_after=30)
    # The flows have at most 12 packets: at K = 30 nothing is cut.
    assert early["f1_macro"] == whole["f1_macro"]
    assert [e["packets"] for e in early["early"]] == [2, 3, 5, 10, 20, 30, 60]
    assert early["early"][-1]["f1_macro"] == whole["f1_macro"]
    two = evaluate(run_dir, dataset, tmp_path / "two", decide_after=2)
    assert two["decide_after"] == 2 and two["f1_macro"] == two["early"][0]["f1_macro"]
    report = (tmp_path / "early" / "report.md").read_text()
    assert "## Early decisions" in report and "| 30 |" in report
    assert (tmp_path / "early" / "early_decisions.png").stat().st_size > 0
    with pytest.raises(ValueError, match="between 1 and 60"):
        evaluate(run_dir, dataset, tmp_path / "bad", decide_after=0)
