"""Tests for the dense PyTorch backend: torch on the CPU everywhere, on CUDA where a GPU allows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from backend_cases import one_line, random_batch, tiny_cnn
from compressor.errors import CompressorError
from compressor.models import create_model
from compressor.runtime.bench import benchmark
from compressor.runtime.tolerance import compare_outputs
from compressor.runtime.torch_dense import TorchBackend, cuda_unavailable

NO_CUDA = cuda_unavailable()


def _reference(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def _assert_fp32_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    return create_model("lenet300_100").eval()


@pytest.mark.parametrize("batch", [1, 5])
def test_cpu_output_matches_the_model(lenet, batch):
    backend = TorchBackend(lenet)
    x = random_batch(batch, lenet.input_shape)

    _assert_fp32_close(backend.run(x), _reference(lenet, x))
    assert backend.name == "torch-cpu"
    assert backend.precision == "fp32"
    assert backend.input_shape == (None, *lenet.input_shape)


@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_cnn_matches_in_either_memory_format(channels_last):
    model = tiny_cnn().eval()
    x = random_batch(3, model.input_shape)

    _assert_fp32_close(TorchBackend(model, channels_last=channels_last).run(x), _reference(model, x))


def test_callers_model_is_left_alone():
    model = tiny_cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    backend = TorchBackend(model)
    backend.run(random_batch(4, model.input_shape))

    assert model.training
    assert backend.model is not model and not backend.model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_input_shape_comes_from_the_argument_when_the_model_has_none():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))

    with pytest.raises(CompressorError, match="input_shape") as error:
        TorchBackend(model)
    one_line(error)
    assert TorchBackend(model, input_shape=(3, 2, 2)).input_shape == (None, 3, 2, 2)


@pytest.mark.parametrize(("precision", "match"), [("fp16", "fp16 needs device='cuda'"),
                                                  ("tf32", "tf32 needs device='cuda'"), ("int8", "unknown precision")])
def test_precisions_the_cpu_cannot_run_are_refused_in_one_line(lenet, precision, match):
    with pytest.raises(CompressorError, match=match) as error:
        TorchBackend(lenet, precision=precision)
    one_line(error)


def test_bad_devices_and_threads_are_refused(lenet):
    for kwargs in ({"device": "tpu"}, {"threads": 0}):
        with pytest.raises(CompressorError) as error:
            TorchBackend(lenet, **kwargs)
        one_line(error)


@pytest.mark.parametrize("shape", [(2, 1, 28, 27), (2, 784), (1, 28, 28)])
def test_wrong_input_shape_is_refused_in_one_line(lenet, shape):
    backend = TorchBackend(lenet)

    with pytest.raises(CompressorError, match=r"declared \('\?', 1, 28, 28\)") as error:
        backend.run(np.zeros(shape, dtype=np.float32))
    one_line(error)


class _ThreadProbe(nn.Module):
    """Records how many intra-op threads torch uses while the model runs."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return self.linear(x)


def test_threads_apply_to_each_run_and_are_restored():
    global_threads = torch.get_num_threads()
    wanted = 1 if global_threads != 1 else 2
    backend = TorchBackend(_ThreadProbe(), input_shape=(4,), threads=wanted)

    backend.run(np.ones((3, 4), dtype=np.float32))

    assert backend.model.seen == [wanted]
    assert torch.get_num_threads() == global_threads
    assert backend.threads == wanted
    assert TorchBackend(_ThreadProbe(), input_shape=(4,)).threads == global_threads


def test_benchmark_times_the_cpu_backend_with_the_host_clock(lenet):
    backend = TorchBackend(lenet, threads=1)

    results = benchmark(backend, batch_sizes=(1, 4), runs=5, warmup=1)

    assert [r.batch for r in results] == [1, 4]
    for result in results:
        assert result.backend == "torch-cpu"
        assert result.timer == "perf_counter"
        assert not result.cuda_graph
        assert result.threads == 1
        assert result.precision == "fp32"
        assert result.median_ms > 0


@pytest.mark.skipif(NO_CUDA is not None, reason=f"torch cannot use CUDA here: {NO_CUDA}")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16"])
def test_cuda_backend_matches_the_model_and_times_with_cuda_events(precision):
    model = tiny_cnn().eval()
    backend = TorchBackend(model, device="cuda", precision=precision)
    x = random_batch(5, model.input_shape)

    assert compare_outputs(backend.run(x), _reference(model, x), precision).ok
    timing = backend.measure(x, warmup=2, runs=5)
    assert timing.timer == "cuda-events" and len(timing.times_ms) == 5
    assert backend.name == "torch-cuda" and backend.threads is None
    assert not next(model.parameters()).is_cuda
