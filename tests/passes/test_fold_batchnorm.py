"""Tests of FoldBatchNormPass over the whole zoo and on hand-made graphs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compressor.counting import prunable_layers
from compressor.methods.masks import attach_masks
from compressor.models import create_model, list_models
from compressor.passes.bake_masks import BakeMasksPass
from compressor.passes.fold_batchnorm import FoldBatchNormPass, fold_batchnorm

# BatchNorms left after folding, by dataflow: a BN folds only when its input is a Conv/Linear output used by
# nothing else. Pre-activation BNs read a residual sum or a concatenation (or, in DenseNets, a stem output that is
# also concatenated) and stay; the first pre-activation BN of ResNet-164 and WRN reads the stem convolution alone
# (their first unit's projection shortcut reads the pre-activation), so it folds.
EXPECTED_REMAINING_BN = {
    "lenet300_100": 0,
    "lenet5": 0,
    "resnet20": 0,
    "resnet32": 0,
    "resnet56": 0,
    "resnet110": 0,
    "resnet164": 54,  # 54 pre-activation BNs + final BN, minus stage1[0]'s preact, which follows the stem
    "wrn16_8": 6,  # 6 pre-activation BNs + final BN, minus group1[0]'s preact
    "densenet40": 39,  # every BN follows a concatenation (36 units, 2 transitions, final): nothing folds
    "densenet100": 51,  # the bottleneck BN of each of the 48 units folds; 48 + 2 + 1 remain
    "vgg16": 0,  # 13 conv BNs and the classifier's BatchNorm1d
    "mobilenet_v1": 0,
}


@pytest.mark.parametrize("name", list_models())
def test_fold_batchnorm_zoo(name, randomize_bn, make_random_masks, snapshot, check_unchanged, check_outputs,
                            torch_run, bn_count):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name).eval(), seed=1)
    masks = make_random_masks(model, 0.5, seed=1)
    attach_masks(model, masks)
    model = BakeMasksPass()(model).model
    x = torch.randn((2, *model.input_shape), generator=torch.Generator().manual_seed(0))
    reference = torch_run(model, x)
    state = snapshot(model)
    bn_before = bn_count(model)

    result = FoldBatchNormPass()(model)

    folded = result.model
    bn_after = bn_count(folded)
    assert len(result.notes["folded"]) == bn_before - bn_after
    assert result.modified is (bn_after < bn_before)
    if name in EXPECTED_REMAINING_BN:
        assert bn_after == EXPECTED_REMAINING_BN[name]
    assert not folded.training
    check_outputs(torch_run(folded, x), reference)
    check_unchanged(model, state)
    # Zeros of the baked masks are still zeros: folding only scales each output row.
    layers = dict(prunable_layers(folded))
    for layer_name, mask in masks.items():
        assert torch.all(layers[layer_name].weight[mask == 0] == 0), layer_name

    again = FoldBatchNormPass()(folded)
    assert again.modified is False and again.notes["folded"] == []
    assert bn_count(again.model) == bn_after


def test_every_zoo_model_has_an_expected_batchnorm_count():
    """A new zoo model must say how many of its BatchNorms stay after folding."""
    assert set(EXPECTED_REMAINING_BN) == set(list_models())


def _conv_bn_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.BatchNorm2d(8),  # after an activation: stays
        nn.Flatten(), nn.Linear(8 * 5 * 5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3),
    )


def test_fold_batchnorm_replaces_folded_batchnorms_by_identity(randomize_bn, snapshot, check_unchanged,
                                                               check_outputs, torch_run):
    torch.manual_seed(0)
    model = randomize_bn(_conv_bn_net().eval(), seed=3)
    x = torch.randn(3, 4, 5, 5)
    reference = torch_run(model, x)
    state = snapshot(model)

    result = FoldBatchNormPass()(model)

    assert result.modified is True
    assert result.notes["folded"] == ["1", "4", "9"]
    folded = result.model
    assert [type(folded[i]) for i in (1, 4, 6, 9)] == [nn.Identity, nn.Identity, nn.BatchNorm2d, nn.Identity]
    assert folded[3].bias is not None  # the bias-free conv gained the BN's shift
    check_outputs(torch_run(folded, x), reference)
    check_unchanged(model, state)
    assert FoldBatchNormPass()(folded).modified is False


def test_fold_batchnorm_does_not_put_a_training_model_in_eval_mode(randomize_bn, snapshot, check_unchanged):
    model = randomize_bn(_conv_bn_net(), seed=3).train()
    state = snapshot(model)
    folded = fold_batchnorm(model)
    assert model.training and all(m.training for m in model.modules())
    assert not folded.training
    check_unchanged(model, state)


def test_fold_batchnorm_keeps_two_four_zeros(randomize_bn, make_two_four_masks, check_outputs, torch_run):
    from compressor.passes.analysis import is_two_four, to_groups

    torch.manual_seed(0)
    model = randomize_bn(_conv_bn_net().eval(), seed=4)
    masks = make_two_four_masks(model)
    attach_masks(model, masks)
    model = BakeMasksPass()(model).model
    x = torch.randn(2, 4, 5, 5)
    folded = FoldBatchNormPass()(model).model
    check_outputs(torch_run(folded, x), torch_run(model, x))
    for name in masks:
        assert is_two_four(to_groups(folded.get_submodule(name).weight)), name


def test_fold_batchnorm_with_a_shared_batchnorm_keeps_outputs(randomize_bn, check_outputs, torch_run):
    class SharedBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.bn(torch.relu(x))

    torch.manual_seed(0)
    model = randomize_bn(SharedBN().eval(), seed=5)
    x = torch.randn(2, 4, 5, 5)
    reference = torch_run(model, x)
    check_outputs(torch_run(FoldBatchNormPass()(model).model, x), reference)




def test_fold_batchnorm_leaves_batchnorm_without_running_stats(check_outputs, torch_run):
    """A BN with track_running_stats=False normalises with batch statistics even in eval: it cannot be folded."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    x = torch.randn(2, 4, 5, 5)
    result = FoldBatchNormPass()(model)
    assert result.modified is False
    check_outputs(torch_run(result.model, x), torch_run(model, x))




