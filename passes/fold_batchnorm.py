"""FoldBatchNormPass: fold each BatchNorm into the Conv/Linear that feeds it.

In eval mode a BatchNorm that directly follows a Conv/Linear is an affine map per output channel, so it can
be merged into that layer's weight and bias, which removes a layer from the exported graph. Zeros in the
weight stay zeros (each output row is only scaled), so sparsity survives folding. BatchNorms that follow an
activation or a concatenation (pre-activation designs) cannot be folded and are left alone, and so is a whole
model that torch.fx cannot trace (data-dependent control flow, TorchScript): the exporter still handles it.
A transposed convolution holds its output channels on weight axis 1, per group, and is folded accordingly.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from compressor.counting import CONV_TRANSPOSE_TYPES
from compressor.passes.analysis.layers import has_unbaked_mask, linear_bn_pairs
from compressor.passes.base import Pass, PassResult
from compressor.modules import copy_model


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
            if isinstance(layer, CONV_TRANSPOSE_TYPES):
                fuse = fuse_conv_transpose_bn_eval
            else:
                fuse = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
            model.set_submodule(layer_name, fuse(layer, bn))
            model.set_submodule(bn_name, nn.Identity())
        return PassResult(model, modified=bool(pairs), notes={"folded": [bn for _, bn in pairs]})


def fuse_conv_transpose_bn_eval(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A copy of the transposed convolution `layer` that computes bn(layer(x)) in eval mode.

    Its weight is [C_in, C_out/groups, *kernel] and output channel g·(C_out/groups) + j is column j of group g's
    rows, so each BatchNorm scale multiplies one column within one group. torch's
    `fuse_conv_bn_eval(transpose=True)` scales column j of every group alike, which only fits groups == 1.
    """
    fused = copy.deepcopy(layer)
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0)
        weight = layer.weight.detach()
        in_channels, per_group = weight.shape[:2]
        kernel = weight.shape[2:]
        grouped = weight.reshape(layer.groups, in_channels // layer.groups, per_group, *kernel)
        column_scale = scale.reshape(layer.groups, 1, per_group, *(1 for _ in kernel))
        fused.weight = nn.Parameter((grouped * column_scale).reshape(weight.shape))
        bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(scale)
        fused.bias = nn.Parameter(bias * scale + shift)
    return fused


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Functional form of `FoldBatchNormPass`."""
    return FoldBatchNormPass().run(model).model
