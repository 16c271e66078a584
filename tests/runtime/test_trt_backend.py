"""Tests for the TensorRT backend.

What needs no TensorRT (the reason it is unavailable, reading the builder's sparsity messages and the engine
inspector's layer records, the optimization profile, argument checks, the sparsity table) runs everywhere.
Building and running engines needs TensorRT and a CUDA GPU; those tests skip, saying why, where either is
missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper

from compressor.api import export_onnx
from compressor.errors import CompressorError
from compressor.passes.analysis import two_four_mask
from compressor.passes.convert_float16 import convert_float16
from compressor.runtime.bench import benchmark
from compressor.runtime.trt_backend import (
    NOT_INSTALLED,
    BuiltEngine,
    EngineLayer,
    TensorRTBackend,
    build_engine,
    compare_with_onnxruntime,
    engine_layer,
    engine_precision,
    is_sparse_tactic,
    optimization_profile,
    parse_sparsity_messages,
    sparsity_report,
    sparsity_table,
    tensorrt_unavailable,
    two_four_weights,
    use_sparse_weights,
    uses_half,
)
from shared import shared_weight_matmuls

UNAVAILABLE = tensorrt_unavailable()
needs_tensorrt = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"needs TensorRT and a CUDA GPU: {UNAVAILABLE}")
without_tensorrt = pytest.mark.skipif(UNAVAILABLE is None, reason="TensorRT can run here")


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


def _wide_cnn(two_four: bool) -> nn.Module:
    """64 channels into the second conv and the linear layer, so both can hold 2:4 weights."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    ).eval()
    if two_four:
        with torch.no_grad():
            for layer in (model[2], model[6]):
                layer.weight.mul_(two_four_mask(layer.weight))
    return model


@pytest.fixture(scope="module")
def tiny_onnx() -> onnx.ModelProto:
    return export_onnx(_tiny_cnn(), input_shape=(3, 8, 8)).model


@pytest.fixture(scope="module")
def sparse_onnx() -> onnx.ModelProto:
    return export_onnx(_wide_cnn(two_four=True), input_shape=(3, 16, 16)).model


@pytest.fixture(scope="module")
def dense_onnx() -> onnx.ModelProto:
    return export_onnx(_wide_cnn(two_four=False), input_shape=(3, 16, 16)).model


def _single_input_model(elem_type: int, shape: list) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "single_input",
        [helper.make_tensor_value_info("x", elem_type, shape)],
        [helper.make_tensor_value_info("y", elem_type, shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _batch(n: int, shape=(3, 8, 8)) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, *shape), dtype=np.float32)


# --- without TensorRT ----------------------------------------------------------------------------------------


@without_tensorrt
def test_unavailable_reason_here_is_one_line_about_tensorrt():
    assert "TensorRT" in UNAVAILABLE
    assert "\n" not in UNAVAILABLE


def test_missing_tensorrt_is_reported_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # what an absent package looks like to `import`

    assert tensorrt_unavailable() == NOT_INSTALLED
    assert "pip install 'compressor[trt]'" in NOT_INSTALLED


def test_importing_the_module_does_not_import_tensorrt():
    code = "import sys, compressor.runtime.trt_backend; print('tensorrt' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2])

    assert result.stdout.strip() == "False"


@without_tensorrt
def test_building_without_tensorrt_raises_the_reason(tiny_onnx):
    with pytest.raises(CompressorError) as caught:
        build_engine(tiny_onnx, precision="fp32")
    assert str(caught.value) == UNAVAILABLE


@without_tensorrt
def test_loading_without_tensorrt_raises_the_reason(tmp_path):
    path = tmp_path / "model.engine"
    path.write_bytes(b"plan")

    with pytest.raises(CompressorError, match="TensorRT"):
        TensorRTBackend.load(path)


def test_loading_a_missing_engine_file(tmp_path):
    with pytest.raises(CompressorError, match="not found"):
        TensorRTBackend.load(tmp_path / "missing.engine")


