"""Switcher networks (seed 001): switch shapes and values, the switched forward, the alternating schedule that leaves
the frozen network bit-identical, the exact task loss, the top-up to a target, and finalize into weight masks or
into neurons that compile away."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.cli import main
from compressor.errors import CompressorError
from compressor.loading import load_model, save_checkpoint
from compressor.methods import create_method
from compressor.methods.switcher import SwitcherNet, layer_switches, phase_factor, switched_weight
from compressor.models import create_model
from compressor.modules import copy_model
from compressor.passes.pipeline import compile_model
from compressor.training import TrainConfig, train
from shared import assert_onnx_matches_torch, random_data

SMALL = {"encoder_channels": "4", "bottleneck_channels": 4}  # a switcher small enough for the test suite's time


def mlp_with_batchnorm() -> nn.Module:
    """Flatten → fc1 → BatchNorm → ReLU → fc2 → ReLU → fc3: hidden neurons behind a BatchNorm and behind a plain ReLU."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(),
                          nn.Linear(24, 10))
    model.input_shape = (1, 8, 8)
    return model


def switched(model, target=None, **options):
    torch.manual_seed(0)
    method = create_method("switcher", target, **{**SMALL, **options})
    method.prepare(model, random_data(model.input_shape))
    return model, method


@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_switch_shapes_values_and_the_switched_forward(mode):
    model, method = switched(create_model("lenet300_100"), mode=mode)
    assert method.gated == (["features.fc1", "features.fc2", "classifier.fc"] if mode == "connection"
                            else ["features.fc2", "classifier.fc"])  # neuron mode leaves the pixels alone
    x = torch.randn(5, 300)
    for name in method.gated:
        layer = model.get_submodule(name)
        weight = layer.parametrizations.weight.original
        switches = layer_switches(layer)
        assert switches.shape == (weight.shape if mode == "connection" else weight.shape[1:])
        # ReLU switches: never negative, exact zeros from the start, and values above 1 kept (not clipped).
        assert (switches >= 0).all() and (switches == 0).any() and (switches > 1).any()
        if weight.shape[1] == 300:
            expected = (F.linear(x, weight * switches, layer.bias) if mode == "connection"
                        else F.linear(x * switches, weight, layer.bias))
            assert torch.allclose(layer(x), expected, atol=1e-6)
    # The calibrated start: half the switches at 0, the others averaging 1.
    for name in method.gated:
        switches = layer_switches(model.get_submodule(name))
        # (The switch at the median may come out a rounding error above 0.)
        on = switches > 1e-6
        assert 0.4 <= on.float().mean().item() <= 0.5 and switches[on].mean().item() == pytest.approx(1.0, rel=1e-4)
    # Convolutions are never switched.
    _, conv_method = switched(create_model("lenet5"))
    assert conv_method.gated == ["classifier.fc1", "classifier.fc2"]
    assert set(conv_method.skipped) == {"features.conv1", "features.conv2"}


def test_the_neuron_switcher_reduces_each_row_to_one_value():
    net = SwitcherNet(7, 5, "neuron", [3, 4], 6)
    assert net(torch.randn(7, 5)).shape == (5,)
    net = SwitcherNet(7, 5, "connection", [3, 4], 6)
    assert net(torch.randn(7, 5)).shape == (7, 5)
    # The input is normalised by the weights' spread: rescaling W leaves the switches as they were.
    weight = torch.randn(7, 5)
    assert torch.allclose(net(weight), net(10 * weight), atol=1e-5)


def test_each_network_anneals_over_its_own_epochs_only():
    steps, epochs = 4, 6
    switcher = [phase_factor(s, steps, epochs, parity=1) for s in range(steps * epochs)]
    task = [phase_factor(s, steps, epochs, parity=0) for s in range(steps * epochs)]
    assert switcher[0] == 1.0 and task[steps] == 1.0
    # While the other network trains a factor stays where it was.
    assert switcher[steps:2 * steps] == [switcher[2 * steps]] * steps and task[:steps] == [1.0] * steps
    assert all(a >= b for a, b in zip(switcher, switcher[1:])) and all(a >= b for a, b in zip(task, task[1:]))
    # Each has annealed through 11 of its 12 steps before its last one.
    assert task[-1] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(11 / 12 * torch.pi)).item()))


