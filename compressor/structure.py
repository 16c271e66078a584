"""The shapes of a compiled model, recorded so a checkpoint can rebuild it without pickled code.

A sliced zoo model has the zoo architecture's layout but thinner layers, dropped residual branches and
removed dense units. `describe_structure` lists, per module path, whatever can differ from a freshly built
architecture (layer widths, a padding shortcut's channel map, a missing branch, a removed unit), as
plain data; `apply_structure` rebuilds those modules on a fresh architecture, after which the checkpoint's
state_dict loads strictly.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from compressor.counting import NORM_TYPES
from compressor.errors import CompressorError
from compressor.models.units import PadShortcut, ResidualUnit
from compressor.modules import model_device

def describe_structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per module path, the facts that decide its shapes (JSON-compatible)."""
    records: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            records[name] = {"type": "conv2d", "in": module.in_channels, "out": module.out_channels,
                             "groups": module.groups}
        elif isinstance(module, nn.ConvTranspose2d):
            records[name] = {"type": "conv_transpose2d", "in": module.in_channels, "out": module.out_channels,
                             "groups": module.groups}
        elif isinstance(module, NORM_TYPES):
            records[name] = {"type": "batchnorm", "features": module.num_features}
        elif isinstance(module, nn.Linear):
            records[name] = {"type": "linear", "in": module.in_features, "out": module.out_features}
        elif isinstance(module, PadShortcut):
            records[name] = {"type": "pad_shortcut", "in": module.in_channels, "sources": list(module.sources)}
        elif isinstance(module, ResidualUnit) and module.branch is None:
            records[name] = {"type": "residual_without_branch"}
        elif isinstance(module, nn.Identity) and name:
            records[name] = {"type": "identity"}
    return records


def _rebuilt(old: nn.Module, record: dict[str, Any]) -> nn.Module | None:
    kind = record["type"]
    # A rebuilt layer takes the place of the old one: on its device, with its precision.
    place = {"device": model_device(old), "dtype": next((p.dtype for p in old.parameters()), None)}
    if kind == "conv2d" and isinstance(old, nn.Conv2d):
        return nn.Conv2d(record["in"], record["out"], old.kernel_size, old.stride, old.padding, old.dilation,
                         record["groups"], old.bias is not None, old.padding_mode, **place)
    if kind == "conv_transpose2d" and isinstance(old, nn.ConvTranspose2d):
        return nn.ConvTranspose2d(record["in"], record["out"], old.kernel_size, old.stride, old.padding,
                                  old.output_padding, record["groups"], old.bias is not None, old.dilation,
                                  old.padding_mode, **place)
    if kind == "batchnorm" and isinstance(old, NORM_TYPES):
        return type(old)(record["features"], old.eps, old.momentum, old.affine, old.track_running_stats, **place)
    if kind == "linear" and isinstance(old, nn.Linear):
        return nn.Linear(record["in"], record["out"], old.bias is not None, **place)
    if kind == "pad_shortcut" and isinstance(old, PadShortcut):
        old.set_sources(record["in"], record["sources"])
        return old
    if kind == "residual_without_branch" and isinstance(old, ResidualUnit):
        old.branch = None
        return old
    if kind == "identity":
        return nn.Identity()
    return None


def apply_structure(model: nn.Module, records: dict[str, dict[str, Any]]) -> nn.Module:
    """Rebuild `model`'s modules (in place) to the recorded shapes; parents are handled before children."""
    for name, record in records.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            continue  # inside a unit removed earlier in this loop
        new = _rebuilt(old, record)
        if new is None:
            raise CompressorError(f"the checkpoint's structure does not fit the architecture at {name} "
                                  f"({record['type']} recorded, {type(old).__name__} built)")
        if new is not old:
            model.set_submodule(name, new)
    return model



def take_shape_of(model: nn.Module, compiled: nn.Module) -> nn.Module:
    """Rebuild `model` in place as `compiled`, a compiled copy of it: its modules take the compiled shapes and
    its tensors the compiled values, so that whoever holds `model` holds the smaller network."""
    apply_structure(model, describe_structure(compiled))
    model.load_state_dict(compiled.state_dict())
    return model
