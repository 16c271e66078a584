"""Gates: the vocabulary in which methods say what structure should go, and passes read what to remove.

- A *channel gate* scales each output channel (or neuron) of a group of coupled channels (see
  compressor.passes.analysis.groups). It is a parametrization of the layers that produce the group's channels
  (a BatchNorm's weight and bias, or a Conv/Linear's weight and bias), so the gated model computes
  `gate · channel` with no extra op, and a gate of 0 makes the channel exactly zero wherever it is read.
- A *unit gate* scales a skip-unit. On a `ResidualUnit` it scales the branch (`shortcut + g · branch`). On a
  `DenseUnit` it scales the unit's features as every later layer reads them: it is applied where each reader
  normalises them (its BatchNorm's weight and bias on those channels), so a gate of 0 means exactly "this
  unit is absent", which is what lets the compiler remove the unit and the readers' channels without
  changing the output.

Methods only attach gates and set their values; FoldGates, RemoveDeadSkipUnits and SliceChannels turn them
into shapes. Gate values are read with `value()`, which subclasses may make stochastic in training mode;
in eval mode it is deterministic, and that is the value compilation folds.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.nn.utils import parametrize

from compressor.counting import NORM_TYPES, output_axis
from compressor.models.units import DenseUnit, ResidualUnit
from compressor.passes.analysis.groups import ChannelGroup, channel_groups
from compressor.modules import model_device


def _per_channel(factor: torch.Tensor, like: torch.Tensor, axis: int = 0) -> torch.Tensor:
    shape = [1] * like.dim()
    shape[axis if like.dim() > axis else 0] = -1
    return factor.to(like.dtype).reshape(shape)


class ChannelGate(nn.Module):
    """One scale per output channel of the layer it parametrizes.

    Output channels are axis 0 of a weight, except for a transposed convolution (`axis=1`); a bias is always
    scaled along its only axis.
    """

    def __init__(self, scale: torch.Tensor, axis: int = 0) -> None:
        super().__init__()
        self.axis = axis
        # A copy on the device `scale` is on (`torch.as_tensor` would move a tensor to the default device).
        self.register_buffer("scale", scale.detach().to(dtype=torch.float32, copy=True))

    def value(self) -> torch.Tensor:
        return self.scale

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor * _per_channel(self.value(), tensor, self.axis)


class UnitGate(nn.Module):
    """One scale on a whole skip-unit."""

    def __init__(self, scale: float = 1.0, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(float(scale), device=device))

    def value(self) -> torch.Tensor:
        return self.scale

    def forward(self, branch_output: torch.Tensor) -> torch.Tensor:
        return branch_output * self.value()


class FeatureRangeGate(nn.Module):
    """A dense unit's gate, applied by one of its readers' BatchNorms to the channels the unit wrote."""

    def __init__(self, unit_gate: UnitGate, start: int, stop: int) -> None:
        super().__init__()
        self.unit_gate = unit_gate
        self.start = start
        self.stop = stop

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        channels = tensor.shape[0]
        value = self.unit_gate.value().reshape(1)
        factor = torch.cat([
            value.new_ones(self.start), value.expand(self.stop - self.start), value.new_ones(channels - self.stop)
        ])
        return tensor * _per_channel(factor, tensor)


GATE_TYPES = (ChannelGate, UnitGate, FeatureRangeGate)


def _gated_tensors(module: nn.Module) -> list[str]:
    if isinstance(module, NORM_TYPES):
        if not module.affine:
            raise ValueError(f"a BatchNorm without affine parameters cannot carry a gate: {module}")
        return ["weight", "bias"]
    return ["weight"] + (["bias"] if getattr(module, "bias", None) is not None else [])


def attach_channel_gate(module: nn.Module, scale: torch.Tensor) -> ChannelGate:
    """Gate the output channels of `module` (a BatchNorm, GroupNorm, Conv, ConvTranspose or Linear) with `scale`.

    The gate lives on the module's device, wherever `scale` is.
    """
    gate = ChannelGate(scale.to(model_device(module)), axis=output_axis(module))
    for tensor_name in _gated_tensors(module):
        parametrize.register_parametrization(module, tensor_name, gate, unsafe=True)
    return gate


def gate_group(group: ChannelGroup, scale: torch.Tensor) -> list[ChannelGate]:
    """Gate every root channel r of `group` with `scale[r]`, at each of the group's gate points.

    `scale` may be on any device (the analysis keeps its bookkeeping on the CPU); each gate is built on the
    device of the layer it gates.
    """
    gates = []
    for member in group.gate_points:
        device = member.module.weight.device
        # The analysis slices only ungrouped transposed convolutions, whose weight holds every output channel.
        per_member = torch.ones(member.module.weight.shape[output_axis(member.module)], device=device)
        roots = torch.as_tensor(member.root_idxs, dtype=torch.long, device=scale.device)
        per_member[torch.as_tensor(member.idxs, dtype=torch.long, device=device)] = scale[roots].to(device).float()
        gates.append(attach_channel_gate(member.module, per_member))
    return gates


def gate_unit(model: nn.Module, unit: nn.Module, scale: float, input_shape: Sequence[int],
              gate: UnitGate | None = None, groups: Sequence[ChannelGroup] | None = None) -> UnitGate:
    """Put a unit gate of value `scale` on `unit` (a ResidualUnit or DenseUnit of `model`), or `gate` when given.

    `groups` (the model's channel groups) spare a dense unit the analysis that finds its readers.
    """
    gate = gate if gate is not None else UnitGate(scale, device=model_device(unit))
    if isinstance(unit, ResidualUnit):
        if unit.branch is None:
            raise ValueError("this residual unit has no branch left to gate")
        unit.gate = gate
        return gate
    if not isinstance(unit, DenseUnit):
        raise TypeError(f"unit gates go on ResidualUnit or DenseUnit, not {type(unit).__name__}")
    groups = groups if groups is not None else channel_groups(model, input_shape)
    for norm, start, stop in dense_unit_readers(unit, groups):
        for tensor_name in ("weight", "bias"):
            parametrize.register_parametrization(norm, tensor_name, FeatureRangeGate(gate, start, stop), unsafe=True)
    unit.gate = gate
    return gate


def last_layer(module: nn.Module) -> nn.Module:
    """The last leaf of a module tree (the layer that produces a branch's output in the zoo's units)."""
    while isinstance(module, nn.Sequential) and len(module):
        module = module[-1]
    return module


def producing_group(groups: Sequence[ChannelGroup], layer: nn.Module) -> tuple[ChannelGroup, list[int]] | None:
    """The group among `groups` whose channels `layer` produces, and the root channels it produces."""
    for group in groups:
        for member in group.members:
            if member.module is layer and member.produces:
                return group, member.root_idxs
    return None


def dense_unit_readers(unit: DenseUnit, groups: Sequence[ChannelGroup]) -> list[tuple[nn.Module, int, int]]:
    """(BatchNorm, start, stop) for every layer that reads `unit`'s features, with the channel range it reads.

    `groups` are the model's channel groups. Raises ValueError when a layer reads the features without
    normalising them first: such a reader would see a gated unit's zeros, and removing the unit would not be
    exact.
    """
    found = producing_group(groups, last_layer(unit.new_features))
    if found is None:
        raise ValueError("the dense unit's features reach the model output directly and cannot be gated")
    group, _ = found
    inside = set(unit.modules())
    norms = {m.name for m in group.members if isinstance(m.module, NORM_TYPES) and m.module not in inside}
    readers = []
    for member in group.members:
        if member.module in inside:
            continue
        if isinstance(member.module, NORM_TYPES):
            if member.idxs != list(range(member.idxs[0], member.idxs[-1] + 1)):
                raise ValueError("a dense unit's channels must be contiguous in every reader")
            readers.append((member.module, member.idxs[0], member.idxs[-1] + 1))
        elif not reads_through_norm(group, member.name, norms):
            raise ValueError(f"a layer reads the dense unit's features without a BatchNorm first: {member.name}")
    return readers


def reads_through_norm(group: ChannelGroup, name: str, norms: set[str]) -> bool:
    """Whether every input path of layer `name` reaches one of the BatchNorms `norms` through element-wise ops."""
    targets = {group.traced.get_submodule(norm) for norm in norms}
    frontier = list(group.node(name).inputs)
    while frontier:
        node = frontier.pop()
        if node.module in targets or not node.inputs:
            continue  # normalised, or an op on the layer's own weight (the transpose of a Linear)
        if node.type not in (tp.ops.OPTYPE.ELEMENTWISE, tp.ops.OPTYPE.RESHAPE) or len(node.inputs) != 1:
            return False
        frontier.extend(node.inputs)
    return True


def gates_of(model: nn.Module) -> list[nn.Module]:
    """Every gate module in `model` (a gate shared by several layers is listed once)."""
    seen: dict[int, nn.Module] = {}
    for module in model.modules():
        if isinstance(module, GATE_TYPES):
            seen.setdefault(id(module), module)
    return list(seen.values())


def units_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The skip-units of `model` that still compute something (removed residual branches are skipped)."""
    return [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, DenseUnit) or (isinstance(module, ResidualUnit) and module.branch is not None)
    ]

