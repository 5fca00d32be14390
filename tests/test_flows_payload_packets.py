"""``payload_packet_bytes``: the layout of ``bytes`` taken from the first packets that carry payload.

Its slots hold, in time order, the first N packets of a flow whose transport payload length
is not 0 (among its first M packets), each as ``bytes`` holds a packet (header cut/padded to
L_h, payload cut/padded to L_p) and anonymised the same way; ``bytes`` itself is unchanged.
"""

from __future__ import annotations

import importlib
import json
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dmfnet import flows as flows_package
from dmfnet.capture import read_packets
from dmfnet.classify import classify_captures
from dmfnet.cli import main
from dmfnet.data import load_dataset, prepare
from dmfnet.data.dataset import CARD_NAME, flows_to_dataset
from dmfnet.flows import FlowConfig, assemble_flows, schema
from dmfnet.flows import assemble as assemble_module
from dmfnet.problems import ProblemLog
from pcapbuild import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    Record,
    ip,
    tcp,
    tcp_conversation,
    udp_exchange,
    wrap,
    write_pcap,
)
from test_flows_tls import CERT, client_hello, server_flight

prepare_module = importlib.import_module("dmfnet.data.prepare")
SHARED = Path(__file__).resolve().parents[2] / "shared"
T0 = 1_700_000_000_000_000_000
MS = 1_000_000
SEC = 1_000_000_000
COLUMN = "payload_packet_bytes"
LH, LP = schema.HEADER_BYTES, schema.PAYLOAD_BYTES
SLOT = LH + LP


def assemble(path, config=None) -> dict[str, np.ndarray]:
    chunks = list(assemble_flows(read_packets(path, ProblemLog()), config or FlowConfig(), "x"))
    cols = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    order = np.lexsort((cols["client_port"], cols["start_time"]))
    return {k: v[order] for k, v in cols.items()}


def flows_of(tmp_path, records, config=None, name="c.pcap"):
    path = write_pcap(tmp_path / name, records, linktype=LINKTYPE_RAW)
    return assemble(path, config)


def expected_slot(packet: bytes) -> bytes:
    """How ``bytes`` lays out one IPv4 TCP/UDP packet (no IP options), anonymised by hand:
    IPv4 checksum and addresses, ports and the transport checksum zeroed."""
    header = bytearray(packet[:20])
    header[10:20] = bytes(10)
    if packet[9] == 6:
        transport = bytearray(packet[20 : 20 + (packet[32] >> 4) * 4])
        transport[16:18] = bytes(2)
    else:
        transport = bytearray(packet[20:28])
        transport[6:8] = bytes(2)
    transport[0:4] = bytes(4)
    payload = packet[20 + len(transport) :]
    return bytes(header + transport).ljust(LH, b"\0")[:LH] + payload[:LP].ljust(LP, b"\0")


def slots(row: np.ndarray) -> list[bytes]:
    return [row[k * SLOT : (k + 1) * SLOT].tobytes() for k in range(schema.N_PACKETS)]


class Conversation:
    """TCP packets between a client and a server with consistent sequence numbers."""

    def __init__(self, client=("10.1.2.3", 40001), server=("10.9.8.7", 8080), start=T0):
        self.c, self.s = client, server
        self.seq = {True: 1000, False: 5000}
        self.t = start
        self.records: list[Record] = []

    def send(self, from_client: bool, flags: str = "PA", payload: bytes = b"") -> bytes:
        (a, pa), (b, pb) = (self.c, self.s) if from_client else (self.s, self.c)
        seg = tcp(pa, pb, payload, seq=self.seq[from_client], ack=self.seq[not from_client],
                  flags=flags)  # fmt: skip
        self.seq[from_client] += len(payload) + (1 if "S" in flags or "F" in flags else 0)
        data = ip(a, b, 6, seg)
        self.records.append(Record(self.t, data))
        self.t += MS
        return data

    def handshake(self) -> list[bytes]:
        return [self.send(True, "S"), self.send(False, "SA"), self.send(True, "A")]


@pytest.fixture
def slice_packets(request, monkeypatch):
    """Packets per assembly slice: a flow's packets spread over many slices when small."""
    if request.param is not None:
        monkeypatch.setattr(assemble_module, "SLICE_PACKETS", request.param)
    return request.param


