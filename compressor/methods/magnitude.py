"""Magnitude pruning: the baseline method that exercises the whole pipeline.

Unstructured: zero the smallest weights of all Conv/Linear layers together (`scope="global"`, default) or of
each layer separately (`scope="layer"`) until the counted sparsity equals the target, then fine-tune with the
masks fixed. 2:4: keep the 2 largest of every 4 weights along TensorRT's input-channel axis on every eligible
layer (the sparsity is 50% there by construction, so no target is taken) and fine-tune; ineligible layers
stay dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from compressor.counting import prunable_layers
from compressor.data import DataBundle
from compressor.errors import CompressorError
from compressor.methods.base import Method, register_method
from compressor.methods.masks import attach_masks, magnitude_masks
from compressor.passes.analysis import GROUP, KEEP, two_four_eligibility, two_four_mask

TWO_FOUR_SPARSITY = 1 - KEEP / GROUP


@dataclass
class MagnitudeConfig:
    """Hyper-parameters of magnitude pruning."""

    scope: str = "global"


@register_method
class MagnitudeMethod(Method):
    """Global or per-layer magnitude pruning, or 2:4 magnitude pruning, followed by masked fine-tuning."""

    name = "magnitude"
    Config = MagnitudeConfig

    def __init__(self, target, pattern="unstructured", config=None, run=None):
        if pattern == "2:4":
            if target is not None and abs(target - TWO_FOUR_SPARSITY) > 1e-9:
                raise CompressorError(
                    f"--pattern 2:4 fixes sparsity at 50% of eligible layers; drop --target or give 50% (got {target:.1%})")
            target = TWO_FOUR_SPARSITY
        elif target is None:
            raise CompressorError("method magnitude needs --target for unstructured pruning")
        super().__init__(target, pattern, config, run)
        if self.config.scope not in ("global", "layer"):
            raise CompressorError(f"magnitude scope must be 'global' or 'layer', not {self.config.scope!r}")

    def prepare(self, model: nn.Module, data: DataBundle) -> nn.Module:
        layers = prunable_layers(model)
        if self.pattern == "2:4":
            masks = {name: two_four_mask(layer.weight) for name, layer in layers if two_four_eligibility(layer).eligible}
        else:
            masks = magnitude_masks({name: layer.weight for name, layer in layers}, self.target, self.config.scope)
        attach_masks(model, masks)
        return model
