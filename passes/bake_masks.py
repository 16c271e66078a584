"""BakeMasksPass: turn weight masks into plain weights with zeros.

Methods express unstructured and 2:4 decisions as masks (torch.nn.utils.prune hooks or torch
parametrizations). In eval mode the masked weight is what the layer computes with; this pass writes it into
the weight itself and removes the mask machinery, so the model exports as a plain network.
"""

from __future__ import annotations

import torch.nn as nn
from torch.nn.utils import parametrize, prune

from compressor.passes.base import Pass, PassResult
from compressor.modules import copy_model


def _pruned_tensor_names(module: nn.Module) -> list[str]:
    return [hook._tensor_name for hook in module._forward_pre_hooks.values() if isinstance(hook, prune.BasePruningMethod)]


class BakeMasksPass(Pass):
    """Replace every masked/parametrized weight by its current (masked) value."""

    name = "BakeMasks"

    def run(self, model: nn.Module) -> PassResult:
        model = copy_model(model)
        baked = []
        for module_name, module in model.named_modules():
            for tensor_name in _pruned_tensor_names(module):
                prune.remove(module, tensor_name)
                baked.append(f"{module_name}.{tensor_name}")
            if parametrize.is_parametrized(module):
                for tensor_name in list(module.parametrizations.keys()):
                    parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
                    baked.append(f"{module_name}.{tensor_name}")
        return PassResult(model, modified=bool(baked), notes={"baked": baked})


def bake_masks(model: nn.Module) -> nn.Module:
    """Functional form of `BakeMasksPass`."""
    return BakeMasksPass().run(model).model