def test_sparsity_messages_in_tensorrt_wording():
    messages = [
        "[MemUsageChange] Init CUDA: CPU +0, GPU +0, now: CPU 2007, GPU 3687 (MiB)",
        "(Sparsity) Layers eligible for sparse math: /2/Conv + /3/Relu, /6/Gemm, /9/Conv",
        "(Sparsity) TRT inference plan picked sparse implementation for layers: /2/Conv + /3/Relu",
    ]

    eligible, picked = parse_sparsity_messages(messages)

    assert eligible == ["/2/Conv + /3/Relu", "/6/Gemm", "/9/Conv"]
    assert picked == ["/2/Conv + /3/Relu"]


def test_sparsity_messages_with_nothing_picked_and_trtexec_prefix():
    messages = [
        "[07/19/2022-11:58:20] [I] [TRT] (Sparsity) Layers eligible for sparse math: Conv_22, MatMul_51",
        "[07/19/2022-11:58:20] [I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: ",
    ]

    assert parse_sparsity_messages(messages) == (["Conv_22", "MatMul_51"], [])


def test_no_sparsity_messages_means_no_layers():
    assert parse_sparsity_messages(["Total Host Persistent Memory: 160"]) == ([], [])


@pytest.mark.parametrize(
    ("tactic", "sparse"),
    [
        ("sm80_xmma_fprop_sparse_conv_interleaved_i8i8_i8i32_f32_nchw_vect_c_32kcrs_vect_c_32", True),
        ("sm80_xmma_fprop_sparse_conv_f16f16_f16f16_f16_nhwckrsc_nhwc_tilesize128x128x64_sptensor16x8x32", True),
        ("sm80_xmma_fprop_avdt_sparse_int8int8_i8i32_f32_nhwckrsc_nhwc", True),
        ("sm80_xmma_fprop_implicit_gemm_interleaved_i8i8_i8i32_f32_nchw_vect_c_32kcrs_vect_c_32", False),
        ("sm80_xmma_fprop_avdt_dense_int8int8_i8i32_f32_nhwckrsc_nhwc", False),
        ("", False),
        (None, False),
    ],
)
def test_sparse_tactic_names(tactic, sparse):
    assert is_sparse_tactic(tactic) is sparse


