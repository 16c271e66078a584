"""TensorRT backend: build a verified ONNX into an engine, run and time it, and show where 2:4 sparsity ran.

`build_engine` turns an exported classifier into a serialized TensorRT engine for one precision (fp32, tf32 or
fp16) and a range of batch sizes, enabling TensorRT's sparse kernels when the ONNX carries 2:4 weights and the
precision has sparse kernels (fp16 and tf32; sparse tensor cores do not compute in IEEE FP32). It keeps what
the builder said about sparsity: which layers were eligible for sparse math and which ones it actually ran
sparse (TensorRT picks a sparse kernel only where it beats the dense one). `TensorRTBackend` runs an engine
behind the same interface as the onnxruntime backend (`run`, `name`, `input_shape`), times it with CUDA events
(`measure`), saves and loads engine files, and lists the engine's layers with the kernel each one uses;
`sparsity_report` joins the ONNX's 2:4 layers with the builder's and the engine's record of them.
`compare_with_onnxruntime` checks an engine against the FP32 ONNX on onnxruntime's CPU provider, within the
tolerance of the engine's precision.

TensorRT is an optional dependency that needs an NVIDIA GPU: it is imported only when an engine is built or
loaded, and `tensorrt_unavailable()` says in one line why it cannot be used here. TensorRT 10 and 11 are
supported; every network is built strongly typed, so an engine's precision is the ONNX's tensor types.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Sequence

import numpy as np
import onnx
import torch

from compressor.errors import CompressorError, one_line
from compressor.files import atomic_write_bytes
from compressor.tables import text_table
from compressor.passes.check_onnx_sparsity import read_onnx_sparsity
from compressor.passes.convert_float16 import convert_float16, is_float16
from compressor.runtime.bench import check_batch_sizes
from compressor.runtime.onnx_model import model_input, read_onnx
from compressor.runtime.ort_backend import CPU_PROVIDER, OrtBackend
from compressor.runtime.timing import Timing, time_cuda
from compressor.runtime.tolerance import Agreement, check_precision, compare_outputs

logger = logging.getLogger(__name__)

MIN_TENSORRT_MAJOR = 10
NOT_INSTALLED = "TensorRT is not installed: pip install 'compressor[trt]' (needs an NVIDIA GPU and driver)"

# The builder reports 2:4 sparsity at INFO severity in these words (TensorRT developer guide, "Structured
# Sparsity"; trtexec prints them as "[I] [TRT] (Sparsity) ..."). The lists may be empty.
_ELIGIBLE_MESSAGE = re.compile(r"\(Sparsity\) Layers eligible for sparse math:(.*)", re.DOTALL)
_PICKED_MESSAGE = re.compile(r"\(Sparsity\) TRT inference plan picked sparse implementation for layers:(.*)", re.DOTALL)
# Sparse tensor-core kernels carry it in their names, e.g. sm80_xmma_fprop_sparse_conv_..._sptensor... and
# sm80_xmma_fprop_avdt_sparse_int8int8_...; dense ones are implicit_gemm / avdt_dense kernels.
_SPARSE_TACTIC = re.compile(r"sparse|sptensor", re.IGNORECASE)
# With detailed profiling verbosity a layer's "Metadata" lists the ONNX nodes fused into it, separated by \x1e.
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]*)\]")
_HALF_FORMAT = re.compile(r"fp16|half", re.IGNORECASE)
# The precisions with sparse tensor-core kernels: those cores multiply FP16, BF16, TF32 and INT8, never IEEE FP32.
SPARSE_PRECISIONS = ("fp16", "tf32")


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def tensorrt_unavailable() -> str | None:
    """None when TensorRT engines can be built and run here, else a one-line reason why not."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        return NOT_INSTALLED
    except OSError as error:
        return f"TensorRT is installed but its libraries do not load: {one_line(error)}"
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "built with CUDA but finds no GPU"
        return f"TensorRT needs a CUDA GPU, and torch {torch.__version__} is {build}"
    if _major(trt.__version__) < MIN_TENSORRT_MAJOR:
        return f"TensorRT {trt.__version__} is too old: this backend needs TensorRT {MIN_TENSORRT_MAJOR} or newer"
    return None


