"""Tests for the onnxruntime backend, on a tiny CNN exported with the dynamo exporter the pipeline uses."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from compressor.errors import CompressorError
from compressor.runtime.ort_backend import CPU_PROVIDER, CUDA_PROVIDER, OrtBackend, default_providers


def _tiny_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 5),
    ).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(torch model, ONNX path) exported once per module: the dynamo exporter takes seconds to start."""
    model = _tiny_cnn()
    path = tmp_path_factory.mktemp("ort") / "tiny.onnx"
    torch.onnx.export(
        model,
        (torch.randn(2, 3, 8, 8),),
        path,
        dynamo=True,
        opset_version=18,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    return model, path


def _two_input_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "two_inputs",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    # IR 10 because onnxruntime rejects the newest IR versions that recent onnx releases stamp by default.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


@pytest.mark.parametrize("batch", [1, 7])
def test_output_matches_torch_at_any_batch(exported, batch):
    model, path = exported
    x = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        reference = model(x).numpy()

    output = OrtBackend(path).run(x.numpy())

    assert output.dtype == np.float32
    assert output.shape == (batch, 5)
    assert np.abs(output - reference).max() <= 1e-5 * np.abs(reference).max()


def test_declared_interface(exported):
    backend = OrtBackend(exported[1])

    assert backend.input_name == "input"
    assert backend.output_name == "logits"
    assert backend.input_shape == (None, 3, 8, 8)
    assert backend.providers == [CPU_PROVIDER]
    assert backend.name == "onnxruntime-cpu"


@pytest.mark.parametrize("form", ["path", "str", "bytes", "proto"])
def test_accepts_every_model_form(exported, form):
    path = exported[1]
    # The exporter may keep weights in a side file; onnx.load pulls them in, so the bytes are self-contained.
    model = {
        "path": lambda: path,
        "str": lambda: str(path),
        "bytes": lambda: onnx.load(path).SerializeToString(),
        "proto": lambda: onnx.load(path),
    }[form]()

    assert OrtBackend(model).run(np.zeros((2, 3, 8, 8), np.float32)).shape == (2, 5)


def test_unavailable_provider_lists_available_ones(exported):
    with pytest.raises(CompressorError) as caught:
        OrtBackend(exported[1], providers=["TensorrtExecutionProvider"])

    message = str(caught.value)
    assert "TensorrtExecutionProvider" in message
    assert all(p in message for p in ort.get_available_providers())
    assert "\n" not in message


def test_empty_provider_list_is_rejected(exported):
    with pytest.raises(CompressorError, match="available execution providers"):
        OrtBackend(exported[1], providers=[])


@pytest.mark.parametrize("corrupt", [b"not an onnx model", b""])
def test_corrupt_bytes_raise_one_line(corrupt):
    with pytest.raises(CompressorError) as caught:
        OrtBackend(corrupt)
    assert "\n" not in str(caught.value)


def test_corrupt_file_raises_one_line(tmp_path, exported):
    path = tmp_path / "truncated.onnx"
    path.write_bytes(exported[1].read_bytes()[:100])

    with pytest.raises(CompressorError) as caught:
        OrtBackend(path)
    assert "\n" not in str(caught.value)


def test_missing_file(tmp_path):
    with pytest.raises(CompressorError, match="not found"):
        OrtBackend(tmp_path / "missing.onnx")


def test_threads_set_session_options(exported):
    backend = OrtBackend(exported[1], threads=2)
    options = backend.session.get_session_options()

    assert backend.threads == 2
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


@pytest.mark.parametrize("spin_wait", [True, False])
def test_spin_wait_sets_the_session_entry(exported, spin_wait):
    backend = OrtBackend(exported[1], threads=1, spin_wait=spin_wait)
    options = backend.session.get_session_options()

    if spin_wait:  # onnxruntime's own default: the entry is absent
        with pytest.raises(RuntimeError):
            options.get_session_config_entry("session.intra_op.allow_spinning")
    else:
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    model, _ = exported
    batch = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = model(batch).numpy()
    assert np.abs(backend.run(batch.numpy()) - expected).max() <= 1e-4 * np.abs(expected).max()


def _profiled_runs(path, runs: int, leave_out=()) -> np.ndarray:
    backend = OrtBackend(path, threads=1, profile=True)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8), dtype=np.float32)
    for _ in range(runs):
        backend.run(x)
    return backend.kernel_times(leave_out)


def test_kernel_times_are_per_run_and_leave_out_the_named_operators(exported):
    every = _profiled_runs(exported[1], 5)
    without_conv = _profiled_runs(exported[1], 5, leave_out=("Conv", "FusedConv"))

    assert every.shape == (5,) and (every > 0).all()
    assert np.median(without_conv) < np.median(every)


def test_kernel_times_need_the_profiler_and_leave_no_file(exported, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="profile=True"):
        OrtBackend(exported[1]).kernel_times()
    backend = OrtBackend(exported[1], profile=True)
    backend.run(np.zeros((1, 3, 8, 8), dtype=np.float32))

    assert backend.kernel_times().shape == (1,)
    assert not list(tmp_path.iterdir()) and not list(Path(backend._profile_dir.name).iterdir())


def test_default_threads_leave_onnxruntime_default(exported):
    backend = OrtBackend(exported[1])

    assert backend.threads is None
    assert backend.session.get_session_options().intra_op_num_threads == 0


def test_non_positive_threads_rejected(exported):
    with pytest.raises(CompressorError, match="threads"):
        OrtBackend(exported[1], threads=0)


def test_input_that_does_not_fit_raises(exported):
    backend = OrtBackend(exported[1])

    with pytest.raises(CompressorError, match="does not fit") as caught:
        backend.run(np.zeros((1, 3, 9, 9), np.float32))
    assert "\n" not in str(caught.value)


def test_float64_input_is_fed_as_declared_float32(exported):
    backend = OrtBackend(exported[1])
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8))

    np.testing.assert_array_equal(backend.run(x), backend.run(x.astype(np.float32)))


def test_models_with_several_inputs_rejected():
    with pytest.raises(CompressorError, match="exactly one input"):
        OrtBackend(_two_input_model())


def test_default_providers_put_cuda_first_when_available(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER])
    assert default_providers() == [CUDA_PROVIDER, CPU_PROVIDER]

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", CPU_PROVIDER])
    assert default_providers() == [CPU_PROVIDER]


def test_cuda_that_fails_to_start_is_reported(exported, monkeypatch, caplog):
    # Claiming CUDA is available on a CPU-only build reproduces onnxruntime's silent fallback to CPU.
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER])

    with pytest.warns(UserWarning), caplog.at_level(logging.WARNING, logger="compressor.runtime.ort_backend"):
        backend = OrtBackend(exported[1])
    assert backend.name == "onnxruntime-cpu"
    assert CUDA_PROVIDER in caplog.text

    with pytest.warns(UserWarning), pytest.raises(CompressorError, match="could not start CUDAExecutionProvider"):
        OrtBackend(exported[1], providers=[CUDA_PROVIDER, CPU_PROVIDER])
