"""FoldGatesPass: fold every gate's eval-mode value into the layers it scales, leaving no gate module behind.

A channel gate is a parametrization of the layers producing a group's channels, so folding it replaces each
parametrized weight/bias by its gated value (`gate · weight`): gates of 1 vanish and gates of 0 leave
channels that are exactly zero, which SliceChannels then removes. A unit gate on a residual unit is folded
into the last layer of the branch (its BatchNorm, or its Conv/Linear) and the gate slot becomes an identity;
a dense unit's gate lives in its readers' BatchNorms and is folded with them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from compressor.counting import NORM_TYPES
from compressor.passes.gates import GATE_TYPES, UnitGate, last_layer
from compressor.models.units import DenseUnit, ResidualUnit
from compressor.passes.base import Pass, PassResult
from compressor.modules import copy_model, unparametrize

_FOLDABLE = (*NORM_TYPES, nn.Conv2d, nn.Linear)


def _fold_parametrizations(model: nn.Module) -> int:
    folded = 0
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        chains = dict(module.parametrizations.items())
        gates = sum(isinstance(p, GATE_TYPES) for chain in chains.values() for p in chain)
        if not gates:
            continue
        if any(not isinstance(p, GATE_TYPES) for chain in chains.values() for p in chain):
            raise ValueError(f"{name} mixes gates with other parametrizations: bake masks first")
        unparametrize(module)
        folded += gates
    return folded


def _fold_residual_gate(name: str, unit: ResidualUnit) -> None:
    scale = float(unit.gate.value())
    if scale != 1.0:
        layer = last_layer(unit.branch)
        if not isinstance(layer, _FOLDABLE) or (isinstance(layer, NORM_TYPES) and not layer.affine):
            raise ValueError(f"unit gate of {name} cannot be folded into a branch ending in {type(layer).__name__}")
        with torch.no_grad():
            layer.weight.mul_(scale)
            if layer.bias is not None:
                layer.bias.mul_(scale)
    unit.gate = nn.Identity()


class FoldGatesPass(Pass):
    """Fold channel and unit gates into weights; afterwards the model contains no gate module."""

    name = "FoldGates"

    def run(self, model: nn.Module) -> PassResult:
        model = copy_model(model).eval()
        with torch.no_grad():
            folded = _fold_parametrizations(model)
        units = 0
        for name, module in model.named_modules():
            if isinstance(module, (ResidualUnit, DenseUnit)) and isinstance(module.gate, UnitGate):
                if isinstance(module, ResidualUnit) and module.branch is not None:
                    _fold_residual_gate(name, module)
                module.gate = nn.Identity()
                units += 1
        return PassResult(model, modified=bool(folded or units), notes={"channel_gates": folded, "unit_gates": units})


def fold_gates(model: nn.Module) -> nn.Module:
    """Functional form of `FoldGatesPass`."""
    return FoldGatesPass().run(model).model