def _tensorrt() -> Any:
    reason = tensorrt_unavailable()
    if reason is not None:
        raise CompressorError(reason)
    return importlib.import_module("tensorrt")


@functools.cache
def _trt_logger() -> Any:
    """The one logger every builder and runtime here is given.

    TensorRT keeps the first logger it is handed as its global one ("The logger passed into createInferRuntime
    differs from one already provided ..."), so messages would go astray with a logger per build; captures
    opened on this one collect what TensorRT says while they are open instead.
    """
    trt = _tensorrt()
    levels = trt.ILogger.Severity
    labels = {
        levels.INTERNAL_ERROR: "error",
        levels.ERROR: "error",
        levels.WARNING: "warning",
        levels.INFO: "info",
    }

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            # TensorRT may log from its own threads and requires the logger to be thread safe.
            self._lock = threading.Lock()
            self._captures: list[list[tuple[str, str]]] = []

        def log(self, severity: Any, msg: str) -> None:
            label = labels.get(severity)
            if label is None:  # VERBOSE: thousands of tactic-timing lines per build, nothing kept from them
                return
            logger.debug("TensorRT %s: %s", label, msg)
            with self._lock:
                for capture in self._captures:
                    capture.append((label, msg))

        @contextlib.contextmanager
        def capture(self) -> Iterator[list[tuple[str, str]]]:
            messages: list[tuple[str, str]] = []
            with self._lock:
                self._captures.append(messages)
            try:
                yield messages
            finally:
                with self._lock:
                    self._captures = [c for c in self._captures if c is not messages]

    return CapturingLogger()


def _last_error(messages: Sequence[tuple[str, str]]) -> str:
    errors = [text for label, text in messages if label == "error"]
    return one_line(errors[-1]) if errors else "TensorRT gave no error message (its log is at DEBUG level)"


def parse_sparsity_messages(messages: Iterable[str]) -> tuple[list[str], list[str]]:
    """(layers eligible for sparse math, layers where TensorRT picked a sparse kernel) from builder messages."""
    eligible: dict[str, None] = {}
    picked: dict[str, None] = {}
    for message in messages:
        for pattern, found in ((_ELIGIBLE_MESSAGE, eligible), (_PICKED_MESSAGE, picked)):
            match = pattern.search(message)
            if match:
                found.update((name.strip(), None) for name in match.group(1).split(",") if name.strip())
    return list(eligible), list(picked)


def is_sparse_tactic(tactic: str | None) -> bool:
    """True when a kernel (tactic) name is one of the sparse tensor-core kernels."""
    return bool(tactic) and _SPARSE_TACTIC.search(tactic) is not None


def _layer_parts(name: str) -> set[str]:
    """The network layers a builder layer name stands for: fused layers are named "a + b + c"."""
    return {part.strip() for part in name.split(" + ")}


@dataclass(frozen=True)
class InputProfile:
    """The single input of the network and the shapes of the one optimization profile built for it."""

    name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    dynamic_batch: bool


def optimization_profile(model: onnx.ModelProto, batch_sizes: Sequence[int]) -> InputProfile:
    """min batch = the smallest of `batch_sizes`, opt = max = the largest; the sample shape comes from the ONNX.

    The model needs exactly one float input whose dimensions after the batch are fixed: TensorRT tunes its
    kernels for the shapes of the profile, and a classifier's sample shape never changes.
    """
    sizes = check_batch_sizes(batch_sizes)
    spec = model_input(model)
    if spec.fixed_batch is not None:
        if any(b != spec.fixed_batch for b in sizes):
            raise CompressorError(
                f"ONNX input {spec.name!r} has shape {spec.shown()} with a fixed batch of {spec.fixed_batch}; "
                f"cannot build for batch sizes {', '.join(map(str, sizes))}"
            )
        shape = (spec.fixed_batch, *spec.sample_shape)
        return InputProfile(spec.name, shape, shape, shape, dynamic_batch=False)
    low, high = (min(sizes), *spec.sample_shape), (max(sizes), *spec.sample_shape)
    return InputProfile(spec.name, low, high, high, dynamic_batch=True)


