"""The named inference backends of `compress bench`, and why a backend cannot run on this machine.

Six backends time the same model: `ort-cpu`, `ort-cuda` and `ort-trt` (onnxruntime with the CPU, CUDA or
TensorRT execution provider), `trt` (a TensorRT engine built from the ONNX), `torch` (the PyTorch model
itself, on the GPU when there is one) and `torch-24` (the PyTorch model with its 2:4 layers on the sparse
tensor cores). `unavailable` answers, without starting anything expensive, why a backend cannot run here
(a missing library, no GPU, no PyTorch model); `create_backend` builds one for a `Subject`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

from compressor.errors import CompressorError
from compressor.passes.check_onnx_sparsity import read_onnx_sparsity
from compressor.passes.convert_float16 import convert_float16
from compressor.runtime.ort_backend import CUDA_PROVIDER, TENSORRT_PROVIDER, OrtBackend, provider_stack
from compressor.runtime.tolerance import check_precision

BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "trt", "torch", "torch-24")
_TORCH_BACKENDS = ("torch", "torch-24")


@dataclass
class Subject:
    """One model to time: its FP32 ONNX and, when it is known, the PyTorch module it came from."""

    label: str
    onnx: onnx.ModelProto
    module: nn.Module | None
    input_shape: tuple[int, ...]

    @functools.cached_property
    def onnx_fp16(self) -> onnx.ModelProto:
        return convert_float16(self.onnx)

    @functools.cached_property
    def has_two_four(self) -> bool:
        """True when some Conv/Gemm/MatMul weight of the ONNX is in TensorRT's 2:4 layout."""
        return any(row.two_four for row in read_onnx_sparsity(self.onnx))


def check_backend(name: str) -> str:
    """`name` itself when it is a backend, else a one-line error listing them."""
    if name not in BACKENDS:
        raise CompressorError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return name


def _ort_provider_missing(provider: str, install: str) -> str | None:
    available = ort.get_available_providers()
    if provider in available:
        return None
    return (f"this onnxruntime build ({ort.__version__}) has no {provider} (it has {', '.join(available)}); "
            f"{install}")


def unavailable(name: str, subject: Subject | None = None) -> str | None:
    """None when backend `name` can run here (on `subject`, if given), else the reason in one line."""
    check_backend(name)
    missing = _missing_library(name)
    if missing is None and name in _TORCH_BACKENDS and subject is not None and subject.module is None:
        return (f"{name} runs the PyTorch model, and the {subject.label} model is only an ONNX file: give the "
                "compress output folder or its model.pt instead")
    return missing


def _missing_library(name: str) -> str | None:
    if name == "ort-cuda":
        return _ort_provider_missing(CUDA_PROVIDER, "install onnxruntime-gpu on a machine with an NVIDIA GPU")
    if name == "ort-trt":
        return _ort_provider_missing(TENSORRT_PROVIDER,
                                     "install onnxruntime-gpu and TensorRT on a machine with an NVIDIA GPU")
    if name == "trt":
        from compressor.runtime.trt_backend import tensorrt_unavailable

        return tensorrt_unavailable()
    if name == "torch-24":
        from compressor.runtime.semi_structured import semi_structured_unavailable

        return semi_structured_unavailable()
    return None


def backend_precision(name: str, requested: str) -> str:
    """The precision backend `name` runs at: CPU backends compute in FP32 whatever is requested (FP16 is not
    faster there), `torch-24` in FP16 (the sparse tensor cores' format), `ort-trt` asked for FP32 in TF32
    (onnxruntime's TensorRT provider has no switch for TensorRT's default TF32), GPU backends as requested."""
    check_precision(requested)
    if name == "ort-cpu" or (name == "torch" and not torch.cuda.is_available()):
        return "fp32"
    if name == "torch-24":
        return "fp16"
    if name == "ort-trt" and requested == "fp32":
        return "tf32"
    return requested


def create_backend(name: str, subject: Subject, precision: str = "fp16", threads: int | None = None,
                   batch_sizes: tuple[int, ...] = (1,)):
    """Backend `name` on `subject`; `unavailable(name, subject)` must be None. `threads` applies to CPU
    backends; a TensorRT engine is built for the range of `batch_sizes`."""
    reason = unavailable(name, subject)
    if reason is not None:
        raise CompressorError(f"backend {name} is not available: {reason}")
    precision = backend_precision(name, precision)
    fp16 = precision == "fp16"
    if name.startswith("ort-"):
        kind = {"ort-cpu": "cpu", "ort-cuda": "cuda", "ort-trt": "tensorrt"}[name]
        model = subject.onnx_fp16 if fp16 else subject.onnx
        providers = provider_stack(kind, precision=precision, sparse=subject.has_two_four)
        return OrtBackend(model, providers=providers, threads=threads if kind == "cpu" else None,
                          precision=precision)
    if name == "trt":
        from compressor.runtime.trt_backend import TensorRTBackend

        return TensorRTBackend.from_onnx(subject.onnx, precision=precision, batch_sizes=batch_sizes)
    from compressor.runtime.torch_dense import TorchBackend
    from compressor.runtime.torch_two_four import SemiStructuredBackend

    if name == "torch":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return TorchBackend(subject.module, input_shape=subject.input_shape, device=device, precision=precision,
                            threads=threads if device == "cpu" else None)
    return SemiStructuredBackend(subject.module, input_shape=subject.input_shape, batch_sizes=batch_sizes)
