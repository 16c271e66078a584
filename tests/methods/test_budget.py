"""Budget-aware adaptive sparsity: the paper's mechanism, its losses, the exact correction, every zoo model."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.counting import global_sparsity, layer_sparsity
from compressor.data import DataBundle
from compressor.errors import CompressorError
from compressor.methods import create_method
from compressor.methods.budget import (AdaptiveThreshold, _HardShrinkThreshold, erf_sparsity, ratio_for_sparsity,
                                       weight_std)
from compressor.models import create_model, list_models
from compressor.training import TrainConfig
from compressor.passes.bake_masks import bake_masks


def no_data():
    return DataBundle(train=None, test=None, num_classes=10, name="none")


def unequal_model():
    """One large and one small prunable layer: 262,144 vs 16,384 weights."""
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 32))
    model.input_shape = (512,)
    return model


def optimise_budget_only(method, steps=2000, lr=0.05):
    """Gradient descent on the budget term alone, as if the task loss were indifferent."""
    ratios = [t.ratio for t in method.thresholds()]
    optimizer = torch.optim.SGD(ratios, lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        method.extra_loss(None).backward()
        optimizer.step()
        method.after_step(None, 0)
    return erf_sparsity(torch.stack(ratios).detach())


def set_sparsities(method, values):
    with torch.no_grad():
        for threshold, value in zip(method.thresholds(), values):
            threshold.ratio.fill_(ratio_for_sparsity(value))


@pytest.mark.parametrize("ratio", [0.3, 1.0, 2.0])
def test_erf_predicts_the_counted_sparsity_of_gaussian_weights(ratio):
    weight = torch.randn(400, 500, generator=torch.Generator().manual_seed(0)) * 0.05
    pruned = AdaptiveThreshold(ratio, weight.shape)(weight)
    counted = float((pruned == 0).float().mean())
    assert counted == pytest.approx(float(erf_sparsity(torch.tensor(ratio))), abs=0.005)


def test_threshold_gradient_is_the_appendix_formula_and_straight_through_for_weights():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(64, 32, generator=generator).requires_grad_()
    upstream = torch.randn(64, 32, generator=generator)
    bound = torch.tensor(0.8, requires_grad=True)
    pruned = _HardShrinkThreshold.apply(weight, bound)
    (pruned * upstream).sum().backward()
    expected = (((pruned.detach() - weight.detach()) / 0.8) * upstream).sum()
    assert bound.grad == pytest.approx(float(expected), rel=1e-6)
    assert torch.equal(weight.grad, upstream)
    # Only pruned weights move the threshold.
    assert bool((pruned.detach() != 0).any()) and float(expected) != 0

    threshold = AdaptiveThreshold(1.2, weight.shape)
    (threshold(weight) * upstream).sum().backward()
    sigma = weight_std(weight.detach())
    pruned = threshold(weight).detach()
    by_formula = sigma * (((pruned - weight.detach()) / (1.2 * sigma)) * upstream).sum()
    assert threshold.ratio.grad == pytest.approx(float(by_formula), rel=1e-5)


@pytest.mark.parametrize("loss, flops", [("squared", None), ("squared", 0.6), ("hinge", 0.6), ("avg", None),
                                         ("unconstrained", None)])
def test_budget_term_gradient_matches_finite_differences(loss, flops):
    method = create_method("budget", 0.7 if loss != "unconstrained" else None, loss=loss, flops_target=flops)
    method.prepare(create_model("lenet5"), no_data())
    set_sparsities(method, [0.2, 0.5, 0.3])
    ratios = torch.stack([t.ratio for t in method.thresholds()]).detach().double().requires_grad_()
    method.param_shares, method.mac_shares = method.param_shares.double(), method.mac_shares.double()

    def value(r):
        return method.budget_loss(erf_sparsity(r))

    value(ratios).backward()
    step = 1e-6
    for i in range(len(ratios)):
        shift = torch.zeros_like(ratios)
        shift[i] = step
        numeric = (value(ratios.detach() + shift) - value(ratios.detach() - shift)) / (2 * step)
        assert ratios.grad[i] == pytest.approx(float(numeric), rel=1e-5, abs=1e-9)


def test_fixed_bs_hits_each_layer_exactly_and_keeps_it_after_steps():
    model = create_model("lenet5")
    method = create_method("budget", 0.8, loss="fixed-bs")
    method.prepare(model, no_data())
    method.on_train_begin(model, TrainConfig(epochs=3))
    uniform = method.uniform_sparsity()
    optimizer = torch.optim.SGD(method.param_groups(model)[0]["params"], lr=0.1)
    for step in range(3):
        for row in layer_sparsity(model):
            if row.name in method.layers:
                assert row.zeros == round(uniform * row.weights)
        loss = F.cross_entropy(model(torch.randn(8, 1, 28, 28)), torch.randint(0, 10, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step(model, step)


def test_hinge_never_ends_over_budget():
    model = create_model("lenet5")
    method = create_method("budget", 0.85, loss="hinge")
    method.prepare(model, no_data())
    method.finalize(model)
    assert global_sparsity(layer_sparsity(model)) >= 0.85

    sparser = create_model("lenet5")
    method = create_method("budget", 0.5, loss="hinge")
    method.prepare(sparser, no_data())
    set_sparsities(method, [0.9, 0.9, 0.9])
    before = global_sparsity(layer_sparsity(sparser))
    method.finalize(sparser)
    assert global_sparsity(layer_sparsity(sparser)) == pytest.approx(before) and before > 0.8


def test_avg_misses_the_parameter_budget_that_squared_meets():
    """The paper's effect: averaging layer densities ignores that one layer holds most parameters."""
    results = {}
    for loss in ("squared", "avg"):
        method = create_method("budget", 0.5, loss=loss)
        method.prepare(unequal_model(), no_data())
        set_sparsities(method, [0.8, 0.1])  # unequal, as the task loss leaves them
        sparsity = optimise_budget_only(method)
        results[loss] = float((method.param_shares * sparsity).sum())
    assert results["squared"] == pytest.approx(0.5, abs=0.01)
    assert abs(results["avg"] - 0.5) > 0.1