@pytest.mark.parametrize("slice_packets", [None, 1, 2, 3], indirect=True)
def test_tcp_slots_are_the_payload_packets_in_order_past_handshake_and_acks(
    tmp_path, slice_packets
):
    conv = Conversation()
    handshake = conv.handshake()
    sent = [
        conv.send(True, payload=b"A" * 300),  # cut to 240 bytes of payload
        conv.send(False, "A"),  # pure ACK: skipped
        conv.send(False, payload=b"B" * 10),
        conv.send(True, "A"),
        conv.send(True, "A"),
        conv.send(True, payload=b"C" * 240),
        conv.send(False, payload=b"D" * 241),
        conv.send(False, "A"),
        conv.send(True, payload=b"E" * 7),
        conv.send(False, payload=b"F" * 99),  # the sixth payload packet: in no slot
    ]
    payload_packets = [p for p in sent if len(p) > 40]
    cols = flows_of(tmp_path, conv.records)
    assert len(cols["packets"]) == 1 and cols["packets"][0] == 13
    got = slots(cols[COLUMN][0])
    for k in range(5):
        assert got[k] == expected_slot(payload_packets[k]), k
    assert got[0][LH:] == b"A" * LP and got[4][LH : LH + 8] == b"E" * 7 + b"\0"
    # ``bytes`` is as it was: SYN, SYN/ACK, ACK, the first data packet, the pure ACK.
    in_order = [*handshake, *sent]
    assert slots(cols["bytes"][0]) == [expected_slot(p) for p in in_order[:5]]
    assert got[0] == slots(cols["bytes"][0])[3]  # one packet, the same bytes in both
    assert cols[COLUMN].shape == (1, 1600) and cols[COLUMN].dtype == np.uint8


def test_fewer_payload_packets_than_slots_leave_zero_slots(tmp_path):
    payloads = (("c", b"hello" * 3), ("s", b"world" * 50))
    recs = tcp_conversation(("10.0.0.1", 40000), ("10.0.0.2", 80), payloads, close="fin")
    cols = flows_of(tmp_path, recs)
    got = slots(cols[COLUMN][0])
    assert got[0] == expected_slot(recs[3].data) and got[1] == expected_slot(recs[4].data)
    assert got[2:] == [bytes(SLOT)] * 3  # the FIN exchange carries no payload
    assert slots(cols["bytes"][0])[0] == expected_slot(recs[0].data)  # the SYN
    # A TCP flow without any payload (kept when the filter is off): every slot zero.
    empty = tcp_conversation(("10.0.0.3", 40001), ("10.0.0.2", 80), (), close="fin")
    cols = flows_of(tmp_path, empty, FlowConfig(drop_no_payload=False), name="empty.pcap")
    assert cols["bytes"][0].any() and not cols[COLUMN][0].any()


def test_payload_packets_past_the_first_m_packets_are_not_taken(tmp_path):
    m = FlowConfig().m_packets
    conv = Conversation()
    conv.handshake()
    for _ in range(m - 4):  # ranks 3..M-2: pure ACKs
        conv.send(True, "A")
    first = conv.send(False, payload=b"x" * 20)  # rank M-1: the last of the first M
    conv.send(True, payload=b"y" * 20)  # rank M: past M
    cols = flows_of(tmp_path, conv.records)
    got = slots(cols[COLUMN][0])
    assert got[0] == expected_slot(first) and got[1:] == [bytes(SLOT)] * 4


def _tls_records(host: bytes) -> tuple[list[Record], bytes, bytes]:
    """A TLS flow whose certificate comes in two server segments at ranks 7 and 8 (payload
    ranks 1 and 2), after pure ACKs: past ``bytes``'s 5 packets, past the heads (filled by a
    long ClientHello), in ``payload_packet_bytes`` only."""
    hello, (h0, h1) = client_hello(host)
    flight, (c0, c1) = server_flight()
    assert len(hello) > schema.HEAD_BYTES and c0 < 150 < c1 - LP
    expected_hello = bytearray(hello)
    expected_hello[h0:h1] = bytes(h1 - h0)
    expected_flight = bytearray(flight)
    expected_flight[c0:c1] = bytes(c1 - c0)
    conv = Conversation(("10.0.0.1", 40000), ("10.0.0.2", 443))
    conv.handshake()
    conv.send(True, payload=hello)  # rank 3, payload rank 0
    conv.send(False, "A")
    conv.send(True, "A")
    conv.send(False, "A")
    conv.send(False, payload=flight[:150])  # rank 7, payload rank 1: certificate begins
    conv.send(False, payload=flight[150:])  # rank 8, payload rank 2: certificate body only
    conv.send(True, "A")
    conv.send(True, payload=b"\x17\x03\x03\x00\x05hello")  # payload rank 3
    return conv.records, bytes(expected_hello), bytes(expected_flight)


