"""ConvertFloat16Pass: FP16 weights and activations, FP32 inputs and outputs, 2:4 layers still 2:4."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx

from compressor.passes.check_onnx_sparsity import read_onnx_sparsity
from compressor.passes.convert_float16 import ConvertFloat16Pass, is_float16
from compressor.runtime.tolerance import compare_outputs


def test_converts_weights_keeps_float_io_and_computes_the_same(resnet20_export, onnx_run):
    proto = resnet20_export.fresh_proto()
    result = ConvertFloat16Pass().run(proto)

    assert result.modified and is_float16(result.model) and not is_float16(proto)
    onnx.checker.check_model(result.model)
    for value in (*result.model.graph.input, *result.model.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = resnet20_export.inputs(4).numpy()
    agreement = compare_outputs(onnx_run(result.model, x), onnx_run(proto, x), "fp16")
    assert agreement.ok and agreement.max_abs_diff > 0, agreement.describe()


def test_input_not_mutated_and_second_run_changes_nothing(lenet5_export):
    proto = lenet5_export.fresh_proto()
    before = proto.SerializeToString()
    once = ConvertFloat16Pass().run(proto).model
    again = ConvertFloat16Pass().run(once)

    assert proto.SerializeToString() == before
    assert not again.modified and again.model.SerializeToString() == once.SerializeToString()


def test_two_four_layers_stay_two_four_and_zeros_stay_zero(lenet5_export):
    proto = lenet5_export.fresh_proto()
    converted = ConvertFloat16Pass().run(proto).model
    before = {row.name: row for row in read_onnx_sparsity(proto)}
    after = {row.name: row for row in read_onnx_sparsity(converted)}

    assert any(row.two_four for row in before.values())
    assert {n: r.two_four for n, r in after.items()} == {n: r.two_four for n, r in before.items()}
    assert all(after[n].zeros >= before[n].zeros for n in before)
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in converted.graph.initializer}
    assert all(weights[n].dtype == np.float16 for n in after)


def test_importing_the_converter_leaves_the_users_models_importable(tmp_path):
    """onnxruntime.transformers puts a folder with its own `models` package on sys.path; the user's must still win."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("OWNER = 'user'\n")
    code = ("import compressor.passes.convert_float16, compressor.models as zoo, models; "
            "print(models.OWNER, len(zoo.list_models()))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    owner, count = result.stdout.split()
    assert owner == "user" and int(count) >= 12
