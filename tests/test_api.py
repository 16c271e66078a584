"""The whole pipeline through the Python API on real digits data: files, facts and failure behaviour."""

import json
import math

import numpy as np
import onnx
import pytest
import torch

from compressor.api import compress, parse_target, train_model
from compressor.counting import count_layer_macs
from compressor.errors import CompressorError
from compressor.loading import load_model
from compressor.models import create_model
from compressor.methods.magnitude import MagnitudeMethod
from compressor.passes.check_onnx_sparsity import read_onnx_sparsity
from compressor.passes.write_onnx_metadata import read_onnx_metadata
from compressor.runtime.ort_backend import OrtBackend
from compressor.training import _save_state as save_state
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


def test_two_four_run(lenet5_checkpoint, tmp_path):
    report = compress(lenet5_checkpoint, "magnitude", pattern="2:4", epochs=1, out=tmp_path / "o", progress=False)
    layers = {row.name: row for row in report.layers}
    assert layers["features.conv1"].pattern == "dense" and "in_channels=1" in layers["features.conv1"].note
    for row in report.layers:
        if row.pattern == "2:4":
            assert row.sparsity == 0.5
    rows = read_onnx_sparsity(onnx.load(tmp_path / "o" / "model.onnx"))
    assert all(row.two_four for row in rows if row.name != "features.conv1.weight")


def test_two_four_run_on_a_user_model_with_bias_free_linears(tmp_path):
    from shared import BiasFreeUserNet

    torch.manual_seed(0)
    torch.save(BiasFreeUserNet(), tmp_path / "user.pt")
    report = compress(tmp_path / "user.pt", "magnitude", pattern="2:4", epochs=1, out=tmp_path / "o",
                      trust_model=True, input_shape=(1, 8, 8), bench_runs=3, progress=False)
    linears = [row for row in report.layers if row.kind == "Linear"]
    assert linears and all(row.pattern == "2:4" and row.sparsity == 0.5 for row in linears)
    rows = {row.name: row for row in read_onnx_sparsity(onnx.load(tmp_path / "o" / "model.onnx"))}
    for layer in report.layers:
        assert rows[f"{layer.name}.weight"].two_four is (layer.pattern == "2:4"), layer.name
        assert rows[f"{layer.name}.weight"].zeros == layer.zeros, layer.name
    model = load_model(tmp_path / "o" / "model.pt", trust=True)
    assert_onnx_matches_torch(model, tmp_path / "o" / "model.onnx")
    assert report.onnx.max_abs_diff <= report.onnx.tolerance


def test_magnitude_run_prunes_and_counts_a_conv_transpose_decoder(tmp_path):
    from shared import EncoderDecoderNet

    torch.manual_seed(0)
    torch.save(EncoderDecoderNet(), tmp_path / "user.pt")
    report = compress(tmp_path / "user.pt", "magnitude", "85%", epochs=1, out=tmp_path / "o", trust_model=True,
                      input_shape=(1, 8, 8), bench_runs=3, progress=False)
    decoder = next(row for row in report.layers if row.name == "decoder.0")
    assert decoder.kind == "ConvTranspose2d" and decoder.zeros > 0 and decoder.pattern == "unstructured"
    model = load_model(tmp_path / "o" / "model.pt", trust=True)
    layer_macs = count_layer_macs(model, (1, 8, 8))
    assert layer_macs["decoder.0"].macs == 4 * 4 * 32 * 16 * 2 * 2  # 4x4 input positions × weights
    assert report.compressed.macs == sum(m.macs for m in layer_macs.values())
    assert report.dense.macs == report.compressed.macs
    assert report.compressed.macs_nonzero == sum(m.macs_nonzero for m in layer_macs.values())
    rows = {row.name: row for row in read_onnx_sparsity(onnx.load(tmp_path / "o" / "model.onnx"))}
    assert rows["decoder.0.weight"].op_type == "ConvTranspose" and rows["decoder.0.weight"].zeros == decoder.zeros
    assert_onnx_matches_torch(model, tmp_path / "o" / "model.onnx")
    assert report.onnx.max_abs_diff <= report.onnx.tolerance


