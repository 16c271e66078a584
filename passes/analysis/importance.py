"""What each channel of a coupled group is worth, for choosing which channels to remove.

The L1 norm of the weights that produce a channel or read it (`channel_l1`, `group_l1`, `reader_importance`),
and whether the channel is provably zero already (`zero_channels` per layer, `dead_channels` per group): a dead
channel can be sliced away without changing the output. Scores and flags are CPU tensors indexed by the group's
root channels, wherever the model is.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from compressor.counting import output_axis
from compressor.models.units import PadShortcut
from compressor.passes.analysis.groups import ChannelGroup, GroupMember
from compressor.passes.analysis.zero_flow import NORM_LAYERS, WEIGHT_LAYERS


def zero_channels(module: nn.Module, idxs: Sequence[int]) -> torch.Tensor:
    """For each of `idxs`, whether `module` outputs exactly zero on that channel whatever its input.

    True only for what the weights prove: a BatchNorm or GroupNorm with zero scale and shift, a Conv/Linear
    (or ConvTranspose) filter of zero weights and bias, a padding shortcut's zero channel. Other layer types
    prove nothing.
    """
    idxs = list(idxs)
    if isinstance(module, PadShortcut):
        return torch.as_tensor([module.sources[i] < 0 for i in idxs], dtype=torch.bool, device="cpu")
    affine_norm = isinstance(module, NORM_LAYERS) and module.affine
    if not (affine_norm or isinstance(module, WEIGHT_LAYERS)):
        return torch.zeros(len(idxs), dtype=torch.bool, device="cpu")
    index = torch.as_tensor(idxs, dtype=torch.long, device=module.weight.device)
    if affine_norm:
        return ((module.weight.detach()[index] == 0) & (module.bias.detach()[index] == 0)).cpu()
    weight = module.weight.detach().transpose(0, output_axis(module))[index].flatten(1)
    zero = (weight == 0).all(dim=1)
    if module.bias is not None:
        zero &= module.bias.detach()[index] == 0
    return zero.cpu()  # the analysis keeps its bookkeeping on the CPU, wherever the model is


def dead_channels(group: ChannelGroup) -> list[int]:
    """Root channels of `group` that are exactly zero wherever a later layer reads them, whole units only."""
    producers: dict[str, GroupMember] = {}
    for member in group.members:
        if member.produces or member.name not in producers:
            producers[member.name] = member

    def zero_roots(name: str) -> torch.Tensor:
        member = producers[name]
        zero = torch.zeros(group.size, dtype=torch.bool, device="cpu")
        roots = torch.as_tensor(member.root_idxs, dtype=torch.long, device="cpu")
        zero[roots] = True
        zero[roots[~zero_channels(member.module, member.idxs)]] = False  # a root is zero only if all its copies are
        return zero

    dead = group.flow.zero_at_readers(zero_roots)
    return group.whole_units(torch.nonzero(dead).flatten().tolist())


def channel_l1(module: nn.Module, output: bool) -> torch.Tensor:
    """Per output channel (or per input channel) of a Conv/ConvTranspose/Linear layer, the L1 norm of its weights.

    An input channel of a grouped convolution is read by its own group's filters only.
    """
    weight = module.weight.detach().abs().transpose(0, output_axis(module))  # [out, in / groups, ...]
    per_pair = weight.flatten(2).sum(dim=2) if weight.dim() > 2 else weight
    if output:
        return per_pair.sum(dim=1)
    groups = getattr(module, "groups", 1)
    return per_pair.reshape(groups, -1, per_pair.shape[1]).sum(dim=1).flatten()


def group_l1(group: ChannelGroup, produces: bool, per_layer: bool = False) -> torch.Tensor:
    """Per root channel, the summed L1 norm of the group's Conv/Linear weights that produce it (the filters, with
    `produces`) or that read it; on the CPU. With `per_layer`, each layer's norms are divided by their mean over
    the layer's channels before summing, so a channel scores about one per layer it appears in."""
    total = torch.zeros(group.size, device="cpu")
    for member in group.members:
        if member.produces != produces or not isinstance(member.module, WEIGHT_LAYERS):
            continue
        norms = channel_l1(member.module, output=produces)
        if per_layer:
            norms = norms / norms.mean().clamp_min(1e-12)
        index = torch.as_tensor(member.idxs, dtype=torch.long, device=norms.device)
        total.index_add_(0, torch.as_tensor(member.root_idxs, dtype=torch.long, device="cpu"), norms[index].cpu())
    return total


def reader_importance(group: ChannelGroup) -> torch.Tensor:
    """L1 norm of the weights that read each root channel (the layers consuming the group's channels)."""
    return group_l1(group, produces=False)
