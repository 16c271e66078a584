"""EmitOnnxPass: export an eval-mode torch model to ONNX with a dynamic batch axis.

This is the bridge between the torch-level and the ONNX-level passes. It uses torch's own exporter
(`torch.onnx.export(dynamo=True)`; TorchScript archives take torch's TorchScript-based exporter), names the graph's input and output, and keeps every weight as a dense
initializer (zeros included): TensorRT's parser ignores sparse initializers, so 2:4 weights must be dense.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx
import torch
import torch.nn as nn

from passes.base import Pass, PassResult, copy_model

DEFAULT_OPSET = 18


class EmitOnnxPass(Pass):
    """nn.Module → onnx.ModelProto for inputs shaped (batch, *input_shape)."""

    name = "EmitOnnx"

    def __init__(self, input_shape: tuple[int, ...], opset: int = DEFAULT_OPSET,
                 input_name: str = "input", output_name: str = "logits"):
        if opset < 17:
            raise ValueError(f"opset {opset} is below the supported minimum of 17")
        self.input_shape = tuple(input_shape)
        self.opset = opset
        self.input_name = input_name
        self.output_name = output_name

    def run(self, model: nn.Module | onnx.ModelProto) -> PassResult:
        if isinstance(model, onnx.ModelProto):
            return PassResult(model, modified=False, notes={"opset": _opset(model)})
        model = copy_model(model).eval()
        example = torch.zeros((2, *self.input_shape))
        # The exporter narrates its stages on stdout, warns about internals, and logs that it cannot register
        # torchvision's operators (absent here, and unused by any model it exports): none of it concerns the
        # user's model, so it is kept out of the terminal.
        exporter_log = logging.getLogger("torch.onnx")
        level = exporter_log.level
        exporter_log.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                proto = _export(model, example, self.opset, self.input_name, self.output_name)
        finally:
            exporter_log.setLevel(level)
        onnx.checker.check_model(proto)
        return PassResult(proto, modified=True, notes={"opset": _opset(proto)})


def _export(model: nn.Module, example: torch.Tensor, opset: int, input_name: str, output_name: str) -> onnx.ModelProto:
    if isinstance(model, torch.jit.ScriptModule):
        # torch.export (behind the dynamo exporter) cannot read TorchScript; the TorchScript-based exporter
        # is the one made for it.
        buffer = io.BytesIO()
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset, input_names=[input_name],
                          output_names=[output_name], dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})
        return onnx.load_from_string(buffer.getvalue())
    program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset, input_names=[input_name],
                                output_names=[output_name], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                external_data=False)
    return program.model_proto


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def emit_onnx(model: nn.Module, input_shape: tuple[int, ...], opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Functional form of `EmitOnnxPass`."""
    return EmitOnnxPass(input_shape, opset).run(model).model
