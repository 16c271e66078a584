"""onnxruntime backend: run an exported ONNX classifier on the CPU, CUDA or TensorRT execution provider.

`OrtBackend` wraps one `onnxruntime.InferenceSession` behind the small interface the benchmark and the
torch-vs-onnxruntime verification use: `run(batch) -> logits`, the declared `input_shape`, and a `name` that
says which execution provider really ran the model. `provider_stack` spells out the providers of the
`ort-cpu`, `ort-cuda` and `ort-trt` backends. Everything the user can get wrong (a missing or corrupt file, a
provider this onnxruntime build lacks, an input that doesn't fit) becomes a one-line `CompressorError`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from compressor.errors import CompressorError, one_line
from compressor.paths import is_file
from compressor.runtime.timing import Timing, time_host

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
GPU_PROVIDERS = (CUDA_PROVIDER, TENSORRT_PROVIDER)

# A provider entry is its name, or (name, options) as onnxruntime accepts it.
Provider = str | tuple[str, dict]

# onnxruntime's Python exceptions derive from Exception directly, not from one common base.
_ORT_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoModel,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
)

# Inputs are fed as the model declares them; the benchmark and verification only feed real-valued tensors.
_INPUT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}

_ORT_MESSAGE_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")


def _one_line(error: BaseException) -> str:
    """onnxruntime's message without its status prefix, folded onto one line for the CLI."""
    return _ORT_MESSAGE_PREFIX.sub("", one_line(error))


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, with CPU behind it for nodes CUDA can't run."""
    available = ort.get_available_providers()
    return [CUDA_PROVIDER, CPU_PROVIDER] if CUDA_PROVIDER in available else [CPU_PROVIDER]


def provider_stack(kind: str, precision: str = "fp32", sparse: bool = False) -> list[Provider]:
    """The execution providers of backend `kind` ("cpu", "cuda" or "tensorrt"), each with the CPU behind it.

    TensorRT gets CUDA behind it too, for nodes TensorRT cannot take. The CUDA provider rounds FP32 matrix
    products to TF32 by default; that is switched off unless `precision` is "tf32", so an fp32 run is FP32.
    For "fp16" TensorRT may pick FP16 kernels (an FP16 ONNX alone would leave it free to run FP32 in TensorRT
    10's weakly typed mode); `sparse` lets it pick 2:4 sparse kernels for layers whose weights are 2:4.
    """
    cuda = (CUDA_PROVIDER, {"use_tf32": precision == "tf32"})
    if kind == "cpu":
        return [CPU_PROVIDER]
    if kind == "cuda":
        return [cuda, CPU_PROVIDER]
    if kind == "tensorrt":
        options = {"trt_fp16_enable": precision == "fp16", "trt_sparsity_enable": sparse}
        return [(TENSORRT_PROVIDER, options), cuda, CPU_PROVIDER]
    raise ValueError(f"unknown onnxruntime backend kind {kind!r}")


def _provider_name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


def _check_providers(providers: Sequence[Provider]) -> list[Provider]:
    if isinstance(providers, str):
        providers = [providers]
    providers = list(providers)
    available = ort.get_available_providers()
    missing = [_provider_name(p) for p in providers if _provider_name(p) not in available]
    if not providers or missing:
        asked = ", ".join(missing) if missing else "no execution provider"
        raise CompressorError(
            f"onnxruntime cannot use {asked}; available execution providers: {', '.join(available)}"
        )
    return providers


def _model_source(model: str | os.PathLike | bytes | onnx.ModelProto) -> str | bytes:
    """What `InferenceSession` accepts; a path stays a path so external weight files resolve beside it."""
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    path = Path(model)
    if not is_file(path, "ONNX model"):
        raise CompressorError(f"ONNX model not found: {path}")
    return str(path)