def test_existing_output_is_not_touched_without_force(lenet5_checkpoint, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CompressorError, match="--force"):
        compress(lenet5_checkpoint, "magnitude", "50%", epochs=0, out=out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    compress(lenet5_checkpoint, "magnitude", "50%", epochs=0, out=out, force=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "model.onnx").exists()


def interrupted_compress(monkeypatch, method_class, epoch, *args, **kwargs):
    """Run `compress` and stop it like Ctrl-C right after `epoch` has been trained (and its state saved)."""
    original = method_class.after_epoch

    def interrupt(self, model, finished):
        original(self, model, finished)
        if finished == epoch:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(method_class, "after_epoch", interrupt)
        with pytest.raises(KeyboardInterrupt):
            compress(*args, **kwargs)


def test_interrupted_run_resumes(lenet5_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "o"
    interrupted_compress(monkeypatch, MagnitudeMethod, 2, lenet5_checkpoint, "magnitude", "70%", epochs=3, out=out,
                         progress=False)
    assert not out.exists() and (tmp_path / ".o.partial" / "train-state.pt").exists()
    report = compress(lenet5_checkpoint, "magnitude", "70%", epochs=3, out=out, resume=True, progress=False)
    assert out.exists() and not (tmp_path / ".o.partial").exists()
    assert abs(report.compressed.sparsity - 0.7) < 0.005


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


def test_resume_refuses_a_different_target(lenet5_checkpoint, tmp_path, monkeypatch):
    interrupted_compress(monkeypatch, MagnitudeMethod, 2, lenet5_checkpoint, "magnitude", "90%", epochs=3,
                         out=tmp_path / "o", progress=False)
    state = tmp_path / ".o.partial" / "train-state.pt"
    saved = state.read_bytes()
    with pytest.raises(CompressorError, match=r"different settings \(target 0.9 -> 0.3\); to continue it, run with "
                                              "the settings of the interrupted run and --resume"):
        compress(lenet5_checkpoint, "magnitude", "30%", epochs=3, out=tmp_path / "o", resume=True, progress=False)
    assert not (tmp_path / "o").exists() and state.read_bytes() == saved
    with pytest.raises(CompressorError, match="no such file; the training state is kept in .*: fix that and run "
                                              "again with --resume"):
        compress(lenet5_checkpoint, "magnitude", "90%", epochs=3, out=tmp_path / "o", resume=True, progress=False,
                 data=f"npz:{tmp_path / 'missing.npz'}")
    assert state.read_bytes() == saved


def test_a_failure_after_training_resumes_without_training_again(lenet5_checkpoint, tmp_path, monkeypatch, caplog):
    def full_disk(*args):
        raise CompressorError("cannot write model.onnx: No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("compressor.api.verify_onnx", full_disk)
        with pytest.raises(CompressorError, match="the training state is kept"):
            compress(lenet5_checkpoint, "magnitude", "70%", epochs=2, out=tmp_path / "o", progress=False)
    assert sorted(p.name for p in (tmp_path / ".o.partial").iterdir()) == ["train-state.pt"]
    with caplog.at_level("INFO"):
        compress(lenet5_checkpoint, "magnitude", "70%", epochs=2, out=tmp_path / "o", resume=True, progress=False)
    assert "resuming from" in caplog.text and "after epoch 2 of 2" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_a_refused_train_resume_keeps_its_state(tmp_path, monkeypatch):
    def save_then_stop(*args):
        save_state(*args)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr("compressor.training.loop._save_state", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            train_model("lenet300_100", tmp_path / "m.pt", epochs=2, progress=False)
    state = tmp_path / ".m.pt.train-state"
    saved = state.read_bytes()
    with pytest.raises(CompressorError, match=r"different settings \(lr 0.05 -> 0.1\)"):
        train_model("lenet300_100", tmp_path / "m.pt", epochs=2, lr=0.1, resume=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [state.name] and state.read_bytes() == saved
    train_model("lenet300_100", tmp_path / "m.pt", epochs=2, resume=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


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


def test_budget_run_hits_the_target_and_reports_predictions(lenet5_checkpoint, tmp_path):
    report = compress(lenet5_checkpoint, "budget", "85%", epochs=3, out=tmp_path / "b", progress=False)
    assert abs(report.compressed.sparsity - 0.85) <= 0.002
    layers = {row.name: row for row in report.layers}
    assert layers["features.conv1"].pattern == "dense" and "min_weights" in layers["features.conv1"].note
    assert all(row.predicted_sparsity is not None for row in report.layers if row.pattern == "unstructured")
    assert report.seconds_per_epoch > 0
    assert "| predicted |" in (tmp_path / "b" / "report.md").read_text()
    assert report.method_config["loss"] == "squared"


def test_budget_resumes_across_the_freeze(lenet5_checkpoint, tmp_path, monkeypatch):
    from compressor.methods.budget import BudgetMethod

    uninterrupted = compress(lenet5_checkpoint, "budget", "85%", epochs=4, out=tmp_path / "a", progress=False,
                             method_options={"finetune_fraction": 0.5})
    # Epoch 3 comes after the freeze at epoch 2: the resume must restore the frozen masks.
    interrupted_compress(monkeypatch, BudgetMethod, 3, lenet5_checkpoint, "budget", "85%", epochs=4,
                         out=tmp_path / "b", progress=False, method_options={"finetune_fraction": 0.5})
    resumed = compress(lenet5_checkpoint, "budget", "85%", epochs=4, out=tmp_path / "b", resume=True, progress=False,
                       method_options={"finetune_fraction": 0.5})
    assert resumed.compressed.sparsity == uninterrupted.compressed.sparsity
    assert resumed.compressed.accuracy == uninterrupted.compressed.accuracy
    assert [row.zeros for row in resumed.layers] == [row.zeros for row in uninterrupted.layers]


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


def test_structured_run_on_a_user_model(tmp_path):
    from shared import UserNet

    torch.save(UserNet(), tmp_path / "user.pt")
    report = compress(tmp_path / "user.pt", "channel", "40%", epochs=1, out=tmp_path / "o", trust_model=True,
                      input_shape=(1, 8, 8), progress=False)
    assert report.structure.macs_removed >= 0.4
    model = load_model(tmp_path / "o" / "model.pt", trust=True, input_shape=(1, 8, 8)).eval()
    assert model.separable[0].groups == model.separable[0].out_channels == model.separable[0].in_channels
    assert model.left[0].in_channels == model.right[0].in_channels == model.separable[3].out_channels
    assert model.branch[0].in_channels == model.left[0].out_channels + model.right[0].out_channels
    assert model.head[1].in_features == model.branch[3].out_channels * 16
    assert_onnx_matches_torch(model, tmp_path / "o" / "model.onnx")


def test_structured_run_resumes_to_the_same_model(lenet5_checkpoint, tmp_path, monkeypatch):
    from compressor.methods.channel import ChannelMethod

    uninterrupted = compress(lenet5_checkpoint, "channel", "50%", epochs=2, out=tmp_path / "a", progress=False)
    interrupted_compress(monkeypatch, ChannelMethod, 1, lenet5_checkpoint, "channel", "50%", epochs=2,
                         out=tmp_path / "b", progress=False)
    resumed = compress(lenet5_checkpoint, "channel", "50%", epochs=2, out=tmp_path / "b", resume=True, progress=False)
    assert resumed.structure.layers == uninterrupted.structure.layers
    assert resumed.compressed.accuracy == uninterrupted.compressed.accuracy
    first, second = load_model(tmp_path / "a" / "model.pt"), load_model(tmp_path / "b" / "model.pt")
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_model_only_cloudpickle_can_write_gets_all_its_outputs(tmp_path):
    from shared import write_cloudpickled_lambda_model

    source = write_cloudpickled_lambda_model(tmp_path / "lambda.pt")
    out = tmp_path / "o"
    compress(source, "magnitude", "50%", epochs=1, out=out, trust_model=True, input_shape=(1, 8, 8), bench_runs=2,
             progress=False)
    assert {"model.onnx", "model.pt", "report.json", "report.md"} <= {p.name for p in out.iterdir()}
    with pytest.raises(CompressorError, match="--trust-model"):
        load_model(out / "model.pt")
    model = load_model(out / "model.pt", trust=True)
    assert model.input_shape == (1, 8, 8) and model.activation.__name__ == "<lambda>"
    assert_onnx_matches_torch(model, out / "model.onnx")


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