class Recording:
    """Copies of the task network's state and of the switchers' parameters after every epoch."""

    def __init__(self, method, model):
        self.method, self.model, self.task, self.switchers = method, model, [], []
        original = method.after_epoch

        def after_epoch(model, epoch):
            original(model, epoch)
            self.task.append({k: v.clone() for k, v in model.state_dict().items() if ".switcher." not in k})
            self.switchers.append([p.detach().clone() for p in method.switchers])

        method.after_epoch = after_epoch


def test_alternating_epochs_leave_the_frozen_network_bit_identical():
    model, method = switched(mlp_with_batchnorm())
    data = random_data(model.input_shape)
    before_task = {k: v.clone() for k, v in model.state_dict().items() if ".switcher." not in k}
    before_switchers = [p.detach().clone() for p in method.switchers]
    record = Recording(method, model)
    # Weight decay and momentum on both sides: a frozen parameter must still not move.
    train(model, data.train, data.test, TrainConfig(epochs=3, lr=0.05, weight_decay=5e-4), hooks=method, progress=False)
    # Epoch 1 trains the switchers: the task network, BatchNorm statistics included, is untouched.
    for key, value in before_task.items():
        assert torch.equal(record.task[0][key], value), key
    assert any(not torch.equal(a, b) for a, b in zip(record.switchers[0], before_switchers))
    # Epoch 2 trains the task network (its BatchNorm statistics move): the switchers are untouched.
    assert all(torch.equal(a, b) for a, b in zip(record.switchers[1], record.switchers[0]))
    assert not torch.equal(record.task[1]["2.running_mean"], record.task[0]["2.running_mean"])
    assert not torch.equal(record.task[1]["1.parametrizations.weight.original"],
                           record.task[0]["1.parametrizations.weight.original"])
    # Epoch 3 trains the switchers again.
    for key, value in record.task[1].items():
        assert torch.equal(record.task[2][key], value), key


def test_the_loss_is_the_task_cross_entropy_alone():
    model, method = switched(mlp_with_batchnorm(), snn_lr=0.0)
    data = random_data(model.input_shape)
    assert method.extra_loss(model) is None
    # A switcher epoch at rate 0 changes nothing, so the loop's mean loss is the plain cross-entropy of the batches
    # (the task network's BatchNorm is in eval mode during switcher epochs).
    model.eval()
    with torch.no_grad():
        expected = sum(F.cross_entropy(model(x), y, reduction="sum").item() for x, y in data.train) / 48
    result = train(model, data.train, data.test, TrainConfig(epochs=1), hooks=method, progress=False)
    assert result.history[0].train_loss == pytest.approx(expected, rel=1e-6)


def test_connection_finalize_writes_w_times_z_as_a_masked_weight():
    model, method = switched(create_model("lenet300_100"))
    expected = {name: (model.get_submodule(name).weight.detach().clone(), layer_switches(model.get_submodule(name)))
                for name in method.gated}
    reference = copy_model(model).eval()
    method.finalize(model)
    x = torch.randn(4, *model.input_shape)
    assert torch.allclose(model.eval()(x), reference(x), atol=1e-5)
    for name, (weight, switches) in expected.items():
        layer = model.get_submodule(name)
        assert torch.equal(layer.weight, weight) and torch.equal(layer.weight_mask, (weight != 0).float())
        assert (layer.weight[switches == 0] == 0).all()  # the zeros hold at least the switches' zeros
    assert not any(".switcher." in name for name, _ in model.named_parameters())


