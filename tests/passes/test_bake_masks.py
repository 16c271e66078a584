"""Tests of BakeMasksPass: prune masks and parametrizations become plain weights with zeros."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils import parametrize, prune

from compressor.counting import prunable_layers
from compressor.methods.masks import attach_masks
from compressor.models import create_model
from compressor.passes.analysis import is_two_four, to_groups, two_four_mask
from compressor.passes.bake_masks import BakeMasksPass, bake_masks


def _cnn(randomize_bn) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10),
    )
    return randomize_bn(model.eval())


class FixedMask(nn.Module):
    """A parametrization that multiplies the weight by a fixed mask (what a 2:4 method may register)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def _assert_plain(model: nn.Module) -> None:
    for name, module in model.named_modules():
        assert not parametrize.is_parametrized(module), name
        assert not prune.is_pruned(module), name
        assert not hasattr(module, "weight_orig") and not hasattr(module, "weight_mask"), name
        assert not module._forward_pre_hooks, name
    for key in model.state_dict():
        assert not key.endswith(("_orig", "_mask")) and "parametrizations" not in key, key


def test_bake_prune_masks(randomize_bn, make_random_masks, make_two_four_masks, snapshot, check_unchanged,
                          check_outputs, torch_run):
    model = _cnn(randomize_bn)
    masks = make_random_masks(model, 0.6, seed=1, layers={"0", "8"})  # unstructured
    masks.update(make_two_four_masks(model))  # layer "3" (8 input channels) gets 2:4
    assert set(masks) == {"0", "3", "8"}
    attach_masks(model, masks)
    x = torch.randn(4, 3, 8, 8)
    reference = torch_run(model, x)
    state = snapshot(model)

    result = BakeMasksPass()(model)

    assert result.modified is True
    assert sorted(result.notes["baked"]) == ["0.weight", "3.weight", "8.weight"]
    baked = result.model
    _assert_plain(baked)
    for name, mask in masks.items():
        weight = baked.get_submodule(name).weight
        assert isinstance(weight, nn.Parameter)
        assert torch.all(weight[mask == 0] == 0), name
        assert torch.all(weight[mask != 0] == state[f"{name}.weight_orig"][mask != 0]), name
    assert is_two_four(to_groups(baked.get_submodule("3").weight))
    check_outputs(torch_run(baked, x), reference)
    # The input keeps its masks and values.
    check_unchanged(model, state)
    assert all(prune.is_pruned(model.get_submodule(name)) for name in masks)

    again = BakeMasksPass()(baked)
    assert again.modified is False and again.notes["baked"] == []
    check_outputs(torch_run(again.model, x), reference)


def test_bake_parametrization(randomize_bn, snapshot, check_unchanged, check_outputs, torch_run):
    model = _cnn(randomize_bn)
    conv = model[3]
    mask = two_four_mask(conv.weight)
    parametrize.register_parametrization(conv, "weight", FixedMask(mask))
    x = torch.randn(4, 3, 8, 8)
    reference = torch_run(model, x)
    state = snapshot(model)

    result = BakeMasksPass()(model)

    assert result.modified is True and result.notes["baked"] == ["3.weight"]
    _assert_plain(result.model)
    weight = result.model[3].weight
    assert isinstance(weight, nn.Parameter)
    assert torch.all(weight[mask == 0] == 0)
    assert is_two_four(to_groups(weight))
    check_outputs(torch_run(result.model, x), reference)
    check_unchanged(model, state)
    assert parametrize.is_parametrized(model[3], "weight")

    assert BakeMasksPass()(result.model).modified is False


def test_bake_stacked_prune_methods(randomize_bn, check_outputs, torch_run):
    """Two pruning calls on one tensor make a PruningContainer hook; it bakes like a single mask."""
    model = _cnn(randomize_bn)
    prune.random_unstructured(model[3], "weight", amount=0.3)
    prune.l1_unstructured(model[3], "weight", amount=0.3)
    assert isinstance(next(iter(model[3]._forward_pre_hooks.values())), prune.PruningContainer)
    x = torch.randn(2, 3, 8, 8)
    reference = torch_run(model, x)
    expected_zeros = int((model[3].weight_mask == 0).sum())

    result = BakeMasksPass()(model)

    assert result.modified is True and result.notes["baked"] == ["3.weight"]
    _assert_plain(result.model)
    assert int((result.model[3].weight == 0).sum()) == expected_zeros
    check_outputs(torch_run(result.model, x), reference)
    assert BakeMasksPass()(result.model).modified is False


def test_bake_masks_on_a_zoo_model(make_random_masks, randomize_bn, snapshot, check_unchanged, check_outputs,
                                   torch_run):
    torch.manual_seed(0)
    model = randomize_bn(create_model("resnet20").eval())
    masks = make_random_masks(model, 0.7, seed=2)
    attach_masks(model, masks)
    x = torch.randn(2, *model.input_shape)
    reference = torch_run(model, x)  # no_grad: the masked weights are leaf tensors here
    model(x)  # and a forward with grad, which leaves non-leaf masked weights on the layers
    state = snapshot(model)

    baked = bake_masks(model)

    _assert_plain(baked)
    for name, layer in prunable_layers(baked):
        assert int((layer.weight == 0).sum()) == int((masks[name] == 0).sum()), name
    check_outputs(torch_run(baked, x), reference)
    check_unchanged(model, state)
    assert BakeMasksPass()(baked).modified is False


def test_bake_masks_without_masks_is_not_modified(randomize_bn, snapshot, check_unchanged, check_outputs, torch_run):
    model = _cnn(randomize_bn)
    x = torch.randn(2, 3, 8, 8)
    reference = torch_run(model, x)
    state = snapshot(model)
    result = BakeMasksPass()(model)
    assert result.modified is False and result.notes == {"baked": []}
    assert result.model is not model
    check_outputs(torch_run(result.model, x), reference)
    check_unchanged(model, state)
