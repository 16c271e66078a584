"""Weight masks: how methods attach unstructured or 2:4 pruning decisions to Conv/Linear layers.

Masks use torch's own pruning utilities (`torch.nn.utils.prune`): the layer keeps `weight_orig` and a
`weight_mask` buffer and computes with their product, so training with fixed masks keeps pruned weights at
zero, and `BakeMasksPass` later writes the product into a plain weight.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils import prune


def attach_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Put `masks[name]` on the weight of each named layer, replacing any mask it had.

    A mask may be on any device: it is stored on its layer's, where torch's pruning multiplies it with the weight.
    """
    for name, mask in masks.items():
        layer = model.get_submodule(name)
        if prune.is_pruned(layer) and hasattr(layer, "weight_mask"):
            layer.weight_mask.copy_(mask)
        else:
            prune.custom_from_mask(layer, "weight", mask.to(layer.weight.device))


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    """Masks that zero the smallest-magnitude fraction `sparsity` of the weights.

    `scope="global"` ranks all weights together (layers end with different sparsities); `scope="layer"`
    prunes each layer to `sparsity` on its own. Counts are exact: ties are broken by position, never by
    pruning more or fewer weights than asked.
    """
    if scope == "layer":
        return {name: _smallest_zeroed(w.detach().abs().flatten(), sparsity).view_as(w) for name, w in weights.items()}
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    keep = _smallest_zeroed(flat, sparsity)
    masks, offset = {}, 0
    for name, w in weights.items():
        masks[name] = keep[offset:offset + w.numel()].view_as(w)
        offset += w.numel()
    return masks


def _smallest_zeroed(magnitudes: torch.Tensor, sparsity: float) -> torch.Tensor:
    count = round(sparsity * magnitudes.numel())
    mask = torch.ones_like(magnitudes)
    mask[torch.argsort(magnitudes, stable=True)[:count]] = 0
    return mask
