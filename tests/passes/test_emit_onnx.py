"""Tests of EmitOnnxPass on zoo models (exported once per session by the conftest fixtures)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from compressor.counting import prunable_layers
from compressor.passes.emit_onnx import DEFAULT_OPSET, EmitOnnxPass, emit_onnx


@pytest.fixture(params=["lenet5", "resnet20"])
def exported(request):
    return request.getfixturevalue(f"{request.param}_export")


def test_export_is_a_valid_model_with_named_io(exported):
    result = exported.result
    proto = exported.proto
    assert result.modified is True
    assert isinstance(proto, onnx.ModelProto)
    onnx.checker.check_model(proto, full_check=True)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 17 and opset == DEFAULT_OPSET == result.notes["opset"]
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value"), "the batch axis must be dynamic"
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert tuple(dims) == tuple(exported.torch_model.input_shape)


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_outputs_equal_torch_at_any_batch(exported, batch, onnx_run, torch_run, check_outputs):
    x = exported.inputs(batch, seed=batch)
    reference = torch_run(exported.torch_model, x)
    actual = onnx_run(exported.proto, x)
    assert actual.shape == (batch, 10)
    check_outputs(actual, reference)


def test_weights_are_dense_initializers_with_the_torch_zeros(exported, bn_count):
    """Every Conv/Linear weight is a dense initializer named "<layer>.weight" with exactly the torch zeros.

    The exporter folds eval-mode BatchNorm into the preceding convolution's initializer (values change, zeros
    do not); without BatchNorm the values are the torch weights themselves.
    """
    proto = exported.proto
    assert len(proto.graph.sparse_initializer) == 0
    initializers = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    has_bn = bn_count(exported.torch_model) > 0
    for name, layer in prunable_layers(exported.torch_model):
        weight = initializers[f"{name}.weight"]
        expected = layer.weight.detach().numpy()
        assert weight.shape == expected.shape, name
        np.testing.assert_array_equal(weight == 0, expected == 0, err_msg=name)
        assert (expected == 0).any(), f"{name}: the fixture model should be sparse"
        if not has_bn:
            np.testing.assert_array_equal(weight, expected, err_msg=name)


def test_export_does_not_mutate_the_torch_model(exported, check_unchanged):
    check_unchanged(exported.torch_model, exported.state_before)


def test_running_on_a_model_proto_is_not_modified(exported):
    result = EmitOnnxPass(exported.torch_model.input_shape)(exported.proto)
    assert result.modified is False
    assert result.model is exported.proto
    assert result.notes["opset"] == DEFAULT_OPSET
    assert exported.proto.SerializeToString() == exported.bytes


@pytest.mark.parametrize("opset", [11, 16])
def test_opset_below_17_raises(opset):
    with pytest.raises(ValueError, match=f"opset {opset}.*17"):
        EmitOnnxPass((1, 28, 28), opset=opset)
    with pytest.raises(ValueError):
        emit_onnx(torch.nn.Identity(), (1, 28, 28), opset=opset)


def test_torchscript_archive_exports_through_the_torchscript_exporter(tmp_path, onnx_run, check_outputs):
    eager = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    scripted = torch.jit.trace(eager, torch.randn(1, 1, 8, 8))
    result = EmitOnnxPass((1, 8, 8)).run(scripted)
    assert result.modified and result.notes["opset"] >= 17
    for batch in (1, 5):
        x = torch.randn(batch, 1, 8, 8)
        check_outputs(onnx_run(result.model, x), eager(x).detach().numpy())
    assert EmitOnnxPass((1, 8, 8)).run(result.model).modified is False


class _PerSampleLoop(nn.Module):
    """Loops over the batch in Python: a trace bakes the traced batch size in without any TracerWarning."""

    input_shape = (1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(x.flatten(1))
        return torch.stack([logits[i] for i in range(x.shape[0])])


class _DividesByBatch(nn.Module):
    """Computes with the batch size as a Python number, which fixes it for every exporter."""

    input_shape = (1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) / len(x)


def test_a_faithful_trace_takes_the_torchscript_exporter(exported):
    assert EmitOnnxPass(exported.torch_model.input_shape).run(exported.torch_model).notes["exporter"] == "torchscript"


@pytest.mark.parametrize("model_class", [_PerSampleLoop, _DividesByBatch])
def test_a_forward_that_fixes_the_batch_is_refused_not_exported_wrong(model_class):
    # The loop traces without a TracerWarning into an ONNX that is wrong at other batch sizes; the check at
    # batch 1 and 3 catches it, and torch.export then specialises the batch, which the pass refuses.
    model = model_class().eval()
    with pytest.raises(ValueError, match="fixes the batch size"):
        EmitOnnxPass(model.input_shape).run(model)
