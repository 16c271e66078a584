"""Tests for the PyTorch backends: dense torch on the CPU everywhere, CUDA and torch-24 where a GPU allows."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.nn.utils import prune

from compressor.errors import CompressorError
from compressor.models import create_model
from compressor.passes.analysis import is_two_four, to_groups, two_four_eligibility, two_four_mask
from compressor.runtime.bench import benchmark
from compressor.runtime.tolerance import compare_outputs
from compressor.runtime.torch_backend import (
    Conv1x1AsGemm,
    SemiStructuredBackend,
    TorchBackend,
    cuda_unavailable,
    cusparselt_algorithm_search,
    semi_structured_backend,
    semi_structured_candidates,
    semi_structured_unavailable,
)

NO_CUDA = cuda_unavailable()
NO_TORCH_24 = semi_structured_unavailable()
NO_CUSPARSELT_24 = NO_TORCH_24 or (
    None if semi_structured_backend() == "cusparselt"
    else "torch-24 multiplies with torch's CUTLASS kernels here, which have no algorithm search")
SEARCHES = ("torch._C._cusparselt.mm_search", "torch._cslt_sparse_mm_search")
EDGE_BACKENDS = Path(__file__).resolve().parents[2] / "benchmarks" / "edge_backends.py"


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def _two_four_(*layers: nn.Module) -> None:
    with torch.no_grad():
        for layer in layers:
            layer.weight.mul_(two_four_mask(layer.weight))


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )
    model.input_shape = (3, 8, 8)
    return model


def _batch(batch: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(batch).standard_normal((batch, *shape), dtype=np.float32)


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
    x = _batch(batch, lenet.input_shape)

    _assert_fp32_close(backend.run(x), _reference(lenet, x))
    assert backend.name == "torch-cpu"
    assert backend.precision == "fp32"
    assert backend.input_shape == (None, *lenet.input_shape)


@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_cnn_matches_in_either_memory_format(channels_last):
    model = _tiny_cnn().eval()
    x = _batch(3, model.input_shape)

    _assert_fp32_close(TorchBackend(model, channels_last=channels_last).run(x), _reference(model, x))


def test_callers_model_is_left_alone():
    model = _tiny_cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    backend = TorchBackend(model)
    backend.run(_batch(4, model.input_shape))

    assert model.training
    assert backend.model is not model and not backend.model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_input_shape_comes_from_the_argument_when_the_model_has_none():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))

    with pytest.raises(CompressorError, match="input_shape") as error:
        TorchBackend(model)
    _one_line(error)
    assert TorchBackend(model, input_shape=(3, 2, 2)).input_shape == (None, 3, 2, 2)


@pytest.mark.parametrize(("precision", "match"), [("fp16", "fp16 needs device='cuda'"),
                                                  ("tf32", "tf32 needs device='cuda'"), ("int8", "unknown precision")])
def test_precisions_the_cpu_cannot_run_are_refused_in_one_line(lenet, precision, match):
    with pytest.raises(CompressorError, match=match) as error:
        TorchBackend(lenet, precision=precision)
    _one_line(error)


def test_bad_devices_and_threads_are_refused(lenet):
    for kwargs in ({"device": "tpu"}, {"threads": 0}):
        with pytest.raises(CompressorError) as error:
            TorchBackend(lenet, **kwargs)
        _one_line(error)


@pytest.mark.parametrize("shape", [(2, 1, 28, 27), (2, 784), (1, 28, 28)])
def test_wrong_input_shape_is_refused_in_one_line(lenet, shape):
    backend = TorchBackend(lenet)

    with pytest.raises(CompressorError, match=r"declared \('\?', 1, 28, 28\)") as error:
        backend.run(np.zeros(shape, dtype=np.float32))
    _one_line(error)


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


class _Mixed(nn.Module):
    """One layer of every kind the 2:4 candidate search tells apart (it is never run)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.sparse_fc = nn.Linear(128, 64)
        self.dense_fc = nn.Linear(128, 64)
        self.small_fc = nn.Linear(8, 4)
        self.odd_fc = nn.Linear(6, 64)
        self.masked_fc = nn.Linear(128, 64)
        self.pointwise = nn.Conv2d(64, 32, 1)
        self.spatial = nn.Conv2d(64, 32, 3, padding=1)
        self.strided = nn.Conv2d(64, 32, 1, stride=2)
        self.grouped = nn.Conv2d(64, 32, 1, groups=2)
        self.temporal = nn.Conv1d(64, 32, 1)
        _two_four_(self.sparse_fc, self.small_fc, self.masked_fc, self.pointwise, self.spatial, self.strided,
                   self.temporal)
        prune.custom_from_mask(self.masked_fc, "weight", two_four_mask(self.masked_fc.weight))


