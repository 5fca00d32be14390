"""Two training processes on CPU (gloo), as ``torchrun --nproc_per_node=2`` starts them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from training_data import synthetic_flows, write_flow_folder

TESTS = Path(__file__).resolve().parent

WORKER = """
import json, sys
sys.path.insert(0, {tests!r})
from training_data import synthetic_flows
from dmfnet.training import distributed
from dmfnet.training.trainer import train

dataset = {dataset!r} or synthetic_flows(n_per_class=20)
result = train(dataset, {run!r}, model="dmf", epochs=1, batch_size=16,
               seed=5, device="cpu", progress=False, loader={loader!r}, buffer_flows=16)
assert not distributed.active()  # the process group is left again
print("RESULT " + json.dumps({{"accuracy": result["accuracy"],
      "confusion": result["confusion"], "train_size": result["train_size"]}}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_two_process_gloo_run_trains_and_only_rank0_writes(tmp_path, loader):
    """In memory (strided shares) and streamed from row groups (contiguous shares)."""
    run_dir = tmp_path / "run"
    script = tmp_path / "worker.py"
    dataset = ""
    if loader == "stream":
        dataset = str(write_flow_folder(synthetic_flows(n_per_class=20), tmp_path / "ds", 10))
    script.write_text(
        WORKER.format(tests=str(TESTS), run=str(run_dir), dataset=dataset, loader=loader)
    )
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        if sys.platform.startswith("linux"):
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("distributed training did not finish in 180 s")
        assert p.returncode == 0, err[-2000:]
        outputs.append(json.loads(out.split("RESULT ", 1)[1]))
    # Every process returns rank 0's test metrics.
    assert outputs[0] == outputs[1]
    assert outputs[0]["train_size"] == 48
    info = json.loads((run_dir / "run.json").read_text())
    assert info["training"]["world_size"] == 2 and info["training"]["loader"] == loader
    assert (run_dir / "model.pt").is_file() and (run_dir / "metrics.json").is_file()
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 2  # header + one epoch
