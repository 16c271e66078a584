"""EmitOnnxPass: export an eval-mode torch model to ONNX with a dynamic batch axis.

This is the bridge between the torch-level and the ONNX-level passes. It uses torch's own exporters, names
the graph's input and output, and keeps every weight as a dense initializer (zeros included): TensorRT's
parser ignores sparse initializers, so 2:4 weights must be dense.

Which exporter: the TorchScript-based one traces a single run, which takes 0.4 s for ResNet-110 against
6–8 s for `torch.export` (the dynamo exporter) on this class of machine, so it goes first. A trace is only
faithful when the forward has no Python control flow on tensor values; torch flags every such place with a
TracerWarning, and then (or when the TorchScript exporter fails or no longer exists) the strict
`torch.export`-based exporter is used instead, which refuses data-dependent control flow outright.
TorchScript archives always take the TorchScript exporter, the one made for them.
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
                proto, exporter = _export(model, example, self.opset, self.input_name, self.output_name)
        finally:
            exporter_log.setLevel(level)
        onnx.checker.check_model(proto)
        return PassResult(proto, modified=True, notes={"opset": _opset(proto), "exporter": exporter})


def _export(model: nn.Module, example: torch.Tensor, opset: int, input_name: str,
            output_name: str) -> tuple[onnx.ModelProto, str]:
    """The exported model and the name of the exporter that produced it."""
    if isinstance(model, torch.jit.ScriptModule):
        return _torchscript_export(model, example, opset, input_name, output_name), "torchscript"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            proto = _torchscript_export(model, example, opset, input_name, output_name)
        except Exception:  # an op the TorchScript exporter lacks, or a torch without it: the other exporter decides
            proto = None
    if proto is not None and not any(issubclass(w.category, torch.jit.TracerWarning) for w in caught):
        return proto, "torchscript"
    program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset, input_names=[input_name],
                                output_names=[output_name], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                external_data=False)
    return program.model_proto, "dynamo"


def _torchscript_export(model: nn.Module, example: torch.Tensor, opset: int, input_name: str,
                        output_name: str) -> onnx.ModelProto:
    buffer = io.BytesIO()
    # Constant folding would merge BatchNorms into convolutions under generated names; weights keep their
    # torch names (which sparsity checks match on) when folding is left to FoldBatchNorm and CleanOnnx.
    torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset, input_names=[input_name],
                      output_names=[output_name], dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                      do_constant_folding=False)
    return onnx.load_from_string(buffer.getvalue())


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def emit_onnx(model: nn.Module, input_shape: tuple[int, ...], opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Functional form of `EmitOnnxPass`."""
    return EmitOnnxPass(input_shape, opset).run(model).model