@pytest.mark.parametrize("backend", ["cusparselt", "cutlass"])
def test_candidates_name_eligible_layers_and_why_others_are_not(backend):
    choices = {c.name: c for c in semi_structured_candidates(_Mixed(), backend)}

    assert list(choices) == ["sparse_fc", "dense_fc", "small_fc", "odd_fc", "masked_fc", "pointwise", "spatial",
                             "strided", "grouped", "temporal"]
    assert {name for name, c in choices.items() if c.eligible} == {"sparse_fc", "pointwise"}
    assert not any(c.sparse for c in choices.values())
    assert choices["sparse_fc"].kind == "Linear" and choices["pointwise"].kind == "Conv2d"
    expected_reasons = {
        "dense_fc": "not 2:4 along in_features",
        "small_fc": f"4x8 weight breaks {backend}'s FP16 shape rule",
        "odd_fc": "in_features=6 is not a multiple of 4",
        "masked_fc": "mask is not baked",
        "spatial": "3x3 kernel",
        "strided": "stride (2, 2)",
        "grouped": "grouped convolution",
        "temporal": "Conv1d is not lowered to a GEMM",
    }
    for name, reason in expected_reasons.items():
        assert reason in choices[name].reason, (name, choices[name].reason)
        assert choices[name].dense_ms is None and choices[name].sparse_ms is None


def test_candidates_follow_each_librarys_shape_rule():
    model = nn.Sequential(nn.Linear(32, 16))
    _two_four_(model[0])

    # cuSPARSELt takes FP16 weights in multiples of 16x16, torch's CUTLASS kernels only in multiples of 32x64.
    assert semi_structured_candidates(model, "cusparselt")[0].eligible
    assert not semi_structured_candidates(model, "cutlass")[0].eligible


def test_candidates_default_to_this_machines_library_and_refuse_unknown_ones():
    assert [c.name for c in semi_structured_candidates(_Mixed()) if c.eligible] == ["sparse_fc", "pointwise"]
    with pytest.raises(CompressorError, match="unknown semi-structured backend") as error:
        semi_structured_candidates(_Mixed(), "cublas")
    _one_line(error)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv_as_gemm_equals_the_conv(memory_format, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 1, bias=bias).eval()
    x = torch.randn(3, 16, 5, 7).contiguous(memory_format=memory_format)

    with torch.no_grad():
        expected = conv(x)
        actual = Conv1x1AsGemm.from_conv(conv)(x)

    assert actual.shape == expected.shape
    # Same products, summed in another order than the convolution kernel: equal up to FP32 rounding.
    assert (actual - expected).abs().max() <= 1e-5 * expected.abs().max()
    # The result is a channels-last view of the GEMM's rows, not a copy.
    assert actual.is_contiguous(memory_format=torch.channels_last)


def test_conv_as_gemm_refuses_other_geometry():
    with pytest.raises(CompressorError, match="3x3 kernel") as error:
        Conv1x1AsGemm.from_conv(nn.Conv2d(8, 8, 3))
    _one_line(error)


@pytest.mark.skipif(NO_CUDA is None, reason="a CUDA GPU is visible to torch here")
def test_without_a_gpu_the_reasons_are_one_clear_line():
    for reason in (NO_CUDA, NO_TORCH_24):
        assert reason and "\n" not in reason and "CUDA" in reason
    for make in (lambda: TorchBackend(_tiny_cnn(), device="cuda"), lambda: SemiStructuredBackend(_tiny_cnn())):
        with pytest.raises(CompressorError, match="CUDA") as error:
            make()
        _one_line(error)


