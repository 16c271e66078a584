"""Snapshot pruning (seed 000): thresholds θ_g·σ_g over pooled groups, masks |w| ≥ τ, a target met by one common
scale, weights bit-identical through the non-weight retrain, the sweep, and `compress` end to end."""

import json
import math

import pytest
import torch

from compressor.cli import main
from compressor.counting import counted_params, layer_sparsity, prunable_layers, storage_bits
from compressor.errors import CompressorError
from compressor.methods import create_method
from compressor.methods.snapshot import FAMILIES, sweep_settings, weight_groups
from compressor.models import create_model
from compressor.passes.analysis import is_two_four, to_groups, two_four_eligibility
from compressor.training import TrainConfig
from shared import assert_onnx_matches_torch, random_data


def masks_of(model):
    return {name: layer.weight_mask.clone() for name, layer in prunable_layers(model) if hasattr(layer, "weight_mask")}


def pruned(arch, target=None, **options):
    torch.manual_seed(0)
    model = create_model(arch)
    method = create_method("snapshot", target, **options)
    method.prepare(model, random_data(model.input_shape))
    return model, method


def test_groups_and_the_papers_thetas_per_family():
    assert weight_groups(create_model("lenet300_100")) == {"hidden": ["features.fc1", "features.fc2"],
                                                         "output": ["classifier.fc"]}
    assert weight_groups(create_model("lenet5")) == {"conv": ["features.conv1", "features.conv2"],
                                                   "linear": ["classifier.fc1", "classifier.fc2"]}
    expected = {"lenet300_100": {"hidden": 1.45, "output": 0.75}, "lenet5": {"conv": 1.4, "linear": 1.25},
                "resnet20": {"conv": 0.95, "linear": 0.75}}
    for arch, thetas in expected.items():
        _, method = pruned(arch)
        assert {row["group"]: row["theta"] for row in method.details["groups"]} == pytest.approx(thetas)
    assert [FAMILIES["lenet5"].swept_theta(k) for k in (0, 9)] == [0.5, 1.4]
    assert sweep_settings(10) == list(range(10)) and sweep_settings(3) == [0, 4, 9] and sweep_settings(2) == [0, 9]


@pytest.mark.parametrize("sigma", ["pooled", "layer"])
def test_threshold_is_theta_times_the_std_and_the_mask_keeps_what_is_not_below_it(sigma):
    torch.manual_seed(0)
    dense = create_model("lenet5")
    weights = {name: layer.weight.detach().clone() for name, layer in prunable_layers(dense)}
    model, method = pruned("lenet5", sigma=sigma, theta_conv=1.1)
    masks = masks_of(model)
    thetas = {"conv": 1.1, "linear": 1.25}
    for group, names in weight_groups(model).items():
        pooled = torch.cat([weights[name].flatten() for name in names]).double()
        for name in names:
            spread = (weights[name].double() if sigma == "layer" else pooled).std(correction=0)
            tau = thetas[group] * spread
            assert torch.equal(masks[name].bool(), weights[name].double().abs() >= tau)
            # A weight exactly at τ is kept, one just below it is not: the comparison is strict.
            assert not (weights[name].double().abs()[masks[name] == 0] >= tau).any()
        row = next(r for r in method.details["groups"] if r["group"] == group)
        assert row["pruned"] == sum(int((masks[name] == 0).sum()) for name in names)
        if sigma == "pooled":
            assert row["threshold"] == pytest.approx(thetas[group] * pooled.std(correction=0).item(), rel=1e-12)
    # Biases, and every layer that is not Conv/Linear, are never masked.
    assert all(not name.endswith("bias_mask") for name, _ in model.named_buffers())


def test_a_larger_theta_prunes_a_superset():
    smaller, _ = pruned("lenet5", theta_conv=0.6)
    larger, _ = pruned("lenet5", theta_conv=0.9)
    for name, mask in masks_of(smaller).items():
        assert not (masks_of(larger)[name].bool() & ~mask.bool()).any()
    assert sum(int((m == 0).sum()) for m in masks_of(larger).values()) > \
        sum(int((m == 0).sum()) for m in masks_of(smaller).values())


@pytest.mark.parametrize("arch, target", [("lenet5", 0.9), ("lenet300_100", 0.93), ("resnet20", 0.5)])
def test_a_target_is_met_within_one_weight_keeping_the_papers_ratios(arch, target):
    model, method = pruned(arch, target)
    rows = layer_sparsity(model)
    weights = sum(row.weights for row in rows)
    assert abs(sum(row.zeros for row in rows) - target * weights) <= 1
    scales = [row["theta"] / row["paper_theta"] for row in method.details["groups"]]
    assert scales == pytest.approx([method.details["scale"]] * len(scales))
    # Pruning at the common scale's thresholds gives the same masks (up to the one weight the count rounds).
    at_scale, _ = pruned(arch, **{f"theta_{row['group']}": row["theta"] for row in method.details["groups"]})
    differing = sum(int((masks_of(at_scale)[n] != m).sum()) for n, m in masks_of(model).items())
    assert differing <= 1