def test_engine_layer_from_detailed_inspector_json():
    info = {
        "Name": "/2/Conv + /3/Relu",
        "LayerType": "CaskConvolution",
        "Inputs": [{"Name": "a", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
        "TacticName": "sm80_xmma_fprop_sparse_conv_f16f16_f16f16_f16_nhwckrsc_nhwc_sptensor16x8x32",
        "Metadata": "[ONNX Layer: /2/Conv]\x1e[ONNX Layer: /3/Relu]",
    }

    layer = engine_layer(info)

    assert layer == EngineLayer("/2/Conv + /3/Relu", "CaskConvolution", info["TacticName"], True,
                                ("/2/Conv", "/3/Relu"))


def test_engine_layer_sparse_because_the_builder_said_so():
    info = {"Name": "/6/Gemm", "LayerType": "gemm", "TacticName": "sm90_xmma_gemm_f16f16_f16f32_f32_tn_n"}

    assert not engine_layer(info).sparse
    assert engine_layer(info, picked={"/6/Gemm"}).sparse


def test_engine_layer_from_names_only_inspector_output():
    assert engine_layer("/0/Conv") == EngineLayer("/0/Conv", "", "", False)
    assert engine_layer("/0/Conv", picked={"/0/Conv"}).sparse


@pytest.mark.parametrize(
    ("tensor", "half"),
    [
        ({"Name": "t", "Format/Datatype": "Row major linear FP16 format (kLINEAR)"}, True),
        ({"Name": "t", "Format/Datatype": "Row major linear FP32 format (kLINEAR)"}, False),
        ({"Name": "t", "Format": "kLINEAR", "DataType": "Half"}, True),
        ({"Name": "t", "Format": "kLINEAR", "DataType": "Float"}, False),
    ],
)
def test_half_tensors_in_inspector_json(tensor, half):
    assert uses_half({"Name": "layer", "Inputs": [], "Outputs": [tensor]}) is half
    assert not uses_half("layer")


def test_precision_read_from_detailed_layer_records():
    half = {"Name": "conv", "Outputs": [{"Name": "t", "Format/Datatype": "Row major linear FP16 format"}]}
    single = {"Name": "conv", "Outputs": [{"Name": "t", "Format/Datatype": "Row major linear FP32 format"}]}

    assert engine_precision([single, half]) == "fp16"
    assert engine_precision([single]) == "tf32"  # FP32 and TF32 look alike: the looser tolerance


@pytest.mark.parametrize("layers", [["/0/Conv", "/2/Gemm"], [{"Name": "/0/Conv"}], []])
def test_precision_of_an_engine_with_layer_names_only_must_be_given(layers):
    with pytest.raises(CompressorError, match=r"pass precision= \(fp32, tf32 or fp16\)") as caught:
        engine_precision(layers)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("two_four", "precision", "sparse", "enabled"),
    [
        (["2.weight"], "fp16", None, True),
        (["2.weight"], "tf32", None, True),
        (["2.weight"], "fp32", None, False),  # sparse tensor cores do not compute in IEEE FP32
        ([], "fp16", None, False),
        (["2.weight"], "fp32", True, True),
        ([], "fp32", True, True),
        (["2.weight"], "fp16", False, False),
    ],
)
def test_sparse_weights_need_two_four_layers_and_a_precision_with_sparse_kernels(two_four, precision, sparse,
                                                                                  enabled):
    assert use_sparse_weights(two_four, precision, sparse) is enabled


def test_profile_spans_the_batch_sizes(tiny_onnx):
    profile = optimization_profile(tiny_onnx, (4, 1))

    assert profile.name == "input"
    assert profile.dynamic_batch
    assert (profile.min_shape, profile.opt_shape, profile.max_shape) == ((1, 3, 8, 8), (4, 3, 8, 8), (4, 3, 8, 8))


def test_profile_of_a_fixed_batch_model():
    model = _single_input_model(TensorProto.FLOAT, [2, 3, 4, 4])

    profile = optimization_profile(model, (2,))
    assert not profile.dynamic_batch
    assert profile.min_shape == profile.max_shape == (2, 3, 4, 4)
    with pytest.raises(CompressorError, match="fixed batch of 2"):
        optimization_profile(model, (1, 2))


def test_dynamic_dimensions_besides_the_batch_are_refused():
    model = _single_input_model(TensorProto.FLOAT, ["N", 3, "H", "W"])

    with pytest.raises(CompressorError, match=r"\(N, 3, H, W\).*only the batch dimension may be dynamic") as caught:
        optimization_profile(model, (1,))
    assert "\n" not in str(caught.value)


def test_non_float_input_is_refused():
    with pytest.raises(CompressorError, match="INT64"):
        optimization_profile(_single_input_model(TensorProto.INT64, ["N", 4]), (1,))


def test_models_with_several_inputs_are_refused():
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "two_inputs",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)

    with pytest.raises(CompressorError, match="exactly one input"):
        optimization_profile(model, (1,))


@pytest.mark.parametrize("sizes", [(), (0,), (1, -2), (True,), (1.5,)])
def test_bad_batch_sizes_are_refused(tiny_onnx, sizes):
    with pytest.raises(CompressorError, match="batch sizes"):
        build_engine(tiny_onnx, precision="fp32", batch_sizes=sizes)


