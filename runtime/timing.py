"""Timers for the latency benchmark: host wall clock for CPU backends, CUDA events for GPU ones.

A CPU backend's `run` returns when its work is done, so `time.perf_counter_ns` around each call measures it.
GPU work is asynchronous: host timers would measure kernel launches or synchronisation, so `time_cuda`
brackets each run with CUDA events on the stream the work runs on. Where the work can be captured into a
CUDA graph it replays the graph, which removes the per-kernel launch cost the way deployed engines do
(trtexec `--useCudaGraph`); where capture fails it times eager launches and says so.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from compressor.errors import first_line

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    """Per-run times in milliseconds, and how they were taken."""

    times_ms: np.ndarray
    timer: str  # "perf_counter" (host wall clock) or "cuda-events"
    cuda_graph: bool


def time_host(step: Callable[[], object], warmup: int, runs: int) -> Timing:
    """Call `step` `warmup` times untimed, then `runs` times, each timed with the host's monotonic clock."""
    for _ in range(warmup):
        step()
    elapsed_ns = np.empty(runs, dtype=np.int64)
    for i in range(runs):
        start = time.perf_counter_ns()
        step()
        elapsed_ns[i] = time.perf_counter_ns() - start
    return Timing(elapsed_ns / 1e6, "perf_counter", cuda_graph=False)


def time_cuda(step: Callable[[], object], warmup: int, runs: int, graph: bool = True) -> Timing:
    """Time `step`, which enqueues GPU work on torch's *current* stream, with CUDA events per run.

    `step` must read `torch.cuda.current_stream()` when it is called: the work is enqueued on a side stream
    (graph capture cannot use the default stream), and with `graph=True` it is captured once and replayed.
    Inputs and outputs stay on the device, so no host↔device copy is timed.
    """
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        # At least one eager run before capture: libraries allocate workspaces and pick kernels on first use,
        # which must not happen during capture.
        for _ in range(max(warmup, 1)):
            step()
        stream.synchronize()
        replay, captured = step, False
        if graph:
            try:
                cuda_graph = torch.cuda.CUDAGraph()
                # thread_local: a library's own CUDA calls on other threads must not invalidate the capture.
                with torch.cuda.graph(cuda_graph, stream=stream, capture_error_mode="thread_local"):
                    step()
                for _ in range(max(warmup, 1)):
                    cuda_graph.replay()
                stream.synchronize()
                # Only a graph that replayed cleanly is timed; otherwise the eager launches are.
                replay, captured = cuda_graph.replay, True
            except RuntimeError as error:
                logger.info("CUDA graph capture failed (%s); timing eager launches instead", first_line(error))
                torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
        for start, end in zip(starts, ends):
            start.record(stream)
            replay()
            end.record(stream)
        stream.synchronize()
    times = np.array([start.elapsed_time(end) for start, end in zip(starts, ends)], dtype=np.float64)
    return Timing(times, "cuda-events", cuda_graph=captured)