class OrtBackend:
    """One onnxruntime session over a single-input model: `run(x)` feeds its input, returns its first output."""

    def __init__(
        self,
        model: str | os.PathLike | bytes | onnx.ModelProto,
        providers: Sequence[Provider] | None = None,
        threads: int | None = None,
        spin_wait: bool = True,
        precision: str = "fp32",
        profile: bool = False,
    ) -> None:
        """`spin_wait=False` stops the worker threads busy-waiting between runs: onnxruntime's default is
        fastest for one session, but with several sessions timed in turn on few cores the idle sessions'
        spinning threads take the cores from the one being timed. `precision` names the arithmetic the caller
        prepared the model for (the FP16 variant of an ONNX is "fp16"); results are labelled with it.
        `profile` turns on onnxruntime's profiler, which `kernel_times` reads."""
        requested = default_providers() if providers is None else _check_providers(providers)
        if threads is not None and threads < 1:
            raise CompressorError(f"threads must be a positive integer, got {threads}")
        source = _model_source(model)

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Errors only: onnxruntime's warnings narrate its graph optimizer (nodes it could not fuse away),
        # nothing the user can act on, and they would bury the CLI's own output.
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
            # One inter-op thread: a classifier is a chain of ops, so extra inter-op threads only add
            # contention and make timings depend on the machine's core count.
            options.inter_op_num_threads = 1
        if not spin_wait:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._profile_dir = tempfile.TemporaryDirectory(prefix="compressor-ort-profile-") if profile else None
        if self._profile_dir is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(self._profile_dir.name) / "profile")
        try:
            self.session = ort.InferenceSession(source, sess_options=options, providers=requested)
        except _ORT_ERRORS as error:
            raise CompressorError(f"onnxruntime cannot load the model: {_one_line(error)}") from None

        # onnxruntime silently falls back to CPU when a provider's libraries (CUDA, cuDNN) fail to load.
        # An explicit request that wasn't honoured is an error; the default just says so and goes on.
        dropped = [_provider_name(p) for p in requested if _provider_name(p) not in self.session.get_providers()]
        if dropped and providers is not None:
            raise CompressorError(
                f"onnxruntime could not start {', '.join(dropped)} (its libraries failed to load); "
                f"session runs on {', '.join(self.session.get_providers())}"
            )
        if dropped:
            logger.warning("onnxruntime could not start %s; running on %s", ", ".join(dropped), self.providers)

        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise CompressorError(f"expected an ONNX model with exactly one input, got {len(inputs)} ({names})")
        self._input = inputs[0]
        self._input_dtype = _INPUT_DTYPES.get(self._input.type)
        if self._input_dtype is None:
            raise CompressorError(
                f"ONNX input {self._input.name!r} has type {self._input.type}; only float inputs are supported"
            )
        self._output = self.session.get_outputs()[0]
        self._threads = threads
        self.precision = precision

    @property
    def input_name(self) -> str:
        return self._input.name

    @property
    def output_name(self) -> str:
        return self._output.name

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """The declared input shape; symbolic dimensions (the dynamic batch) are None."""
        return tuple(d if isinstance(d, int) else None for d in self._input.shape)

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, in priority order."""
        return self.session.get_providers()

    @property
    def threads(self) -> int | None:
        """Intra-op threads asked for; None means onnxruntime's default (one per physical core)."""
        return self._threads

    @property
    def name(self) -> str:
        """`onnxruntime-<provider>` for the provider that runs first, e.g. onnxruntime-cpu or onnxruntime-cuda."""
        provider = self.providers[0].removesuffix("ExecutionProvider").lower()
        return f"onnxruntime-{provider}"

    def run(self, x: np.ndarray) -> np.ndarray:
        """Feed `x` to the first input and return the first output as float32."""
        feed = {self._input.name: np.ascontiguousarray(x, dtype=self._input_dtype)}
        try:
            (output,) = self.session.run([self._output.name], feed)
        except ort_state.InvalidArgument as error:
            raise CompressorError(
                f"input of shape {tuple(np.shape(x))} does not fit the model "
                f"(declared {self.input_shape}): {_one_line(error)}"
            ) from None
        return np.asarray(output, dtype=np.float32)

    def measure(self, x: np.ndarray, warmup: int, runs: int) -> Timing:
        """Time runs on `x`; on a GPU provider the input and output stay in device memory (I/O binding).

        onnxruntime synchronises its GPU stream before `run_with_iobinding` returns, so the host clock times
        the GPU work; binding device buffers keeps the host↔device copies out of the measurement.
        """
        if self.providers[0] not in GPU_PROVIDERS:
            return time_host(lambda: self.run(x), warmup, runs)
        binding = self.session.io_binding()
        device_input = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x, dtype=self._input_dtype), "cuda", 0)
        binding.bind_ortvalue_input(self._input.name, device_input)
        binding.bind_output(self._output.name, "cuda")
        # At least one untimed run: the TensorRT provider builds an engine for each new input shape on first use.
        return time_host(lambda: self.session.run_with_iobinding(binding), max(warmup, 1), runs)

    def kernel_times(self, leave_out: Sequence[str] = ()) -> np.ndarray:
        """Per run made so far, in order, the milliseconds onnxruntime's profiler counts inside the nodes' kernels,
        leaving out nodes of the operator types in `leave_out`: what the model's own work costs, without the
        call's overhead. Needs `profile=True`, and ends the profile: call it once, after the runs."""
        if self._profile_dir is None:
            raise ValueError("kernel_times needs an OrtBackend built with profile=True")
        path = Path(self.session.end_profiling())
        try:
            events = json.loads(path.read_text())
        finally:
            path.unlink(missing_ok=True)
        # Each run is a "model_run" event; a node's kernel event starts inside the run that executed it.
        starts = sorted(event["ts"] for event in events if event.get("name") == "model_run")
        per_run = np.zeros(len(starts))
        for event in events:
            if (event.get("cat") == "Node" and event["name"].endswith("_kernel_time")
                    and event.get("args", {}).get("op_name") not in leave_out):
                run = int(np.searchsorted(starts, event["ts"], side="right")) - 1
                if run >= 0:
                    per_run[run] += event["dur"] / 1000.0
        return per_run

    def __repr__(self) -> str:
        return f"OrtBackend(name={self.name!r}, input_shape={self.input_shape}, threads={self.threads})"