@pytest.mark.parametrize("slice_packets", [None, 1], indirect=True)
def test_tls_certificate_in_a_later_payload_packet_is_zeroed(tmp_path, slice_packets):
    host = b"secret-" + b"h" * 1100 + b".example.org"
    recs, expected_hello, expected_flight = _tls_records(host)
    cols = flows_of(tmp_path, recs)
    got = slots(cols[COLUMN][0])
    assert got[0][LH:] == expected_hello[:LP]
    assert got[1][LH:] == expected_flight[:150].ljust(LP, b"\0")
    assert got[2][LH:] == expected_flight[150 : 150 + LP]
    assert got[2][LH:] == bytes(LP)  # nothing but certificate body
    assert got[3][LH : LH + 10] == b"\x17\x03\x03\x00\x05hello"
    blob = cols[COLUMN][0].tobytes()
    for k in range(0, len(CERT) - 8, 8):
        assert CERT[k : k + 8] not in blob, k
    assert b"h" * 16 not in blob  # the server name
    assert expected_flight[:40] in blob  # what surrounds them is kept (ServerHello)


def test_udp_flow_equals_bytes(tmp_path):
    exchanges = [("c", b"q" * 30), ("s", b"a" * 400), ("c", b"r" * 5)] * 3
    recs = udp_exchange(("10.0.0.5", 30000), ("10.0.0.6", 3478), exchanges)
    cols = flows_of(tmp_path, recs)
    assert cols["packets"][0] == 9
    assert np.array_equal(cols[COLUMN], cols["bytes"])
    assert slots(cols[COLUMN][0]) == [expected_slot(r.data) for r in recs[:5]]


def test_switched_off_the_column_is_absent_and_bytes_unchanged(tmp_path):
    recs = tcp_conversation(("10.0.0.1", 40000), ("10.0.0.2", 80), (("c", b"x" * 50),))
    on = flows_of(tmp_path, recs)
    off = flows_of(tmp_path, recs, FlowConfig(payload_packet_bytes=False), name="off.pcap")
    assert COLUMN in on and COLUMN not in off
    assert set(on) - set(off) == {COLUMN}
    for name, values in off.items():
        if name != "capture":
            assert np.array_equal(values, on[name]), name


def _capture_folder(root: Path) -> Path:
    """A class folder with TCP flows whose payload packets are spread among pure ACKs."""
    records = []
    for i in range(40):
        conv = Conversation((f"10.0.{i % 9}.1", 41000 + i), (f"10.7.{i % 4}.2", 443), T0 + i * SEC)
        conv.handshake()
        for j in range(3 + i % 5):
            conv.send(j % 2 == 0, payload=bytes([i, j]) * (5 + 40 * j))
            for _ in range(i % 3):
                conv.send(j % 2 == 1, "A")
        records += conv.records
    records += udp_exchange(("10.3.0.1", 30000), ("10.3.0.2", 3478), start_ns=T0 + 3 * MS)
    records = sorted(records, key=lambda r: r.ts_ns)
    (root / "web").mkdir(parents=True)
    write_pcap(root / "web" / "a.pcap", wrap(records, LINKTYPE_ETHERNET))
    return root


def test_prepare_writes_and_loads_the_column_and_records_the_switch(tmp_path):
    captures = _capture_folder(tmp_path / "in")
    summary = prepare([captures], tmp_path / "on", workers=1, progress=False, warn=False)
    assert summary.card["parameters"]["flow_config"][COLUMN] is True
    ds = load_dataset(tmp_path / "on")
    assert ds[COLUMN].dtype == np.uint8 and ds[COLUMN].shape == (41, 1600)
    part = sorted((tmp_path / "on").glob("part-*.parquet"))[0]
    assert pq.read_schema(part).field(COLUMN).type.byte_width == 1600
    flows = assemble(captures / "web" / "a.pcap")
    by_port = {p: i for i, p in enumerate(flows["client_port"].tolist())}
    rows = [by_port[p] for p in ds["client_port"].tolist()]
    assert np.array_equal(ds[COLUMN], flows[COLUMN][rows])
    assert np.array_equal(ds["bytes"], flows["bytes"][rows])
    assert not np.array_equal(ds[COLUMN], ds["bytes"])
    assert load_dataset(tmp_path / "on", columns=[COLUMN]).columns.keys() == {COLUMN}

    out = tmp_path / "off"
    code = main(["prepare", str(captures), "-o", str(out), "--workers", "1", "--no-progress",
                 "--no-payload-packet-bytes"])  # fmt: skip
    assert code == 0
    card = json.loads((out / CARD_NAME).read_text())
    assert card["parameters"]["flow_config"][COLUMN] is False
    off = load_dataset(out)
    assert COLUMN not in off and np.array_equal(off["bytes"], ds["bytes"])
    assert COLUMN not in pq.read_schema(sorted(out.glob("part-*.parquet"))[0]).names
    with pytest.raises(ValueError, match=COLUMN):
        load_dataset(out, columns=["bytes", COLUMN])


