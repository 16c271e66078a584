"""The whole pipeline through the Python API on real digits data: files, facts and failure behaviour.

Runs of several epochs, resumed runs and runs on user models are in tests/e2e/test_api_runs.py.
"""

import json
import math

import numpy as np
import onnx
import pytest
import torch

from compressor.api import compress, parse_target, train_model
from compressor.errors import CompressorError
from compressor.loading import load_model
from compressor.models import create_model
from compressor.methods.magnitude import MagnitudeMethod
from compressor.passes.check_onnx_sparsity import read_onnx_sparsity
from compressor.passes.write_onnx_metadata import read_onnx_metadata
from compressor.runtime.ort_backend import OrtBackend
from shared import assert_onnx_matches_torch, set_values_

REPORT_KEYS = {"method", "target", "pattern", "dense", "compressed", "layers", "onnx", "latency"}


@pytest.fixture(scope="module")
def unstructured(lenet5_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lenet5-85"
    return out, compress(lenet5_checkpoint, "magnitude", "85%", epochs=1, out=out, progress=False)


def test_outputs_are_written_and_consistent(unstructured):
    out, report = unstructured
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.pt", "report.json", "report.md",
                                                     "sparsity.png"]
    saved = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= saved.keys()
    assert {"params", "macs", "accuracy"} <= saved["dense"].keys()
    assert {"params", "params_nonzero", "macs", "sparsity", "accuracy"} <= saved["compressed"].keys()
    assert {"backend", "batch", "threads", "dense_ms", "compressed_ms"} <= saved["latency"].keys()
    assert abs(report.compressed.sparsity - 0.85) < 0.005
    assert 0 <= report.compressed.accuracy <= 1 and 0 <= report.dense.accuracy <= 1
    assert report.onnx.max_abs_diff <= report.onnx.tolerance and report.onnx.opset >= 17
    assert report.latency.dense_ms > 0 and report.latency.compressed_ms > 0
    assert (out / "sparsity.png").read_bytes()[:4] == b"\x89PNG"


def test_onnx_zeros_equal_the_report_and_metadata(unstructured):
    out, report = unstructured
    proto = onnx.load(out / "model.onnx")
    by_name = {row.name: row for row in read_onnx_sparsity(proto)}
    for layer in report.layers:
        assert by_name[f"{layer.name}.weight"].zeros == layer.zeros
    facts = read_onnx_metadata(proto)
    assert facts["method"] == "magnitude" and facts["target"] == 0.85 and facts["pattern"] == "unstructured"
    assert facts["layers"].keys() == {layer.name for layer in report.layers}


def test_checkpoint_reloads_and_matches_onnx(unstructured):
    out, _ = unstructured
    model = load_model(out / "model.pt")
    assert_onnx_matches_torch(model, out / "model.onnx")