def test_neuron_mode_compiles_to_the_neurons_switched_on():
    model, method = switched(mlp_with_batchnorm(), mode="neuron")
    assert method.gated == ["4", "6"]  # the BatchNorm-and-ReLU path and the plain ReLU path; fc1 reads pixels
    switches = {}
    for name in method.gated:
        # The switchers' own values, with every third neuron switched off so that each layer loses some.
        z = layer_switches(model.get_submodule(name)).clone()
        z[::3] = 0
        switched_weight(model.get_submodule(name)).fixed = switches[name] = z
    model.eval()
    x = torch.randn(6, *model.input_shape)
    reference = model(x).detach()
    method.finalize(model)
    compiled = compile_model(model, model.input_shape).model.eval()
    out = compiled(x)
    assert (out - reference).abs().max() <= 1e-5 * reference.abs().max()
    assert compiled[4].in_features == int((switches["4"] > 0).sum()) == compiled[1].out_features == compiled[2].num_features
    assert compiled[6].in_features == int((switches["6"] > 0).sum()) == compiled[4].out_features
    assert not any("switcher" in name for name, _ in compiled.named_parameters())
    assert method.details["layers"]["4"]["neurons_switched_off"] == int((switches["4"] == 0).sum())


def test_neuron_switches_on_a_flattened_map_fold_into_columns_and_remove_whole_channels():
    model, method = switched(create_model("lenet5"), mode="neuron")
    fc1 = model.get_submodule("classifier.fc1")
    # Every position of conv2's channel 3 switched off, and one position of channel 5 only.
    z = torch.ones(800)
    z[3 * 16:4 * 16] = 0
    z[5 * 16 + 2] = 0
    switched_weight(fc1).fixed = z
    model.eval()
    x = torch.randn(3, *model.input_shape)
    reference = model(x).detach()
    method.finalize(model)
    compiled = compile_model(model, model.input_shape).model.eval()
    assert (compiled(x) - reference).abs().max() <= 1e-5 * reference.abs().max()
    # Channel 3 leaves conv2 with its 16 columns; channel 5's lone column stays, as zeros.
    assert compiled.get_submodule("features.conv2").out_channels == 49
    assert compiled.get_submodule("classifier.fc1").in_features == 784
    assert (compiled.get_submodule("classifier.fc1").weight[:, 4 * 16 + 2] == 0).all()


@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_a_target_tops_up_the_emergent_sparsity_and_trains_with_the_switches_frozen(mode):
    model, method = switched(create_model("lenet300_100"), target=0.98, mode=mode)
    data = random_data(model.input_shape)
    method.fit(model, data, TrainConfig(epochs=2, lr=0.01), progress=False)
    details = method.details
    assert details["topped_up"] and details["emergent_sparsity"] < 0.98
    gated = sum(model.get_submodule(name).weight.numel() for name in method.gated)
    zeros = sum(int((model.get_submodule(name).weight == 0).sum()) for name in method.gated)
    assert zeros / gated == details["final_sparsity"]
    # Connection mode reaches the target within one weight; neuron mode within one column of the widest layer.
    slack = 1 if mode == "connection" else max(model.get_submodule(name).weight.shape[0] for name in method.gated)
    assert 0.98 * gated <= zeros < 0.98 * gated + slack
    if mode == "neuron":
        # Whole columns: a column's weights are all zero or it was not switched off.
        for name in method.gated:
            layer = model.get_submodule(name)
            off = layer_switches(layer) == 0
            assert (layer.weight.detach()[:, off] == 0).all() and int(off.sum()) * layer.weight.shape[0] <= zeros


def test_bad_options_are_refused_in_one_line():
    with pytest.raises(CompressorError, match="no 2:4 mode"):
        create_method("switcher", None, pattern="2:4")
    with pytest.raises(CompressorError, match="mode"):
        create_method("switcher", None, mode="synapse")
    with pytest.raises(CompressorError, match="encoder_channels"):
        create_method("switcher", None, encoder_channels="eight")
    with pytest.raises(CompressorError, match="reading hidden neurons"):
        model = create_model("lenet300_100")
        model.classifier = nn.Identity()
        model.features = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        switched(model, mode="neuron")


