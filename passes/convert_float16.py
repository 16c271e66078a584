"""ConvertFloat16Pass: the FP16 variant of an exported ONNX model.

TensorRT 11 builds strongly typed networks only: a layer runs in FP16 because its tensors are FP16 in the
ONNX, not because a builder flag asks for it. This pass converts weights and activations to FP16 with
onnxruntime's converter (`onnxruntime.transformers.float16`) and keeps the model's inputs and outputs FP32
behind Cast nodes, so callers feed and read the same arrays as with the FP32 model. Zeros stay zeros (the
converter only clamps non-zero values below FP16's smallest subnormal), so a 2:4 layer stays 2:4. The
converter appends the input Casts at the end of the node list; `CleanOnnxPass` sorts the graph again, because
ONNX (and TensorRT's parser) require nodes in topological order.
"""

from __future__ import annotations

import sys

import onnx

from compressor.passes.base import Pass, PassResult
from compressor.passes.clean_onnx import clean_onnx

# Importing onnxruntime.transformers appends its own folder to sys.path, and that folder holds a `models`
# package: a user's later `import models` (their own project's, most training repositories have one) would
# resolve there. The converter needs nothing from that path once imported, so sys.path is put back.
_sys_path = list(sys.path)
try:
    from onnxruntime.transformers.float16 import convert_float_to_float16
finally:
    sys.path[:] = _sys_path


def is_float16(model: onnx.ModelProto) -> bool:
    """True when some initializer is FP16: the model has been converted already (the converter keeps a few FP32
    initializers, such as the inputs of ops it leaves in FP32, so FP32 ones alone prove nothing)."""
    return any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)


class ConvertFloat16Pass(Pass):
    """FP32 → FP16 weights and activations, FP32 inputs and outputs; a model with FP16 weights is left as it is."""

    name = "ConvertFloat16"

    def run(self, model: onnx.ModelProto) -> PassResult:
        if is_float16(model):
            return PassResult(model, modified=False)
        converted = clean_onnx(convert_float_to_float16(model, keep_io_types=True))
        return PassResult(converted, modified=True)


def convert_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Functional form of `ConvertFloat16Pass`."""
    return ConvertFloat16Pass().run(model).model