def test_existing_output_is_not_touched_without_force(lenet5_checkpoint, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CompressorError, match="--force"):
        compress(lenet5_checkpoint, "magnitude", "50%", epochs=0, out=out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    compress(lenet5_checkpoint, "magnitude", "50%", epochs=0, out=out, force=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "model.onnx").exists()


def test_data_that_does_not_fit_leaves_nothing(lenet5_checkpoint, tmp_path):
    x = np.zeros((4, 3, 32, 32), np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.zeros(4, np.int64), x_test=x, y_test=np.zeros(4, np.int64))
    with pytest.raises(CompressorError, match="1x28x28"):
        compress(lenet5_checkpoint, "magnitude", "50%", data=f"npz:{tmp_path / 'd.npz'}", out=tmp_path / "o",
                 progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


@pytest.mark.parametrize("text, value", [("85%", 0.85), ("0.85", 0.85), (0.5, 0.5), (" 99.5% ", 0.995)])
def test_target_parsing(text, value):
    assert parse_target(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["0%", "100%", "0", "1", "150%", "-5%", "abc", "85%%"])
def test_target_outside_open_interval(text):
    with pytest.raises(CompressorError):
        parse_target(text)


def test_a_module_passed_in_is_not_changed(tmp_path):
    model = create_model("lenet300_100")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compress(model, "magnitude", "50%", epochs=0, out=tmp_path / "o", progress=False)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_a_module_passed_in_with_weights_that_are_not_finite_is_refused_before_any_work(tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started on a model whose weights are not finite")

    monkeypatch.setattr("compressor.api.load_data", no_work)
    model = set_values_(create_model("lenet5"), "classifier.fc1.bias", [math.inf])
    with pytest.raises(CompressorError) as caught:
        compress(model, "magnitude", "50%", out=tmp_path / "o", progress=False)
    assert str(caught.value) == ("the model passed in: weights of layer classifier.fc1 contain Inf "
                                 "(classifier.fc1.bias)")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("settings", [{"epochs": -1}, {"bench_batch": 0}, {"threads": 0}, {"lr": 0.0},
                                      {"batch_size": 0}])
def test_impossible_settings_fail_before_any_work(lenet5_checkpoint, tmp_path, settings):
    with pytest.raises(CompressorError, match="must be"):
        compress(lenet5_checkpoint, "magnitude", "50%", out=tmp_path / "o", progress=False, **settings)
    assert list(tmp_path.iterdir()) == []


def test_training_follows_the_seed_from_the_initial_weights(tmp_path):
    first = train_model("lenet300_100", epochs=0, seed=3, progress=False).model.state_dict()
    again = train_model("lenet300_100", epochs=0, seed=3, progress=False).model.state_dict()
    other = train_model("lenet300_100", epochs=0, seed=4, progress=False).model.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_train_resume_without_a_state_does_not_overwrite(lenet5_checkpoint, tmp_path):
    with pytest.raises(CompressorError, match="--force"):
        train_model("lenet5", lenet5_checkpoint, epochs=1, resume=True, progress=False)


@pytest.fixture(scope="module")
def structured(lenet5_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lenet5-half"
    return out, compress(lenet5_checkpoint, "channel", "50%", epochs=1, out=out, progress=False)


def test_structured_run_writes_a_thinner_model(structured, lenet5_checkpoint):
    out, report = structured
    assert sorted(p.name for p in out.iterdir()) == ["channels.png", "model.onnx", "model.pt", "report.json",
                                                     "report.md"]
    assert report.pattern == "structured" and report.structure is not None
    assert report.structure.macs_removed >= 0.5
    assert report.structure.macs_removed == pytest.approx(1 - report.compressed.macs / report.dense.macs)
    assert report.compressed.params < report.dense.params
    thinner = [row for row in report.structure.layers if row.after is not None and row.after[0] < row.before[0]]
    assert thinner, "some layer lost output channels"
    saved = json.loads((out / "report.json").read_text())
    assert saved["structure"]["macs_removed"] == report.structure.macs_removed
    assert "## Structure" in (out / "report.md").read_text()
    # The file holds the compiled weights (float32) and little else: it shrank with the parameters.
    size = (out / "model.onnx").stat().st_size
    assert 4 * report.compressed.params <= size < 4 * report.compressed.params + 20_000 < 4 * report.dense.params


def test_structured_checkpoint_reloads_with_its_new_shapes(structured):
    out, report = structured
    model = load_model(out / "model.pt")
    shapes = {row.name: row.after for row in report.structure.layers if row.after is not None}
    for name, layer in model.named_modules():
        if name in shapes:
            assert list(layer.weight.shape) == shapes[name]
    x = torch.randn(3, *model.input_shape)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    actual = OrtBackend(out / "model.onnx").run(x.numpy())
    assert np.max(np.abs(actual - expected)) <= 1e-4 * np.max(np.abs(expected))


def test_a_model_that_cannot_be_saved_is_refused_before_any_work(tmp_path, monkeypatch):
    from shared import UserNet

    def no_work(*args, **kwargs):
        raise AssertionError("work started on a model that cannot be saved")

    monkeypatch.setattr("compressor.api.load_data", no_work)
    model = UserNet()
    model.input_shape = (1, 8, 8)
    model.batches = (batch for batch in range(3))
    with pytest.raises(CompressorError, match="cannot be saved.*generator"):
        compress(model, "magnitude", "50%", epochs=1, out=tmp_path / "o", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_torchscript_archive_is_refused_as_such(tmp_path):
    # Checked before the save check, which a ScriptModule fails too but with a message that misleads.
    traced = torch.jit.trace(create_model("lenet300_100").eval(), torch.randn(1, 1, 28, 28))
    torch.jit.save(traced, str(tmp_path / "ts.pt"))
    with pytest.raises(CompressorError, match="TorchScript archive"):
        compress(tmp_path / "ts.pt", "magnitude", "50%", out=tmp_path / "o", input_shape=(1, 28, 28), progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["ts.pt"]
