"""The structural compile pipeline: a gated model in, a plain and physically smaller one out.

`compile_model` runs FoldGates → RemoveDeadSkipUnits → SliceChannels (RoundChannels when channel counts are
to stay at multiples of `round_to`) and checks the result against the gated model. Methods call it to check
that a plan compiles before they fine-tune; the API calls it before export.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from compressor.errors import CompressorError, VerificationError
from compressor.passes.base import Pipeline, PipelineResult, check_same_function, copy_model
from compressor.passes.fold_gates import FoldGatesPass
from compressor.passes.remove_dead_skip_units import RemoveDeadSkipUnitsPass
from compressor.passes.round_channels import RoundChannelsPass
from compressor.passes.slice_channels import SliceChannelsPass


def compile_model(model: nn.Module, input_shape: Sequence[int] | None = None, round_to: int = 1) -> PipelineResult:
    """Turn a gated model into a plain, physically smaller one that computes the same (in eval mode).

    FoldGates → RemoveDeadSkipUnits → SliceChannels (RoundChannels when `round_to` > 1, keeping channel counts
    at multiples of it). BatchNorm is folded later, on the way to ONNX. The result is checked against the
    gated model on a random batch, and a model without gates passes through unchanged.
    """
    shape = tuple(input_shape or getattr(model, "input_shape", None) or ())
    if not shape:
        raise CompressorError("compile_model needs the model's input shape: pass input_shape=(C, H, W)")
    slicing = RoundChannelsPass(round_to, shape) if round_to > 1 else SliceChannelsPass(shape)
    result = Pipeline([FoldGatesPass(), RemoveDeadSkipUnitsPass(shape), slicing]).run(model)
    try:
        check_same_function(copy_model(model), result.model, shape, "compilation")
    except ValueError as error:
        raise VerificationError(str(error)) from None
    return result
