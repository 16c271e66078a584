"""Latency benchmark for any inference backend, and plain-text tables of the results.

`benchmark` times a backend on seeded random input: warm-up runs first (allocator, kernel selection,
caches), then `runs` timed runs per batch size. The report quotes the median and p90 rather than the mean
because a few scheduler hiccups dominate a mean of short runs. Any object with `run(np.ndarray)`, `name` and
`input_shape` is a backend; one that can do better than the host clock around `run` also has
`measure(x, warmup, runs) -> Timing`, and the benchmark uses it: GPU backends keep the input on the device,
and TensorRT and torch time with CUDA events (see `compressor.runtime.timing`). So onnxruntime, TensorRT and torch are
timed alike. `results_table` renders results for people;
`BenchResult.to_dict` is what goes into JSON.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import onnx

from compressor.errors import CompressorError
from compressor.tables import text_table
from compressor.runtime.ort_backend import OrtBackend
from compressor.runtime.timing import Timing, time_host


class Backend(Protocol):
    """What the benchmark needs from a backend; `measure` and `precision` are optional (see module doc)."""

    name: str
    input_shape: tuple[int | None, ...]

    def run(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class BenchResult:
    """Measured latency of one backend at one batch size; times are per run, i.e. per batch."""

    backend: str
    batch: int
    threads: int | None
    median_ms: float
    p90_ms: float
    mean_ms: float
    throughput_per_s: float
    runs: int
    precision: str = "fp32"
    timer: str = "perf_counter"
    cuda_graph: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_batch_sizes(batch_sizes: Sequence[int]) -> tuple[int, ...]:
    """`batch_sizes` as a tuple of ints when it is a non-empty sequence of positive integers, else a one-line
    error; what every backend and the latency comparison accept."""
    sizes = tuple(batch_sizes)
    if not sizes or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in sizes):
        raise CompressorError(f"batch sizes must be positive integers, got {sizes}")
    return tuple(int(b) for b in sizes)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """'1,32' -> (1, 32): comma-separated positive integers, each at most once, order kept."""
    sizes: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()) or int(part) < 1:
            raise CompressorError(
                f"bad batch sizes {text!r}: expected comma-separated positive integers such as '1,32'"
            )
        if int(part) in sizes:
            raise CompressorError(f"bad batch sizes {text!r}: batch size {int(part)} is given twice")
        sizes.append(int(part))
    return tuple(sizes)


def _check_input_fits(backend: Backend, shape: tuple[int, ...]) -> None:
    """Fail before timing anything when the model declares a fixed dimension the input doesn't match."""
    declared = tuple(backend.input_shape)
    fits = len(declared) == len(shape) and all(d is None or d == s for d, s in zip(declared, shape))
    if not fits:
        shown = tuple("?" if d is None else d for d in declared)
        raise CompressorError(f"{backend.name}: model input is declared {shown}, cannot feed {shape}")


def _resolve_threads(backend: Backend, threads: int | None) -> int | None:
    """The thread count to report: the benchmark cannot change a backend's threads, only record them."""
    if not hasattr(backend, "threads"):
        return threads
    configured = backend.threads
    if threads is not None and threads != configured:
        raise ValueError(f"threads={threads} but {backend.name} is configured with {_threads(configured)} threads")
    return configured


