"""The two pass chains every run goes through: the structural compile and the way to ONNX.

`compile_model` runs FoldGates → RemoveDeadSkipUnits → SliceChannels (RoundChannels when channel counts are
to stay at multiples of `round_to`) and checks the result against the gated model: a gated model in, a plain
and physically smaller one out. Methods call it to check that a plan compiles before they fine-tune; the API
calls it before export. `export_onnx` runs FoldBatchNorm → EmitOnnx → CleanOnnx (→ WriteOnnxMetadata) →
CheckOnnxSparsity on a model whose masks are baked; the API, the latency planner and the benchmarks all
export through it.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch.nn as nn

from compressor.errors import CompressorError, VerificationError
from compressor.files import atomic_write_bytes
from compressor.modules import copy_model, model_device
from compressor.passes.base import Pipeline, PipelineResult, check_same_function
from compressor.passes.check_onnx_sparsity import CheckOnnxSparsityPass
from compressor.passes.clean_onnx import CleanOnnxPass
from compressor.passes.emit_onnx import DEFAULT_OPSET, EmitOnnxPass
from compressor.passes.fold_batchnorm import FoldBatchNormPass
from compressor.passes.fold_gates import FoldGatesPass
from compressor.passes.remove_dead_skip_units import RemoveDeadSkipUnitsPass
from compressor.passes.round_channels import RoundChannelsPass
from compressor.passes.slice_channels import SliceChannelsPass
from compressor.passes.write_onnx_metadata import WriteOnnxMetadataPass


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


def export_onnx(model: nn.Module, path: str | os.PathLike | None = None, input_shape: Sequence[int] | None = None,
                opset: int = DEFAULT_OPSET, facts: dict[str, Any] | None = None,
                expect_two_four: Sequence[str] = ()) -> PipelineResult:
    """Fold BatchNorm, emit ONNX, clean it, write `facts` as metadata and read its sparsity back.

    Masks must already be baked. The returned pipeline result holds the ONNX model and every pass's notes;
    the file is written (atomically) only when `path` is given.
    """
    shape = tuple(input_shape or model.input_shape)
    if model_device(model).type != "cpu":
        # onnxruntime runs on the CPU: the graph is traced, and checked, on a CPU copy.
        model = copy_model(model).cpu()
    passes = [FoldBatchNormPass(), EmitOnnxPass(shape, opset), CleanOnnxPass()]
    if facts:
        passes.append(WriteOnnxMetadataPass(facts))
    passes.append(CheckOnnxSparsityPass(expect_two_four))
    result = Pipeline(passes).run(model)
    if path is not None:
        atomic_write_bytes(path, result.model.SerializeToString())
    return result