@pytest.mark.parametrize("precision", ["int8", "bf16", "FP16"])
def test_unknown_precision_is_refused_before_anything_is_built(tiny_onnx, precision):
    with pytest.raises(CompressorError, match="unknown precision"):
        build_engine(tiny_onnx, precision=precision)
    with pytest.raises(CompressorError, match="unknown precision"):
        TensorRTBackend.from_onnx(tiny_onnx, precision=precision)


@pytest.mark.parametrize("workspace_mb", [0, -1, 1.5])
def test_bad_workspace_is_refused(tiny_onnx, workspace_mb):
    with pytest.raises(CompressorError, match="workspace_mb"):
        build_engine(tiny_onnx, precision="fp32", workspace_mb=workspace_mb)


def test_fp16_onnx_cannot_be_built_as_fp32(tiny_onnx):
    with pytest.raises(CompressorError, match="already FP16"):
        build_engine(convert_float16(tiny_onnx), precision="fp32")


@pytest.mark.parametrize("corrupt", [b"not an onnx model", b""])
def test_corrupt_onnx_raises_one_line(corrupt):
    with pytest.raises(CompressorError) as caught:
        build_engine(corrupt, precision="fp32")
    assert "\n" not in str(caught.value)


def test_missing_onnx_file(tmp_path):
    with pytest.raises(CompressorError, match="not found"):
        build_engine(tmp_path / "missing.onnx", precision="fp32")


def test_two_four_weights_are_found_in_the_onnx(sparse_onnx, dense_onnx):
    assert two_four_weights(sparse_onnx) == ["2.weight", "6.weight"]
    assert two_four_weights(dense_onnx) == []


def test_sparsity_report_joins_onnx_builder_and_inspector(sparse_onnx):
    built = BuiltEngine(
        serialized=b"",
        precision="fp16",
        sparse_weights=True,
        two_four_layers=["2.weight", "6.weight"],
        eligible_layers=["/2/Conv + /3/Relu", "/6/Gemm"],
        sparse_layers=[],
        tensorrt_version="10.0.0",
        batch_sizes=(1,),
    )
    layers = [EngineLayer("/2/Conv + /3/Relu", "CaskConvolution", "sm80_xmma_fprop_sparse_conv_f16", True,
                          ("/2/Conv", "/3/Relu"))]

    rows = sparsity_report(built, sparse_onnx, layers)

    assert [(r.node, r.weight, r.layout, r.eligible, r.ran_sparse) for r in rows] == [
        ("/0/Conv", "0.weight", "n/a", False, False),
        ("/2/Conv", "2.weight", "2:4", True, True),
        ("/6/Gemm", "6.weight", "2:4", True, False),
    ]
    table = sparsity_table(built, sparse_onnx, layers)
    assert table.splitlines()[0] == "TensorRT 10.0.0, fp16, sparse weights on"
    assert "ran sparse" in table.splitlines()[1]
    assert len(table.splitlines()) == 6


def test_sparsity_report_of_unnamed_nodes_and_a_shared_weight():
    model = shared_weight_matmuls()
    built = BuiltEngine(b"", "fp16", False, [], ["first"], [], "10.0.0", (1,))

    rows = sparsity_report(built, model)

    assert [(r.node, r.weight, r.eligible) for r in rows] == [("first", "w", True), ("y", "w", False)]