def test_files_are_the_same_with_any_workers_and_buckets(tmp_path, monkeypatch):
    captures = _capture_folder(tmp_path / "in")
    monkeypatch.setattr(assemble_module, "SLICE_PACKETS", 23)  # flows cross slices
    monkeypatch.setattr(prepare_module, "SPLIT_MIN_BYTES", 1000)  # 8 buckets, shared
    outs = []
    for workers in (1, 2, 3):
        out = tmp_path / f"w{workers}"
        prepare([captures], out, workers=workers, progress=False, warn=False)
        outs.append(out)
    files = json.loads((outs[0] / CARD_NAME).read_text())["files"]
    assert files and files[0].startswith("part-000000-b")
    for out in outs[1:]:
        for name in files:
            assert (out / name).read_bytes() == (outs[0] / name).read_bytes(), (out, name)
    # the same rows as one assembler over the whole capture, in one slice
    monkeypatch.setattr(assemble_module, "SLICE_PACKETS", 1 << 16)
    flows = assemble(captures / "web" / "a.pcap")
    ds = load_dataset(outs[0])
    by_port = {p: i for i, p in enumerate(flows["client_port"].tolist())}
    rows = [by_port[p] for p in ds["client_port"].tolist()]
    assert np.array_equal(ds[COLUMN], flows[COLUMN][rows])


class _RecordingModel:
    """Stands for a trained run whose model reads ``payload_packet_bytes``."""

    classes = ("a", "b")
    inputs = (COLUMN,)

    def __init__(self, info: dict) -> None:
        self.info = info
        self.seen: list[np.ndarray] = []

    def predict_proba(self, arrays: dict) -> np.ndarray:
        self.seen.append(np.array(arrays[COLUMN]))
        return np.full((len(arrays[COLUMN]), 2), 0.5, dtype=np.float32)


def test_classify_gives_a_model_that_reads_the_column_what_prepare_wrote(tmp_path, monkeypatch):
    captures = _capture_folder(tmp_path / "in")
    summary = prepare([captures], tmp_path / "ds", workers=1, progress=False, warn=False)
    model = _RecordingModel({"dataset": {"card": summary.card}})
    classify_captures(model, [captures / "web" / "a.pcap"], tmp_path / "p.csv", progress=False)
    seen = np.concatenate(model.seen)
    ds = load_dataset(tmp_path / "ds")
    assert seen.shape == (41, 1600) and seen[:, 0].any()
    assert np.array_equal(seen, ds[COLUMN])
    # A run whose card predates the switch (flow parameters without it) gets it too.
    card = json.loads(json.dumps(summary.card))
    del card["parameters"]["flow_config"][COLUMN]
    model = _RecordingModel({"dataset": {"card": card}})
    classify_captures(model, [captures / "web" / "a.pcap"], tmp_path / "q.csv", progress=False)
    assert np.array_equal(np.concatenate(model.seen), ds[COLUMN])
    # A model that does not read it: not assembled (the work is saved), bytes as before.
    configs = []

    def assemble_recording(packets, config, **kw):
        configs.append(config)
        return assemble_flows(packets, config, **kw)

    monkeypatch.setattr(flows_package, "assemble_flows", assemble_recording)
    model = _RecordingModel({"dataset": {"card": summary.card}})
    model.inputs = ("bytes",)
    model.seen = []
    model.predict_proba = lambda arrays: np.full((len(arrays["bytes"]), 2), 0.5, np.float32)
    classify_captures(model, [captures / "web" / "a.pcap"], tmp_path / "r.csv", progress=False)
    assert configs == [FlowConfig(payload_packet_bytes=False)]


def test_in_memory_flows_without_the_column_convert_with_it_left_out(tmp_path):
    recs = udp_exchange(("10.0.0.5", 30000), ("10.0.0.6", 3478))
    path = write_pcap(tmp_path / "u.pcap", recs, linktype=LINKTYPE_RAW)
    config = FlowConfig(payload_packet_bytes=False)
    chunks = list(assemble_flows(read_packets(path, ProblemLog()), config, str(path)))
    ds = flows_to_dataset(chunks)
    assert COLUMN not in ds and ds["bytes"].shape == (1, 1600)
    with pytest.raises(ValueError, match=COLUMN):
        flows_to_dataset(chunks, columns=[COLUMN])


# ---------------------------------------------------------------------------- real captures

