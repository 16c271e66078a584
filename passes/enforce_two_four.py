"""EnforceTwoFourPass: make every eligible layer's weight exactly 2:4 in TensorRT's layout.

A 2:4 method already produces the layout; this pass guarantees it after everything else has run (fine-tuning
rounding, folding) by zeroing, in any group of 4 input channels with more than 2 non-zeros, the smallest
weights, and reports what it removed. On a model that already satisfies the layout it changes nothing.
Layers that cannot carry 2:4 (input channels not a multiple of 4, grouped convolutions) stay dense and are
reported with the reason.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from compressor.counting import prunable_layers
from compressor.passes.analysis.layers import has_unbaked_mask
from compressor.passes.analysis.two_four import is_two_four, to_groups, two_four_eligibility, two_four_mask
from compressor.passes.base import Pass, PassResult
from compressor.modules import copy_model


class EnforceTwoFourPass(Pass):
    """Zero the smallest weights of over-full groups on eligible layers; masks must be baked first."""

    name = "EnforceTwoFour"

    def run(self, model: nn.Module) -> PassResult:
        model = copy_model(model)
        eligible, ineligible, changed = [], {}, {}
        for name, layer in prunable_layers(model):
            if has_unbaked_mask(layer):
                raise ValueError(f"layer {name} still carries a pruning mask: run BakeMasks first")
            verdict = two_four_eligibility(layer)
            if not verdict.eligible:
                ineligible[name] = verdict.reason
                continue
            eligible.append(name)
            if is_two_four(to_groups(layer.weight)):
                continue
            with torch.no_grad():
                before = torch.count_nonzero(layer.weight)
                layer.weight.mul_(two_four_mask(layer.weight))
                changed[name] = int(before - torch.count_nonzero(layer.weight))
        notes = {"eligible": eligible, "ineligible": ineligible, "zeroed": changed}
        return PassResult(model, modified=bool(changed), notes=notes)


def enforce_two_four(model: nn.Module) -> nn.Module:
    """Functional form of `EnforceTwoFourPass`."""
    return EnforceTwoFourPass().run(model).model
