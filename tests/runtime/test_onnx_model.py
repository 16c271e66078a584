"""Reading an ONNX classifier: from a path, bytes or proto; its one input; one sample's shape."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor.errors import CompressorError
from compressor.runtime.onnx_model import model_input, output_dims, read_onnx
from shared import shared_weight_matmuls


def _relu(shape, elem_type=TensorProto.FLOAT, inputs=("x",)) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", [inputs[0]], ["y"])], "relu",
        [helper.make_tensor_value_info(name, elem_type, shape) for name in inputs],
        [helper.make_tensor_value_info("y", elem_type, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_reads_paths_bytes_and_protos(tmp_path):
    model = _relu(["N", 3, 8, 8])
    onnx.save(model, tmp_path / "m.onnx")
    for source in (tmp_path / "m.onnx", str(tmp_path / "m.onnx"), model.SerializeToString(), model):
        assert read_onnx(source).graph.node[0].op_type == "Relu"


def test_unreadable_models_are_one_line_errors(tmp_path):
    with pytest.raises(CompressorError, match="ONNX model not found"):
        read_onnx(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x01 not a model")
    with pytest.raises(CompressorError, match=r"cannot read ONNX model .*bad\.onnx") as caught:
        read_onnx(tmp_path / "bad.onnx")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["a" * 300 + ".onnx", "d/" * 2100 + "m.onnx"])
def test_a_path_the_os_refuses_is_a_one_line_error(tmp_path, name):
    with pytest.raises(CompressorError, match=r"^cannot read ONNX model .+\.\.\..+: File name too long$"):
        read_onnx(tmp_path / name)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("values, kind", [([math.nan], "NaN"), ([math.inf], "Inf"),
                                         ([-math.inf, math.nan], "NaN and Inf")])
def test_weights_that_are_not_finite_are_refused_by_initializer(tmp_path, dtype, values, kind):
    model = shared_weight_matmuls()
    weight = np.eye(4, dtype=dtype)
    weight.flat[: len(values)] = values
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "w"))
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(CompressorError) as caught:
        read_onnx(tmp_path / "m.onnx")
    assert str(caught.value) == f"ONNX model {tmp_path / 'm.onnx'}: initializer w contains {kind}"
    with pytest.raises(CompressorError, match=f"^the ONNX model: initializer w contains {kind}$"):
        read_onnx(model.SerializeToString())


def test_input_with_dynamic_or_fixed_batch():
    dynamic = model_input(_relu(["batch", 3, 8, 8]))
    assert (dynamic.name, dynamic.sample_shape, dynamic.fixed_batch, dynamic.dynamic_batch) == (
        "x", (3, 8, 8), None, True)
    assert dynamic.shown() == "(batch, 3, 8, 8)"
    fixed = model_input(_relu([4, 10], TensorProto.FLOAT16))
    assert fixed.fixed_batch == 4 and fixed.sample_shape == (10,) and not fixed.dynamic_batch
    assert output_dims(_relu(["N", 10])) == ("N", 10)


@pytest.mark.parametrize("model, message", [
    (_relu(["N", 4], inputs=("a", "b")), r"exactly one input, got 2 \(a, b\)"),
    (_relu(["N", 4], TensorProto.INT64), "only float inputs"),
    (_relu(["N", 3, "H", 8]), r"\(N, 3, H, 8\): only the batch dimension may be dynamic"),
    (_relu(["N"]), "declares no"),
])
def test_inputs_a_classifier_cannot_have(model, message):
    with pytest.raises(CompressorError, match=message):
        model_input(model)