REAL_CAPTURES = {  # name: has TCP flows with a handshake and payload
    "fixtures/zeek/tls/chrome-34-google.pcap": True,
    "fixtures/zeek/tls/ecdhe.pcap": True,
    "fixtures/ja4/tls-sni.pcapng": False,  # the captures start after the handshakes
    "data/ndpi/pcaps/tls-appdata.pcap": False,
    "data/ndpi/pcaps/1kxun.pcap": True,
}


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is not available")
@pytest.mark.parametrize("name", list(REAL_CAPTURES))
def test_real_capture_slots_are_the_payload_packets(name):
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"{name} is not in ../shared")
    cols = assemble(path, FlowConfig(drop_no_payload=False))
    pp = cols[COLUMN].reshape(-1, schema.N_PACKETS, SLOT)
    by_rank = cols["bytes"].reshape(-1, schema.N_PACKETS, SLOT)
    handshakes = np.flatnonzero((cols["protocol"] == 6) & cols["handshake_complete"])
    checked = 0
    for i in handshakes.tolist():
        if cols["tcp_flags"][i, 0] != 0x02 or not (cols["payload_lengths"][i] > 0).any():
            continue
        first = pp[i, 0]
        assert first[0] >> 4 in (4, 6), i  # an IP header
        assert first[LH:].any(), i  # followed by payload
        syn = by_rank[i, 0]
        assert syn[0] >> 4 in (4, 6) and not syn[LH:].any()  # ``bytes`` starts with the SYN
        checked += 1
    assert bool(checked) == REAL_CAPTURES[name]
    # Every flow: slot k holds the k-th packet with payload among the first M (its IP
    # length field says so), anonymised as in ``bytes`` when ``bytes`` has it too; the
    # slots past the packets with payload are zero.
    for i in range(len(cols["packets"])):
        with_payload = np.flatnonzero(cols["payload_lengths"][i] > 0)[: schema.N_PACKETS]
        for k in range(schema.N_PACKETS):
            slot = pp[i, k]
            if k >= len(with_payload):
                assert not slot.any(), (i, k)
                continue
            rank = int(with_payload[k])
            length = int(cols["lengths"][i, rank])
            if slot[0] >> 4 == 4:
                assert struct.unpack("!H", slot[2:4].tobytes())[0] == length, (i, k)
            else:
                assert struct.unpack("!H", slot[4:6].tobytes())[0] == length - 40, (i, k)
            if rank < schema.N_PACKETS:
                assert np.array_equal(slot, by_rank[i, rank]), (i, k)


def test_dmf_reads_the_lengths_of_payload_packets_past_packet_30(tmp_path):
    """25 payload packets, each answered by a pure ACK, lie at ranks 3, 5, ..., 51: 11 of
    them past the first 30 packets. The dataset records 60 packets; DMF's length modality
    reads the 25 in order, signed by direction, and the paper's the first 30 packets."""
    import torch

    from dmfnet.models import create_model

    conv = Conversation()
    handshake = conv.handshake()
    sent, in_order = [], list(handshake)
    for i in range(25):
        c2s = i % 2 == 0
        packet = conv.send(c2s, payload=bytes([65 + i]) * (10 + 7 * i))
        ack = conv.send(not c2s, "A")
        sent.append(len(packet) * (1 if c2s else -1))
        in_order += [packet, ack]
    conv.send(True, "FA")
    conv.send(False, "FA")
    (tmp_path / "in" / "bulk").mkdir(parents=True)
    write_pcap(tmp_path / "in" / "bulk" / "c.pcap", conv.records, linktype=LINKTYPE_RAW)
    prepare([tmp_path / "in"], tmp_path / "ds", workers=1, progress=False, warn=False)
    ds = load_dataset(tmp_path / "ds")
    assert ds["lengths"].shape == (1, schema.RECORDED_PACKETS)
    assert ds["lengths"][0, : len(in_order)].tolist() == [len(p) for p in in_order]

    def length_inputs(name):
        model = create_model(name, 2)
        columns = {c: torch.from_numpy(np.asarray(ds[c])) for c in model.inputs}
        lengths, directions = model.length_packets(columns)
        assert lengths.shape == (1, schema.M_PACKETS)
        return lengths[0].tolist(), None if directions is None else directions[0].tolist()

    lengths, directions = length_inputs("dmf")
    assert [v * d for v, d in zip(lengths, directions, strict=True)][:25] == sent
    assert lengths[25:] == [0] * 5 and directions[25:] == [0] * 5
    paper_lengths, paper_directions = length_inputs("dmf-paper")
    assert paper_directions is None
    assert paper_lengths == [len(p) for p in in_order[: schema.M_PACKETS]]