def test_flops_target_moves_sparsity_to_mac_heavy_layers():
    """lenet5's conv2 does 70% of the MACs with 6% of the weights; fc1 holds 93% of the weights."""
    sparsities = {}
    for flops in (None, 0.8):
        method = create_method("budget", 0.85, flops_target=flops)
        method.prepare(create_model("lenet5"), no_data())
        sparsities[flops] = optimise_budget_only(method)
    conv2 = 0  # index among the pruned layers (conv1 stays dense)
    assert sparsities[0.8][conv2] > sparsities[None][conv2] + 0.2
    assert float((method.mac_shares * sparsities[0.8]).sum()) == pytest.approx(0.8, abs=0.02)


def test_small_layers_stay_dense_with_a_reason():
    model = create_model("lenet5")
    method = create_method("budget", 0.85)
    method.prepare(model, no_data())
    assert list(method.skipped) == ["features.conv1"] and "fewer than min_weights=1000" in method.skipped["features.conv1"]


@pytest.mark.parametrize("name", list_models())
def test_one_training_step_and_exact_correction_on_every_zoo_model(name):
    torch.manual_seed(0)
    model = create_model(name)
    method = create_method("budget", 0.9)
    method.prepare(model, no_data())
    method.on_train_begin(model, TrainConfig(epochs=3))
    optimizer = torch.optim.SGD(method.param_groups(model), lr=0.01, momentum=0.9)
    loss = F.cross_entropy(model(torch.randn(2, *model.input_shape)), torch.tensor([0, 1]))
    (loss + method.extra_loss(model)).backward()
    assert all(t.ratio.grad is not None for t in method.thresholds())
    optimizer.step()
    method.after_step(model, 1)
    method.finalize(model.eval())
    assert abs(global_sparsity(layer_sparsity(model)) - 0.9) < 0.002
    baked = bake_masks(model)
    assert abs(global_sparsity(layer_sparsity(baked)) - 0.9) < 0.002


