"""The named backends: why each cannot run here, what precision each runs at, and building the ones that can."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from compressor.api import export_onnx
from compressor.errors import CompressorError
from compressor.passes.analysis import two_four_mask
from compressor.passes.convert_float16 import is_float16
from compressor.runtime.backends import BACKENDS, Subject, backend_precision, check_backend, create_backend, unavailable
from compressor.runtime.ort_backend import CPU_PROVIDER, CUDA_PROVIDER, TENSORRT_PROVIDER, provider_stack


def _mlp(two_four: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    if two_four:
        with torch.no_grad():
            for layer in (model[1], model[3]):
                layer.weight.mul_(two_four_mask(layer.weight))
    model.input_shape = (1, 8, 8)
    return model.eval()


@pytest.fixture(scope="module")
def subject() -> Subject:
    model = _mlp()
    return Subject("model", export_onnx(model).model, model, (1, 8, 8))


def test_backend_names_are_checked():
    assert check_backend("ort-cpu") == "ort-cpu"
    with pytest.raises(CompressorError, match="unknown backend 'tensorflow'.*ort-cpu, ort-cuda, ort-trt, trt, torch"):
        check_backend("tensorflow")


def test_cpu_backends_always_run_and_gpu_backends_say_why_not(subject):
    assert unavailable("ort-cpu", subject) is None and unavailable("torch", subject) is None
    reasons = {name: unavailable(name, subject) for name in BACKENDS}
    if CUDA_PROVIDER not in ort.get_available_providers():
        assert "onnxruntime-gpu" in reasons["ort-cuda"] and CUDA_PROVIDER in reasons["ort-cuda"]
    if TENSORRT_PROVIDER not in ort.get_available_providers():
        assert "TensorRT" in reasons["ort-trt"]
    for name, reason in reasons.items():
        assert reason is None or ("\n" not in reason and len(reason) > 20), (name, reason)


def test_torch_backends_need_the_pytorch_model(subject):
    onnx_only = Subject("dense", subject.onnx, None, subject.input_shape)
    assert "dense model is only an ONNX file" in unavailable("torch", onnx_only)
    assert unavailable("ort-cpu", onnx_only) is None
    with pytest.raises(CompressorError, match="backend torch is not available: .*model.pt"):
        create_backend("torch", onnx_only)


def test_precision_follows_the_device():
    assert backend_precision("ort-cpu", "fp16") == "fp32"
    assert backend_precision("torch-24", "fp32") == "fp16"
    assert backend_precision("trt", "tf32") == "tf32" and backend_precision("ort-cuda", "fp16") == "fp16"
    assert backend_precision("ort-cuda", "fp32") == "fp32" and backend_precision("ort-trt", "fp32") == "tf32"
    expected = "fp16" if torch.cuda.is_available() else "fp32"
    assert backend_precision("torch", "fp16") == expected
    with pytest.raises(CompressorError, match="unknown precision"):
        backend_precision("trt", "int2")


def test_cpu_backends_compute_the_model(subject):
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        expected = subject.module(torch.from_numpy(x)).numpy()
    for name in ("ort-cpu", "torch"):
        backend = create_backend(name, subject, precision="fp16", threads=1)
        assert backend.precision == "fp32"
        np.testing.assert_allclose(backend.run(x), expected, rtol=1e-5, atol=1e-5)


def test_subject_knows_its_two_four_layers_and_fp16_variant():
    model = _mlp(two_four=True)
    sparse = Subject("compressed", export_onnx(model).model, model, (1, 8, 8))
    dense = Subject("dense", export_onnx(_mlp()).model, None, (1, 8, 8))
    assert sparse.has_two_four and not dense.has_two_four
    assert is_float16(sparse.onnx_fp16) and not is_float16(sparse.onnx)


def test_provider_stacks_follow_the_precision():
    assert provider_stack("cpu") == [CPU_PROVIDER]
    assert provider_stack("cuda") == [(CUDA_PROVIDER, {"use_tf32": False}), CPU_PROVIDER]
    assert provider_stack("cuda", precision="tf32")[0] == (CUDA_PROVIDER, {"use_tf32": True})
    (name, options), *rest = provider_stack("tensorrt", precision="fp16", sparse=True)
    assert name == TENSORRT_PROVIDER and options == {"trt_fp16_enable": True, "trt_sparsity_enable": True}
    assert rest == [(CUDA_PROVIDER, {"use_tf32": False}), CPU_PROVIDER]
    assert provider_stack("tensorrt")[0][1] == {"trt_fp16_enable": False, "trt_sparsity_enable": False}
    with pytest.raises(ValueError):
        provider_stack("rocm")


@pytest.mark.skipif(unavailable("ort-cuda") is not None, reason="onnxruntime has no CUDA execution provider here")
def test_ort_cuda_times_with_device_buffers(subject):
    backend = create_backend("ort-cuda", subject, precision="fp16")
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8), dtype=np.float32)
    timing = backend.measure(x, warmup=2, runs=5)
    assert backend.precision == "fp16" and timing.times_ms.shape == (5,)