class DataDependentFlow(nn.Module):
    """torch.fx cannot trace a forward whose control flow depends on the data."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return y * 2 if y.sum() > 0 else y


def test_fold_batchnorm_skips_a_model_fx_cannot_trace(check_outputs, torch_run):
    model = DataDependentFlow().eval()
    x = torch.randn(2, 1, 8, 8)
    result = FoldBatchNormPass().run(model)
    assert result.modified is False and "not traceable" in result.notes["skipped"]
    check_outputs(torch_run(result.model, x), torch_run(model, x))


@pytest.mark.parametrize("groups, bias, affine", [(1, True, True), (2, False, True), (4, True, False)],
                         ids=["groups1", "groups2_bias_free", "groups4_no_affine"])
def test_fold_batchnorm_into_a_conv_transpose(groups, bias, affine, randomize_bn, make_random_masks, snapshot,
                                              check_unchanged, check_outputs, torch_run):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.ConvTranspose2d(8, 12, 3, stride=2, padding=1, output_padding=1, groups=groups, bias=bias),
                          nn.BatchNorm2d(12, affine=affine), nn.ReLU())
    attach_masks(model, make_random_masks(model, 0.6))
    model = randomize_bn(BakeMasksPass()(model).model.eval(), seed=5)
    x = torch.randn(3, 3, 8, 8)
    reference = torch_run(model, x)
    state = snapshot(model)
    zeros_before = int((model[2].weight == 0).sum())

    result = FoldBatchNormPass()(model)

    assert result.modified is True and result.notes["folded"] == ["3"]
    folded = result.model
    assert isinstance(folded[2], nn.ConvTranspose2d) and isinstance(folded[3], nn.Identity)
    assert int((folded[2].weight == 0).sum()) == zeros_before  # pruned weights stay pruned
    check_outputs(torch_run(folded, x), reference)
    check_unchanged(model, state)
    assert FoldBatchNormPass()(folded).modified is False