@pytest.mark.parametrize("arch", ["lenet5", "resnet20"])
def test_the_retrain_leaves_every_weight_bit_identical_and_trains_the_rest(arch):
    torch.manual_seed(0)
    model = create_model(arch)
    dense_weights = {name: layer.weight.detach().clone() for name, layer in prunable_layers(model)}
    frozen = {f"{name}.weight" for name, _ in prunable_layers(model)}
    others = {name: p.detach().clone() for name, p in model.named_parameters() if name not in frozen}
    method = create_method("snapshot", 0.8, retrain_weight_decay=1e-2)
    data = random_data(model.input_shape)
    method.prepare(model, data)
    masks = masks_of(model)
    # SGD with momentum and weight decay: neither may move a frozen weight.
    method.fit(model, data, TrainConfig(epochs=2, lr=0.1, weight_decay=5e-3), progress=False)
    method.finalize(model)
    for name, layer in prunable_layers(model):
        assert torch.equal(layer.weight_orig, dense_weights[name])
        assert torch.equal(layer.weight, dense_weights[name] * masks[name])
        assert not layer.weight_orig.requires_grad
    changed = [name for name, p in model.named_parameters() if name in others and not torch.equal(p, others[name])]
    assert changed, "some bias or normalisation parameter trains"
    assert method.details["params"] == counted_params(model)


def test_two_four_keeps_two_of_four_and_retrains_only_non_weights():
    torch.manual_seed(0)
    model = create_model("resnet20")
    method = create_method("snapshot", None, "2:4")
    data = random_data(model.input_shape)
    method.prepare(model, data)
    layers = dict(prunable_layers(model))
    for name, layer in layers.items():
        if two_four_eligibility(layer).eligible:
            assert is_two_four(to_groups(layer.weight))
        else:
            assert name in method.skipped and not hasattr(layer, "weight_mask")
        assert not getattr(layer, "weight_orig", layer.weight).requires_grad


def test_the_sweep_prunes_more_as_theta_grows_and_each_point_is_measured():
    torch.manual_seed(0)
    model = create_model("lenet300_100")
    method = create_method("snapshot", None, sweep=3)
    data = random_data(model.input_shape)
    method.prepare(model, data)
    method.fit(model, data, TrainConfig(epochs=1, lr=0.01), progress=False)
    method.finalize(model)
    points = method.sweep
    assert [p["theta"] for p in points] == [1.0, 1.2, 1.45]
    assert [p["k"] for p in points] == [0, 4, 9]
    assert points[0]["params"] > points[1]["params"] > points[2]["params"]
    # The last point is the paper's θ, as the shipped model: the same count.
    assert points[-1]["params"] == method.details["params"]
    for point in points:
        assert 0 <= point["accuracy_after_pruning"] <= 1 and 0 <= point["accuracy_after_retraining"] <= 1
        assert point["params_dense"] == 266_610


def test_storage_bits_are_values_plus_mask_entropy():
    model, _ = pruned("lenet300_100")
    rows = layer_sparsity(model)
    entropy = 0.0
    for row in rows:
        p = 1 - row.sparsity
        entropy += row.weights * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    assert storage_bits(model) == pytest.approx(32 * counted_params(model) + entropy, rel=1e-9)
    dense = create_model("lenet300_100")
    assert storage_bits(dense) == 32 * 266_610


@pytest.mark.parametrize("options, pattern, target, message", [
    ({"sweep": 11}, "unstructured", None, "sweep takes 2 to 10"),
    ({"sigma": "median"}, "unstructured", None, "sigma must be"),
    ({"theta_conv": -1.0}, "unstructured", None, "must be positive"),
    ({}, "2:4", 0.8, "fixes sparsity at 50%"),
    ({"sweep": 3}, "2:4", None, "drop one of them"),
])
def test_bad_options_are_refused(options, pattern, target, message):
    with pytest.raises(CompressorError, match=message):
        create_method("snapshot", target, pattern, **options)


def test_a_theta_for_a_group_the_model_lacks_is_refused():
    with pytest.raises(CompressorError, match="no hidden group"):
        pruned("lenet5", theta_hidden=1.0)


def test_a_model_of_only_weights_has_nothing_to_retrain():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3, bias=False))
    with pytest.raises(CompressorError, match="has none"):
        create_method("snapshot", 0.5).prepare(model, random_data((4,)))


def test_compress_with_a_target_and_with_the_sweep(tmp_path, capsys):
    checkpoint = tmp_path / "l5.pt"
    assert main(["train", "lenet5", "--loss", "bsp", "--optimizer", "adam", "--weight-decay", "4e-4", "--epochs", "2",
                 "-o", str(checkpoint), "--no-progress"]) == 0
    out = tmp_path / "t90"
    assert main([str(checkpoint), "--method", "snapshot", "--target", "90%", "--epochs", "1", "--out", str(out),
                 "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert f"{report['compressed']['sparsity']:.4f}" == "0.9000"
    assert report["onnx"]["sparsity"] == pytest.approx(report["compressed"]["sparsity"], abs=1e-4)
    assert report["training"]["loss"] == "bsp" and report["training"]["optimizer"] == "adam"
    assert report["training"]["lr"] == 1e-3
    snap = report["snapshot"]
    assert snap["mode"] == "target" and snap["params"] == report["compressed"]["params_nonzero"]
    from compressor.loading import load_model
    assert_onnx_matches_torch(load_model(out / "model.pt"), out / "model.onnx")
    assert load_model(out / "model.pt").trained_with == {"loss": "bsp", "optimizer": "adam"}

    swept = tmp_path / "sweep"
    assert main([str(checkpoint), "--method", "snapshot", "--option", "sweep=3", "--epochs", "1", "--out", str(swept),
                 "--no-progress"]) == 0
    assert "efficiency.png" in capsys.readouterr().out
    assert (swept / "efficiency.png").stat().st_size > 0
    report = json.loads((swept / "report.json").read_text())
    assert [p["theta"] for p in report["snapshot"]["sweep"]] == [0.5, 0.9, 1.4]
    text = (swept / "report.md").read_text()
    assert "Efficiency curve" in text and "efficiency.png" in text and "bipolar softplus" in text
