"""prepare --addresses keep|hash|drop: what the client_ip/server_ip columns hold."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from dmfnet.cli import main
from dmfnet.data import PrepareError, load_dataset, prepare
from dmfnet.data.addresses import AddressPolicy
from dmfnet.data.dataset import card_path
from pcapbuild import LINKTYPE_ETHERNET, tcp_conversation, wrap, write_pcap

T0 = 1_700_000_000_000_000_000
SECOND = 1_000_000_000
HOSTS = ["10.0.0.1", "10.0.0.7", "2001:db8::5"]


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two captures (so that two workers share them), flows of three client hosts."""
    root = tmp_path_factory.mktemp("addresses")
    (root / "web").mkdir()
    for name, hosts in (("a", HOSTS[:2]), ("b", HOSTS)):
        records = []
        for i, host in enumerate(hosts * 2):
            server = "2001:db8::10" if ":" in host else "192.0.2.10"
            records += tcp_conversation(
                (host, 40000 + i), (server, 443), [("c", b"q" * 30), ("s", b"r" * 200)],
                start_ns=T0 + i * SECOND,
            )  # fmt: skip
        records.sort(key=lambda r: r.ts_ns)
        write_pcap(root / "web" / f"{name}.pcap", wrap(records, LINKTYPE_ETHERNET))
    return root / "web"


def _labels_csv(path: Path) -> Path:
    """Labels by real address: the flows of 10.0.0.7 are 'odd', the others 'even'."""
    lines = ["file,protocol,client_ip,client_port,server_ip,server_port,label"]
    for name, hosts in (("a.pcap", HOSTS[:2]), ("b.pcap", HOSTS)):
        for i, host in enumerate(hosts * 2):
            server = "2001:db8::10" if ":" in host else "192.0.2.10"
            label = "odd" if host == "10.0.0.7" else "even"
            lines.append(f"{name},6,{host},{40000 + i},{server},443,{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _prepare(captures: Path, out: Path, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("warn", False)
    return prepare([captures], out, **kw)


def test_keep_is_the_default_and_said_so_in_the_card(captures, tmp_path):
    summary = _prepare(captures, tmp_path / "ds", workers=1)
    ds = load_dataset(tmp_path / "ds", columns=["client_ip", "server_ip"])
    assert set(ds["client_ip"].tolist()) == set(HOSTS)
    assert summary.card["parameters"]["addresses"]["mode"] == "keep"


def test_hash_groups_hosts_labels_on_real_addresses_and_stores_no_key(captures, tmp_path):
    csv = _labels_csv(tmp_path / "labels.csv")
    key = "a secret of this test"
    summary = _prepare(captures, tmp_path / "ds", labels=csv, addresses="hash",
                       address_key=key, workers=1)  # fmt: skip
    assert summary.classes == {"even": 6, "odd": 4}  # the CSV matched the real addresses
    ds = load_dataset(tmp_path / "ds", columns=["client_ip", "server_ip", "client_port"])
    clients = ds["client_ip"].tolist()
    assert all(re.fullmatch(r"[0-9a-f]{16}", c) for c in clients)
    assert not set(clients) & set(HOSTS)
    assert len(set(clients)) == 3  # one value per host: the flows of a host still group
    policy = AddressPolicy.create("hash", key)
    odd = policy.hash_address("10.0.0.7")
    assert (np.array(clients) == odd).sum() == 4
    assert set(ds.labels[np.array(clients) == odd].tolist()) == {"odd"}
    card_text = card_path(tmp_path / "ds").read_text()
    described = json.loads(card_text)["parameters"]["addresses"]
    assert described["mode"] == "hash" and "not stored" in described["key"]
    assert key not in card_text and policy.key.hex() not in card_text
    # the same key, the same values; two workers give the same files' values
    _prepare(captures, tmp_path / "again", labels=csv, addresses="hash", address_key=key,
             workers=2)  # fmt: skip
    again = load_dataset(tmp_path / "again", columns=["client_ip"])
    assert again["client_ip"].tolist() == clients


def test_hash_without_a_key_uses_a_fresh_random_key(captures, tmp_path):
    _prepare(captures, tmp_path / "one", addresses="hash", workers=1)
    _prepare(captures, tmp_path / "two", addresses="hash", workers=2)
    one = load_dataset(tmp_path / "one", columns=["client_ip"])["client_ip"]
    two = load_dataset(tmp_path / "two", columns=["client_ip"])["client_ip"]
    assert len(set(one.tolist())) == len(set(two.tolist())) == 3
    assert not set(one.tolist()) & set(two.tolist())


def test_drop_leaves_empty_addresses_and_keeps_ports(captures, tmp_path):
    csv = _labels_csv(tmp_path / "labels.csv")
    summary = _prepare(captures, tmp_path / "ds", labels=csv, addresses="drop", workers=2)
    assert summary.classes == {"even": 6, "odd": 4}
    ds = load_dataset(tmp_path / "ds", columns=["client_ip", "server_ip", "client_port"])
    assert set(ds["client_ip"].tolist()) == set(ds["server_ip"].tolist()) == {""}
    assert sorted(set(ds["client_port"].tolist())) == list(range(40000, 40006))
    assert summary.card["parameters"]["addresses"]["mode"] == "drop"


def test_bad_choices_are_refused(captures, tmp_path, capsys):
    with pytest.raises(PrepareError, match="addresses must be one of keep, hash, drop"):
        _prepare(captures, tmp_path / "x", addresses="scramble")
    with pytest.raises(PrepareError, match="only used with addresses='hash'"):
        _prepare(captures, tmp_path / "y", address_key="k")
    code = main(["prepare", str(captures), "-o", str(tmp_path / "z"), "--no-progress",
                 "--address-key", "k"])  # fmt: skip
    assert code == 2 and "only used with" in capsys.readouterr().err
    assert main(["prepare", str(captures), "-o", str(tmp_path / "w"), "--no-progress",
                 "--addresses", "hash", "--address-key", "k"]) == 0  # fmt: skip
    assert len(set(load_dataset(tmp_path / "w", columns=["client_ip"])["client_ip"])) == 3
