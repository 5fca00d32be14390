"""An interrupted ``prepare``: every worker ends with the command, and the output folder
is left without a dataset that dmfnet or a Parquet reader would take for a finished one."""

import importlib
import os
import signal
import subprocess
import sys
import time

import pyarrow.dataset as pads
import pytest

from dmfnet.data import PrepareError, load_dataset, prepare
from dmfnet.data.dataset import CARD_NAME
from dmfnet.outputs import UNFINISHED
from test_prepare import captures  # noqa: F401  (the fixture)

prepare_module = importlib.import_module("dmfnet.data.prepare")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

@pytest.fixture(autouse=True)
def default_ctrl_c():
    """Ctrl-C as a terminal gives it: Python's default SIGINT handler here, and so the
    default disposition in the commands started from here (an ignored SIGINT would be
    inherited by them), whatever an earlier test in this process left installed."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


# `dmfnet prepare` whose workers write their capture's parts and then take a minute more:
# they are all still running when the test interrupts the command.
DRIVER = """
import importlib, sys, time
from dmfnet.cli import run

prepare_module = importlib.import_module("dmfnet.data.prepare")

real = prepare_module.prepare_capture

def slow(*args, **kwargs):
    result = real(*args, **kwargs)
    time.sleep(60)
    return result

prepare_module.prepare_capture = slow
sys.argv = ["dmfnet", *sys.argv[1:]]
run()
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _start(inputs, out):
    command = [sys.executable, "-c", DRIVER, "prepare", str(inputs), "-o", str(out)]
    command += ["--workers", "2", "--no-progress"]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # both workers started, parts written
        workers = _children(proc.pid)
        parts = list((out / UNFINISHED).glob("part-*.parquet")) if out.is_dir() else []
        if len(workers) >= 2 and parts:
            return proc, workers
        if proc.poll() is not None:
            pytest.fail(f"prepare ended early: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the workers did not start")


def _ended(pids: list[int], seconds: float = 20) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _running(p)]


def _assert_no_dataset(out):
    assert not list(out.glob("part-*.parquet"))
    assert not (out / CARD_NAME).exists()
    with pytest.raises((ValueError, FileNotFoundError)):
        load_dataset(out)
    if out.is_dir():
        assert pads.dataset(out, format="parquet").files == []


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "empty-folder"])
def test_ctrl_c_ends_every_worker_and_leaves_no_dataset(captures, tmp_path, existing):  # noqa: F811
    out = tmp_path / "ds"
    if existing:
        out.mkdir()
    proc, workers = _start(captures, out)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        for pid in _ended(workers, 0):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert _ended(workers) == [], "workers outlived the command"
    if existing:  # a folder it found is left as it was (empty), one it made is removed
        assert list(out.iterdir()) == []
    else:
        assert not out.exists()
    _assert_no_dataset(out)


def test_sigint_to_the_command_alone_ends_its_workers(captures, tmp_path):  # noqa: F811
    out = tmp_path / "ds"
    proc, workers = _start(captures, out)
    os.kill(proc.pid, signal.SIGINT)  # the workers do not get it: the command stops them
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert _ended(workers) == [], "workers outlived the command"
    assert not out.exists()


def test_killed_command_takes_its_workers_and_the_rerun_clears_its_folder(captures, tmp_path):  # noqa: F811
    out = tmp_path / "ds"
    proc, workers = _start(captures, out)
    proc.kill()  # no clean-up in the command at all
    proc.communicate(timeout=60)
    try:
        assert _ended(workers) == [], "workers outlived the command"
    finally:
        for pid in _ended(workers, 0):
            os.kill(pid, signal.SIGKILL)
    assert (out / UNFINISHED).is_dir()
    _assert_no_dataset(out)
    with pytest.raises(ValueError, match="unfinished dataset.*run `dmfnet prepare` again"):
        load_dataset(out)
    summary = prepare(captures, out, progress=False, warn=False, workers=1)  # no --force
    assert summary.flows == 8
    assert not (out / UNFINISHED).exists()
    assert len(load_dataset(out)) == 8


def test_an_interrupted_run_in_this_process_removes_what_it_wrote(
    captures,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    real = prepare_module.prepare_capture
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(real(*args, **kwargs))  # parts written
        if len(calls) == 2:
            raise KeyboardInterrupt
        return calls[-1]

    monkeypatch.setattr(prepare_module, "prepare_capture", interrupted)
    out = tmp_path / "ds"
    (out / "_mine").mkdir(parents=True)  # the user's (Parquet readers pass over it)
    (out / "_mine" / "notes.txt").write_text("kept")
    with pytest.raises(KeyboardInterrupt):
        prepare(captures, out, progress=False, workers=1, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["_mine"]
    _assert_no_dataset(out)


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "empty-folder"])
def test_a_failed_run_leaves_no_card_and_does_not_block_the_next(captures, tmp_path, existing):  # noqa: F811
    labels = tmp_path / "labels.csv"  # matches no flow: nothing kept, the run fails
    labels.write_text("file,protocol,src_ip,src_port,dst_ip,dst_port,label\n"
                      "x.pcap,TCP,10.9.9.9,1,10.9.9.8,2,none\n")  # fmt: skip
    out = tmp_path / "ds"
    if existing:
        out.mkdir()
    with pytest.raises(PrepareError, match="no flows kept"):
        prepare(captures, out, labels=labels, progress=False, warn=False, workers=2)
    assert list(out.iterdir()) == [] if existing else not out.exists()
    _assert_no_dataset(out)
    assert prepare(captures, out, progress=False, warn=False).flows == 8  # no --force


def test_ctrl_c_while_the_dataset_is_put_in_place_waits_until_it_is_whole():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with prepare_module._interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # a handler that raised would have raised here
            done.append(True)
    assert done == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
