"""Tests for the latency benchmark and its tables, on onnxruntime and on a recording stand-in backend."""

from __future__ import annotations

import time

import numpy as np
import pytest
from onnx import TensorProto, helper

from compressor.errors import CompressorError
from compressor.runtime.bench import (BenchResult, benchmark, check_batch_sizes, parse_batch_sizes, results_table,
                                      time_alternating)
from compressor.runtime.ort_backend import OrtBackend


def _relu_model(batch: str | int = "batch"):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"])],
        "relu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3, 8, 8])],
    )
    # IR 10 because onnxruntime rejects the newest IR versions that recent onnx releases stamp by default.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


class RecordingBackend:
    """Any object with run/name/input_shape is a backend; this one remembers what it was fed."""

    name = "recording"

    def __init__(self, input_shape=(None, 3, 8, 8)):
        self.input_shape = input_shape
        self.inputs: list[np.ndarray] = []

    def run(self, x: np.ndarray) -> np.ndarray:
        self.inputs.append(x)
        return x


def _result(backend="onnxruntime-cpu", batch=1, threads=None, median_ms=2.0, p90_ms=2.5):
    return BenchResult(
        backend=backend,
        batch=batch,
        threads=threads,
        median_ms=median_ms,
        p90_ms=p90_ms,
        mean_ms=median_ms,
        throughput_per_s=batch / (median_ms / 1e3),
        runs=50,
    )


def test_benchmark_onnxruntime_per_batch_size():
    backend = OrtBackend(_relu_model(), threads=1)

    results = benchmark(backend, (3, 8, 8), batch_sizes=(1, 4), warmup=2, runs=50)

    assert [r.batch for r in results] == [1, 4]
    for r in results:
        assert r.backend == "onnxruntime-cpu"
        assert r.threads == 1
        assert r.runs == 50
        assert r.p90_ms >= r.median_ms > 0
        assert r.mean_ms > 0
        assert r.throughput_per_s == pytest.approx(r.batch / (r.median_ms / 1e3))


def test_sample_shape_defaults_to_declared_shape():
    backend = RecordingBackend()

    benchmark(backend, batch_sizes=(2,), warmup=0, runs=1)

    assert backend.inputs[0].shape == (2, 3, 8, 8)


def test_warmup_and_timed_runs_are_all_executed_on_seeded_input():
    backend = RecordingBackend()

    results = benchmark(backend, (3, 8, 8), batch_sizes=(1, 5), warmup=3, runs=7, seed=4)

    assert [r.runs for r in results] == [7, 7]
    assert [x.shape[0] for x in backend.inputs] == [1] * 10 + [5] * 10
    assert all(x.dtype == np.float32 for x in backend.inputs)
    expected = np.random.default_rng(4).standard_normal((5, 3, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(backend.inputs[-1], expected)


def test_fixed_batch_model_rejects_other_batch_sizes():
    with pytest.raises(CompressorError, match="cannot feed"):
        benchmark(RecordingBackend((1, 3, 8, 8)), (3, 8, 8), batch_sizes=(1, 8), warmup=0, runs=1)


def test_wrong_sample_shape_rejected_before_timing():
    backend = RecordingBackend()

    with pytest.raises(CompressorError, match="cannot feed"):
        benchmark(backend, (3, 32, 32), warmup=0, runs=1)
    assert backend.inputs == []


def test_unknown_sample_shape_needs_explicit_shape():
    with pytest.raises(CompressorError, match="unknown dimensions"):
        benchmark(RecordingBackend((None, 3, None, None)), warmup=0, runs=1)


def test_threads_label_must_match_backend():
    backend = OrtBackend(_relu_model(), threads=2)

    assert benchmark(backend, (3, 8, 8), warmup=0, runs=1)[0].threads == 2
    with pytest.raises(ValueError, match="threads"):
        benchmark(backend, (3, 8, 8), threads=4, warmup=0, runs=1)


def test_threads_label_for_backend_without_threads():
    assert benchmark(RecordingBackend(), threads=3, warmup=0, runs=1)[0].threads == 3


@pytest.mark.parametrize("kwargs", [{"runs": 0}, {"warmup": -1}, {"batch_sizes": ()}, {"batch_sizes": (0,)}])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        benchmark(RecordingBackend(), (3, 8, 8), **kwargs)


def test_result_to_dict_is_plain_data():
    assert _result(batch=4, threads=2).to_dict() == {
        "backend": "onnxruntime-cpu",
        "batch": 4,
        "threads": 2,
        "median_ms": 2.0,
        "p90_ms": 2.5,
        "mean_ms": 2.0,
        "throughput_per_s": 2000.0,
        "runs": 50,
        "precision": "fp32",
        "timer": "perf_counter",
        "cuda_graph": False,
    }


def test_results_table_shows_every_number():
    table = results_table([_result(batch=1), _result(batch=32, threads=4, median_ms=8.0, p90_ms=9.25)], title="dense")
    lines = table.splitlines()

    assert lines[0] == "dense"
    assert lines[1].split() == ["backend", "batch", "threads", "median", "ms", "p90", "ms", "throughput/s"]
    assert lines[3].split() == ["onnxruntime-cpu", "1", "default", "2.000", "2.500", "500.0"]
    assert lines[4].split() == ["onnxruntime-cpu", "32", "4", "8.000", "9.250", "4000.0"]
    assert len({len(line) for line in lines[1:4]}) == 1


@pytest.mark.parametrize(
    ("text", "expected"), [("1,32", (1, 32)), ("8", (8,)), (" 1, 4 ,16 ", (1, 4, 16)), ("32,1", (32, 1))]
)
def test_parse_batch_sizes(text, expected):
    assert parse_batch_sizes(text) == expected


@pytest.mark.parametrize("text", ["", "0", "a", "1,,2", "-1", "1.5", "1,1", "1;2", "²"])
def test_parse_batch_sizes_rejects_bad_text(text):
    with pytest.raises(CompressorError) as caught:
        parse_batch_sizes(text)
    assert repr(text) in str(caught.value)


def test_batch_sizes_every_backend_accepts():
    assert check_batch_sizes([1, np.int64(32)]) == (1, 32)
    for bad in ((), (0,), (2, -1), (True,), (1.5,)):
        with pytest.raises(CompressorError, match="batch sizes must be positive integers"):
            check_batch_sizes(bad)


class Sleeper:
    """A host-timed backend whose run takes `seconds`."""

    name = "sleeper"
    input_shape = (None, 1)

    def __init__(self, seconds: float):
        self.seconds, self.calls = seconds, 0

    def run(self, x):
        self.calls += 1
        time.sleep(self.seconds)
        return x


def test_alternating_timing_runs_each_backend_in_turn_and_times_each_alike():
    fast, slow = Sleeper(0.001), Sleeper(0.004)
    x = np.zeros((1, 1), np.float32)
    timings = time_alternating([fast, slow], [x, x], warmup=2, runs=6)
    assert fast.calls == slow.calls == 8
    assert [len(t.times_ms) for t in timings] == [6, 6]
    assert np.median(timings[0].times_ms) < np.median(timings[1].times_ms)
    assert timings[0].timer == "perf_counter"