def two_four_weights(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv/Gemm/MatMul weight initializers that are 2:4 sparse in TensorRT's layout."""
    return [row.name for row in read_onnx_sparsity(model) if row.two_four]


def use_sparse_weights(two_four_layers: Sequence[str], precision: str, sparse: bool | None = None) -> bool:
    """Whether a build enables TensorRT's sparse weights: `sparse` when given, else exactly when the ONNX has 2:4
    layers and `precision` has sparse kernels (fp16, tf32)."""
    if sparse is not None:
        return bool(sparse)
    return bool(two_four_layers) and precision in SPARSE_PRECISIONS


@dataclass(frozen=True)
class BuiltEngine:
    """A serialized engine and what the build knew and said about it.

    `sparse_weights` says whether the build enabled sparse kernels; `two_four_layers` are the ONNX weights that
    are 2:4; `eligible_layers` and `sparse_layers` are TensorRT layer names (fused layers read "a + b") that the
    builder reported eligible for sparse math and ran sparse.
    """

    serialized: bytes = field(repr=False)
    precision: str
    sparse_weights: bool
    two_four_layers: list[str]
    eligible_layers: list[str]
    sparse_layers: list[str]
    tensorrt_version: str
    batch_sizes: tuple[int, ...]


def build_engine(
    onnx_model: str | os.PathLike | bytes | onnx.ModelProto,
    precision: str = "fp16",
    batch_sizes: Sequence[int] = (1,),
    sparse: bool | None = None,
    workspace_mb: int = 1024,
) -> BuiltEngine:
    """Build a TensorRT engine for `precision` that runs every batch size from min to max of `batch_sizes`.

    `sparse=None` enables TensorRT's sparse kernels when the ONNX has 2:4 weights and `precision` is fp16 or
    tf32 (sparse tensor cores do not compute in IEEE FP32, so an fp32 engine runs its 2:4 layers dense); True or
    False forces it either way. `workspace_mb` caps the scratch memory a kernel may use while the builder times
    it.
    """
    check_precision(precision)
    sizes = check_batch_sizes(batch_sizes)
    if isinstance(workspace_mb, bool) or not isinstance(workspace_mb, int) or workspace_mb < 1:
        raise CompressorError(f"workspace_mb must be a positive integer, got {workspace_mb!r}")
    model = read_onnx(onnx_model)
    profile = optimization_profile(model, sizes)
    if precision != "fp16" and is_float16(model):
        raise CompressorError(f"the ONNX model is already FP16; it cannot be built as {precision}, only as fp16")
    two_four = two_four_weights(model)
    sparse_weights = use_sparse_weights(two_four, precision, sparse)
    if precision == "fp16":
        # TensorRT 11 builds strongly typed networks only: a layer runs in FP16 because its tensors are FP16
        # in the ONNX. Converting the ONNX gives TensorRT 10 the same network, so both build one engine.
        model = convert_float16(model)

    trt = _tensorrt()
    trt_logger = _trt_logger()
    with trt_logger.capture() as messages:
        builder = trt.Builder(trt_logger)
        # Strongly typed on 10 too, so the engine computes in the ONNX's types whatever the TensorRT version;
        # 11 has no other mode and deprecates the flag.
        flags = 0
        if _major(trt.__version__) < 11:
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, trt_logger)
        # The parser and the bytes it parsed stay referenced until the build is done: the network's weights
        # live in parser-owned memory.
        onnx_bytes = model.SerializeToString()
        if not parser.parse(onnx_bytes):
            errors = "; ".join(one_line(parser.get_error(i).desc()) for i in range(parser.num_errors))
            raise CompressorError(f"TensorRT cannot parse the ONNX model: {errors or _last_error(messages)}")

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
        # Detailed verbosity makes the engine inspector report each layer's kernel (tactic), where sparse
        # kernels show.
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        _configure_tf32(trt, config, precision)
        if sparse_weights:
            config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
        if profile.dynamic_batch:
            trt_profile = builder.create_optimization_profile()
            trt_profile.set_shape(profile.name, profile.min_shape, profile.opt_shape, profile.max_shape)
            config.add_optimization_profile(trt_profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise CompressorError(f"TensorRT could not build the engine: {_last_error(messages)}")
    eligible, picked = parse_sparsity_messages(text for _, text in messages)
    return BuiltEngine(
        serialized=bytes(serialized),
        precision=precision,
        sparse_weights=sparse_weights,
        two_four_layers=two_four,
        eligible_layers=eligible,
        sparse_layers=picked,
        tensorrt_version=trt.__version__,
        batch_sizes=sizes,
    )


def _configure_tf32(trt: Any, config: Any, precision: str) -> None:
    """TF32 is on by default and would make an fp32 engine round matrix-multiply inputs to 10-bit mantissas."""
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is None:
        if precision == "tf32":
            raise CompressorError(f"TensorRT {trt.__version__} has no TF32 switch; build fp32 or fp16 instead")
        return
    if precision == "tf32":
        config.set_flag(tf32)
    else:
        # An fp16 engine's remaining FP32 layers stay true FP32: its only reduced precision is the ONNX's.
        config.clear_flag(tf32)


@dataclass(frozen=True)
class EngineLayer:
    """One layer of a built engine: its TensorRT name and type, the kernel (tactic) chosen, and whether that
    kernel is sparse; `onnx_nodes` are the ONNX nodes fused into it where the engine records them."""

    name: str
    layer_type: str
    tactic: str
    sparse: bool
    onnx_nodes: tuple[str, ...] = ()


def engine_layer(info: dict | str, picked: Collection[str] = ()) -> EngineLayer:
    """An `EngineLayer` from the engine inspector's JSON for one layer.

    Engines built with less than detailed profiling verbosity describe a layer by its name alone. A layer is
    sparse when the builder said it picked a sparse implementation for it or its kernel is a sparse one.
    """
    if not isinstance(info, dict):
        name = str(info)
        return EngineLayer(name, "", "", name in picked)
    name = str(info.get("Name", ""))
    tactic = str(info.get("TacticName", "") or "")
    nodes = tuple(_ONNX_LAYER.findall(str(info.get("Metadata", ""))))
    return EngineLayer(name, str(info.get("LayerType", "")), tactic, name in picked or is_sparse_tactic(tactic), nodes)


def uses_half(info: dict | str) -> bool:
    """True when the inspector shows a layer reading or writing FP16 tensors.

    TensorRT 10 writes a tensor's format and type as one "Format/Datatype" string; 11 splits it into
    "Format" and "DataType".
    """
    if not isinstance(info, dict):
        return False
    tensors = [*info.get("Inputs", []), *info.get("Outputs", [])]
    return any(
        isinstance(tensor, dict) and _HALF_FORMAT.search(str(tensor.get("Format/Datatype", tensor.get("DataType", ""))))
        for tensor in tensors
    )


def engine_precision(layer_information: Sequence[dict | str]) -> str:
    """The precision read from the engine inspector's layer records: "fp16" when a layer reads or writes FP16
    tensors, else "tf32" (the inspector cannot tell TF32 from FP32, and TF32's tolerance is the looser one).

    Only records with tensor formats, from an engine built with detailed profiling verbosity, tell: an engine
    whose inspector gives layer names only (trtexec's default verbosity) raises, asking for the precision.
    """
    if not any(isinstance(info, dict) and ("Inputs" in info or "Outputs" in info) for info in layer_information):
        raise CompressorError("the engine records layer names only (built without detailed profiling verbosity), "
                              "so its precision cannot be read from it: pass precision= (fp32, tf32 or fp16)")
    return "fp16" if any(uses_half(info) for info in layer_information) else "tf32"


def _torch_dtypes(trt: Any) -> dict[Any, torch.dtype]:
    pairs = {
        "FLOAT": torch.float32,
        "HALF": torch.float16,
        "BF16": torch.bfloat16,
        "INT8": torch.int8,
        "INT32": torch.int32,
        "INT64": torch.int64,
        "BOOL": torch.bool,
    }
    return {getattr(trt.DataType, name): dtype for name, dtype in pairs.items() if hasattr(trt.DataType, name)}


class TensorRTBackend:
    """One TensorRT engine and its execution context: `run(x)` feeds the single input, returns the first output.

    Built from a `BuiltEngine` (`from_onnx` builds one and keeps the FP32 ONNX for `describe`), or from
    serialized engine bytes (`load`). An engine file does not record its precision: pass it, or the backend
    reads it from the engine inspector (`engine_precision`), which needs an engine built with detailed profiling
    verbosity (as `build_engine` builds; trtexec needs --profilingVerbosity=detailed), can only tell FP16 from
    the FP32 kinds, and takes an FP32 engine at TF32's looser tolerance.
    """

    name = "tensorrt"

    def __init__(self, engine: BuiltEngine | bytes, precision: str | None = None) -> None:
        trt = _tensorrt()
        if isinstance(engine, BuiltEngine):
            if precision is not None and precision != engine.precision:
                raise CompressorError(f"the engine was built as {engine.precision}, not {precision}")
            self.built: BuiltEngine | None = engine
            serialized, precision = engine.serialized, engine.precision
        else:
            self.built, serialized = None, bytes(engine)
        if precision is not None:
            check_precision(precision)
        self._serialized = serialized
        self._onnx: onnx.ModelProto | None = None
        trt_logger = _trt_logger()
        # The runtime must outlive the engine it deserializes.
        self._runtime = trt.Runtime(trt_logger)
        with trt_logger.capture() as messages:
            try:
                self._engine = self._runtime.deserialize_cuda_engine(serialized) if serialized else None
            except (RuntimeError, TypeError, ValueError) as error:
                messages.append(("error", str(error)))
                self._engine = None
        if self._engine is None:
            gpu = torch.cuda.get_device_name()
            raise CompressorError(
                f"cannot load the TensorRT engine: {_last_error(messages)}; an engine runs only on the GPU model and "
                f"TensorRT version that built it (this is TensorRT {trt.__version__} on {gpu}): "
                "rebuild it from the ONNX"
            )

        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not self._outputs:
            raise CompressorError(
                f"expected an engine with one input and at least one output, got inputs ({', '.join(inputs)}) "
                f"and outputs ({', '.join(self._outputs)})"
            )
        self._input = inputs[0]
        known = _torch_dtypes(trt)
        unknown = [n for n in names if self._engine.get_tensor_dtype(n) not in known]
        if unknown:
            raise CompressorError(f"engine tensors of unsupported type: {', '.join(unknown)}")
        self._dtypes = {n: known[self._engine.get_tensor_dtype(n)] for n in names}
        if not self._dtypes[self._input].is_floating_point:
            raise CompressorError(f"engine input {self._input!r} is not a float tensor")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise CompressorError("TensorRT could not create an execution context for the engine (out of GPU memory?)")
        declared = tuple(self._engine.get_tensor_shape(self._input))
        if declared[0] == -1:
            low, opt, high = (tuple(s) for s in self._engine.get_tensor_profile_shape(self._input, 0))
            self._batch_range, self._opt_shape = (low[0], high[0]), opt
        else:
            self._batch_range, self._opt_shape = (declared[0], declared[0]), declared
        self._precision = precision or engine_precision(self._layer_information())

    @classmethod
    def load(cls, path: str | os.PathLike, precision: str | None = None) -> TensorRTBackend:
        """Deserialize an engine file written by `save` (or by trtexec) on this GPU and TensorRT version.

        Give `precision` (fp32, tf32 or fp16) for an engine built without detailed profiling verbosity, such as
        trtexec's by default: its precision cannot be read from it. Without it, an FP32 engine loads as tf32.
        """
        path = Path(path)
        if not path.is_file():
            raise CompressorError(f"TensorRT engine not found: {path}")
        try:
            return cls(path.read_bytes(), precision=precision)
        except CompressorError as error:
            raise CompressorError(f"{path}: {error}") from None

    @classmethod
    def from_onnx(
        cls,
        onnx_model: str | os.PathLike | bytes | onnx.ModelProto,
        precision: str = "fp16",
        batch_sizes: Sequence[int] = (1,),
        sparse: bool | None = None,
        workspace_mb: int = 1024,
    ) -> TensorRTBackend:
        """`build_engine` and load the result, keeping the FP32 ONNX for `describe`'s per-layer sparsity."""
        model = read_onnx(onnx_model)
        backend = cls(build_engine(model, precision, batch_sizes, sparse, workspace_mb))
        backend._onnx = model
        return backend

    def save(self, path: str | os.PathLike) -> Path:
        """Write the serialized engine (a plain TensorRT plan, as trtexec --saveEngine writes) atomically."""
        return atomic_write_bytes(path, self._serialized)

    @property
    def precision(self) -> str:
        return self._precision

    @property
    def input_name(self) -> str:
        return self._input

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """The engine's input shape; the batch dimension is None when the engine takes a range of batches."""
        return tuple(None if d == -1 else int(d) for d in self._engine.get_tensor_shape(self._input))

    @property
    def batch_range(self) -> tuple[int, int]:
        """The smallest and largest batch the engine accepts."""
        return self._batch_range

    def _check_fits(self, shape: tuple[int, ...]) -> None:
        declared = self.input_shape
        low, high = self._batch_range
        fits = (len(shape) == len(declared) and all(d is None or d == s for d, s in zip(declared, shape))
                and low <= shape[0] <= high)
        if not fits:
            shown = tuple("?" if d is None else d for d in declared)
            raise CompressorError(
                f"input of shape {shape} does not fit the engine: it takes {shown} with batch {low} to {high}"
            )

    def _to_device(self, x: np.ndarray) -> torch.Tensor:
        x = np.asarray(x)
        self._check_fits(tuple(x.shape))
        host = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return host.to(device="cuda", dtype=self._dtypes[self._input])

    def _bind(self, device_input: torch.Tensor) -> dict[str, torch.Tensor]:
        """Set the input shape and every tensor address; returns the freshly allocated outputs."""
        if not self._context.set_input_shape(self._input, tuple(device_input.shape)):
            raise CompressorError(f"TensorRT rejected the input shape {tuple(device_input.shape)}")
        self._context.set_tensor_address(self._input, device_input.data_ptr())
        outputs = {}
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self._dtypes[name], device="cuda")
            self._context.set_tensor_address(name, outputs[name].data_ptr())
        return outputs

    def run(self, x: np.ndarray) -> np.ndarray:
        """Feed `x` (converted to the engine's input type) and return the first output as float32."""
        device_input = self._to_device(x)
        outputs = self._bind(device_input)
        if not self._context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise CompressorError(f"TensorRT failed to run the engine on an input of shape {tuple(np.shape(x))}")
        # The copy to the host waits for the engine on the same stream.
        return outputs[self._outputs[0]].float().cpu().numpy()

    def measure(self, x: np.ndarray, warmup: int, runs: int) -> Timing:
        """Time `runs` executions on `x` with CUDA events; input and outputs stay on the device throughout."""
        if runs < 1 or warmup < 0:
            raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
        device_input = self._to_device(x)
        # Referenced until timing ends: TensorRT reads and writes these buffers on every run.
        _outputs = self._bind(device_input)
        context = self._context

        def step() -> None:
            # RuntimeError: if TensorRT refuses to enqueue while a CUDA graph is being captured, time_cuda falls
            # back to timing eager launches.
            if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
                raise RuntimeError("TensorRT failed to enqueue the engine")

        return time_cuda(step, warmup, runs)

    def _layer_information(self) -> list[dict | str]:
        trt = _tensorrt()
        # With the input shape set, the inspector also reports tensor formats, which say where FP16 runs.
        self._context.set_input_shape(self._input, self._opt_shape)
        inspector = self._engine.create_engine_inspector()
        inspector.execution_context = self._context
        layers = []
        for index in range(self._engine.num_layers):
            text = inspector.get_layer_information(index, trt.LayerInformationFormat.JSON)
            try:
                layers.append(json.loads(text))
            except (json.JSONDecodeError, TypeError):
                layers.append(str(text))
        return layers

    def inspect(self) -> list[EngineLayer]:
        """The engine's layers in execution order, with the kernel each runs and whether it is sparse."""
        picked = set(self.built.sparse_layers) if self.built else set()
        return [engine_layer(info, picked) for info in self._layer_information()]

    def describe(self) -> dict:
        """Facts for the benchmark's JSON: the batch sizes, what the builder said about 2:4 sparsity, every layer's
        kernel, and for a backend built `from_onnx` one row per ONNX weight layer (`sparsity_report`): which had
        2:4 weights, which TensorRT found eligible, which ran sparse."""
        facts: dict[str, Any] = {"precision": self.precision, "batch_range": list(self.batch_range)}
        layers = self.inspect()
        if self.built is not None:
            facts.update(tensorrt_version=self.built.tensorrt_version, batch_sizes=list(self.built.batch_sizes),
                         sparse_weights=self.built.sparse_weights, two_four_layers=self.built.two_four_layers,
                         eligible_layers=self.built.eligible_layers, sparse_layers=self.built.sparse_layers)
            if self._onnx is not None:
                facts["sparsity"] = [asdict(row) for row in sparsity_report(self.built, self._onnx, layers)]
        facts["layers"] = [asdict(layer) for layer in layers]
        return facts

    def __repr__(self) -> str:
        return f"TensorRTBackend(precision={self.precision!r}, input_shape={self.input_shape})"


