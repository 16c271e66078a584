"""Tests of CheckOnnxSparsityPass / read_onnx_sparsity: zeros counted in the ONNX file, 2:4 validation."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import compressor.passes.emit_onnx as emit_onnx_module
from compressor.api import export_onnx
from compressor.counting import layer_sparsity, prunable_layers
from compressor.passes.analysis import is_two_four, to_groups, two_four_eligibility, two_four_mask
from compressor.passes.check_onnx_sparsity import (CheckOnnxSparsityPass, OnnxLayerSparsity, distinct_weights,
                                                   read_onnx_sparsity)
from shared import SqueezeExcite, TokenAttention, shared_weight_matmuls


@pytest.fixture(params=["lenet5", "resnet20"])
def exported(request):
    return request.getfixturevalue(f"{request.param}_export")


def _two_four_names(exported) -> list[str]:
    return [f"{name}.weight" for name, layer in prunable_layers(exported.torch_model)
            if two_four_eligibility(layer).eligible]


def test_counted_zeros_equal_the_torch_zeros_per_layer(exported):
    rows = read_onnx_sparsity(exported.proto)
    layers = dict(prunable_layers(exported.torch_model))
    assert sorted(row.name for row in rows) == sorted(f"{name}.weight" for name in layers)
    for row in rows:
        layer = layers[row.name.removesuffix(".weight")]
        weight = layer.weight.detach()
        assert row.shape == tuple(weight.shape), row.name
        assert row.weights == weight.numel(), row.name
        assert row.zeros == int((weight == 0).sum()), row.name
        assert row.sparsity == pytest.approx(row.zeros / row.weights)
        assert row.op_type == ("Gemm" if isinstance(layer, torch.nn.Linear) else "Conv"), row.name
        eligible = two_four_eligibility(layer).eligible
        assert row.two_four_eligible is eligible, row.name
        assert row.two_four is (eligible and is_two_four(to_groups(weight))), row.name
    # The fixture puts 2:4 on every eligible layer and unstructured 50% masks on the others.
    assert all(row.two_four for row in rows if row.two_four_eligible)
    assert any(not row.two_four_eligible for row in rows)


def test_two_four_model_passes_validation(exported):
    expected = _two_four_names(exported)
    assert expected
    result = CheckOnnxSparsityPass(expected)(exported.proto)
    assert result.modified is False
    assert result.model is exported.proto
    assert exported.proto.SerializeToString() == exported.bytes
    assert all(isinstance(row, OnnxLayerSparsity) for row in result.notes["layers"])
    assert {row.name for row in result.notes["layers"]} >= set(expected)
    # Running again is still a pure analysis.
    assert CheckOnnxSparsityPass(expected)(result.model).modified is False


def _break_two_four(proto: onnx.ModelProto, name: str) -> None:
    """Fill one pruned slot of a group of 4 in the initializer `name` (along the input-channel axis)."""
    init = next(i for i in proto.graph.initializer if i.name == name)
    weight = numpy_helper.to_array(init).copy()
    moved = np.moveaxis(weight, 1, -1)  # a view of `weight` with the input channels last
    index = tuple(np.argwhere(moved == 0)[0])  # a pruned slot: its group of 4 holds 2 non-zeros
    moved[index] = 0.5
    init.CopyFrom(numpy_helper.from_array(weight, name))


@pytest.mark.parametrize("layer", ["features.conv2.weight", "classifier.fc1.weight"])
def test_broken_two_four_layer_raises_naming_it(lenet5_export, layer):
    proto = lenet5_export.fresh_proto()
    _break_two_four(proto, layer)
    original = proto.SerializeToString()
    expected = _two_four_names(lenet5_export)
    with pytest.raises(ValueError, match="should be 2:4") as info:
        CheckOnnxSparsityPass(expected)(proto)
    message = str(info.value)
    assert layer in message
    assert all(other not in message for other in expected if other != layer)
    assert proto.SerializeToString() == original
    # Without expectations the same model is only counted.
    rows = {row.name: row for row in CheckOnnxSparsityPass()(proto).notes["layers"]}
    assert rows[layer].two_four is False and rows[layer].two_four_eligible is True


def test_ineligible_layer_expected_two_four_raises(lenet5_export):
    with pytest.raises(ValueError, match=r"features\.conv1\.weight"):
        CheckOnnxSparsityPass(["features.conv1.weight"])(lenet5_export.proto)


def test_missing_expected_layer_raises_naming_it(lenet5_export):
    expected = _two_four_names(lenet5_export) + ["features.conv9.weight"]
    with pytest.raises(ValueError, match=r"not found.*features\.conv9\.weight"):
        CheckOnnxSparsityPass(expected)(lenet5_export.proto)


# ------------------------------------------------------------------------------ hand-built Gemm / MatMul / Conv


def _single_node_model(node, weight: np.ndarray, in_features: int, out_shape) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node],
        "hand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


# Each row holds 2 non-zeros (2:4 along the last axis), but its columns are dense.
ROWS_TWO_FOUR = np.tile(np.array([[1.0, -2.0, 0.0, 0.0]], dtype=np.float32), (8, 1))  # [8, 4]


def test_gemm_trans_b_1_groups_along_the_last_axis():
    # transB=1: the weight is [out=8, in=4]; groups of 4 inputs are its rows, each 2:4.
    model = _single_node_model(helper.make_node("Gemm", ["x", "w"], ["y"], transB=1), ROWS_TWO_FOUR, 4, ["N", 8])
    (row,) = read_onnx_sparsity(model)
    assert (row.name, row.op_type, row.shape) == ("w", "Gemm", (8, 4))
    assert row.node == "y"  # an unnamed node goes by its first output
    assert (row.weights, row.zeros) == (32, 16)
    assert row.two_four_eligible and row.two_four
    assert CheckOnnxSparsityPass(["w"])(model).modified is False


@pytest.mark.parametrize("op_type", ["Gemm", "MatMul"])
def test_gemm_trans_b_0_and_matmul_group_along_the_first_axis(op_type):
    # transB=0 (Gemm's default) and MatMul store [in=8, out=4]; groups of 4 inputs run down the columns, which
    # are dense here: the layer is eligible but not 2:4.
    node = helper.make_node(op_type, ["x", "w"], ["y"], **({"transB": 0} if op_type == "Gemm" else {}))
    model = _single_node_model(node, ROWS_TWO_FOUR, 8, ["N", 4])
    (row,) = read_onnx_sparsity(model)
    assert row.two_four_eligible and not row.two_four
    with pytest.raises(ValueError, match="w"):
        CheckOnnxSparsityPass(["w"])(model)
    # The transposed weight is 2:4 along the inputs.
    model_t = _single_node_model(node, np.ascontiguousarray(ROWS_TWO_FOUR.T), 4, ["N", 8])
    (row_t,) = read_onnx_sparsity(model_t)
    assert row_t.two_four_eligible and row_t.two_four


def test_gemm_without_trans_b_attribute_defaults_to_0():
    model = _single_node_model(helper.make_node("Gemm", ["x", "w"], ["y"]), ROWS_TWO_FOUR, 8, ["N", 4])
    (row,) = read_onnx_sparsity(model)
    assert row.two_four_eligible and not row.two_four


def test_weights_that_are_not_initializers_are_skipped():
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "hand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    assert read_onnx_sparsity(model) == []


def test_grouped_conv_is_not_two_four_eligible_in_onnx_either():
    """torch's two_four_eligibility rejects grouped convolutions; the ONNX reading of the same layer must agree."""
    layer = torch.nn.Conv2d(8, 8, 3, groups=2)  # weight [8, 4, 3, 3]: 4 input channels per group
    assert not two_four_eligibility(layer).eligible
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], group=2)],
        "hand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 3, 3])],
        [numpy_helper.from_array(layer.weight.detach().numpy(), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    (row,) = read_onnx_sparsity(model)
    assert row.two_four_eligible is False




def test_rows_name_the_node_that_reads_the_weight(lenet5_export):
    readers = {node.input[1]: node.name for node in lenet5_export.proto.graph.node if node.op_type in ("Conv", "Gemm")}
    rows = read_onnx_sparsity(lenet5_export.proto)
    assert [(row.name, row.node) for row in rows] == list(readers.items())
    assert all(row.node for row in rows)


def test_a_weight_read_by_two_nodes_gives_a_row_per_node():
    model = shared_weight_matmuls()
    assert [(row.name, row.node) for row in read_onnx_sparsity(model)] == [("w", "first"), ("w", "y")]


def test_rows_built_without_a_node_keep_working():
    row = OnnxLayerSparsity("w", "Gemm", (8, 4), 32, 16, True, True)
    assert row.node == "" and row.sparsity == 0.5


# ------------------------------------------------------------------------ bias-free layers through the exporters


class _SharedLinear(torch.nn.Module):
    """One bias-free Linear applied twice: its weight is read by two nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 16, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.fc(x)))


def _user_layers(kind: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """Small models from outside the zoo whose Linear layers export as MatMul (no bias, or 3-D token inputs)."""
    if kind == "bias_free_mlp":
        return torch.nn.Sequential(torch.nn.Linear(16, 32, bias=False), torch.nn.ReLU(),
                                   torch.nn.Linear(32, 8, bias=False)), (16,)
    if kind == "mixed_bias":
        return torch.nn.Sequential(torch.nn.Linear(16, 32, bias=False), torch.nn.ReLU(), torch.nn.Linear(32, 12),
                                   torch.nn.ReLU(), torch.nn.Linear(12, 8, bias=False)), (16,)
    if kind == "attention":
        return TokenAttention(16), (6, 16)
    if kind == "squeeze_excite":
        return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), SqueezeExcite(16, 8)), (3, 6, 6)
    return _SharedLinear(), (16,)


USER_LAYERS = ["bias_free_mlp", "mixed_bias", "attention", "squeeze_excite", "shared_linear"]


def _two_four_user_model(kind: str) -> tuple[torch.nn.Module, tuple[int, ...], list[str]]:
    """The model with the 2 largest of every 4 input channels kept on each eligible layer, and those names."""
    torch.manual_seed(0)
    model, shape = _user_layers(kind)
    expected = []
    with torch.no_grad():
        for name, layer in prunable_layers(model.eval()):
            if two_four_eligibility(layer).eligible:
                layer.weight.mul_(two_four_mask(layer.weight))
                expected.append(f"{name}.weight")
    return model, shape, expected


@pytest.fixture(params=["torchscript", "dynamo"])
def exporter(request, monkeypatch):
    """Which torch exporter EmitOnnx uses: the TorchScript one first, or torch.export when that one fails."""
    if request.param == "dynamo":
        def unavailable(*args, **kwargs):
            raise RuntimeError("TorchScript exporter unavailable")

        monkeypatch.setattr(emit_onnx_module, "_torchscript_export", unavailable)
    return request.param


@pytest.mark.parametrize("kind", USER_LAYERS)
def test_every_two_four_linear_is_found_by_its_torch_name(kind, exporter, onnx_run, check_outputs):
    model, shape, expected = _two_four_user_model(kind)
    assert any(isinstance(layer, torch.nn.Linear) and layer.bias is None for _, layer in prunable_layers(model))
    exported = export_onnx(model, input_shape=shape, expect_two_four=expected)
    assert exported.notes("EmitOnnx")["exporter"] == exporter
    rows = exported.notes("CheckOnnxSparsity")["layers"]
    by_name = {row.name: row for row in rows}
    assert set(expected) <= by_name.keys()
    assert all(by_name[name].two_four_eligible and by_name[name].two_four for name in expected)
    # Every weight is stored once, under its torch name, whatever node reads it.
    torch_zeros = {f"{row.name}.weight": row.zeros for row in layer_sparsity(model)}
    assert {row.name: row.zeros for row in distinct_weights(rows)} == torch_zeros
    assert len(distinct_weights(rows)) == len(torch_zeros)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        check_outputs(onnx_run(exported.model, x), model(x))


def test_a_shared_linear_is_read_by_two_nodes_and_stored_once():
    model, shape, expected = _two_four_user_model("shared_linear")
    proto = export_onnx(model, input_shape=shape, expect_two_four=expected).model
    rows = read_onnx_sparsity(proto)
    assert [row.name for row in rows] == ["fc.weight", "fc.weight"]
    assert len({row.node for row in rows}) == 2
    assert [init.name for init in proto.graph.initializer] == ["fc.weight"]


def test_a_broken_bias_free_layer_is_named():
    model, shape, expected = _two_four_user_model("attention")
    with torch.no_grad():
        model.k.weight.fill_(1.0)
    with pytest.raises(ValueError, match=r"should be 2:4 are not: k\.weight$"):
        CheckOnnxSparsityPass(expected)(export_onnx(model, input_shape=shape).model)


def _graph(nodes, initializers, x_shape, y_shape) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_a_weight_read_through_a_transpose_is_found_under_its_own_name():
    # The unfolded export of a bias-free Linear: y = x @ Transpose(W), W stored [out=8, in=4] as torch holds it.
    model = _graph([helper.make_node("Transpose", ["w"], ["w_t"], perm=[1, 0]),
                    helper.make_node("MatMul", ["x", "w_t"], ["y"], name="fc")],
                   [numpy_helper.from_array(ROWS_TWO_FOUR, "w")], ["N", 4], ["N", 8])
    (row,) = read_onnx_sparsity(model)
    assert (row.name, row.node, row.shape, row.zeros) == ("w", "fc", (8, 4), 16)
    assert row.two_four_eligible and row.two_four
    # A Transpose without `perm` reverses the axes: the same layer.
    model.graph.node[0].ClearField("attribute")
    assert read_onnx_sparsity(model) == [row]


def test_a_weight_on_the_left_of_a_matmul_groups_along_its_rows():
    # y = W @ x with W [out=8, in=4]: MatMul sums over W's last axis, so each row is a group of 4 inputs.
    model = _graph([helper.make_node("MatMul", ["w", "x"], ["y"], name="left")],
                   [numpy_helper.from_array(ROWS_TWO_FOUR, "w")], [4, "T"], [8, "T"])
    (row,) = read_onnx_sparsity(model)
    assert (row.name, row.node) == ("w", "left") and row.two_four
    with pytest.raises(ValueError, match="should be 2:4"):
        CheckOnnxSparsityPass(["w"])(_graph([helper.make_node("MatMul", ["w", "x"], ["y"])],
                                            [numpy_helper.from_array(np.ascontiguousarray(ROWS_TWO_FOUR.T), "w")],
                                            [8, "T"], [4, "T"]))


def test_distinct_weights_keeps_the_first_row_of_each_initializer():
    rows = read_onnx_sparsity(shared_weight_matmuls())
    assert [(row.name, row.node) for row in distinct_weights(rows)] == [("w", "first")]
