"""FoldBatchNormPass: fold each BatchNorm into the Conv/Linear that feeds it.

In eval mode a BatchNorm that directly follows a Conv/Linear is an affine map per output channel, so it can
be merged into that layer's weight and bias, which removes a layer from the exported graph. Zeros in the
weight stay zeros (each output row is only scaled), so sparsity survives folding. BatchNorms that follow an
activation or a concatenation (pre-activation designs) cannot be folded and are left alone, and so is a whole
model that torch.fx cannot trace (data-dependent control flow, TorchScript): the exporter still handles it.
"""

from __future__ import annotations

import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from compressor.passes.analysis import has_unbaked_mask, linear_bn_pairs
from compressor.passes.base import Pass, PassResult, copy_model


class FoldBatchNormPass(Pass):
    """Merge BatchNorm into the preceding Conv/Linear; the BatchNorm becomes an Identity."""

    name = "FoldBatchNorm"

    def run(self, model: nn.Module) -> PassResult:
        model = copy_model(model).eval()
        try:
            candidates = linear_bn_pairs(model)
        except Exception as error:  # tracing runs the model's own forward, which may raise anything
            reason = f"not traceable by torch.fx ({' '.join(str(error).split())[:160]})"
            return PassResult(model, modified=False, notes={"folded": [], "skipped": reason})
        pairs = []
        for layer_name, bn_name in candidates:
            layer = model.get_submodule(layer_name)
            if has_unbaked_mask(layer):
                raise ValueError(f"layer {layer_name} still carries a pruning mask: run BakeMasks first")
            # A BatchNorm without running statistics normalises with batch statistics even in eval mode:
            # it is not a fixed affine map and cannot be folded.
            if model.get_submodule(bn_name).running_mean is not None:
                pairs.append((layer_name, bn_name))
        for layer_name, bn_name in pairs:
            layer = model.get_submodule(layer_name)
            bn = model.get_submodule(bn_name)
            fuse = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
            model.set_submodule(layer_name, fuse(layer, bn))
            model.set_submodule(bn_name, nn.Identity())
        return PassResult(model, modified=bool(pairs), notes={"folded": [bn for _, bn in pairs]})


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Functional form of `FoldBatchNormPass`."""
    return FoldBatchNormPass().run(model).model
