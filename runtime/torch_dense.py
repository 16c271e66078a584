"""The dense PyTorch backend: time the PyTorch model itself on the CPU or a CUDA GPU.

`TorchBackend` runs a copy of an `nn.Module` on the CPU (FP32) or on a CUDA GPU (FP32, TF32, FP16) behind the
interface the benchmark uses (`run`, `name`, `input_shape`, `precision`, and `measure`, which on CUDA keeps
the input on the device and times with CUDA events). `_ModuleRunner` is that interface for any module already
on its device, so the 2:4 backend (`compressor.runtime.torch_two_four`) runs its sparse model through it too.
`cuda_unavailable` says in one line why torch cannot run on a CUDA GPU here.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from compressor.errors import CompressorError
from compressor.runtime.timing import Timing, time_cuda, time_host
from compressor.runtime.tolerance import check_precision

_DEVICES = ("cpu", "cuda")
_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16}


def cuda_unavailable() -> str | None:
    """None when torch can run on a CUDA GPU here, else the reason in one line."""
    if torch.version.cuda is None and torch.version.hip is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch (torch.cuda.is_available() is False)"
    return None


@contextlib.contextmanager
def _fp32_arithmetic(precision: str) -> Iterator[None]:
    """FP32 tensors on CUDA computed as named: IEEE for fp32, TF32 for tf32. By default torch lets cuDNN
    convolutions use TF32 but not cuBLAS matmuls (`torch.backends.cudnn.conv.fp32_precision == "tf32"`), and
    TF32's errors are outside what the FP32 tolerance allows."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "tf32" if precision == "tf32" else "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


@contextlib.contextmanager
def _intra_op_threads(threads: int) -> Iterator[None]:
    """torch's thread count is process-wide: set it for one run and put back what the caller had."""
    previous = torch.get_num_threads()
    if previous != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if previous != threads:
            torch.set_num_threads(previous)


def _sample_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        raise CompressorError(
            f"{type(model).__name__} does not declare its input_shape; pass input_shape=(C, H, W)")
    shape = tuple(shape)
    if not shape or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
        raise CompressorError(f"input_shape must be positive integers such as (3, 32, 32), got {shape}")
    return tuple(int(d) for d in shape)


class _ModuleRunner:
    """Runs a prepared module (already on its device, in its dtype and memory format) for the benchmark."""

    name: str

    def _prepare(self, model: nn.Module, sample_shape: tuple[int, ...], device: str, precision: str,
                 channels_last: bool, threads: int | None) -> None:
        self.model = model
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self._sample_shape = sample_shape
        self._dtype = _DTYPES[precision]
        self._threads = threads

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """(None, C, H, W): any batch size, the sample shape the model was built for."""
        return (None, *self._sample_shape)

    @property
    def threads(self) -> int | None:
        """torch's intra-op threads for this backend's runs on the CPU (the `threads` argument, or torch's
        current setting); None on CUDA, where host threads do not do the work."""
        if self.device != "cpu":
            return None
        return self._threads if self._threads is not None else torch.get_num_threads()

    @contextlib.contextmanager
    def _settings(self) -> Iterator[None]:
        """The process-wide torch settings this backend computes under, restored afterwards."""
        with contextlib.ExitStack() as stack:
            if self.device == "cpu" and self._threads is not None:
                stack.enter_context(_intra_op_threads(self._threads))
            if self.device == "cuda" and self._dtype == torch.float32:
                stack.enter_context(_fp32_arithmetic(self.precision))
            stack.enter_context(torch.inference_mode())
            yield

    def _device_input(self, x: np.ndarray) -> torch.Tensor:
        shape = tuple(np.shape(x))
        if len(shape) != len(self._sample_shape) + 1 or shape[1:] != self._sample_shape:
            declared = ("?", *self._sample_shape)
            raise CompressorError(f"{self.name}: model input is declared {declared}, cannot feed {shape}")
        batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        batch = batch.to(device=self.device, dtype=self._dtype)
        if self.channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def run(self, x: np.ndarray) -> np.ndarray:
        """The model's output for the batch `x`, as float32."""
        batch = self._device_input(x)
        with self._settings():
            output = self.model(batch)
        return output.float().cpu().numpy()

    def measure(self, x: np.ndarray, warmup: int, runs: int) -> Timing:
        """Time `runs` forward passes of the batch `x`.

        The input is converted (and copied to the device) once, and the settings (threads, FP32 arithmetic) are
        entered once, all outside the timed region, so only forward passes are timed. On CUDA each run is
        bracketed by CUDA events (`compressor.runtime.timing.time_cuda`); the forward pass enqueues its kernels
        on whatever stream is current when it is called, which is what `time_cuda` requires. On the CPU the host
        clock times each forward pass.
        """
        batch = self._device_input(x)
        with self._settings():
            if self.device == "cpu":
                return time_host(lambda: self.model(batch), warmup, runs)
            return time_cuda(lambda: self.model(batch), warmup, runs)

    def describe(self) -> dict:
        """Facts about this backend for the benchmark's JSON report."""
        return {"device": self.device, "precision": self.precision, "channels_last": self.channels_last,
                "threads": self.threads}


class TorchBackend(_ModuleRunner):
    """A copy of a PyTorch model in eval mode on the CPU (FP32) or a CUDA GPU (FP32, TF32 or FP16).

    The caller's model is deep-copied and never changed. `input_shape` is one sample's shape (C, H, W), by
    default the model's `input_shape` attribute. `threads` sets torch's intra-op threads on the CPU for each run
    only (torch's setting is process-wide, so it is restored after every run). `channels_last` stores
    activations and 4-D weights channels-last, the layout cuDNN's FP16 tensor-core convolutions prefer and the
    one in which `Conv1x1AsGemm` needs no copies. FP32 on CUDA is IEEE FP32; TF32 is asked for by name.
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int] | None = None, device: str = "cpu",
                 precision: str = "fp32", threads: int | None = None, channels_last: bool = False) -> None:
        check_precision(precision)
        if device not in _DEVICES:
            raise CompressorError(f"unknown torch device {device!r}; choose one of {', '.join(_DEVICES)}")
        if precision != "fp32" and device != "cuda":
            raise CompressorError(f"{precision} needs device='cuda': the torch backend runs FP32 on the CPU")
        if threads is not None and device != "cpu":
            raise CompressorError("threads applies to the CPU only; on CUDA the GPU does the work")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise CompressorError(f"threads must be a positive integer, got {threads}")
        if device == "cuda":
            reason = cuda_unavailable()
            if reason is not None:
                raise CompressorError(f"torch cannot run on CUDA: {reason}")
        sample_shape = _sample_shape(model, input_shape)
        prepared = copy.deepcopy(model).eval()
        prepared.to(device=device, dtype=_DTYPES[precision])
        if channels_last:
            prepared.to(memory_format=torch.channels_last)
        self._prepare(prepared, sample_shape, device, precision, channels_last, threads)

    @property
    def name(self) -> str:
        return f"torch-{self.device}"

    def __repr__(self) -> str:
        return (f"TorchBackend(name={self.name!r}, input_shape={self.input_shape}, precision={self.precision!r}, "
                f"threads={self.threads})")