def test_describe_joins_the_onnx_layers_with_the_engine(sparse_onnx):
    built = BuiltEngine(b"", "fp16", True, ["2.weight", "6.weight"], ["/2/Conv + /3/Relu", "/6/Gemm"], [],
                        "10.0.0", (1, 8))
    record = {"Name": "/2/Conv + /3/Relu", "LayerType": "CaskConvolution",
              "TacticName": "sm80_xmma_fprop_sparse_conv_f16", "Metadata": "[ONNX Layer: /2/Conv]"}
    # A backend as from_onnx leaves it, without the engine: describe needs only these.
    backend = object.__new__(TensorRTBackend)
    backend.built, backend._onnx, backend._precision, backend._batch_range = built, sparse_onnx, "fp16", (1, 8)
    backend._layer_information = lambda: [record]

    facts = backend.describe()

    assert facts["batch_sizes"] == [1, 8] and facts["batch_range"] == [1, 8]
    assert facts["sparsity"] == [
        {"node": "/0/Conv", "weight": "0.weight", "layout": "n/a", "eligible": False, "ran_sparse": False},
        {"node": "/2/Conv", "weight": "2.weight", "layout": "2:4", "eligible": True, "ran_sparse": True},
        {"node": "/6/Gemm", "weight": "6.weight", "layout": "2:4", "eligible": True, "ran_sparse": False},
    ]
    assert [layer["name"] for layer in facts["layers"]] == ["/2/Conv + /3/Relu"]
    backend._onnx = None
    assert "sparsity" not in backend.describe()


# --- with TensorRT and a CUDA GPU ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engines(tiny_onnx):
    """One engine per precision for the tiny CNN, each running batches 1 to 4."""
    if UNAVAILABLE is not None:
        pytest.skip(f"needs TensorRT and a CUDA GPU: {UNAVAILABLE}")
    return {p: TensorRTBackend(build_engine(tiny_onnx, precision=p, batch_sizes=(1, 4))) for p in ("fp32", "fp16")}


@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("batch", [1, 4])
def test_engine_agrees_with_onnxruntime(engines, tiny_onnx, precision, batch):
    backend = engines[precision]
    x = _batch(batch)

    output = backend.run(x)
    agreement = compare_with_onnxruntime(backend, tiny_onnx, x)

    assert output.dtype == np.float32
    assert output.shape == (batch, 5)
    assert agreement.precision == precision
    assert agreement.ok, agreement.describe()


@needs_tensorrt
def test_tf32_engine_agrees_within_its_tolerance(tiny_onnx):
    backend = TensorRTBackend.from_onnx(tiny_onnx, precision="tf32", batch_sizes=(2,))

    assert compare_with_onnxruntime(backend, tiny_onnx, _batch(2)).ok


@needs_tensorrt
def test_declared_interface(engines):
    backend = engines["fp16"]

    assert backend.name == "tensorrt"
    assert backend.precision == "fp16"
    assert backend.input_name == "input"
    assert backend.input_shape == (None, 3, 8, 8)
    assert backend.batch_range == (1, 4)
    assert backend.built.batch_sizes == (1, 4)
    assert backend.built.tensorrt_version


@needs_tensorrt
@pytest.mark.parametrize("shape", [(5, 3, 8, 8), (1, 3, 9, 9), (3, 8, 8)])
def test_input_that_does_not_fit_raises(engines, shape):
    with pytest.raises(CompressorError, match="does not fit") as caught:
        engines["fp32"].run(np.zeros(shape, np.float32))
    assert "\n" not in str(caught.value)


@needs_tensorrt
def test_fp16_reference_is_refused(engines, tiny_onnx):
    with pytest.raises(CompressorError, match="FP32 ONNX"):
        compare_with_onnxruntime(engines["fp16"], convert_float16(tiny_onnx), _batch(1))


@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_save_and_load_round_trip(engines, tmp_path, precision):
    path = engines[precision].save(tmp_path / f"{precision}.engine")
    x = _batch(3)

    loaded = TensorRTBackend.load(path)

    assert loaded.precision == ("fp16" if precision == "fp16" else "tf32")  # an FP32 plan can't tell TF32 apart
    assert TensorRTBackend.load(path, precision=precision).precision == precision
    assert loaded.input_shape == (None, 3, 8, 8)
    np.testing.assert_allclose(loaded.run(x), engines[precision].run(x), rtol=0, atol=1e-6)


