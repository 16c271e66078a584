"""Timers: the host timer's warm-up and per-run times; the CUDA-event timer where a GPU is present."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from compressor.runtime.timing import time_cuda, time_host


def test_host_timer_runs_warmup_then_times_each_run():
    calls = []

    def step():
        calls.append(time.perf_counter())
        time.sleep(0.002)

    timing = time_host(step, warmup=3, runs=5)
    assert len(calls) == 8
    assert timing.timer == "perf_counter" and not timing.cuda_graph
    assert timing.times_ms.shape == (5,) and np.all(timing.times_ms >= 2.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA events need a CUDA GPU; torch sees none here")
def test_cuda_timer_replays_a_graph_and_times_with_events():
    a = torch.randn(512, 512, device="cuda")
    out = torch.empty_like(a)

    timing = time_cuda(lambda: torch.matmul(a, a, out=out), warmup=3, runs=10)
    assert timing.timer == "cuda-events" and timing.cuda_graph
    assert timing.times_ms.shape == (10,) and np.all(timing.times_ms > 0)
    torch.testing.assert_close(out, a @ a)