@pytest.mark.parametrize("mode, target", [("neuron", None), ("connection", "90%")])
def test_compress_end_to_end(tmp_path, capsys, mode, target):
    path = save_checkpoint(create_model("lenet300_100"), tmp_path / "lenet300_100.pt")
    out = tmp_path / mode
    args = [str(path), "--method", "switcher", "--option", f"mode={mode}", "--option", "encoder_channels=4",
            "--option", "bottleneck_channels=4", "--epochs", "2", "--out", str(out), "--no-progress"]
    assert main(args + (["--target", target] if target else [])) == 0
    report = json.loads((out / "report.json").read_text())
    switcher = report["switcher"]
    assert switcher["mode"] == mode and len(switcher["layers"]) == (2 if mode == "neuron" else 3)
    text = (out / "report.md").read_text()
    assert "## Switcher" in text and "switches at start" in text
    if mode == "neuron":
        # Physically smaller: fc2 reads only the neurons switched on.
        shapes = {row["name"]: row["after"] for row in report["structure"]["layers"]}
        on = next(l for l in switcher["layers"] if l["name"] == "features.fc2")
        assert shapes["features.fc2"][1] == on["neurons"] - on["neurons_switched_off"] < 300
    else:
        assert report["compressed"]["sparsity"] == report["onnx"]["sparsity"]
        assert abs(switcher["final_sparsity"] - 0.9) < 1e-5
        assert {row["pattern"] for row in report["layers"]} == {"unstructured"}
    assert_onnx_matches_torch(load_model(out / "model.pt"), out / "model.onnx")
    capsys.readouterr()


def test_from_scratch_reinitialises_the_task_network_and_a_resume_matches_on_settings_only():
    given = mlp_with_batchnorm()
    with torch.no_grad():
        given[2].running_mean.fill_(3.0)
    model, method = switched(copy_model(given), from_scratch=True)
    assert not torch.equal(model[1].parametrizations.weight.original, given[1].weight)
    assert (model[1].bias == 0).all() and (model[2].running_mean == 0).all()
    kept_model, kept = switched(copy_model(given))
    assert torch.equal(kept_model[1].parametrizations.weight.original, given[1].weight)
    # The switchers' random start changes the recorded switch counts, not what a resumed run must match.
    torch.manual_seed(1)
    other = create_method("switcher", None, **SMALL)
    other.prepare(mlp_with_batchnorm(), random_data((1, 8, 8)))
    assert other.fingerprint() == kept.fingerprint()


@pytest.mark.parametrize("detach", [True, False])
def test_task_gradients_take_the_switches_as_constants_unless_asked(detach):
    model, method = switched(create_model("lenet300_100"), detach_snn_input=detach)
    layer = model.get_submodule("features.fc2")
    weight = layer.parametrizations.weight.original
    x = torch.randn(4, 300)
    layer(x).square().sum().backward()
    switches = layer_switches(layer)
    effective = (weight * switches).detach().requires_grad_(True)
    F.linear(x, effective, layer.bias).square().sum().backward()
    constant = effective.grad * switches  # d/dW of L(W ⊙ Z) with Z fixed
    assert torch.allclose(weight.grad, constant, atol=1e-5) == detach


def test_a_layer_switched_off_entirely_is_named_in_a_warning(caplog):
    model, method = switched(mlp_with_batchnorm())
    layer = model.get_submodule("6")
    switched_weight(layer).fixed = torch.zeros_like(layer.parametrizations.weight.original)
    with caplog.at_level("WARNING"):
        method.finalize(model)
    assert method.details["cut_layers"] == ["6"] and "every switch of 6 is 0" in caplog.text