def benchmark(
    backend: Backend,
    input_shape: Sequence[int] | None = None,
    batch_sizes: Sequence[int] = (1,),
    threads: int | None = None,
    warmup: int = 10,
    runs: int = 50,
    seed: int = 0,
) -> list[BenchResult]:
    """Time `backend` at each batch size (its `measure`, else `run`); one `BenchResult` per batch size, in order.

    `input_shape` is the shape of one sample (C, H, W) without the batch dimension; None takes it from the
    backend's declared input shape. `threads` labels the results; a backend with a `threads` attribute is
    authoritative, and a different `threads` here is a ValueError rather than a wrong label.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive, got {tuple(batch_sizes)}")
    if input_shape is None:
        declared = tuple(backend.input_shape)[1:]
        if not declared or any(d is None for d in declared):
            raise CompressorError(
                f"{backend.name}: model input shape {tuple(backend.input_shape)} has unknown dimensions besides "
                "the batch; only models with a fixed sample shape can be benchmarked"
            )
        input_shape = declared
    sample_shape = tuple(int(d) for d in input_shape)
    threads = _resolve_threads(backend, threads)

    results = []
    for batch in batch_sizes:
        shape = (batch, *sample_shape)
        _check_input_fits(backend, shape)
        # A fresh generator per batch size: dense and compressed models see identical input at each batch.
        x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
        timing = measure_backend(backend, x, warmup, runs)
        elapsed_ms = timing.times_ms
        median_ms = float(np.percentile(elapsed_ms, 50))
        results.append(
            BenchResult(
                backend=backend.name,
                batch=batch,
                threads=threads,
                median_ms=median_ms,
                p90_ms=float(np.percentile(elapsed_ms, 90)),
                mean_ms=float(elapsed_ms.mean()),
                throughput_per_s=batch / (median_ms / 1e3),
                runs=runs,
                precision=getattr(backend, "precision", "fp32"),
                timer=timing.timer,
                cuda_graph=timing.cuda_graph,
            )
        )
    return results


def measure_backend(backend: Backend, x: np.ndarray, warmup: int, runs: int) -> Timing:
    """`runs` timed runs of `backend` on `x` after `warmup` untimed ones, by its `measure` if it has one."""
    measure = getattr(backend, "measure", None)
    if measure is not None:
        return measure(x, warmup, runs)
    return time_host(lambda: backend.run(x), warmup, runs)


def time_alternating(backends: Sequence[Backend], inputs: Sequence[np.ndarray], warmup: int, runs: int,
                     block: int = 10) -> list[Timing]:
    """`runs` timed runs of each backend on its input, taken in turn, so that a machine whose load drifts (a
    shared machine, a laptop warming up) weighs on every backend alike.

    Host-timed backends alternate run by run, the order rotating each round; backends that time themselves
    (GPU timers, CUDA graphs) alternate in blocks of `block` runs, since each `measure` call sets itself up anew.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    if any(getattr(backend, "measure", None) is not None for backend in backends):
        parts: list[list[np.ndarray]] = [[] for _ in backends]
        for start in range(0, runs, block):
            for index, (backend, x) in enumerate(zip(backends, inputs)):
                timing = measure_backend(backend, x, warmup if start == 0 else 1, min(block, runs - start))
                parts[index].append(timing.times_ms)
        return [Timing(np.concatenate(times), timing.timer, timing.cuda_graph) for times in parts]
    for backend, x in zip(backends, inputs):
        for _ in range(warmup):
            backend.run(x)
    elapsed = np.empty((len(backends), runs), dtype=np.int64)
    for round_index in range(runs):
        for index in (np.arange(len(backends)) + round_index) % len(backends):
            start = time.perf_counter_ns()
            backends[index].run(inputs[index])
            elapsed[index, round_index] = time.perf_counter_ns() - start
    return [Timing(row / 1e6, "perf_counter", cuda_graph=False) for row in elapsed]


def _ms(value: float) -> str:
    return f"{value:.3f}"


def _per_s(value: float) -> str:
    return f"{value:.1f}"


def _threads(value: int | None) -> str:
    return "default" if value is None else str(value)


def results_table(results: Sequence[BenchResult], title: str | None = None) -> str:
    """One row per result: backend, batch, threads, median ms, p90 ms, throughput/s."""
    headers = ("backend", "batch", "threads", "median ms", "p90 ms", "throughput/s")
    rows = [
        (r.backend, str(r.batch), _threads(r.threads), _ms(r.median_ms), _ms(r.p90_ms), _per_s(r.throughput_per_s))
        for r in results
    ]
    return text_table(headers, rows, title, left_columns=1)


def time_onnx_pair(dense: onnx.ModelProto, compressed: onnx.ModelProto, shape: tuple[int, ...], batch: int,
                   threads: int | None, runs: int) -> tuple[BenchResult, BenchResult]:
    """The dense and the compressed ONNX on onnxruntime, their runs taken in turn on the same seeded batch (see
    `time_alternating`); the sessions' threads do not spin between runs, so neither takes the other's cores."""
    backends = [OrtBackend(model, threads=threads, spin_wait=False) for model in (dense, compressed)]
    x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
    timings = time_alternating(backends, [x, x], warmup=10, runs=runs)
    return tuple(BenchResult(backend=backend.name, batch=batch, threads=backend.threads,
                             median_ms=float(np.median(t.times_ms)), p90_ms=float(np.percentile(t.times_ms, 90)),
                             mean_ms=float(t.times_ms.mean()),
                             throughput_per_s=batch / (float(np.median(t.times_ms)) / 1e3),
                             runs=runs, precision=backend.precision, timer=t.timer)
                 for backend, t in zip(backends, timings))
