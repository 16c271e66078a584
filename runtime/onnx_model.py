"""Reading an ONNX classifier for the runtime: the file, its single input, and the shape of one sample.

Every backend and the deploy bundle need the same three answers about a model they are handed: can it be
read (a missing or corrupt file, or one whose weights hold a NaN or Inf, is a one-line error), which tensor is
its input, and what does one sample look like. A classifier here has exactly one float input whose dimensions
after the batch are fixed; the batch itself may be dynamic (a named dimension) or fixed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import numpy_helper

from compressor.errors import CompressorError, first_line
from compressor.finite import first_non_finite
from compressor.paths import is_file

_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
# The initializer types that can hold a NaN or Inf.
_FLOAT_WEIGHTS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                  onnx.TensorProto.BFLOAT16)


def read_onnx(source: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """The model at a path (weights in side files included), in serialized bytes, or the proto itself; read
    from a path or bytes, it is checked with onnx's checker and for weights that are not finite. Anything
    unreadable is a one-line `CompressorError`."""
    if isinstance(source, onnx.ModelProto):
        return source
    where = "the ONNX model"
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            model = onnx.load_model_from_string(bytes(source))
        else:
            path = Path(source)
            where = f"ONNX model {path}"
            if not is_file(path, "ONNX model"):
                raise CompressorError(f"ONNX model not found: {path}")
            model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except CompressorError:
        raise
    except Exception as error:  # protobuf, the loader and the checker raise several unrelated types
        raise CompressorError(f"cannot read {where}: {first_line(error)}") from None
    found = first_non_finite((init.name, numpy_helper.to_array(init))
                             for init in model.graph.initializer if init.data_type in _FLOAT_WEIGHTS)
    if found is not None:
        name, kind = found
        raise CompressorError(f"{where}: initializer {name} contains {kind}")
    return model


@dataclass(frozen=True)
class ModelInput:
    """The model's one input: its name, element type, declared dimensions (a dynamic one by its name) and one
    sample's shape; `fixed_batch` is the batch the model insists on, None when the batch is dynamic."""

    name: str
    elem_type: int
    dims: tuple[int | str, ...]
    sample_shape: tuple[int, ...]
    fixed_batch: int | None

    @property
    def dynamic_batch(self) -> bool:
        return self.fixed_batch is None

    def shown(self) -> str:
        return "(" + ", ".join(map(str, self.dims)) + ")"


def _dims(value: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
                 for d in value.type.tensor_type.shape.dim)


def model_input(model: onnx.ModelProto) -> ModelInput:
    """The single float input of `model`, whose dimensions after the batch must be fixed."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(value.name for value in inputs)
        raise CompressorError(f"expected an ONNX model with exactly one input, got {len(inputs)} ({names})")
    value = inputs[0]
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or tensor.elem_type not in _FLOAT_TYPES:
        kind = onnx.TensorProto.DataType.Name(tensor.elem_type) if value.type.HasField("tensor_type") else "non-tensor"
        raise CompressorError(f"ONNX input {value.name!r} has type {kind}; only float inputs are supported")
    dims = _dims(value)
    if not tensor.HasField("shape") or len(dims) < 2:
        raise CompressorError(f"ONNX input {value.name!r} declares no (batch, ...) shape")
    if not all(isinstance(d, int) for d in dims[1:]):
        raise CompressorError(f"ONNX input {value.name!r} has shape ({', '.join(map(str, dims))}): only the batch "
                              "dimension may be dynamic, one sample's shape must be fixed")
    batch = dims[0] if isinstance(dims[0], int) else None
    return ModelInput(value.name, tensor.elem_type, dims, tuple(int(d) for d in dims[1:]), batch)


def output_dims(model: onnx.ModelProto) -> tuple[int | str, ...]:
    """The declared dimensions of the model's first output (a dynamic one by its name)."""
    if not model.graph.output:
        raise CompressorError("the ONNX model has no output")
    return _dims(model.graph.output[0])
