"""PyTorch backends: time the PyTorch model itself, dense or with its 2:4 layers on sparse tensor cores.

`TorchBackend` runs a copy of an `nn.Module` on the CPU (FP32) or on a CUDA GPU (FP32, TF32, FP16) behind the
interface the benchmark uses (`run`, `name`, `input_shape`, `precision`, and `measure`, which on CUDA keeps
the input on the device and times with CUDA events). `SemiStructuredBackend` (`torch-24`) runs the same model
in FP16 on CUDA with the weight of every 2:4 layer stored as a semi-structured sparse tensor, so that it
measures what 2:4 sparsity gains on the GPU's sparse tensor cores against the same model dense.

Which layers qualify is answered without a GPU by `semi_structured_candidates`: a `Linear` whose weight is 2:4
along `in_features`, and a 1x1, stride-1, unpadded, ungrouped `Conv2d` that is 2:4 along its input channels
and runs as one GEMM over the channels (`Conv1x1AsGemm`); both must meet torch's minimum FP16 shapes for
semi-structured tensors. On the GPU each such layer is timed dense and sparse on the input it really receives
and stays sparse only where that is faster, the way TensorRT picks sparse kernels only where they pay. With
cuSPARSELt the sparse form is timed with each algorithm cuSPARSELt's own search picks at the benchmark's batch
sizes as well as with its default one (`cusparselt_algorithm_search` says which search this torch offers).
`semi_structured_unavailable` and `cuda_unavailable` say in one line why a backend cannot run here.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import logging
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.counting import PRUNABLE_TYPES
from compressor.errors import CompressorError, first_line
from compressor.passes.analysis import has_unbaked_mask, is_two_four, to_groups, two_four_eligibility
from compressor.runtime.bench import check_batch_sizes
from compressor.runtime.timing import Timing, time_cuda, time_host
from compressor.runtime.tolerance import Agreement, check_precision, compare_outputs

logger = logging.getLogger(__name__)

_DEVICES = ("cpu", "cuda")
_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16}

# Per-layer timing only has to rank two variants of one layer, so it uses fewer runs than the benchmark.
_LAYER_WARMUP = 5
_LAYER_RUNS = 20

# torch announces once per process that semi-structured tensors are a prototype API; the user cannot act on it.
_PROTOTYPE_WARNING = "The PyTorch API of SparseSemiStructuredTensor is in prototype stage"


@dataclass(frozen=True)
class LayerChoice:
    """Whether one Conv/Linear layer runs as a semi-structured sparse GEMM, and why.

    `eligible` says whether the layer can run sparse at all (2:4 weight, torch's shape rule, a geometry that is
    one GEMM); `sparse` whether it does. The times are the median time of the layer's calls in one forward pass
    at each batch size the choice was made for, summed over those batch sizes; None where nothing was timed.
    """

    name: str
    kind: str
    eligible: bool
    sparse: bool
    reason: str
    dense_ms: float | None = None
    sparse_ms: float | None = None
    alg_id: int | None = None
    alg_search: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The searches torch has offered for cuSPARSELt's algorithm, newest first. `torch._C._cusparselt.mm_search` also
# returns the split-k it found; newer torch builds deprecate `torch._cslt_sparse_mm_search` in its favour.
_SEARCH_BINDING = "torch._C._cusparselt.mm_search"
_SEARCH_OP = "torch._cslt_sparse_mm_search"


@dataclass(frozen=True)
class AlgorithmSearch:
    """How torch-24 chooses cuSPARSELt's algorithm (`alg_id`) for a sparse weight.

    `function` is the search torch offers (`torch._C._cusparselt.mm_search` or `torch._cslt_sparse_mm_search`),
    or None when there is none to use; `reason` says what that means for the sparse weights.
    """

    function: str | None
    reason: str

    @property
    def available(self) -> bool:
        return self.function is not None

    def to_dict(self) -> dict:
        return {"function": self.function, "available": self.available, "reason": self.reason}


def cusparselt_algorithm_search(backend: str) -> AlgorithmSearch:
    """Which cuSPARSELt algorithm search this torch offers to the semi-structured `backend`, answered without a GPU.

    A searched algorithm only reaches the matmul through `SparseSemiStructuredTensorCUSPARSELT.from_dense(...,
    alg_id=...)`, so a torch whose `from_dense` takes no `alg_id` has no usable search either. Without one every
    sparse weight keeps cuSPARSELt's default algorithm (alg_id 0).
    """
    _tensor_class(backend)
    if backend != "cusparselt":
        return AlgorithmSearch(None, "torch's CUTLASS 2:4 kernels have no algorithm to choose; cuSPARSELt's "
                                     "search does not apply")
    fallback = "every sparse weight uses cuSPARSELt's default algorithm (alg_id 0)"
    if "alg_id" not in inspect.signature(_tensor_class(backend).from_dense).parameters:
        return AlgorithmSearch(None, f"this torch's ({torch.__version__}) SparseSemiStructuredTensorCUSPARSELT."
                                     f"from_dense takes no alg_id, so {fallback}")
    if callable(getattr(getattr(torch._C, "_cusparselt", None), "mm_search", None)):
        return AlgorithmSearch(_SEARCH_BINDING, "searched per sparse layer at each batch size; the fastest of "
                                                "the algorithms found and the default is kept")
    if callable(getattr(torch, "_cslt_sparse_mm_search", None)):
        return AlgorithmSearch(_SEARCH_OP, "searched per sparse layer at each batch size; the fastest of the "
                                           "algorithms found and the default is kept")
    return AlgorithmSearch(None, f"this torch ({torch.__version__}) offers neither {_SEARCH_BINDING} nor "
                                 f"{_SEARCH_OP}, so {fallback}")


def cuda_unavailable() -> str | None:
    """None when torch can run on a CUDA GPU here, else the reason in one line."""
    if torch.version.cuda is None and torch.version.hip is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch (torch.cuda.is_available() is False)"
    return None


def semi_structured_backend() -> str:
    """The library torch-24 multiplies with: cuSPARSELt where this torch build has it, torch's CUTLASS kernels
    otherwise (`torch.sparse.to_sparse_semi_structured` itself always picks cuSPARSELt unless
    `SparseSemiStructuredTensor._FORCE_CUTLASS` is set, so the choice is made here, per tensor)."""
    return "cusparselt" if torch.backends.cusparselt.is_available() else "cutlass"


def _tensor_class(backend: str) -> type:
    if backend == "cusparselt":
        return torch.sparse.SparseSemiStructuredTensorCUSPARSELT
    if backend == "cutlass":
        return torch.sparse.SparseSemiStructuredTensorCUTLASS
    raise CompressorError(f"unknown semi-structured backend {backend!r}; choose cusparselt or cutlass")


def semi_structured_unavailable() -> str | None:
    """None when torch-24 can run here, else the reason in one line.

    Sparse tensor cores arrived with compute capability 8.0. torch's CUTLASS kernels refuse anything but 8.x
    (`sparse_semi_structured_mad_op` checks `major == 8`), so newer GPUs need a torch build with cuSPARSELt.
    The last check multiplies one small 2:4 matrix, because a cuSPARSELt too old for the GPU only fails then.
    """
    if getattr(torch.sparse, "SparseSemiStructuredTensorCUSPARSELT", None) is None:
        return f"this torch build ({torch.__version__}) lacks semi-structured sparse tensors"
    reason = cuda_unavailable()
    if reason is not None:
        return reason
    if torch.version.hip is not None:
        return "torch-24 targets NVIDIA sparse tensor cores; this torch is a ROCm build"
    major, minor = torch.cuda.get_device_capability()
    gpu = torch.cuda.get_device_name()
    if major < 8:
        return f"{gpu} has compute capability {major}.{minor}; 2:4 sparse tensor cores need 8.0 or newer"
    if semi_structured_backend() == "cutlass" and major != 8:
        return (f"this torch build has no cuSPARSELt, and its CUTLASS 2:4 kernels run only on compute capability "
                f"8.x ({gpu} is {major}.{minor})")
    return _probe_semi_structured()


@functools.lru_cache(maxsize=None)
def _probe_semi_structured() -> str | None:
    backend = semi_structured_backend()
    # 32x64 is the smallest FP16 weight both libraries accept; every row keeps 2 of each 4 entries.
    weight = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float16, device="cuda").tile(32, 16)
    rows = torch.ones(8, 64, dtype=torch.float16, device="cuda")
    try:
        with _quiet_prototype_warning():
            sparse = _tensor_class(backend).from_dense(weight)
        product = F.linear(rows, sparse)
        torch.cuda.synchronize()
    except RuntimeError as error:
        return f"torch's {backend} 2:4 kernels fail on {torch.cuda.get_device_name()}: {first_line(error)}"
    if not torch.equal(product, torch.full_like(product, 32.0)):
        return f"torch's {backend} 2:4 kernels compute wrong results on {torch.cuda.get_device_name()}"
    return None


@contextlib.contextmanager
def _quiet_prototype_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PROTOTYPE_WARNING, category=UserWarning)
        yield


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
        bracketed by CUDA events (`compressor.runtime.timing.time_cuda`); the forward pass enqueues its kernels on whatever
        stream is current when it is called, which is what `time_cuda` requires. On the CPU the host clock
        times each forward pass.
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


class Conv1x1AsGemm(nn.Module):
    """A 1x1, stride-1, unpadded, ungrouped Conv2d computed as one GEMM over channels.

    Such a convolution maps every pixel's C channels to K outputs with the same [K, C] matrix, so the input
    viewed as [N·H·W, C] rows times that matrix's transpose is the whole convolution; on a channels-last input
    the view needs no copy, and the result comes back as a channels-last [N, K, H, W] view. Because it is a
    plain `F.linear`, the [K, C] weight can be a semi-structured sparse tensor (2:4 along C).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> Conv1x1AsGemm:
        """The GEMM form of `conv`, with a copy of its weight reshaped to [K, C]."""
        reason = _gemm_geometry_problem(conv)
        if reason is not None:
            raise CompressorError(f"cannot run this convolution as a GEMM: {reason}")
        weight = conv.weight.detach().reshape(conv.out_channels, conv.in_channels).contiguous().clone()
        bias = None if conv.bias is None else conv.bias.detach().clone()
        return cls(weight, bias)

    @staticmethod
    def rows(x: torch.Tensor) -> torch.Tensor:
        """The [N·H·W, C] matrix the GEMM multiplies: one row per pixel."""
        n, c, h, w = x.shape
        return x.permute(0, 2, 3, 1).reshape(n * h * w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        out = F.linear(self.rows(x), self.weight, self.bias)
        return out.reshape(n, h, w, -1).permute(0, 3, 1, 2)


def _gemm_geometry_problem(conv: nn.Module) -> str | None:
    """Why a convolution is not a single GEMM over its channels, or None when it is."""
    if not isinstance(conv, nn.Conv2d):
        return f"{type(conv).__name__} is not lowered to a GEMM (only 1x1 Conv2d is)"
    if tuple(conv.kernel_size) != (1, 1):
        return f"{'x'.join(map(str, conv.kernel_size))} kernel (only 1x1 convolutions are one GEMM)"
    if tuple(conv.stride) != (1, 1):
        return f"stride {tuple(conv.stride)} (a strided 1x1 convolution is not one GEMM over the input)"
    # A 1x1 kernel with stride 1 makes "same" padding zero padding.
    if conv.padding not in ("valid", "same") and any(p != 0 for p in conv.padding):
        return f"padding {tuple(conv.padding)}"
    if conv.groups != 1:
        return f"grouped convolution (groups={conv.groups})"
    return None


def _gemm_weight(module: nn.Module) -> torch.Tensor:
    """The weight as the [rows, cols] matrix the sparse GEMM multiplies, 2:4 along cols."""
    weight = module.weight.detach()
    return weight.reshape(weight.shape[0], -1)


def _not_two_four(weight: torch.Tensor, axis: str) -> str | None:
    groups = to_groups(weight.detach())
    if is_two_four(groups):
        return None
    crowded = int(((groups != 0).sum(dim=1) > 2).sum())
    return f"weight is not 2:4 along {axis}: {crowded} of {groups.shape[0]} groups of 4 hold more than 2 non-zeros"


def _shape_problem(rows: int, cols: int, backend: str) -> str | None:
    """torch's rule for FP16 semi-structured weights (`_validate_device_dim_dtype_shape`): each dimension at
    least, and a multiple of, the backend's minimum in `_DTYPE_SHAPE_CONSTRAINTS`."""
    rule = _tensor_class(backend)._DTYPE_SHAPE_CONSTRAINTS[torch.float16]
    min_rows, min_cols = rule.sparse_min_rows, rule.sparse_min_cols
    if rows < min_rows or rows % min_rows or cols < min_cols or cols % min_cols:
        return (f"{rows}x{cols} weight breaks {backend}'s FP16 shape rule "
                f"(rows a multiple of {min_rows}, columns a multiple of {min_cols})")
    return None


def _candidate(name: str, module: nn.Module, backend: str) -> LayerChoice:
    kind = type(module).__name__

    def refused(reason: str) -> LayerChoice:
        return LayerChoice(name, kind, eligible=False, sparse=False, reason=reason)

    if has_unbaked_mask(module):
        return refused("its mask is not baked into the weight")
    eligibility = two_four_eligibility(module)
    if not eligibility.eligible:
        return refused(eligibility.reason)
    if isinstance(module, nn.Linear):
        axis = "in_features"
    else:
        problem = _gemm_geometry_problem(module)
        if problem is not None:
            return refused(problem)
        axis = "input channels"
    problem = _not_two_four(module.weight, axis) or _shape_problem(*_gemm_weight(module).shape, backend)
    if problem is not None:
        return refused(problem)
    return LayerChoice(name, kind, eligible=True, sparse=False, reason="2:4 and fits a sparse GEMM")


def semi_structured_candidates(model: nn.Module, backend: str | None = None) -> list[LayerChoice]:
    """Every Conv/Linear layer of `model`, in module order, with whether it can run as a 2:4 sparse GEMM.

    Eligible: a `Linear` whose weight is 2:4 along `in_features`, or a 1x1, stride-1, unpadded, ungrouped
    `Conv2d` whose weight is 2:4 along its input channels, with the [out, in] weight meeting `backend`'s
    FP16 shape rule (default: the backend torch-24 would use here). No layer is `sparse` yet: that is
    decided by timing on the GPU. Pure and CPU-only: it reads the weights and changes nothing.
    """
    backend = backend if backend is not None else semi_structured_backend()
    _tensor_class(backend)
    return [_candidate(name, module, backend) for name, module in model.named_modules()
            if isinstance(module, PRUNABLE_TYPES)]


def _semi_structured(weight: torch.Tensor, backend: str, alg_id: int | None) -> nn.Parameter:
    # -0.0 counts as a non-zero in some 2:4 compressors (CUTLASS's, pytorch/ao#1671); make every zero +0.0.
    weight = torch.where(weight == 0, torch.zeros_like(weight), weight.detach()).contiguous()
    options = {} if alg_id is None else {"alg_id": alg_id}
    with _quiet_prototype_warning():
        sparse = _tensor_class(backend).from_dense(weight, **options)
    return nn.Parameter(sparse, requires_grad=False)


def _sparse_layer(module: nn.Module, backend: str, alg_id: int | None = None) -> nn.Module:
    """A copy of an eligible layer whose weight is a semi-structured sparse tensor (multiplied with cuSPARSELt's
    algorithm `alg_id`; None: the library's default)."""
    if isinstance(module, nn.Linear):
        layer = copy.deepcopy(module)
        layer.weight = _semi_structured(module.weight, backend, alg_id)
        return layer
    layer = Conv1x1AsGemm.from_conv(module)
    layer.weight = _semi_structured(layer.weight, backend, alg_id)
    return layer


def _gemm_rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The activation matrix a sparse layer's GEMM multiplies for input `x`: [rows, in] with one row per sample
    (per pixel for a 1x1 convolution)."""
    if isinstance(layer, Conv1x1AsGemm):
        return layer.rows(x)
    return x.reshape(-1, x.shape[-1])


def _search_algorithm(search: AlgorithmSearch, layer: nn.Module, x: torch.Tensor) -> tuple[int, int | None]:
    """cuSPARSELt's fastest algorithm for the sparse GEMM `layer` runs on input `x`, and the split-k it chose
    (None where the search does not report it).

    torch multiplies `F.linear(x, W)` as W·xᵀ with the activation rows padded to the dense minimum shape and the
    result written transposed (`torch.ops.semi_structured.cusparselt_mm`); the search is run on that same product.
    """
    weight = layer.weight
    rule = weight._DTYPE_SHAPE_CONSTRAINTS[weight.dtype]
    rows = _gemm_rows(layer, x)
    pad_rows, pad_cols = -rows.shape[0] % rule.dense_min_rows, -rows.shape[1] % rule.dense_min_cols
    if pad_rows or pad_cols:
        rows = F.pad(rows, (0, pad_cols, 0, pad_rows))
    if search.function == _SEARCH_BINDING:
        # A pybind11 function: positional arguments only (compressed A, dense B, bias, alpha, out_dtype,
        # transpose_result); it returns (alg_id, split_k, split_k_mode, max_alg_id).
        alg_id, split_k, *_ = torch._C._cusparselt.mm_search(weight.packed, rows.t(), layer.bias, None, None, True)
        return int(alg_id), int(split_k)
    if search.function == _SEARCH_OP:
        return int(torch._cslt_sparse_mm_search(weight.packed, rows.t(), bias=layer.bias, transpose_result=True)), None
    raise CompressorError(f"no cuSPARSELt algorithm search to run: {search.reason}")


def _capture_inputs(model: nn.Module, names: Sequence[str], samples: Sequence[torch.Tensor],
                    ) -> dict[str, list[list[torch.Tensor]]]:
    """For each layer, the inputs it receives in a forward pass of each sample (one list per sample)."""
    captured: dict[str, list[list[torch.Tensor]]] = {name: [[] for _ in samples] for name in names}
    current = [0]

    def recorder(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            # A copy: a later in-place op of the model (a ReLU, a residual add) may overwrite the input tensor.
            captured[name][current[0]].append(args[0].clone())
        return hook

    handles = [model.get_submodule(name).register_forward_hook(recorder(name)) for name in names]
    try:
        with torch.inference_mode():
            for index, sample in enumerate(samples):
                current[0] = index
                model(sample)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _median_ms(timing: Timing) -> float:
    return float(np.median(timing.times_ms))


def _time_steps(steps: Sequence[Callable[[], object]]) -> list[float]:
    """Median ms of each step, all timed as CUDA graphs or all as eager launches."""
    timings = [time_cuda(step, _LAYER_WARMUP, _LAYER_RUNS) for step in steps]
    # A replayed graph has no launch overhead and eager launches do: compare like with like.
    if len({timing.cuda_graph for timing in timings}) > 1:
        timings = [time_cuda(step, _LAYER_WARMUP, _LAYER_RUNS, graph=False) if timing.cuda_graph else timing
                   for step, timing in zip(steps, timings)]
    return [_median_ms(timing) for timing in timings]


def _layer_disagreement(dense: nn.Module, sparse: nn.Module, inputs: Sequence[torch.Tensor]) -> str | None:
    for x in inputs:
        agreement = compare_outputs(sparse(x).float().cpu().numpy(), dense(x).float().cpu().numpy(), "fp16")
        if not agreement.ok:
            return agreement.describe()
    return None


class SemiStructuredBackend(_ModuleRunner):
    """`torch-24`: the model in FP16 on CUDA with its 2:4 layers as semi-structured sparse GEMMs where they pay.

    At construction the dense FP16 model (`dense`, a `TorchBackend` with the same settings, which is also the
    baseline to time against) runs seeded random batches of each size in `batch_sizes`; a forward hook records
    what every eligible layer receives. Each eligible layer is then timed dense and sparse on those inputs, and
    is swapped for its sparse form (a `Linear` with a semi-structured weight, or `Conv1x1AsGemm`) only where the
    sparse form is faster over the batch sizes and agrees with the dense layer. `layers` records every
    Conv/Linear layer's choice and reason. Finally the whole model is checked against the dense one within the
    FP16 tolerance (`agreement`); a model that disagrees is an error.

    torch runs `F.linear(x, W)` with a semi-structured W as the sparse-times-dense product W·xᵀ: the 2:4 weight
    is the [out_features, in_features] operand (cuSPARSELt's m x k, sparse along k) and the batch (N·H·W for a
    1x1 convolution) is the dense operand's n columns, so the batch sizes set the GEMMs' third dimension. With
    cuSPARSELt, which kernel runs a GEMM depends on all three: where this torch offers cuSPARSELt's algorithm
    search (`algorithm_search`, see `cusparselt_algorithm_search`), it runs once per eligible layer at each batch
    size on the layer's captured input, and the sparse form is timed with every algorithm found as well as the
    default; the fastest becomes the layer's sparse form (`LayerChoice.alg_id`, `LayerChoice.alg_search`). A
    split-k the search reports is recorded but not applied: a semi-structured tensor carries only `alg_id`.
    Where torch offers no search, the default algorithm is timed and `describe()` says so.

    torch pads the activation rows of a sparse GEMM to its minimum dense shape (8 rows for FP16) and cuts the
    result back, so any batch size runs; that padding is part of what the per-layer timing measures. So is the
    layout copy a sparse 1x1 convolution makes when `channels_last` is off; with it on (the default) the GEMM
    reads the activations in place.
    """

    name = "torch-24"

    def __init__(self, model: nn.Module, input_shape: Sequence[int] | None = None,
                 batch_sizes: Sequence[int] = (1,), channels_last: bool = True, seed: int = 0) -> None:
        reason = semi_structured_unavailable()
        if reason is not None:
            raise CompressorError(f"torch-24 cannot run here: {reason}")
        batch_sizes = check_batch_sizes(batch_sizes)
        self.dense = TorchBackend(model, input_shape, device="cuda", precision="fp16", channels_last=channels_last)
        self.backend = semi_structured_backend()
        self.algorithm_search = cusparselt_algorithm_search(self.backend)
        self.batch_sizes = batch_sizes
        sample_shape = tuple(self.dense.input_shape[1:])
        inputs = [np.random.default_rng(seed).standard_normal((b, *sample_shape), dtype=np.float32)
                  for b in batch_sizes]

        candidates = semi_structured_candidates(self.dense.model, self.backend)
        eligible = [c.name for c in candidates if c.eligible]
        captured = _capture_inputs(self.dense.model, eligible, [self.dense._device_input(x) for x in inputs])
        sparse_model = copy.deepcopy(self.dense.model)
        self.layers = []
        for choice in candidates:
            if choice.eligible:
                choice, layer = self._choose(choice, captured.pop(choice.name))
                if choice.sparse:
                    sparse_model.set_submodule(choice.name, layer)
            self.layers.append(choice)
        del captured
        self._prepare(sparse_model, sample_shape, "cuda", "fp16", channels_last, None)

        agreements = [compare_outputs(self.run(x), self.dense.run(x), "fp16") for x in inputs]
        self.agreement: Agreement = max(agreements, key=lambda a: a.max_abs_diff - a.tolerance)
        if not self.agreement.ok:
            raise CompressorError(
                f"torch-24 does not compute what the dense FP16 model computes: {self.agreement.describe()}")

    def _choose(self, choice: LayerChoice, inputs: list[list[torch.Tensor]]) -> tuple[LayerChoice, nn.Module | None]:
        """Time one eligible layer dense and sparse (with each candidate algorithm) on its captured inputs; keep
        the fastest sparse form where it beats dense."""
        if not any(inputs):
            return dataclasses.replace(choice, reason="not called in a forward pass, left dense"), None
        dense_layer = self.dense.model.get_submodule(choice.name)
        samples = [x for xs in inputs for x in xs]
        try:
            sparse_layer = _sparse_layer(dense_layer, self.backend)
            with torch.inference_mode():
                disagreement = _layer_disagreement(dense_layer, sparse_layer, samples)
                if disagreement is not None:
                    reason = f"sparse result differs from dense ({disagreement}), left dense"
                    return dataclasses.replace(choice, reason=reason), None
                variants, search_note = self._algorithm_variants(dense_layer, sparse_layer, inputs, samples)
                times = [_time_steps([lambda xs=xs: [dense_layer(x) for x in xs]]
                                     + [lambda xs=xs, layer=layer: [layer(x) for x in xs] for _, layer in variants])
                         for xs in inputs if xs]
        except RuntimeError as error:
            return dataclasses.replace(choice, reason=f"sparse kernel failed ({first_line(error)}), left dense"), None
        dense_ms = sum(t[0] for t in times)
        variant_ms = [sum(t[i + 1] for t in times) for i in range(len(variants))]
        best = min(range(len(variants)), key=variant_ms.__getitem__)
        alg_id, sparse_layer = variants[best]
        sparse_ms = variant_ms[best]
        if search_note is not None and len(variants) > 1:
            timed = ", ".join(f"alg_id {a}: {ms:.4f} ms" for (a, _), ms in zip(variants, variant_ms))
            search_note = f"{search_note}; timed {timed}; kept alg_id {alg_id}"
        sparse = sparse_ms < dense_ms
        verdict = "sparse is faster" if sparse else "dense is as fast or faster, left dense"
        reason = f"{verdict} ({sparse_ms:.4f} ms sparse vs {dense_ms:.4f} ms dense)"
        logger.info("torch-24: %s %s: %s", choice.kind, choice.name, reason)
        chosen = dataclasses.replace(choice, sparse=sparse, reason=reason, dense_ms=dense_ms, sparse_ms=sparse_ms,
                                     alg_id=alg_id, alg_search=search_note)
        return chosen, sparse_layer if sparse else None

    def _algorithm_variants(self, dense_layer: nn.Module, default_layer: nn.Module,
                            inputs: list[list[torch.Tensor]], samples: list[torch.Tensor],
                            ) -> tuple[list[tuple[int | None, nn.Module]], str | None]:
        """The sparse forms of one layer worth timing, as (alg_id, layer): cuSPARSELt's default algorithm and each
        one its search picks at the batch sizes, with a line on what the search found (None with CUTLASS)."""
        if self.backend != "cusparselt":
            return [(None, default_layer)], None
        default = int(default_layer.weight.alg_id_cusparselt)
        variants: list[tuple[int | None, nn.Module]] = [(default, default_layer)]
        if not self.algorithm_search.available:
            return variants, f"not searched, default alg_id {default}: {self.algorithm_search.reason}"
        try:
            # One search per batch size, on the layer's first call at that size.
            found = [(batch, *_search_algorithm(self.algorithm_search, default_layer, xs[0]))
                     for batch, xs in zip(self.batch_sizes, inputs) if xs]
        except RuntimeError as error:
            return variants, f"{self.algorithm_search.function} failed ({first_line(error)}), default alg_id {default}"
        notes = [f"{self.algorithm_search.function} found "
                 + ", ".join(f"alg_id {alg_id}" + ("" if split_k in (None, 1) else f" (split_k {split_k}, not applied)")
                             + f" at batch {batch}" for batch, alg_id, split_k in found)]
        for alg_id in sorted({alg_id for _, alg_id, _ in found} - {default}):
            # A searched algorithm that fails or computes something else costs only itself, not the layer.
            try:
                # Built as the default form was, outside inference mode, so that only the algorithm differs.
                with torch.inference_mode(False):
                    layer = _sparse_layer(dense_layer, self.backend, alg_id)
                disagreement = _layer_disagreement(dense_layer, layer, samples)
            except RuntimeError as error:
                notes.append(f"alg_id {alg_id} failed ({first_line(error)}), not used")
                continue
            if disagreement is None:
                variants.append((alg_id, layer))
            else:
                notes.append(f"alg_id {alg_id} differs from dense ({disagreement}), not used")
        return variants, "; ".join(notes)

    @property
    def sparse_layers(self) -> list[str]:
        """Names of the layers that run as sparse GEMMs."""
        return [c.name for c in self.layers if c.sparse]

    def describe(self) -> dict:
        """The backend's settings (the cuSPARSELt algorithm search among them), every layer's choice, and the
        agreement with the dense FP16 model."""
        return {
            **super().describe(),
            "library": self.backend,
            "algorithm_search": self.algorithm_search.to_dict(),
            "batch_sizes": list(self.batch_sizes),
            "eligible_layers": sum(c.eligible for c in self.layers),
            "sparse_layers": len(self.sparse_layers),
            "layers": [c.to_dict() for c in self.layers],
            "agreement": {"max_abs_diff": self.agreement.max_abs_diff, "tolerance": self.agreement.tolerance},
        }

    def __repr__(self) -> str:
        return (f"SemiStructuredBackend(input_shape={self.input_shape}, library={self.backend!r}, "
                f"sparse_layers={len(self.sparse_layers)}/{sum(c.eligible for c in self.layers)} eligible)")
