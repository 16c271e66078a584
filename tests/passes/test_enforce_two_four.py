"""Tests of EnforceTwoFourPass: eligible layers end exactly 2:4; ineligible ones are reported and left dense."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from compressor.counting import prunable_layers
from compressor.methods.masks import attach_masks
from compressor.models import create_model
from compressor.passes.analysis import is_two_four, to_groups, two_four_eligibility, two_four_mask
from compressor.passes.bake_masks import BakeMasksPass
from compressor.passes.enforce_two_four import EnforceTwoFourPass, enforce_two_four


def _eligible(model: nn.Module) -> list[str]:
    return [name for name, layer in prunable_layers(model) if two_four_eligibility(layer).eligible]


def _resnet20_two_four(randomize_bn, make_two_four_masks) -> nn.Module:
    """resnet20 (random BN stats) whose eligible layers carry baked 2:4 masks; the stem (C=3) stays dense."""
    torch.manual_seed(0)
    model = randomize_bn(create_model("resnet20").eval(), seed=7)
    attach_masks(model, make_two_four_masks(model))
    return BakeMasksPass()(model).model


def test_already_two_four_is_not_modified(randomize_bn, make_two_four_masks, snapshot, check_unchanged,
                                          check_outputs, torch_run):
    model = _resnet20_two_four(randomize_bn, make_two_four_masks)
    x = torch.randn(2, *model.input_shape)
    state = snapshot(model)

    result = EnforceTwoFourPass()(model)

    assert result.modified is False
    assert result.notes["zeroed"] == {}
    assert result.notes["eligible"] == _eligible(model) and len(result.notes["eligible"]) == 19
    assert set(result.notes["ineligible"]) == {"features.stem.0"}
    assert "in_channels=3" in result.notes["ineligible"]["features.stem.0"]
    check_outputs(torch_run(result.model, x), torch_run(model, x))
    check_unchanged(model, state)


def test_noise_in_pruned_slots_is_removed(randomize_bn, make_two_four_masks, snapshot, check_unchanged,
                                          check_outputs, torch_run):
    clean = _resnet20_two_four(randomize_bn, make_two_four_masks)
    noisy = BakeMasksPass()(clean).model  # an independent copy
    generator = torch.Generator().manual_seed(3)
    noised = {}
    with torch.no_grad():
        for name in _eligible(noisy):
            weight = noisy.get_submodule(name).weight
            pruned = weight == 0
            # Fine-tuning rounding: tiny non-zeros where the 2:4 layout wants zeros (on half the pruned slots).
            chosen = pruned & (torch.rand(weight.shape, generator=generator) < 0.5)
            weight[chosen] = 1e-9 * torch.randn(int(chosen.sum()), generator=generator).sign()
            noised[name] = int(chosen.sum())
    assert not all(is_two_four(to_groups(noisy.get_submodule(name).weight)) for name in noised)
    x = torch.randn(2, *noisy.input_shape)
    reference = torch_run(noisy, x)
    state = snapshot(noisy)

    result = EnforceTwoFourPass()(noisy)

    assert result.modified is True
    assert result.notes["zeroed"] == {name: count for name, count in noised.items() if count}
    enforced = result.model
    for name in _eligible(enforced):
        weight = enforced.get_submodule(name).weight
        assert is_two_four(to_groups(weight)), name
        # The noise went, the real weights stayed: exactly the clean 2:4 weights.
        assert torch.equal(weight, clean.get_submodule(name).weight), name
    assert torch.equal(enforced.features.stem[0].weight, noisy.features.stem[0].weight)
    check_outputs(torch_run(enforced, x), reference)
    check_unchanged(noisy, state)

    again = EnforceTwoFourPass()(enforced)
    assert again.modified is False and again.notes["zeroed"] == {}


def test_dense_model_becomes_two_four_on_eligible_layers_only(snapshot, check_unchanged):
    torch.manual_seed(0)
    model = create_model("lenet5").eval()
    state = snapshot(model)

    result = EnforceTwoFourPass()(model)

    assert result.modified is True
    assert result.notes["eligible"] == ["features.conv2", "classifier.fc1", "classifier.fc2"]
    assert list(result.notes["ineligible"]) == ["features.conv1"]
    assert "in_channels=1" in result.notes["ineligible"]["features.conv1"]
    layers = dict(prunable_layers(result.model))
    for name in result.notes["eligible"]:
        weight = layers[name].weight
        assert is_two_four(to_groups(weight))
        # Random weights have no zeros and no ties: exactly half of each group is zeroed, the largest kept.
        assert result.notes["zeroed"][name] == weight.numel() // 2
        original = model.get_submodule(name).weight
        assert torch.equal(weight, original * two_four_mask(original))
    assert torch.equal(layers["features.conv1"].weight, model.features.conv1.weight)
    check_unchanged(model, state)
    assert enforce_two_four(result.model) is not result.model
    assert EnforceTwoFourPass()(result.model).modified is False


def test_ineligible_layers_are_reported_with_reasons():
    torch.manual_seed(0)
    model = create_model("mobilenet_v1").eval()
    result = EnforceTwoFourPass()(model)
    ineligible = result.notes["ineligible"]
    assert "in_channels=3" in ineligible["features.stem.0"]
    depthwise = [name for name in prunable_layers(model) if name[0].endswith("depthwise.0")]
    assert len(depthwise) == 13
    for name, layer in depthwise:
        assert ineligible[name] == f"grouped convolution (groups={layer.groups})"
        assert torch.equal(result.model.get_submodule(name).weight, layer.weight), name  # left dense
    assert set(ineligible) == {"features.stem.0"} | {name for name, _ in depthwise}
    assert len(result.notes["eligible"]) == 13 + 1  # the pointwise convolutions and the classifier


def test_linear_with_in_features_not_a_multiple_of_four_is_ineligible():
    model = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 3))
    result = EnforceTwoFourPass()(model)
    assert result.notes["eligible"] == ["2"]
    assert "in_features=10" in result.notes["ineligible"]["0"]


def test_unbaked_prune_mask_raises(make_two_four_masks):
    model = create_model("lenet5").eval()
    attach_masks(model, make_two_four_masks(model))
    with pytest.raises(ValueError, match=r"features\.conv2.*BakeMasks"):
        EnforceTwoFourPass()(model)


class _FixedMask(nn.Module):
    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight):
        return weight * self.mask


def test_unbaked_parametrization_raises():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3))
    parametrize.register_parametrization(model[0], "weight", _FixedMask(torch.ones(8, 8, 3, 3)))
    with pytest.raises(ValueError, match="BakeMasks"):
        EnforceTwoFourPass()(model)


