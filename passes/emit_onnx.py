"""EmitOnnxPass: export an eval-mode torch model to ONNX with a dynamic batch axis.

This is the bridge between the torch-level and the ONNX-level passes. It uses torch's own exporters, names
the graph's input and output, and keeps every weight as a dense initializer (zeros included): TensorRT's
parser ignores sparse initializers, so 2:4 weights must be dense.

Which exporter: the TorchScript-based one traces a single run, which takes 0.4 s for ResNet-110 against
6–8 s for `torch.export` (the dynamo exporter) on this class of machine, so it goes first. A trace is only
faithful when the forward has no Python control flow on tensor values (torch flags those places with a
TracerWarning) and nothing in it depends on the traced batch size (a Python loop over the batch), so the
traced ONNX must also agree with torch at two other batch sizes on onnxruntime. Otherwise, or when the
TorchScript exporter fails or no longer exists, `torch.export` exports the model; a model whose forward
fixes the batch size then fails here with a clear message instead of exporting a fixed-batch ONNX.
TorchScript archives always take the TorchScript exporter, the one made for them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

from compressor.passes.base import Pass, PassResult
from compressor.modules import copy_model

DEFAULT_OPSET = 18
# A trace is checked at batch sizes other than the traced example's 2, within onnxruntime's float32 tolerance.
CHECK_BATCHES = (1, 3)
AGREEMENT_TOLERANCE = 1e-4


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
    faithful = proto is not None and not any(issubclass(w.category, torch.jit.TracerWarning) for w in caught)
    if faithful and _agrees_at_other_batches(proto, model, example):
        return proto, "torchscript"
    # Unoptimized, the exported graph reads every weight under its torch name (a bias-free Linear through a
    # Transpose node); the exporter's optimizer would fold such a Transpose into an initializer with a generated
    # name. CleanOnnx folds it keeping the name, which the sparsity check finds weights by.
    program = torch.onnx.export(model, (example,), dynamo=True, optimize=False, opset_version=opset,
                                input_names=[input_name],
                                output_names=[output_name], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                external_data=False)
    batch_dim = program.model_proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not batch_dim.dim_param:
        raise ValueError("the model's forward fixes the batch size (it computes with the batch size as a "
                         "number), so it cannot be exported with a dynamic batch")
    return program.model_proto, "dynamo"


def _agrees_at_other_batches(proto: onnx.ModelProto, model: nn.Module, example: torch.Tensor) -> bool:
    """Whether the traced ONNX computes what the model does at batch sizes other than the traced one."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a trace that fails here is expected and handled: no error log
    session = ort.InferenceSession(proto.SerializeToString(), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    for batch in CHECK_BATCHES:
        x = torch.randn((batch, *example.shape[1:]), generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        try:
            actual = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        except Exception:  # onnxruntime rejects a graph whose shapes were baked in by the trace
            return False
        scale = max(float(np.abs(expected).max()), 1e-12)
        if actual.shape != expected.shape or float(np.abs(actual - expected).max()) > AGREEMENT_TOLERANCE * scale:
            return False
    return True


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
