"""dmfnet classify: one line per kept flow with the endpoints as seen, streaming, bad input."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

import pcapbuild as pb
from dmfnet.classify import (
    ClassifyError,
    classify_captures,
    output_format,
    run_flow_config,
)
from dmfnet.cli import main
from dmfnet.flows.config import FlowConfig
from training_data import synthetic_flows

START_NS = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run folder: DMF trained for one epoch on a tiny synthetic dataset."""
    from dmfnet.training.trainer import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("classify") / "run"
        train(synthetic_flows(n_per_class=20), out, epochs=1, batch_size=32, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def _conversations() -> list[pb.Record]:
    """Three TCP flows (IPv4, IPv6, IPv4) and two flows the paper's filters remove."""
    tls_hello = b"\x16\x03\x01\x00\x40" + bytes(range(64))
    records = []
    records += pb.tcp_conversation(
        ("10.1.0.5", 40001),
        ("192.0.2.10", 443),
        [("c", tls_hello), ("s", b"\x16\x03\x03" + b"x" * 300), ("c", b"y" * 50)],
        start_ns=START_NS,
    )
    records += pb.tcp_conversation(
        ("2001:db8::5", 40002),
        ("2001:db8::10", 22),
        [("s", b"SSH-2.0-OpenSSH_9.2\r\n"), ("c", b"SSH-2.0-demo\r\n"), ("c", b"z" * 120)],
        start_ns=START_NS + 2_000_000_000,
    )
    records += pb.tcp_conversation(
        ("10.1.0.7", 40003),
        ("192.0.2.11", 8443),
        [("c", b"a" * 10), ("s", b"b" * 900)],
        start_ns=START_NS + 4_000_000_000,
        close="rst",
    )
    # DNS (removed by the dns filter) and a SYN never answered (failed handshake).
    records += pb.udp_exchange(("10.1.0.5", 5353), ("10.1.0.1", 53), start_ns=START_NS + 5_000)
    syn = pb.ip("10.1.0.9", "192.0.2.12", 6, pb.tcp(40009, 443, b"", seq=1, flags="S"))
    records.append(pb.Record(START_NS + 6_000_000_000, syn))
    return sorted(records, key=lambda r: r.ts_ns)


EXPECTED = [
    # capture order of first packets: client, client port, server, server port, packets
    ("10.1.0.5", 40001, "192.0.2.10", 443, 9),
    ("2001:db8::5", 40002, "2001:db8::10", 22, 9),
    ("10.1.0.7", 40003, "192.0.2.11", 8443, 6),
]


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    return pb.write_pcap(tmp_path / "mixed.pcap", pb.wrap(_conversations(), pb.LINKTYPE_ETHERNET))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_csv_has_one_line_per_kept_flow_with_endpoints_as_seen(
    run_dir: Path, capture: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pred.csv"
    summary = classify_captures(run_dir, [capture], out, progress=False)
    rows = _read_csv(out)
    assert len(rows) == 3 == summary.flows_classified
    got = {
        (r["client_ip"], int(r["client_port"]), r["server_ip"], int(r["server_port"])) for r in rows
    }
    assert got == {e[:4] for e in EXPECTED}
    by_client = {r["client_ip"]: r for r in rows}
    for client, _, _, _, packets in EXPECTED:
        row = by_client[client]
        assert row["capture"] == str(capture)
        assert row["protocol"] == "6"  # the IANA number, as in the dataset
        assert int(row["packets"]) == packets
    first = by_client["10.1.0.5"]
    start = datetime.fromisoformat(first["start_time"].replace("Z", "+00:00"))
    assert start == datetime.fromtimestamp(START_NS // 10**9, tz=timezone.utc)
    # The two filtered flows are counted, not written.
    assert summary.removed == {"dns": 1, "failed_handshake": 1}
    assert summary.flows_assembled == 5
    assert summary.captures_failed == []


def test_top_classes_are_ranked_probabilities_of_the_run_classes(
    run_dir: Path, capture: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pred.csv"
    classify_captures(run_dir, [capture], out, progress=False, top_k=2)
    classes = {"chat", "download", "ssh"}  # synthetic_flows' classes
    for row in _read_csv(out):
        ranked = [item.split(":") for item in row["top"].split(";")]
        assert len(ranked) == 2
        names = [name for name, _ in ranked]
        probs = [float(p) for _, p in ranked]
        assert set(names) <= classes and len(set(names)) == 2
        assert probs == sorted(probs, reverse=True)
        assert row["predicted"] == names[0]
        assert float(row["probability"]) == pytest.approx(probs[0], abs=1e-4)
        assert 1 / 3 <= probs[0] <= 1


def test_jsonl_holds_the_same_predictions_as_csv(
    run_dir: Path, capture: Path, tmp_path: Path
) -> None:
    classify_captures(run_dir, [capture], tmp_path / "p.csv", progress=False)
    classify_captures(run_dir, [capture], tmp_path / "p.jsonl", progress=False)
    rows = _read_csv(tmp_path / "p.csv")
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(records) == len(rows) == 3
    for row, rec in zip(rows, records, strict=True):
        assert rec["client_ip"] == row["client_ip"]
        assert rec["server_port"] == int(row["server_port"])
        assert rec["packets"] == int(row["packets"])
        assert rec["predicted"] == row["predicted"]
        assert [t["class"] for t in rec["top"]] == [t.split(":")[0] for t in row["top"].split(";")]
        assert sum(t["probability"] for t in rec["top"]) == pytest.approx(1.0, abs=1e-3)


def test_flows_are_predicted_and_written_chunk_by_chunk(run_dir: Path, tmp_path: Path) -> None:
    # 400 connections, one a second, about 300 KB read in 64 KiB chunks: a flow is
    # complete once the capture's clock passes its idle timeout (120 s), so predictions
    # come out while the capture is read, not all at its end.
    records = []
    for i in range(400):
        records += pb.tcp_conversation(
            ("10.2.0.1", 20000 + i),
            ("10.2.0.2", 443),
            [("c", b"q" * 40), ("s", b"r" * 200)],
            start_ns=START_NS + i * 1_000_000_000,
        )
    path = pb.write_pcap(tmp_path / "many.pcap", pb.wrap(records, pb.LINKTYPE_ETHERNET))
    assert path.stat().st_size > 3 * (64 << 10)
    sizes: list[int] = []
    out = tmp_path / "many.csv"
    summary = classify_captures(
        run_dir, [path], out, progress=False, chunk_bytes=64 << 10, on_chunk=sizes.append
    )
    assert summary.flows_classified == 400 == sum(sizes)
    assert len([s for s in sizes if s]) >= 3
    ports = sorted(int(r["client_port"]) for r in _read_csv(out))
    assert ports == list(range(20000, 20400))


def test_broken_records_are_reported_and_the_rest_kept(
    run_dir: Path, capture: Path, tmp_path: Path
) -> None:
    image = capture.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(image[:-30])  # last record truncated mid-packet
    summary = classify_captures(run_dir, [cut], tmp_path / "cut.csv", progress=False)
    assert summary.problems.total >= 1
    assert summary.captures_failed == []
    assert summary.flows_classified >= 2
    assert len(_read_csv(tmp_path / "cut.csv")) == summary.flows_classified


def test_run_flow_config_comes_from_the_dataset_card() -> None:
    card = {"parameters": {"flow_config": {"idle_timeout": 30.0, "drop_dns": False}}}
    config = run_flow_config({"dataset": {"card": card}})
    assert config == FlowConfig(idle_timeout=30.0, drop_dns=False)
    assert run_flow_config({}) == FlowConfig()


def test_output_format_from_name_or_option() -> None:
    assert output_format("p.csv") == "csv"
    assert output_format("p.JSONL") == "jsonl"
    assert output_format("-") == "csv"
    assert output_format("p.txt", "jsonl") == "jsonl"
    with pytest.raises(ClassifyError, match="cannot tell the format"):
        output_format("predictions.txt")


# ------------------------------------------------------------------------------ the CLI


def test_cli_writes_predictions(run_dir: Path, capture: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.jsonl"
    code = main(["classify", str(run_dir), str(capture), "-o", str(out), "-q", "--threads", "1"])
    assert code == 0
    assert len(out.read_text().splitlines()) == 3
    assert "3 flows classified" in capsys.readouterr().out


def test_cli_missing_run_folder_is_one_line_and_exit_2(
    capture: Path, tmp_path: Path, capsys
) -> None:
    code = main(["classify", str(tmp_path / "nope"), str(capture), "-o", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "nope" in err[0] and "does not exist" in err[0]
    assert not (tmp_path / "p.csv").exists()


def test_cli_missing_capture_is_one_line_and_exit_2(run_dir: Path, tmp_path: Path, capsys) -> None:
    code = main(["classify", str(run_dir), str(tmp_path / "x.pcap"), "-o", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "x.pcap" in err[0]


def test_cli_unreadable_capture_exits_non_zero_and_keeps_the_others(
    run_dir: Path, capture: Path, tmp_path: Path, capsys
) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture at all" * 10)
    out = tmp_path / "p.csv"
    code = main(["classify", str(run_dir), str(junk), str(capture), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert "could not be read" in err and "junk.pcap" in err
    rows = _read_csv(out)
    assert len(rows) == 3 and {r["capture"] for r in rows} == {str(capture)}


def test_cli_unknown_output_format_is_a_user_error(
    run_dir: Path, capture: Path, tmp_path: Path, capsys
) -> None:
    code = main(["classify", str(run_dir), str(capture), "-o", str(tmp_path / "p.txt")])
    assert code == 2
    assert "use .csv or .jsonl" in capsys.readouterr().err


def test_probabilities_match_the_loaded_model(run_dir: Path, capture: Path, tmp_path: Path) -> None:
    """Classify scores what the data layer builds from the capture: same numbers by hand."""
    from dmfnet.capture import read_packets
    from dmfnet.data.dataset import flows_to_dataset
    from dmfnet.flows import assemble_flows
    from dmfnet.problems import ProblemLog
    from dmfnet.training.runs import load_run

    trained = load_run(run_dir)
    chunks = list(assemble_flows(read_packets(capture, ProblemLog()), FlowConfig(), str(capture)))
    flows = flows_to_dataset(chunks, columns=[*trained.inputs, "client_port"])
    expected = trained.predict_proba({c: flows.columns[c] for c in trained.inputs})
    out = tmp_path / "p.jsonl"
    classify_captures(trained, [capture], out, progress=False, top_k=3)
    got = {}
    for line in out.read_text().splitlines():
        rec = json.loads(line)
        got[rec["client_port"]] = {t["class"]: t["probability"] for t in rec["top"]}
    for port, row in zip(flows.columns["client_port"].tolist(), expected, strict=True):
        want = dict(zip(trained.classes, row.tolist(), strict=True))
        for name, p in got[port].items():
            assert p == pytest.approx(want[name], abs=1e-4)
    assert np.isfinite(expected).all()


# ------------------------------------------------------------------ times, bytes, Community ID


def _directions(client: str, server: str) -> tuple[int, int, int, int]:
    """(IP bytes client->server, server->client, first and last packet ns) of one flow of
    :func:`_conversations`, counted from the packets themselves."""
    import ipaddress

    c2s = s2c = 0
    stamps = []
    client, server = ipaddress.ip_address(client), ipaddress.ip_address(server)
    for r in _conversations():
        v6 = r.data[0] >> 4 == 6
        src = ipaddress.ip_address(r.data[8:24] if v6 else r.data[12:16])
        dst = ipaddress.ip_address(r.data[24:40] if v6 else r.data[16:20])
        if (src, dst) == (client, server):
            c2s += len(r.data)
        elif (src, dst) == (server, client):
            s2c += len(r.data)
        else:
            continue
        stamps.append(r.ts_ns)
    return c2s, s2c, min(stamps), max(stamps)


def test_output_has_end_time_duration_bytes_per_direction_and_community_id(
    run_dir: Path, capture: Path, tmp_path: Path
) -> None:
    from dmfnet.classify import PREDICTION_FIELDS
    from dmfnet.flows.community_id import community_id

    out = tmp_path / "pred.csv"
    classify_captures(run_dir, [capture], out, progress=False)
    with open(out, newline="", encoding="utf-8") as handle:
        assert tuple(next(csv.reader(handle))) == PREDICTION_FIELDS
    for row in _read_csv(out):
        client = row["client_ip"]
        c2s, s2c, first, last = _directions(client, row["server_ip"])
        assert (int(row["bytes_c2s"]), int(row["bytes_s2c"])) == (c2s, s2c)
        assert c2s > 0 and s2c > 0
        start = datetime.fromisoformat(row["start_time"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(row["end_time"].replace("Z", "+00:00"))
        assert start.timestamp() == pytest.approx(first / 1e9, abs=1e-6)
        assert end.timestamp() == pytest.approx(last / 1e9, abs=1e-6)
        assert float(row["duration"]) == pytest.approx((last - first) / 1e9, abs=1e-6)
        assert last > first
        want = community_id(6, client, int(row["client_port"]), row["server_ip"],
                            int(row["server_port"]))  # fmt: skip
        assert row["community_id"] == want and want.startswith("1:")
    records = [
        json.loads(line)
        for line in classify_captures(run_dir, [capture], tmp_path / "p.jsonl", progress=False)
        and (tmp_path / "p.jsonl").read_text().splitlines()
    ]
    assert [list(r) for r in records] == [list(PREDICTION_FIELDS)] * 3
    assert {r["protocol"] for r in records} == {6}


def test_iter_predictions_yields_one_dict_per_flow_like_the_file(
    run_dir: Path, capture: Path, tmp_path: Path
) -> None:
    from dmfnet.classify import ClassifySummary, iter_predictions

    out = tmp_path / "p.jsonl"
    classify_captures(run_dir, [capture], out, progress=False)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    summary = ClassifySummary(out="")
    records = iter_predictions(run_dir, [capture], summary=summary)
    assert not isinstance(records, list)
    got = list(records)
    assert len(got) == 3 == summary.flows_classified
    assert summary.removed == {"dns": 1, "failed_handshake": 1}
    for mine, line in zip(got, written, strict=True):
        assert mine["start_time"].tzinfo is not None
        iso = mine["start_time"].isoformat(timespec="microseconds").replace("+00:00", "Z")
        assert iso == line["start_time"]
        assert {k: v for k, v in mine.items() if not k.endswith("_time")} == {
            k: v for k, v in line.items() if not k.endswith("_time")
        }
    with pytest.raises(ClassifyError, match="no such file"):
        iter_predictions(run_dir, [tmp_path / "missing.pcap"])  # raised at once, not on next


def test_classify_captures_as_dataframe(run_dir: Path, capture: Path, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    from dmfnet.classify import PREDICTION_FIELDS

    frame = classify_captures(run_dir, [capture], as_dataframe=True, progress=False)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == list(PREDICTION_FIELDS) and len(frame) == 3
    assert str(frame["start_time"].dt.tz) == "UTC"
    assert (frame["end_time"] >= frame["start_time"]).all()
    assert frame.attrs["summary"].flows_classified == 3
    assert set(frame["protocol"]) == {6}
    # with a file as well: the same rows
    both = classify_captures(
        run_dir, [capture], tmp_path / "p.csv", as_dataframe=True, progress=False
    )
    rows = _read_csv(tmp_path / "p.csv")
    assert both["community_id"].tolist() == [r["community_id"] for r in rows]
    with pytest.raises(ClassifyError, match="as_dataframe"):
        classify_captures(run_dir, [capture])
