"""``prepare --cluster``: the process pool's tasks on a Dask ``LocalCluster`` (loopback only).

The dataset must be the bytes a ``--workers 1`` run writes; a worker that dies must lose
only its capture, reported in the card.
"""

import importlib
import json
import os
import sys
from pathlib import Path

import pytest

from dmfnet.cli import main
from dmfnet.data import PrepareError, load_dataset, prepare
from dmfnet.data.dataset import CARD_NAME
from pcapbuild import LINKTYPE_ETHERNET, wrap, write_pcap
from test_prepare import SHARED, captures  # noqa: F401
from test_prepare_buckets import _many_flow_records

distributed = pytest.importorskip("distributed")
cluster_module = importlib.import_module("dmfnet.data.cluster")
prepare_module = importlib.import_module("dmfnet.data.prepare")

TIMES = ("created", "elapsed_s")  # the card's only fields that may differ between runs


def _same_dataset(a: Path, b: Path) -> None:
    """The same part files, byte for byte, and the same card but for its timestamps."""
    parts_a = sorted(p.name for p in a.glob("part-*.parquet"))
    assert parts_a and parts_a == sorted(p.name for p in b.glob("part-*.parquet"))
    for name in parts_a:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    card_a, card_b = (json.loads((d / CARD_NAME).read_text()) for d in (a, b))
    for key in TIMES:
        card_a.pop(key), card_b.pop(key)
    assert card_a == card_b
    assert not (b / "_unfinished").exists()


@pytest.fixture(scope="module")
def client():
    """Two worker processes of one thread, on 127.0.0.1, as ``local:2`` makes them."""
    with cluster_module.connect("local:2") as c:
        yield c


def test_local_cluster_writes_the_dataset_of_one_worker(captures, tmp_path):  # noqa: F811
    prepare([captures], tmp_path / "one", workers=1, progress=False, warn=False)
    summary = prepare([captures], tmp_path / "dask", cluster="local:2", progress=False, warn=False)
    _same_dataset(tmp_path / "one", tmp_path / "dask")
    assert summary.card["totals"]["captures_failed"] == 1  # the broken file, as with workers


def test_a_capture_shared_by_buckets_over_the_cluster_gives_the_same_rows(
    client, tmp_path, monkeypatch
):
    folder = tmp_path / "caps" / "net"
    folder.mkdir(parents=True)
    write_pcap(folder / "big.pcap", wrap(_many_flow_records(), LINKTYPE_ETHERNET))
    monkeypatch.setattr(prepare_module, "SPLIT_MIN_BYTES", 10_000)  # the plan is the client's
    prepare([tmp_path / "caps"], tmp_path / "one", workers=1, progress=False, warn=False)
    summary = prepare([tmp_path / "caps"], tmp_path / "dask", cluster=client, progress=False)
    assert summary.card["captures"][0]["flow_buckets"] == prepare_module.BUCKETS
    assert len(prepare_module._plan([(0, "big.pcap", 10_000)], 2)) == 2  # two tasks, one each
    _same_dataset(tmp_path / "one", tmp_path / "dask")


@pytest.mark.skipif(not (SHARED / "data" / "slips").is_dir(), reason="../shared is not available")
def test_shared_captures_through_the_command(tmp_path, capsys):
    captures_dir = str(SHARED / "data" / "slips")
    assert main(["prepare", captures_dir, "-o", str(tmp_path / "one"), "--workers", "1", "-q"]) == 0
    command = ["prepare", captures_dir, "-o", str(tmp_path / "dask"), "--cluster", "local:2"]
    assert main([*command, "-q"]) == 0
    assert "dataset:" in capsys.readouterr().out
    _same_dataset(tmp_path / "one", tmp_path / "dask")


class DiesOnCapture(distributed.WorkerPlugin):
    """Installed in every worker: the task of capture ``name`` writes half a part file and
    kills its worker process, as a worker killed for memory would."""

    def __init__(self, name: str) -> None:
        self.name = name

    def setup(self, worker) -> None:
        module = importlib.import_module("dmfnet.data.prepare")
        original, name = module.prepare_capture, self.name

        def dies(index, path, size, **kw):
            if Path(path).name == name:
                (Path(kw["out"]) / f"part-{index:06d}-000.parquet").write_bytes(b"PAR1 cut")
                os._exit(9)
            return original(index, path, size, **kw)

        module.prepare_capture = dies


def test_a_killed_worker_loses_only_its_capture_which_is_reported(captures, tmp_path):  # noqa: F811
    with cluster_module.connect("local:2") as dying:
        dying.register_plugin(DiesOnCapture("c.pcap"))
        summary = prepare([captures], tmp_path / "ds", cluster=dying, progress=False, warn=False)
    card = json.loads((tmp_path / "ds" / CARD_NAME).read_text())
    died = [p for p in card["problems"]["listed"] if p["reason"] == cluster_module.WORKER_DIED]
    assert [Path(p["file"]).name for p in died] == ["c.pcap"]
    assert summary.classes == {"chat": 1, "web": 5}  # c.pcap's two chat flows are missing
    ds = load_dataset(tmp_path / "ds")
    assert len(ds) == 6 and not any(c.endswith("c.pcap") for c in ds["capture"])


def test_without_dask_the_option_is_one_clear_error_and_writes_nothing(
    captures, tmp_path, monkeypatch  # noqa: F811
):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if the extra were missing
    with pytest.raises(PrepareError, match=r"pip install 'dmfnet\[cluster\]'"):
        prepare([captures], tmp_path / "ds", cluster="local:2", progress=False)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    ("spec", "message"),
    [("local:0", "local:N needs"), ("local:two", "local:N needs"), ("not an address", "not a")],
)
def test_a_bad_cluster_is_named(captures, tmp_path, spec, message):  # noqa: F811
    with pytest.raises(PrepareError, match=message):
        prepare([captures], tmp_path / "ds", cluster=spec, progress=False)


def test_workers_and_cluster_together_are_refused(captures, tmp_path):  # noqa: F811
    with pytest.raises(PrepareError, match="workers or a cluster"):
        prepare([captures], tmp_path / "ds", cluster="local:1", workers=2, progress=False)
