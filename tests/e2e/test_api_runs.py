"""Whole compress and train runs through the Python API on real digits data, of several epochs or several runs
each: 2:4 runs, runs on models from outside the zoo, budget runs, and runs that are interrupted, fail after
training, or resume."""

import onnx
import pytest
import torch

from compressor.api import compress, train_model
from compressor.counting import count_layer_macs
from compressor.errors import CompressorError
from compressor.loading import load_model
from compressor.methods.magnitude import MagnitudeMethod
from compressor.passes.check_onnx_sparsity import read_onnx_sparsity
from compressor.training import _save_state as save_state
from shared import assert_onnx_matches_torch, interrupted_compress


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


def test_interrupted_run_resumes(lenet5_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "o"
    interrupted_compress(monkeypatch, MagnitudeMethod, 2, lenet5_checkpoint, "magnitude", "70%", epochs=3, out=out,
                         progress=False)
    assert not out.exists() and (tmp_path / ".o.partial" / "train-state.pt").exists()
    report = compress(lenet5_checkpoint, "magnitude", "70%", epochs=3, out=out, resume=True, progress=False)
    assert out.exists() and not (tmp_path / ".o.partial").exists()
    assert abs(report.compressed.sparsity - 0.7) < 0.005


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


def test_a_resume_with_other_settings_is_refused_before_any_model_work(lenet5_checkpoint, tmp_path, monkeypatch,
                                                                       caplog):
    interrupted_compress(monkeypatch, MagnitudeMethod, 2, lenet5_checkpoint, "magnitude", "70%", epochs=3,
                         out=tmp_path / "o", progress=False)
    prepared = []
    monkeypatch.setattr(MagnitudeMethod, "prepare", lambda self, model, data: prepared.append(model))
    with caplog.at_level("INFO", logger="compressor"), pytest.raises(CompressorError, match=r"different settings "
                                                                     r"\(lr 0.01 -> 0.2\)"):
        compress(lenet5_checkpoint, "magnitude", "70%", epochs=3, lr=0.2, out=tmp_path / "o", resume=True,
                 progress=False)
    # Nothing was measured, prepared or trained: the error is the only thing the run says.
    assert prepared == [] and not [record for record in caplog.records if record.name.startswith("compressor")]


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
