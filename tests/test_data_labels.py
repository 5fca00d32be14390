"""Labels from folder, file name and a CSV of flows."""

from pathlib import Path

import numpy as np
import pytest

from dmfnet.data.labels import (
    CaptureLabeller,
    FlowTableLabeller,
    label_from_file,
    label_from_folder,
    make_labeller,
    protocol_number,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.mark.parametrize(
    "name, label",
    [
        ("SMB-1.pcap", "SMB"),
        ("SMB-2.pcap", "SMB"),
        ("Weibo-3.pcap", "Weibo"),
        ("Nsis-ay.pcap", "Nsis-ay"),
        ("Gmail.pcapng", "Gmail"),
        ("SMB-12.pcap.gz", "SMB"),
        ("Htbot.cap", "Htbot"),
        ("skype_2.pcapng.gz", "skype"),
        ("443-chrome.pcap", "443-chrome"),
        ("2019.pcap", "2019"),
        ("noext", "noext"),
    ],
)
def test_file_label_strips_extensions_and_part_suffix(name, label):
    assert label_from_file(Path("/data/x") / name) == label


def test_folder_label_is_parent_folder_name(tmp_path):
    capture = tmp_path / "Botnet" / "a.pcap"
    assert label_from_folder(capture) == "Botnet"
    assert (
        CaptureLabeller("folder").label_chunk({"protocol": np.zeros(3)}, str(capture)).tolist()
        == ["Botnet"] * 3
    )


def test_protocol_names_and_numbers():
    assert protocol_number("TCP") == 6
    assert protocol_number("udp") == 17
    assert protocol_number("6") == 6
    assert protocol_number(58) == 58
    with pytest.raises(ValueError, match="unknown protocol 'FOO'"):
        protocol_number("FOO")


def _chunk(rows):
    protos, cips, cports, sips, sports = zip(*rows, strict=True)
    return {
        "protocol": np.array(protos, dtype=np.uint8),
        "client_ip": np.array(cips, dtype=object),
        "client_port": np.array(cports, dtype=np.int32),
        "server_ip": np.array(sips, dtype=object),
        "server_port": np.array(sports, dtype=np.int32),
    }


def test_csv_matches_both_directions_file_and_protocol(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "file,protocol,src_ip,src_port,dst_ip,dst_port,label\n"
        "a.pcap,TCP,10.0.0.1,1234,10.0.0.2,443,TLS\n"
        "a.pcap,17,2001:db8::1,5000,2001:db8::2,53,DNS\n"
        "b.pcap,TCP,10.0.0.1,1234,10.0.0.2,443,Other\n"
        ",UDP,10.9.9.9,1,10.9.9.8,2,Anywhere\n"
    )
    labeller = make_labeller(csv)
    assert isinstance(labeller, FlowTableLabeller)
    chunk = _chunk(
        [
            (6, "10.0.0.1", 1234, "10.0.0.2", 443),  # as listed
            (6, "10.0.0.2", 443, "10.0.0.1", 1234),  # reversed
            (17, "10.0.0.1", 1234, "10.0.0.2", 443),  # wrong protocol
            (17, "2001:db8:0:0::2", 53, "2001:db8::1", 5000),  # other spelling, reversed
            (6, "::ffff:10.0.0.1", 1234, "10.0.0.2", 443),  # IPv4-mapped spelling
            (6, "10.0.0.1", 1235, "10.0.0.2", 443),  # other port
            (17, "10.9.9.8", 2, "10.9.9.9", 1),  # empty file column: any capture
        ]
    )
    got = labeller.label_chunk(chunk, "/somewhere/else/a.pcap").tolist()
    assert got == ["TLS", "TLS", "", "DNS", "TLS", "", "Anywhere"]
    assert labeller.label_chunk(chunk, "a.pcap.gz").tolist() == got  # compressed capture
    got_b = labeller.label_chunk(chunk, "b.pcap").tolist()
    assert got_b == ["Other", "Other", "", "", "Other", "", "Anywhere"]


def test_csv_errors_name_the_problem(tmp_path):
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("file,proto,src_ip,src_port,dst_ip,dst_port,label\n")
    with pytest.raises(ValueError, match="lacks column.*protocol"):
        FlowTableLabeller(bad_header)
    bad_rows = tmp_path / "r.csv"
    bad_rows.write_text(
        "file,protocol,src_ip,src_port,dst_ip,dst_port,label\na.pcap,TCP,1.2.3.4,x,1.2.3.5,2,X\n"
    )
    with pytest.raises(ValueError, match="no usable row.*line 2"):
        FlowTableLabeller(bad_rows)
    some_bad = tmp_path / "s.csv"
    some_bad.write_text(
        "file,protocol,src_ip,src_port,dst_ip,dst_port,label\n"
        "a.pcap,FOO,1.2.3.4,1,1.2.3.5,2,X\n"
        "a.pcap,TCP,1.2.3.4,1,1.2.3.5,2,Y\n"
        "a.pcap,TCP,1.2.3.4,1,1.2.3.5,99999,Z\n"
    )
    labeller = FlowTableLabeller(some_bad)
    assert (labeller.rows, labeller.bad_rows) == (1, 2)
    assert "line 2" in labeller.first_bad
    with pytest.raises(ValueError, match="'folder', 'file' or the path"):
        make_labeller(tmp_path / "missing.csv")


def test_csv_takes_the_dataset_endpoint_names_and_protocol_names_or_numbers(tmp_path):
    flows = _chunk([(6, "10.0.0.1", 1234, "10.0.0.2", 443), (17, "10.0.0.3", 5, "10.0.0.4", 53)])
    want = ["TLS", "DNS"]
    for header in (
        "file,protocol,client_ip,client_port,server_ip,server_port,label",
        "label,server_port,server_ip,client_port,client_ip,protocol,file",  # any order
        "file,protocol,src_ip,src_port,dst_ip,dst_port,label",
        "File,Protocol,Client_IP,src_port,server_ip,DST_PORT,label",  # mixed, any case
    ):
        names = [h.strip().lower() for h in header.split(",")]
        canonical = {"src_ip": "client_ip", "src_port": "client_port", "dst_ip": "server_ip",
                     "dst_port": "server_port"}  # fmt: skip
        rows = [
            {"file": "a.pcap", "protocol": "tcp", "client_ip": "10.0.0.1", "client_port": "1234",
             "server_ip": "10.0.0.2", "server_port": "443", "label": "TLS"},
            {"file": "a.pcap", "protocol": "17", "client_ip": "10.0.0.4", "client_port": "53",
             "server_ip": "10.0.0.3", "server_port": "5", "label": "DNS"},
        ]  # fmt: skip
        lines = [header] + [",".join(r[canonical.get(n, n)] for n in names) for r in rows]
        path = tmp_path / "labels.csv"
        path.write_text("\n".join(lines) + "\n")
        assert make_labeller(path).label_chunk(flows, "a.pcap").tolist() == want, header
    missing = tmp_path / "m.csv"
    missing.write_text("file,protocol,client_ip,client_port,server_ip,label\n")
    with pytest.raises(ValueError, match="lacks column.*server_port.*also accepted"):
        FlowTableLabeller(missing)


def test_csv_conflicting_rows_are_counted(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "file,protocol,src_ip,src_port,dst_ip,dst_port,label\n"
        "a.pcap,TCP,10.0.0.1,1,10.0.0.2,2,X\n"
        "a.pcap,TCP,10.0.0.2,2,10.0.0.1,1,Y\n"
    )
    labeller = FlowTableLabeller(csv)
    assert labeller.conflicts == 1
    assert labeller.describe()["conflicting_rows"] == 1


@pytest.mark.skipif(not (SHARED / "data/ndpi/labels.csv").is_file(), reason="no ../shared")
def test_real_ndpi_label_csv_loads_every_row():
    labeller = FlowTableLabeller(SHARED / "data/ndpi/labels.csv")
    assert labeller.rows == 9169
    chunk = _chunk([(6, "161.117.13.29", 80, "192.168.2.126", 45380)])
    assert labeller.label_chunk(chunk, "1kxun.pcap").tolist() == ["1kxun"]


HEADER = "file,protocol,client_ip,client_port,server_ip,server_port,label\n"


def test_malformed_rows_are_counted_and_named_by_line(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(
        HEADER
        + "a.pcap,TCP,10.0.0.1,1,10.0.0.2,443,ok\n"  # line 2
        + "a.pcap,TCP,10.0.0.1,2,10.0.0.2\n"  # 3: too few fields
        + "a.pcap,TCP,10.0.0.1,3,10.0.0.2,443,Web,extra\n"  # 4: a field too many
        + "a.pcap,TCP,10.0.0.1,4,10.0.0.2,443,,\n"  # 5: empty label (the trailing comma is fine)
        + "\n"  # 6: blank, not a row
        + "a.pcap,TCP,10.0.0.1,5,10.0.0.2,443,ok,\n"  # 7: a trailing empty field: fine
        + "a.pcap,TCP,10.0.0.1,99999,10.0.0.2,443,ok\n"  # 8: port out of range
    )
    labeller = FlowTableLabeller(path)
    assert (labeller.rows, labeller.bad_rows) == (2, 4)
    assert labeller.bad_lines == [3, 4, 5, 8]
    assert labeller.describe()["bad_lines"] == [3, 4, 5, 8]
    [warning] = labeller.warnings()
    assert warning.startswith(f"label CSV {path}: 4 malformed row(s) skipped (line(s) 3, 4, 5, 8;")
    assert "line 3: 5 fields, the header has 7" in warning
    good = tmp_path / "good.csv"
    good.write_text(HEADER + "a.pcap,TCP,10.0.0.1,1,10.0.0.2,443,ok\n")
    assert FlowTableLabeller(good).warnings() == []
    assert CaptureLabeller("folder").warnings() == []


def test_many_malformed_rows_name_the_first_lines(tmp_path):
    path = tmp_path / "labels.csv"
    bad = "".join(f"a.pcap,TCP,10.0.0.1,x{i},10.0.0.2,443,ok\n" for i in range(30))
    path.write_text(HEADER + "a.pcap,TCP,10.0.0.1,1,10.0.0.2,443,ok\n" + bad)
    [warning] = FlowTableLabeller(path).warnings()
    assert "30 malformed row(s) skipped (line(s) 3, 4, 5, 6, 7 and 25 more;" in warning


def test_a_label_csv_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        HEADER.encode() + "a.pcap,TCP,10.0.0.1,1,10.0.0.2,443,Café\n".encode("latin-1")
    )
    with pytest.raises(ValueError) as info:
        FlowTableLabeller(path)
    message = str(info.value)
    assert message.startswith(
        f"{path}: label CSV is not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8"
    )


def test_prepare_reports_malformed_label_rows(tmp_path, capsys):
    import pcapbuild as pb
    from dmfnet.cli import main

    captures = tmp_path / "in"
    captures.mkdir()
    flows = pb.tcp_conversation(("10.0.0.1", 40000), ("10.0.0.2", 443), (("c", b"hi"),))
    flows += pb.tcp_conversation(("10.0.0.1", 40001), ("10.0.0.2", 443), (("c", b"yo"),))
    pb.write_pcap(captures / "a.pcap", pb.wrap(flows, pb.LINKTYPE_ETHERNET))
    labels = tmp_path / "labels.csv"
    labels.write_text(
        HEADER
        + "a.pcap,TCP,10.0.0.1,40000,10.0.0.2,443,tls\n"
        + "a.pcap,TCP,10.0.0.1,40001,10.0.0.2,443,tls\n"
        + "a.pcap,TCP,10.0.0.1,40002,10.0.0.2,https,tls\n"
    )
    out = tmp_path / "ds"
    assert main(["prepare", str(captures), "-o", str(out), "--labels", str(labels), "-q"]) == 0
    err = capsys.readouterr().err
    assert f"label CSV {labels}: 1 malformed row(s) skipped (line(s) 4;" in err
    from dmfnet.data import load_dataset

    card = load_dataset(out, columns=[]).card
    assert any("malformed row(s)" in w for w in card["warnings"])
    assert card["parameters"]["labels"]["bad_lines"] == [4]