@pytest.mark.skipif(NO_CUDA is not None, reason=f"torch cannot use CUDA here: {NO_CUDA}")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16"])
def test_cuda_backend_matches_the_model_and_times_with_cuda_events(precision):
    model = _tiny_cnn().eval()
    backend = TorchBackend(model, device="cuda", precision=precision)
    x = _batch(5, model.input_shape)

    assert compare_outputs(backend.run(x), _reference(model, x), precision).ok
    timing = backend.measure(x, warmup=2, runs=5)
    assert timing.timer == "cuda-events" and len(timing.times_ms) == 5
    assert backend.name == "torch-cuda" and backend.threads is None
    assert not next(model.parameters()).is_cuda


class _GemmHeavy(nn.Module):
    """Large 1x1 convolutions and a wide Linear, all 2:4, plus a head too small for sparse kernels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.input_shape = (256, 16, 16)
        self.expand = nn.Conv2d(256, 512, 1)
        self.project = nn.Conv2d(512, 256, 1, bias=False)
        self.fc = nn.Linear(256, 1024)
        self.head = nn.Linear(1024, 10)
        _two_four_(self.expand, self.project, self.fc, self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(torch.relu(self.expand(x)))
        x = torch.relu(self.fc(x.mean(dim=(2, 3))))
        return self.head(x)


@pytest.mark.skipif(NO_TORCH_24 is not None, reason=f"torch-24 cannot run here: {NO_TORCH_24}")
def test_torch_24_agrees_with_dense_fp16_and_reports_its_choices():
    model = _GemmHeavy().eval()
    backend = SemiStructuredBackend(model, batch_sizes=(1, 8))
    x = _batch(8, model.input_shape)

    assert backend.agreement.ok
    assert compare_outputs(backend.run(x), backend.dense.run(x), "fp16").ok
    choices = {c.name: c for c in backend.layers}
    assert {n for n, c in choices.items() if c.eligible} == {"expand", "project", "fc"}
    assert "shape rule" in choices["head"].reason and not choices["head"].sparse
    sparse_type = torch.sparse.SparseSemiStructuredTensor
    for name in ("expand", "project", "fc"):
        choice = choices[name]
        assert choice.reason
        if choice.dense_ms is not None:
            assert choice.sparse == (choice.sparse_ms < choice.dense_ms)
        layer = backend.model.get_submodule(name)
        assert isinstance(layer.weight, sparse_type) == choice.sparse
        if choice.sparse and choice.kind == "Conv2d":
            assert isinstance(layer, Conv1x1AsGemm)
    assert backend.sparse_layers == [n for n in ("expand", "project", "fc") if choices[n].sparse]
    assert backend.describe()["eligible_layers"] == 3

    timing = backend.measure(x, warmup=2, runs=5)
    assert timing.timer == "cuda-events" and len(timing.times_ms) == 5
    results = benchmark(backend, batch_sizes=(1, 8), runs=5, warmup=1)
    assert all(r.backend == "torch-24" and r.precision == "fp16" and r.timer == "cuda-events" for r in results)
    assert not isinstance(model.fc.weight, sparse_type) and not next(model.parameters()).is_cuda


@pytest.mark.skipif(NO_CUSPARSELT_24 is not None,
                    reason=f"cuSPARSELt's 2:4 kernels cannot run here: {NO_CUSPARSELT_24}")
def test_torch_24_searches_cusparselt_algorithms_at_its_batch_sizes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 1024)).eval()
    model.input_shape = (1024,)
    _two_four_(model[0], model[2])

    backend = SemiStructuredBackend(model, batch_sizes=(64, 512))

    assert backend.agreement.ok
    search = backend.describe()["algorithm_search"]
    assert search == cusparselt_algorithm_search("cusparselt").to_dict()
    choices = {c.name: c for c in backend.layers}
    for name in ("0", "2"):
        choice = choices[name]
        assert choice.eligible and choice.dense_ms is not None, choice.reason
        assert choice.alg_id is not None and choice.alg_search
        if search["available"]:
            assert f"{search['function']} found" in choice.alg_search
            assert "at batch 64" in choice.alg_search and "at batch 512" in choice.alg_search
        else:
            assert choice.alg_id == 0 and choice.alg_search.startswith("not searched")
        if choice.sparse:
            assert backend.model.get_submodule(name).weight.alg_id_cusparselt == choice.alg_id
        assert choice.to_dict()["alg_id"] == choice.alg_id


def test_algorithm_search_is_the_one_this_torch_offers():
    search = cusparselt_algorithm_search("cusparselt")

    assert search.to_dict() == {"function": search.function, "available": search.available, "reason": search.reason}
    assert search.reason and "\n" not in search.reason
    if search.available:
        assert search.function in SEARCHES
        assert callable(functools.reduce(getattr, search.function.split(".")[1:], torch))
    else:
        assert search.function is None and "alg_id 0" in search.reason


def test_without_a_search_torch_24_keeps_the_default_algorithm_and_says_so(monkeypatch):
    monkeypatch.setattr(torch._C, "_cusparselt", None, raising=False)
    monkeypatch.delattr(torch, "_cslt_sparse_mm_search", raising=False)

    search = cusparselt_algorithm_search("cusparselt")

    assert not search.available and search.function is None
    assert "offers neither" in search.reason and "default algorithm (alg_id 0)" in search.reason
    assert search.to_dict() == {"function": None, "available": False, "reason": search.reason}


def test_a_search_is_unusable_where_from_dense_takes_no_algorithm(monkeypatch):
    monkeypatch.setattr(torch.sparse.SparseSemiStructuredTensorCUSPARSELT, "from_dense",
                        classmethod(lambda cls, original_tensor: original_tensor))

    search = cusparselt_algorithm_search("cusparselt")

    assert not search.available and "takes no alg_id" in search.reason


def test_cutlass_has_no_algorithm_search_and_unknown_libraries_are_refused():
    search = cusparselt_algorithm_search("cutlass")
    assert not search.available and "CUTLASS" in search.reason
    with pytest.raises(CompressorError, match="unknown semi-structured backend") as error:
        cusparselt_algorithm_search("cublas")
    _one_line(error)


@pytest.fixture(scope="module")
def edge_backends():
    """benchmarks/edge_backends.py, which is a script and not part of the package."""
    spec = importlib.util.spec_from_file_location("edge_backends", EDGE_BACKENDS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _linear_shapes(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


def test_gemm_model_is_a_transformer_mlp_block_sized_for_cusparselt(edge_backends):
    # On the meta device the full-size model costs no memory and no initialisation time.
    with torch.device("meta"):
        full = edge_backends.gemm_mlp()
    small = edge_backends.gemm_mlp(features=64, hidden=256).eval()

    assert _linear_shapes(full) == [(4096, 16384), (16384, 4096), (4096, 10)]
    assert full.input_shape == (4096,)
    assert _linear_shapes(small) == [(64, 256), (256, 64), (64, 10)]
    with torch.no_grad():
        assert small(torch.randn(3, 64)).shape == (3, 10)
    assert edge_backends.DEFAULT_BATCHES["gemm"] == (8192, 16384)
    assert edge_backends.DEFAULT_BATCHES["mlp"] == edge_backends.DEFAULT_BATCHES["vgg16"] == (1, 32, 256)
    assert "gemm" in edge_backends.GPU_ONLY


def test_every_eligible_layer_of_the_gemm_model_is_two_four_after_the_copy(edge_backends):
    torch.manual_seed(0)
    model = edge_backends.gemm_mlp(features=64, hidden=256).eval()

    sparse, layers = edge_backends.two_four_copy(model)

    linears = [m for m in sparse.modules() if isinstance(m, nn.Linear)]
    assert layers == len(linears) == 3
    for layer in linears:
        assert two_four_eligibility(layer).eligible
        assert is_two_four(to_groups(layer.weight.detach()))
    assert not is_two_four(to_groups(model[0].weight.detach()))
    # The two large GEMMs can run sparse; the 10-output head breaks both libraries' shape rule.
    for library in ("cusparselt", "cutlass"):
        choices = {c.name: c for c in semi_structured_candidates(sparse, library)}
        assert {name for name, c in choices.items() if c.eligible} == {"0", "2"}
        assert "shape rule" in choices["4"].reason


@pytest.mark.skipif(NO_CUDA is None, reason="a CUDA GPU is visible to torch here")
def test_without_a_gpu_the_gemm_model_has_no_backend_and_says_why(edge_backends):
    runnable, missing = edge_backends.gpu_backends()

    assert runnable == []
    assert list(missing) == list(edge_backends.GPU_BACKENDS)
    assert all(reason and "\n" not in reason for reason in missing.values())