@needs_tensorrt
def test_corrupt_engine_file_says_engines_are_tied_to_gpu_and_version(tmp_path):
    path = tmp_path / "corrupt.engine"
    path.write_bytes(b"this is no TensorRT plan")

    with pytest.raises(CompressorError, match="GPU model and TensorRT version") as caught:
        TensorRTBackend.load(path)
    assert "\n" not in str(caught.value)


@needs_tensorrt
def test_unparsable_onnx_lists_parser_errors():
    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"])],
        "unknown_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)

    with pytest.raises(CompressorError, match="cannot parse the ONNX model") as caught:
        build_engine(model, precision="fp32")
    assert "\n" not in str(caught.value)


@needs_tensorrt
def test_two_four_onnx_enables_sparse_weights(sparse_onnx):
    built = build_engine(sparse_onnx, precision="fp16", batch_sizes=(8,))

    assert built.sparse_weights
    assert built.two_four_layers == ["2.weight", "6.weight"]
    assert set(built.sparse_layers) <= set(built.eligible_layers)
    if torch.cuda.get_device_capability() >= (8, 0):  # sparse tensor cores start with Ampere
        assert built.eligible_layers, "TensorRT reported no layer eligible for sparse math"
    backend = TensorRTBackend(built)
    layers = backend.inspect()
    assert layers and all(layer.name for layer in layers)
    assert "2.weight" in sparsity_table(built, sparse_onnx, layers)
    assert compare_with_onnxruntime(backend, sparse_onnx, _batch(8, (3, 16, 16))).ok


@needs_tensorrt
def test_dense_onnx_leaves_sparse_weights_off(dense_onnx):
    built = build_engine(dense_onnx, precision="fp16")

    assert not built.sparse_weights
    assert built.two_four_layers == []
    assert built.eligible_layers == built.sparse_layers == []


@needs_tensorrt
def test_sparse_weights_can_be_forced_either_way(sparse_onnx, dense_onnx):
    assert build_engine(dense_onnx, precision="fp16", sparse=True).sparse_weights
    assert not build_engine(sparse_onnx, precision="fp16", sparse=False).sparse_weights
    assert build_engine(sparse_onnx, precision="fp32", sparse=True).sparse_weights


@needs_tensorrt
def test_fp32_engine_runs_two_four_layers_dense(sparse_onnx):
    built = build_engine(sparse_onnx, precision="fp32")

    assert not built.sparse_weights
    assert built.two_four_layers == ["2.weight", "6.weight"]
    assert built.sparse_layers == []


@needs_tensorrt
def test_describe_of_a_backend_built_from_onnx(sparse_onnx):
    facts = TensorRTBackend.from_onnx(sparse_onnx, precision="fp16", batch_sizes=(1, 8)).describe()

    assert facts["batch_sizes"] == [1, 8]
    assert [(row["node"], row["weight"], row["layout"]) for row in facts["sparsity"]] == [
        ("/0/Conv", "0.weight", "n/a"), ("/2/Conv", "2.weight", "2:4"), ("/6/Gemm", "6.weight", "2:4")]


@needs_tensorrt
def test_inspector_reports_layers_and_kernels(engines):
    layers = engines["fp32"].inspect()

    assert layers
    assert all(isinstance(layer, EngineLayer) and layer.name for layer in layers)
    assert any(layer.tactic for layer in layers)


@needs_tensorrt
def test_measure_times_with_cuda_events(engines):
    timing = engines["fp16"].measure(_batch(4), warmup=2, runs=5)

    assert timing.timer == "cuda-events"
    assert timing.times_ms.shape == (5,)
    assert np.all(timing.times_ms > 0)


@needs_tensorrt
def test_benchmark_uses_the_engine_timer(engines):
    results = benchmark(engines["fp16"], batch_sizes=(1, 4), warmup=2, runs=3)

    assert [(r.backend, r.batch, r.precision, r.timer) for r in results] == [
        ("tensorrt", 1, "fp16", "cuda-events"),
        ("tensorrt", 4, "fp16", "cuda-events"),
    ]
