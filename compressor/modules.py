"""Module utilities every layer may use: where a model lives, how to copy it, how to strip parametrizations.

This is the ground floor of the package: `passes/`, `runtime/` and `models/` import it (with errors, paths,
files, counting, tables, options and structure), and it imports nothing of the project's own, so that no
lower layer has to reach into the training loop or the pass framework for a seven-line helper.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of `model` that also works while weights are under masks.

    A masked layer keeps its masked weight as a computed (non-leaf) tensor attribute, which `copy.deepcopy`
    refuses; the copy receives a detached clone instead (the mask hook recomputes it on the next forward).
    """
    memo = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def unparametrize(module: nn.Module, keep_value: bool = True) -> None:
    """Turn every parametrized tensor of `module` back into a plain parameter holding its current value, or,
    with `keep_value=False`, the original tensor the parametrizations computed it from.

    torch's `remove_parametrizations` edits the module's generated class, which a copied model shares with
    the model it was copied from; restoring the plain class on this one instance leaves the source intact.
    """
    with torch.no_grad():
        values = {name: (getattr(module, name) if keep_value else module.parametrizations[name].original)
                  .detach().clone() for name in module.parametrizations}
    del module._modules["parametrizations"]
    module.__class__ = module.__class__.__bases__[0]
    for name, value in values.items():
        module.register_parameter(name, nn.Parameter(value))
