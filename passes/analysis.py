"""Shared analysis that passes and methods read instead of walking the model themselves.

It answers three questions: which layers may hold 2:4 sparsity in the layout TensorRT accepts (and why not),
how a weight is cut into the groups of four that layout is defined on (for torch tensors and for ONNX
initializers alike), and which Conv/Linear → BatchNorm pairs a torch.fx trace of the model contains.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx
import torch.nn as nn
from torch.nn.utils import parametrize, prune

from compressor.counting import PRUNABLE_TYPES

GROUP = 4
KEEP = 2


@dataclass(frozen=True)
class Eligibility:
    """Whether a layer can carry 2:4 sparsity, and the reason when it cannot."""

    eligible: bool
    reason: str = ""


def two_four_eligibility(module: nn.Module) -> Eligibility:
    """2:4 applies along the input-channel axis (DESIGN.md): it needs dense groups of 4 input channels."""
    if isinstance(module, nn.Linear):
        if module.in_features % GROUP:
            return Eligibility(False, f"in_features={module.in_features} is not a multiple of {GROUP}")
        return Eligibility(True)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if module.groups != 1:
            return Eligibility(False, f"grouped convolution (groups={module.groups})")
        if module.in_channels % GROUP:
            return Eligibility(False, f"in_channels={module.in_channels} is not a multiple of {GROUP}")
        return Eligibility(True)
    return Eligibility(False, f"{type(module).__name__} is not a Conv/Linear layer")


def has_unbaked_mask(module: nn.Module) -> bool:
    """True while a layer computes with a mask (a torch.nn.utils.prune hook or a parametrization)."""
    return prune.is_pruned(module) or parametrize.is_parametrized(module)


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


def onnx_weight_groups(op_type: str, weight: np.ndarray, trans_b: bool = False, group: int = 1) -> np.ndarray | None:
    """Groups of 4 along TensorRT's 2:4 axis for an ONNX Conv / Gemm / MatMul weight, or None if ineligible."""
    if op_type == "Conv":
        if group != 1:
            return None
        matrix = np.moveaxis(weight, 1, -1)
    elif op_type == "Gemm":
        matrix = weight if trans_b else weight.T
    elif op_type == "MatMul":
        matrix = weight.T
    else:
        return None
    if matrix.shape[-1] % GROUP:
        return None
    return matrix.reshape(-1, GROUP)


def is_two_four(groups: torch.Tensor | np.ndarray) -> bool:
    """True when no group of 4 holds more than 2 non-zeros."""
    if isinstance(groups, torch.Tensor):
        return bool(((groups != 0).sum(dim=1) <= KEEP).all())
    return bool(((groups != 0).sum(axis=1) <= KEEP).all())


def linear_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer, batchnorm) module names where the BN's only input is the Conv/Linear's only use.

    Both modules must be called exactly once in the trace.

    Found on a torch.fx trace so that the pairing reflects the dataflow, not the module order.
    Raises torch.fx's own error when the model cannot be traced.
    """
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    # A module called at several places computes several things; folding it would change all of them.
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        (source, *rest) = node.args
        if rest or not isinstance(source, torch.fx.Node) or source.op != "call_module":
            continue
        layer = modules.get(source.target)
        if (isinstance(layer, PRUNABLE_TYPES) and len(source.users) == 1
                and calls[source.target] == 1 and calls[node.target] == 1):
            pairs.append((source.target, node.target))
    return pairs
