"""Tests for the torch-24 backend and cuSPARSELt's algorithm search: the search offered here everywhere, torch-24
itself where a GPU allows, and the GEMM model of benchmarks/edge_backends.py sized for it."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from backend_cases import one_line, random_batch, tiny_cnn, two_four_
from compressor.errors import CompressorError
from compressor.passes.analysis import is_two_four, to_groups, two_four_eligibility
from compressor.runtime.bench import benchmark
from compressor.runtime.semi_structured import (
    Conv1x1AsGemm,
    semi_structured_backend,
    semi_structured_candidates,
    semi_structured_unavailable,
)
from compressor.runtime.tolerance import compare_outputs
from compressor.runtime.torch_dense import TorchBackend, cuda_unavailable
from compressor.runtime.torch_two_four import SemiStructuredBackend, cusparselt_algorithm_search

NO_CUDA = cuda_unavailable()
NO_TORCH_24 = semi_structured_unavailable()
NO_CUSPARSELT_24 = NO_TORCH_24 or (
    None if semi_structured_backend() == "cusparselt"
    else "torch-24 multiplies with torch's CUTLASS kernels here, which have no algorithm search")
SEARCHES = ("torch._C._cusparselt.mm_search", "torch._cslt_sparse_mm_search")
EDGE_BACKENDS = Path(__file__).resolve().parents[2] / "benchmarks" / "edge_backends.py"


@pytest.mark.skipif(NO_CUDA is None, reason="a CUDA GPU is visible to torch here")
def test_without_a_gpu_the_reasons_are_one_clear_line():
    for reason in (NO_CUDA, NO_TORCH_24):
        assert reason and "\n" not in reason and "CUDA" in reason
    for make in (lambda: TorchBackend(tiny_cnn(), device="cuda"), lambda: SemiStructuredBackend(tiny_cnn())):
        with pytest.raises(CompressorError, match="CUDA") as error:
            make()
        one_line(error)


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
        two_four_(self.expand, self.project, self.fc, self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(torch.relu(self.expand(x)))
        x = torch.relu(self.fc(x.mean(dim=(2, 3))))
        return self.head(x)


@pytest.mark.skipif(NO_TORCH_24 is not None, reason=f"torch-24 cannot run here: {NO_TORCH_24}")
def test_torch_24_agrees_with_dense_fp16_and_reports_its_choices():
    model = _GemmHeavy().eval()
    backend = SemiStructuredBackend(model, batch_sizes=(1, 8))
    x = random_batch(8, model.input_shape)

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
    two_four_(model[0], model[2])

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
    one_line(error)


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
