"""What a model's layers compute with, as the torch passes need to know it before they fold or bake them.

Whether a layer still computes with a mask (a pruning hook or a parametrization that baking has not yet turned
into plain weights), and which Conv/Linear → BatchNorm pairs a torch.fx trace of the model contains.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.fx
import torch.nn as nn
from torch.nn.utils import parametrize, prune

from compressor.counting import PRUNABLE_TYPES


def has_unbaked_mask(module: nn.Module) -> bool:
    """True while a layer computes with a mask (a torch.nn.utils.prune hook or a parametrization)."""
    return prune.is_pruned(module) or parametrize.is_parametrized(module)


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
