"""2:4 sparsity in the layout TensorRT accepts, shared by the passes and methods that create or check it.

Which layers may hold it (and why not), how a weight is cut into the groups of four consecutive input channels
the layout is defined on (for torch tensors and for ONNX initializers alike), the mask that keeps the two
largest-magnitude weights of every group, and whether groups already hold the pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from compressor.counting import CONV_TRANSPOSE_TYPES

GROUP = 4
KEEP = 2


@dataclass(frozen=True)
class Eligibility:
    """Whether a layer can carry 2:4 sparsity, and the reason when it cannot."""

    eligible: bool
    reason: str = ""


def two_four_eligibility(module: nn.Module) -> Eligibility:
    """2:4 applies along the input-channel axis (docs/ARCHITECTURE.md): it needs dense groups of 4 input channels."""
    if isinstance(module, nn.Linear):
        if module.in_features % GROUP:
            return Eligibility(False, f"in_features={module.in_features} is not a multiple of {GROUP}")
        return Eligibility(True)
    if isinstance(module, CONV_TRANSPOSE_TYPES):
        # Its weight is [C_in, C_out/groups, *kernel] and it runs as a deconvolution, not as the Conv/Gemm
        # whose input-channel layout TensorRT's sparse kernels are defined on: it stays dense.
        return Eligibility(False, f"{type(module).__name__}: TensorRT's 2:4 kernels cover Conv/Gemm weights "
                                  "along their input channels, not transposed convolutions")
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if module.groups != 1:
            return Eligibility(False, f"grouped convolution (groups={module.groups})")
        if module.in_channels % GROUP:
            return Eligibility(False, f"in_channels={module.in_channels} is not a multiple of {GROUP}")
        return Eligibility(True)
    return Eligibility(False, f"{type(module).__name__} is not a Conv/Linear layer")


def to_groups(weight: torch.Tensor) -> torch.Tensor:
    """View a Conv [K, C, ...] or Linear [out, in] weight as rows of 4 consecutive input channels.

    The input-channel axis is moved last so that each row of the result is one group TensorRT checks.
    """
    moved = weight.movedim(1, -1) if weight.dim() > 2 else weight
    return moved.reshape(-1, GROUP)


def from_groups(groups: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of `to_groups` for a tensor shaped like `like`."""
    if like.dim() > 2:
        moved_shape = (like.shape[0], *like.shape[2:], like.shape[1])
        return groups.reshape(moved_shape).movedim(-1, 1)
    return groups.reshape(like.shape)


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """Mask keeping the 2 largest-magnitude weights of every group of 4 input channels."""
    groups = to_groups(weight.detach().abs())
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(KEEP, dim=1).indices, True)
    return from_groups(keep, weight).to(weight.dtype)


def onnx_input_channel_axis(op_type: str, weight_input: int, rank: int, trans_a: bool = False,
                            trans_b: bool = False) -> int | None:
    """The axis of an ONNX node's weight operand that the node sums over (TensorRT's 2:4 axis), or None.

    `weight_input` is the operand's position among the node's inputs: 1 for Conv, Gemm's B and MatMul's B
    (`x @ W`), 0 for Gemm's A and MatMul's A (`W @ x`). MatMul sums over its A operand's last axis and its
    B operand's second-to-last; Gemm's transA/transB swap the two axes of A/B.
    """
    if op_type == "Conv" and weight_input == 1:
        return 1
    if op_type == "Gemm" and weight_input == 0:
        return 0 if trans_a else 1  # A is [M, K], or [K, M] with transA
    if op_type == "Gemm" and weight_input == 1:
        return 1 if trans_b else 0  # B is [K, N], or [N, K] with transB
    if op_type == "MatMul" and weight_input in (0, 1) and rank >= 2:
        return rank - 1 if weight_input == 0 else rank - 2
    return None


def onnx_weight_groups(op_type: str, weight: np.ndarray, trans_b: bool = False, group: int = 1,
                       weight_input: int = 1, trans_a: bool = False) -> np.ndarray | None:
    """Groups of 4 along TensorRT's 2:4 axis for an ONNX Conv / Gemm / MatMul weight, or None if ineligible.

    `weight` is the operand as the node reads it (after any Transpose that leads to it); other ops, grouped
    convolutions (ConvTranspose among them: see `two_four_eligibility`) and axes not a multiple of 4 give None.
    """
    if op_type == "Conv" and group != 1:
        return None
    axis = onnx_input_channel_axis(op_type, weight_input, weight.ndim, trans_a, trans_b)
    if axis is None or weight.shape[axis] % GROUP:
        return None
    return np.moveaxis(weight, axis, -1).reshape(-1, GROUP)


def is_two_four(groups: torch.Tensor | np.ndarray) -> bool:
    """True when no group of 4 holds more than 2 non-zeros."""
    if isinstance(groups, torch.Tensor):
        return bool(((groups != 0).sum(dim=1) <= KEEP).all())
    return bool(((groups != 0).sum(axis=1) <= KEEP).all())