@dataclass(frozen=True)
class LayerSparsity:
    """For one ONNX Conv/Gemm/MatMul: whether its weights are 2:4, TensorRT found it eligible, and it ran sparse.

    `layout` is "2:4", "dense", or "n/a" where the layer cannot hold TensorRT's 2:4 layout (e.g. C % 4 != 0).
    """

    node: str
    weight: str
    layout: str
    eligible: bool
    ran_sparse: bool


def sparsity_report(
    built: BuiltEngine,
    onnx_model: str | os.PathLike | bytes | onnx.ModelProto,
    layers: Sequence[EngineLayer] = (),
) -> list[LayerSparsity]:
    """One row per Conv/Gemm/MatMul node of the ONNX the engine was built from that reads a weight initializer,
    in graph order (a weight read by several nodes gives a row per node).

    ONNX nodes are matched to TensorRT layers by name (fused layers read "a + b"); `layers` from
    `TensorRTBackend.inspect` add the engine's own record of which nodes each layer holds and which kernel runs.
    """
    model = read_onnx(onnx_model)
    eligible = set().union(*map(_layer_parts, built.eligible_layers))
    picked = set().union(*map(_layer_parts, built.sparse_layers))
    for layer in layers:
        if layer.sparse:
            picked |= _layer_parts(layer.name) | set(layer.onnx_nodes)
    rows = []
    for row in read_onnx_sparsity(model):
        layout = "2:4" if row.two_four else ("dense" if row.two_four_eligible else "n/a")
        rows.append(LayerSparsity(row.node, row.name, layout, row.node in eligible, row.node in picked))
    return rows


