"""complexity: peak memory of a torch model's forward pass, from the profiler's tensor
allocations (the RSS measure read about zero: freed memory is reused)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmfnet.training.complexity import measure, synthetic_inputs, tensor_peak_bytes

MIB = 2**20


def test_tensor_peak_of_a_known_sequence_of_allocations(capfd):
    def two_live_mebibytes() -> None:
        a = torch.zeros(MIB // 4)  # 1 MiB of float32
        b = a * 2  # a second MiB while the first is held
        del a, b
        c = torch.zeros(MIB // 8)  # half a MiB after both are freed: no new peak
        del c

    peak = tensor_peak_bytes(two_live_mebibytes)
    assert 2 * MIB <= peak < 2 * MIB + 64 * 1024
    assert "USDT" not in capfd.readouterr().err  # the profiler's start/stop lines dropped


def test_dmf_peak_memory_exceeds_its_input_batch_and_grows_with_it():
    small = measure("dmf", 5, batch_size=16, repeats=1, warmup=0, threads=1)
    large = measure("dmf", 5, batch_size=64, repeats=1, warmup=0, threads=1)
    assert small["memory_method"] == large["memory_method"] == "tensor"
    data = synthetic_inputs(["bytes", "lengths"], 64)
    batch_bytes = sum(a.nbytes for a in data.values())
    # The byte modality alone becomes 64 x 1600 float32 (4x its uint8 input) and the
    # activations of every layer come on top.
    assert large["peak_memory_mib"] * MIB > 4 * batch_bytes
    assert large["peak_memory_mib"] > 3 * small["peak_memory_mib"] > 0


@pytest.mark.parametrize("name", ["cnn1d", "appnet"])
def test_baselines_peak_memory_exceeds_their_input_batch(name):
    from dmfnet.models import get_entry

    r = measure(name, 5, batch_size=32, repeats=1, warmup=0, threads=1)
    data = synthetic_inputs(get_entry(name).inputs, 32)
    assert r["peak_memory_mib"] * MIB > sum(np.asarray(a).nbytes for a in data.values())
