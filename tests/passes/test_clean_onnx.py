"""Tests of CleanOnnxPass on exported zoo models and on hand-built graphs (IR 10, opset 18 for onnxruntime)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor.passes.clean_onnx import CleanOnnxPass, clean_onnx


def _model(nodes, initializers, metadata=None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "hand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10,
                              producer_name="hand-built", producer_version="1.0")
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model


def _dirty_model() -> onnx.ModelProto:
    """y = x * (a + b) + relu(c), where (a + b) and relu(c) are constant subgraphs; plus a dead Sigmoid of x."""
    a = numpy_helper.from_array(np.array([1.0, -2.0, 3.0, 0.5], dtype=np.float32), "a")
    b = numpy_helper.from_array(np.array([0.5, 0.5, -1.0, 2.0], dtype=np.float32), "b")
    c = numpy_helper.from_array(np.array([-1.0, 2.0, -3.0, 4.0], dtype=np.float32), "c")
    nodes = [
        helper.make_node("Add", ["a", "b"], ["scale"], name="fold_add"),
        helper.make_node("Mul", ["x", "scale"], ["scaled"], name="mul"),
        helper.make_node("Relu", ["c"], ["shift"], name="fold_relu"),
        helper.make_node("Add", ["scaled", "shift"], ["y"], name="add"),
        helper.make_node("Sigmoid", ["x"], ["unused"], name="dead"),
    ]
    return _model(nodes, [a, b, c], metadata={"author": "tests", "compressor.method": '"magnitude"'})


@pytest.fixture(params=["lenet5", "resnet20"])
def exported(request):
    return request.getfixturevalue(f"{request.param}_export")


def test_clean_exported_model(exported, onnx_run, check_outputs):
    before = exported.fresh_proto()
    x = exported.inputs(3, seed=11)
    reference = onnx_run(before, x)

    result = CleanOnnxPass()(before)

    assert before.SerializeToString() == exported.bytes, "the pass mutated its input"
    cleaned = result.model
    onnx.checker.check_model(cleaned)
    assert result.notes["nodes_after"] == len(cleaned.graph.node) <= result.notes["nodes_before"]
    assert [i.name for i in cleaned.graph.input] == ["input"] and [o.name for o in cleaned.graph.output] == ["logits"]
    assert cleaned.ir_version == before.ir_version
    check_outputs(onnx_run(cleaned, x), reference)
    if not result.modified:
        assert cleaned is before

    again = CleanOnnxPass()(cleaned)
    assert again.modified is False
    assert again.model is cleaned
    check_outputs(onnx_run(again.model, x), reference)


def test_clean_removes_dead_nodes_and_folds_constants(onnx_run, check_outputs):
    model = _dirty_model()
    original = model.SerializeToString()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    reference = onnx_run(model, x)

    result = CleanOnnxPass()(model)

    assert result.modified is True
    assert model.SerializeToString() == original, "the pass mutated its input"
    cleaned = result.model
    onnx.checker.check_model(cleaned)
    assert result.notes == {"nodes_before": 5, "nodes_after": 2}
    assert sorted(node.op_type for node in cleaned.graph.node) == ["Add", "Mul"]
    assert "Sigmoid" not in {node.op_type for node in cleaned.graph.node}
    check_outputs(onnx_run(cleaned, x), reference)
    # Identity and metadata of the original survive, once each.
    assert cleaned.ir_version == 10
    assert (cleaned.producer_name, cleaned.producer_version) == ("hand-built", "1.0")
    assert [(p.key, p.value) for p in cleaned.metadata_props] == [
        ("author", "tests"), ("compressor.method", '"magnitude"')
    ]

    again = CleanOnnxPass()(cleaned)
    assert again.modified is False and again.model is cleaned
    assert again.notes == {"nodes_before": 2, "nodes_after": 2}


def test_clean_graph_is_not_modified():
    weight = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    model = _model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [weight])
    result = clean_onnx(model)
    assert result is model
    assert CleanOnnxPass()(model).modified is False


def _transposed_weights_model(extra_direct_reader: bool = False) -> onnx.ModelProto:
    """y = (x @ Transpose(w)) @ Transpose(w): the TorchScript export of a bias-free Linear called twice."""
    w = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4) - 7.5, "fc.weight")
    nodes = [
        helper.make_node("Transpose", ["fc.weight"], ["/fc/Transpose_output_0"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "/fc/Transpose_output_0"], ["h"], name="/fc/MatMul"),
        helper.make_node("Transpose", ["fc.weight"], ["/fc_1/Transpose_output_0"], perm=[1, 0]),
        helper.make_node("MatMul", ["h", "/fc_1/Transpose_output_0"], ["z" if extra_direct_reader else "y"]),
    ]
    if extra_direct_reader:
        nodes.append(helper.make_node("Gemm", ["z", "fc.weight"], ["y"], transB=1))
    return _model(nodes, [w])


def test_weights_read_through_transposes_are_stored_pre_transposed_under_their_name(onnx_run, check_outputs):
    before = _transposed_weights_model()
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    result = CleanOnnxPass()(before)
    assert result.modified
    cleaned = result.model
    assert [node.op_type for node in cleaned.graph.node] == ["MatMul", "MatMul"]
    assert [node.input[1] for node in cleaned.graph.node] == ["fc.weight", "fc.weight"]
    (weight,) = cleaned.graph.initializer
    original = numpy_helper.to_array(before.graph.initializer[0])
    np.testing.assert_array_equal(numpy_helper.to_array(weight), original.T)
    check_outputs(onnx_run(cleaned, x), onnx_run(before, x))
    assert CleanOnnxPass()(cleaned).modified is False


def test_a_weight_also_read_directly_keeps_its_layout(onnx_run, check_outputs):
    before = _transposed_weights_model(extra_direct_reader=True)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    cleaned = CleanOnnxPass()(before).model
    stored = {init.name: numpy_helper.to_array(init) for init in cleaned.graph.initializer}
    np.testing.assert_array_equal(stored["fc.weight"], numpy_helper.to_array(before.graph.initializer[0]))
    check_outputs(onnx_run(cleaned, x), onnx_run(before, x))