def test_budget_learns_a_threshold_for_a_conv_transpose_layer():
    from shared import EncoderDecoderNet

    torch.manual_seed(0)
    model = EncoderDecoderNet()
    model.input_shape = (1, 8, 8)
    method = create_method("budget", 0.8, flops_target=0.5)
    method.prepare(model, no_data())
    assert "decoder.0" in method.layers
    method.on_train_begin(model, TrainConfig(epochs=3))
    loss = F.cross_entropy(model(torch.randn(2, 1, 8, 8)), torch.tensor([0, 1]))
    (loss + method.extra_loss(model)).backward()
    assert model.decoder[0].parametrizations.weight[0].ratio.grad is not None
    method.finalize(model.eval())
    baked = bake_masks(model)
    rows = {row.name: row for row in layer_sparsity(baked)}
    assert rows["decoder.0"].zeros > 0
    assert abs(global_sparsity(list(rows.values())) - 0.8) < 0.002


@pytest.mark.parametrize("call, message", [
    (lambda: create_method("budget", None), "needs --target"),
    (lambda: create_method("budget", 0.8, loss="cubic"), "--budget-loss"),
    (lambda: create_method("budget", 0.8, "2:4"), "supports patterns"),
    (lambda: create_method("budget", 0.8, loss="avg", flops_target=0.5), "--flops-target"),
])
def test_bad_budget_requests(call, message):
    with pytest.raises(CompressorError, match=message):
        call()


def test_ratio_and_sparsity_are_inverse():
    for sparsity in (0.1, 0.51, 0.9, 0.99):
        assert float(erf_sparsity(torch.tensor(ratio_for_sparsity(sparsity)))) == pytest.approx(sparsity)
    assert ratio_for_sparsity(0.6827) == pytest.approx(1.0, abs=1e-3)
    assert math.isclose(float(erf_sparsity(torch.tensor(0.0))), 0.0)


def test_unreachable_target_and_unusable_thresholds_fail_cleanly():
    method = create_method("budget", 0.95, min_weights=30000)  # only fc1 (92.8% of lenet5's weights) qualifies
    with pytest.raises(CompressorError, match="out of reach"):
        method.prepare(create_model("lenet5"), no_data())
    model = create_model("lenet5")
    method = create_method("budget", 0.85)
    method.prepare(model, no_data())
    with torch.no_grad():
        for threshold in method.thresholds():
            threshold.ratio.fill_(float("nan"))
    with pytest.raises(CompressorError, match="unusable"):
        method.finalize(model)


def test_a_zero_threshold_gets_a_finite_gradient():
    weight = torch.randn(32, 32, requires_grad=True)
    bound = torch.tensor(0.0, requires_grad=True)
    (_HardShrinkThreshold.apply(weight, bound) * torch.randn(32, 32)).sum().backward()
    assert torch.isfinite(bound.grad) and bound.grad == 0


@pytest.mark.parametrize("options", [{"threshold_lr_scale": -1.0}, {"max_ratio": 0.0}, {"lambda_params": -1.0}])
def test_impossible_budget_options(options):
    with pytest.raises(CompressorError, match="method budget needs"):
        create_method("budget", 0.8, **options)


def test_unconstrained_takes_no_target_and_reports_none(lenet5_checkpoint, tmp_path):
    from compressor.api import compress

    with pytest.raises(CompressorError, match="drop --target"):
        create_method("budget", 0.8, loss="unconstrained")
    report = compress(lenet5_checkpoint, "budget", None, epochs=1, out=tmp_path / "u", progress=False,
                      method_options={"loss": "unconstrained"})
    assert report.target is None and "target none" in (tmp_path / "u" / "report.md").read_text()


def test_a_threshold_loaded_from_a_state_behaves_as_the_one_saved():
    # forward reads Python flags, not the buffers (which would make the CPU wait for a GPU at every layer).
    frozen = AdaptiveThreshold(1.0, torch.Size([4]))
    frozen.freeze(torch.tensor([1.0, 0.0, 1.0, 0.0]))
    exact = AdaptiveThreshold(1.0, torch.Size([4]))
    exact.set_exact_bound(0.5)
    weight = torch.tensor([0.2, -0.7, 0.9, 0.4])
    for saved in (frozen, exact):
        loaded = AdaptiveThreshold(1.0, torch.Size([4]))
        loaded.load_state_dict(saved.state_dict())
        assert torch.equal(loaded(weight), saved(weight))
    assert torch.equal(frozen(weight), torch.tensor([0.2, 0.0, 0.9, 0.0]))
    assert torch.equal(exact(weight), torch.tensor([0.0, -0.7, 0.9, 0.0]))
