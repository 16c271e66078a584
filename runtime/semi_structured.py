"""torch's semi-structured (2:4) sparse layers: which layers qualify, and their sparse copies.

Which layers qualify is answered without a GPU by `semi_structured_candidates`: a `Linear` whose weight is 2:4
along `in_features`, and a 1x1, stride-1, unpadded, ungrouped `Conv2d` that is 2:4 along its input channels
and runs as one GEMM over the channels (`Conv1x1AsGemm`); both must meet torch's minimum FP16 shapes for
semi-structured tensors. `semi_structured_backend` names the library that multiplies them (cuSPARSELt or
torch's CUTLASS kernels), `semi_structured_unavailable` says in one line why they cannot run here, and each
eligible layer gets a copy with a semi-structured weight, which the torch-24 backend
(`compressor.runtime.torch_two_four`) times against the dense layer.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.counting import PRUNABLE_TYPES
from compressor.errors import CompressorError, first_line
from compressor.passes.analysis import has_unbaked_mask, is_two_four, to_groups, two_four_eligibility
from compressor.runtime.torch_dense import cuda_unavailable

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