def sparsity_table(
    built: BuiltEngine,
    onnx_model: str | os.PathLike | bytes | onnx.ModelProto,
    layers: Sequence[EngineLayer] = (),
) -> str:
    """Plain-text `sparsity_report`: which layers had 2:4 weights, which were eligible, which ran sparse."""
    rows = [
        (r.node, r.weight, r.layout, "yes" if r.eligible else "no", "yes" if r.ran_sparse else "no")
        for r in sparsity_report(built, onnx_model, layers)
    ]
    switch = "on" if built.sparse_weights else "off"
    title = f"TensorRT {built.tensorrt_version}, {built.precision}, sparse weights {switch}"
    return text_table(("layer", "weight", "weights", "eligible", "ran sparse"), rows, title)


def compare_with_onnxruntime(
    backend: TensorRTBackend,
    onnx_model: str | os.PathLike | bytes | onnx.ModelProto,
    x: np.ndarray,
) -> Agreement:
    """Run `x` through the engine and through the FP32 ONNX on onnxruntime's CPU provider, and measure the gap
    against the tolerance of the engine's precision."""
    model = read_onnx(onnx_model)
    if is_float16(model):
        raise CompressorError("the reference must be the FP32 ONNX model, not its FP16 conversion")
    reference = OrtBackend(model, providers=[CPU_PROVIDER]).run(x)
    return compare_outputs(backend.run(x), reference, backend.precision)
