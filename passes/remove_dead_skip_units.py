"""RemoveDeadSkipUnitsPass: skip-units that contribute nothing are removed, with everything that read them.

- A residual unit whose gate is 0, or whose branch is provably zero (its last layer is a BatchNorm with zero
  scale and shift, or a Conv/Linear with zero weight and bias), becomes its shortcut: the branch is dropped
  and the unit computes `post_activation(shortcut(s))` (an identity, the option-A padding, or the projection).
- A dense unit whose features every reader normalises to exactly zero (a folded unit gate of 0: zero scale
  and shift on those channels in each reader's BatchNorm) disappears, and each reader physically loses those
  input channels, so the concatenation after it is narrower instead of carrying zeros.

Dense units are recognised after FoldGates (their gate lives in their readers' BatchNorms), so the compile
pipeline runs FoldGates first; residual units are recognised either way.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from compressor.passes.gates import UnitGate, dense_unit_readers, last_layer, producing_group
from compressor.models.units import DenseUnit, ResidualUnit
from compressor.passes.base import Pass, PassResult
from compressor.modules import copy_model
from compressor.passes.analysis.groups import ChannelGroup, channel_groups
from compressor.passes.analysis.importance import zero_channels

def _residual_is_dead(unit: ResidualUnit) -> bool:
    if isinstance(unit.gate, UnitGate) and float(unit.gate.value().detach()) == 0.0:
        return True
    layer = last_layer(unit.branch)
    channels = getattr(layer, "weight", None)
    return channels is not None and bool(zero_channels(layer, range(channels.shape[0])).all())


def _dense_is_dead(unit: DenseUnit, groups: Sequence[ChannelGroup]) -> bool:
    try:
        readers = dense_unit_readers(unit, groups)
    except ValueError:
        return False
    return bool(readers) and all(bool(zero_channels(norm, range(start, stop)).all()) for norm, start, stop in readers)


def _remove_dense_units(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    groups = channel_groups(model, input_shape)
    dead = [(name, unit) for name, unit in model.named_modules()
            if isinstance(unit, DenseUnit) and _dense_is_dead(unit, groups)]
    # One dependency graph serves every removal: Torch-Pruning renumbers the concatenations as it prunes.
    for name, unit in dead:
        group, channels = producing_group(groups, last_layer(unit.new_features))
        group.prune(channels)
    for name, _ in dead:
        model.set_submodule(name, nn.Identity())
    return [name for name, _ in dead]


class RemoveDeadSkipUnitsPass(Pass):
    """Replace dead residual units by their shortcut and delete dead dense units with their readers' channels."""

    name = "RemoveDeadSkipUnits"

    def __init__(self, input_shape: Sequence[int] | None = None) -> None:
        self.input_shape = tuple(input_shape) if input_shape is not None else None

    def run(self, model: nn.Module) -> PassResult:
        model = copy_model(model).eval()
        input_shape = self.input_shape or tuple(getattr(model, "input_shape", ()))
        removed = []
        for name, unit in list(model.named_modules()):
            if isinstance(unit, ResidualUnit) and unit.branch is not None and _residual_is_dead(unit):
                unit.branch = None
                unit.gate = nn.Identity()
                if not unit.shortcut_uses_preact:
                    unit.preact = nn.Identity()  # only the branch read the pre-activation
                removed.append(name)
        if any(isinstance(module, DenseUnit) for module in model.modules()):
            with torch.no_grad():
                removed += _remove_dense_units(model, input_shape)
        return PassResult(model, modified=bool(removed), notes={"removed_units": removed})


def remove_dead_skip_units(model: nn.Module, input_shape: Sequence[int] | None = None) -> nn.Module:
    """Functional form of `RemoveDeadSkipUnitsPass`."""
    return RemoveDeadSkipUnitsPass(input_shape).run(model).model
