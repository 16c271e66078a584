"""Tests of SliceChannelsPass: channels that are zero wherever they are produced (folded channel gates of 0) are
physically removed through residual adds, option-A padding shortcuts (their index mapping), concatenations,
depthwise convolutions, flatten→linear and BatchNorm; every group keeps a channel; the output is unchanged, the
counts are the predicted ones, the input is not mutated and a second run changes nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compressor.counting import count_macs, count_params
from compressor.models import create_model
from compressor.passes.analysis.counts import predict_counts
from compressor.passes.analysis.groups import channel_groups, realizable
from compressor.passes.analysis.importance import reader_importance
from compressor.passes.fold_gates import fold_gates
from compressor.passes.gates import gate_group
from compressor.passes.slice_channels import SliceChannelsPass, slice_channels


def group_index(groups, root: str | None = None, produced_by: str | None = None) -> int:
    """The group rooted at `root`, or whose channels the layer `produced_by` outputs."""
    for index, group in enumerate(groups):
        if group.root == root or any(m.name == produced_by and m.produces for m in group.members):
            return index
    raise LookupError(root or produced_by)


def zero_gated(model: nn.Module, plan: dict[int, list[int]]) -> tuple[nn.Module, list[list[int]]]:
    """`model` with channel gates of 0 on `plan[group index]` (root channels), folded into plain weights, and the
    per-group removal that slicing should realise."""
    groups = channel_groups(model, model.input_shape)
    for index, channels in plan.items():
        scale = torch.ones(groups[index].size)
        scale[channels] = 0.0
        gate_group(groups[index], scale)
    folded = fold_gates(model)
    return folded, [sorted(plan.get(i, [])) for i in range(len(groups))]


def random_plan(model: nn.Module, seed: int, fraction: float = 0.4) -> dict[int, list[int]]:
    generator = torch.Generator().manual_seed(seed)
    plan = {}
    for index, group in enumerate(channel_groups(model, model.input_shape)):
        count = min(int(fraction * group.size), group.size - 1)
        plan[index] = torch.randperm(group.size, generator=generator)[:count].tolist()
    return plan


def slice_and_check(model, removal, snapshot, check_unchanged_state, check_outputs, torch_run):
    """The standard pass test, with the counts predicted from `removal` (root channels per group)."""
    groups = channel_groups(model, model.input_shape)
    expected = predict_counts(model, model.input_shape, groups, realizable(groups, removal))
    x = torch.randn((2, *model.input_shape), generator=torch.Generator().manual_seed(0))
    reference = torch_run(model, x)
    state = snapshot(model)

    result = SliceChannelsPass(model.input_shape)(model)

    sliced = result.model
    assert result.modified is True
    assert result.notes["max_abs_diff"] <= 1e-5 * reference.abs().max().item()
    check_outputs(torch_run(sliced, x), reference)
    check_unchanged_state(model, state)
    assert (count_params(sliced), count_macs(sliced, model.input_shape)) == expected
    again = SliceChannelsPass(model.input_shape)(sliced)
    assert again.modified is False and again.notes == {"removed_channels": {}}
    return sliced


@pytest.mark.parametrize("name", ["lenet300_100", "lenet5", "resnet20", "resnet164", "densenet40", "vgg16",
                                  "mobilenet_v1", "wrn16_8"])
def test_slice_random_zero_channels(name, randomize_bn, snapshot, check_unchanged, check_outputs, torch_run):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name).eval(), seed=1)
    folded, removal = zero_gated(model, random_plan(model, seed=2))
    slice_and_check(folded, removal, snapshot, check_unchanged, check_outputs, torch_run)


def test_residual_add_slices_every_tensor_joined_by_it(randomize_bn, snapshot, check_unchanged, check_outputs,
                                                       torch_run):
    model = randomize_bn(create_model("resnet20").eval(), seed=3)
    groups = channel_groups(model, model.input_shape)
    folded, removal = zero_gated(model, {group_index(groups, "features.stem.0"): [0, 5, 6]})
    sliced = slice_and_check(folded, removal, snapshot, check_unchanged, check_outputs, torch_run)
    features = sliced.features
    assert features.stem[0].out_channels == features.stem[1].num_features == 13
    for unit in features.stage1:
        assert unit.branch[0].in_channels == unit.branch[3].out_channels == unit.branch[4].num_features == 13
    assert features.stage2[0].branch[0].in_channels == features.stage2[0].shortcut.in_channels == 13


def test_option_a_shortcut_loses_its_padded_outputs(randomize_bn, snapshot, check_unchanged, check_outputs,
                                                    torch_run):
    model = randomize_bn(create_model("resnet20").eval(), seed=4)
    groups = channel_groups(model, model.input_shape)
    stage2 = group_index(groups, produced_by="features.stage2.0.shortcut")
    padded = list(range(8)) + list(range(24, 32))
    folded, removal = zero_gated(model, {stage2: padded})
    sliced = slice_and_check(folded, removal, snapshot, check_unchanged, check_outputs, torch_run)
    shortcut = sliced.features.stage2[0].shortcut
    assert shortcut.sources == list(range(16)) and shortcut.is_padding
    assert (shortcut.pad_before, shortcut.pad_after) == (0, 0)
    assert sliced.features.stage2[2].branch[4].num_features == 16


def test_option_a_shortcut_gathers_when_an_input_channel_goes(randomize_bn, snapshot, check_unchanged,
                                                               check_outputs, torch_run):
    """Stage-1 channel 3 goes, but stage-2 channel 11 that the shortcut copied from it is live in the branches: the
    shortcut's output 11 becomes a zero channel, which F.pad cannot express, so it gathers."""
    model = randomize_bn(create_model("resnet20").eval(), seed=5)
    groups = channel_groups(model, model.input_shape)
    folded, removal = zero_gated(model, {group_index(groups, "features.stem.0"): [3]})
    sliced = slice_and_check(folded, removal, snapshot, check_unchanged, check_outputs, torch_run)
    shortcut = sliced.features.stage2[0].shortcut
    assert shortcut.in_channels == 15 and shortcut.out_channels == 32
    assert shortcut.sources == [-1] * 8 + [0, 1, 2, -1] + list(range(3, 15)) + [-1] * 8
    assert not shortcut.is_padding
    assert shortcut.gather_index.tolist() == [15] * 8 + [0, 1, 2, 15] + list(range(3, 15)) + [15] * 8


def test_option_a_shortcut_pads_again_when_the_copy_goes_too(randomize_bn, snapshot, check_unchanged,
                                                              check_outputs, torch_run):
    model = randomize_bn(create_model("resnet20").eval(), seed=6)
    groups = channel_groups(model, model.input_shape)
    stage2 = group_index(groups, produced_by="features.stage2.0.shortcut")
    folded, removal = zero_gated(model, {group_index(groups, "features.stem.0"): [3], stage2: [11]})
    sliced = slice_and_check(folded, removal, snapshot, check_unchanged, check_outputs, torch_run)
    shortcut = sliced.features.stage2[0].shortcut
    assert shortcut.sources == [-1] * 8 + list(range(15)) + [-1] * 8 and shortcut.is_padding


def test_a_channel_the_shortcut_copies_from_a_live_channel_stays(randomize_bn):
    model = randomize_bn(create_model("resnet20").eval(), seed=7)
    groups = channel_groups(model, model.input_shape)
    stage2 = group_index(groups, produced_by="features.stage2.0.shortcut")
    folded, _ = zero_gated(model, {stage2: [11]})
    result = SliceChannelsPass(model.input_shape)(folded)
    assert result.modified is False
    assert result.model.features.stage2[0].shortcut.out_channels == 32


def test_concatenation_readers_lose_the_sliced_channels(randomize_bn, snapshot, check_unchanged, check_outputs,
                                                        torch_run):
    model = randomize_bn(create_model("densenet40").eval(), seed=8)
    groups = channel_groups(model, model.input_shape)
    unit_group = group_index(groups, "features.block1.0.new_features.2")
    folded, removal = zero_gated(model, {unit_group: [0, 4, 11]})
    sliced = slice_and_check(folded, removal, snapshot, check_unchanged, check_outputs, torch_run)
    block = sliced.features.block1
    assert block[0].growth == 9
    for unit in list(block)[1:]:
        assert unit.new_features[0].num_features == unit.new_features[2].in_channels
    assert block[1].new_features[0].num_features == 16 + 9
    assert sliced.features.transition1[2].in_channels == 16 + 12 * 12 - 3


def test_depthwise_convolution_keeps_in_out_and_groups_equal(randomize_bn, snapshot, check_unchanged, check_outputs,
                                                             torch_run):
    model = randomize_bn(create_model("mobilenet_v1").eval(), seed=9)
    groups = channel_groups(model, model.input_shape)
    folded, removal = zero_gated(model, {group_index(groups, "features.block3.depthwise.0"): list(range(0, 128, 3))})
    sliced = slice_and_check(folded, removal, snapshot, check_unchanged, check_outputs, torch_run)
    depthwise = sliced.features.block3.depthwise[0]
    assert depthwise.in_channels == depthwise.out_channels == depthwise.groups == 128 - 43
    assert depthwise.weight.shape == (85, 1, 3, 3)
    assert sliced.features.block2.pointwise[0].out_channels == sliced.features.block3.pointwise[0].in_channels == 85


@pytest.mark.parametrize("name, conv, features_per_channel", [("lenet5", "features.conv2", 16),
                                                              ("vgg16", "features.conv13.0", 1)])
def test_flatten_linear_loses_the_features_of_each_sliced_channel(name, conv, features_per_channel, randomize_bn,
                                                                  snapshot, check_unchanged, check_outputs, torch_run):
    model = randomize_bn(create_model(name).eval(), seed=10)
    groups = channel_groups(model, model.input_shape)
    in_features = model.classifier.fc1.in_features
    folded, removal = zero_gated(model, {group_index(groups, conv): [1, 2, 7]})
    sliced = slice_and_check(folded, removal, snapshot, check_unchanged, check_outputs, torch_run)
    assert sliced.classifier.fc1.in_features == in_features - 3 * features_per_channel


def test_batchnorm_statistics_follow_the_kept_channels(randomize_bn, snapshot, check_unchanged, check_outputs,
                                                       torch_run):
    model = randomize_bn(create_model("vgg16").eval(), seed=11)
    groups = channel_groups(model, model.input_shape)
    bn = model.features.conv5[1]
    kept = [c for c in range(256) if c not in (0, 10, 255)]
    folded, removal = zero_gated(model, {group_index(groups, "features.conv5.0"): [0, 10, 255]})
    sliced = slice_and_check(folded, removal, snapshot, check_unchanged, check_outputs, torch_run)
    sliced_bn = sliced.features.conv5[1]
    assert torch.equal(sliced_bn.running_mean, bn.running_mean[kept])
    assert torch.equal(sliced_bn.running_var, bn.running_var[kept])


def test_every_group_keeps_its_most_read_channel(randomize_bn, check_outputs, torch_run):
    model = randomize_bn(create_model("lenet5").eval(), seed=12)
    groups = channel_groups(model, model.input_shape)
    conv1 = group_index(groups, "features.conv1")
    most_read = int(reader_importance(groups[conv1]).argmax())
    folded, _ = zero_gated(model, {conv1: list(range(20))})
    x = torch.randn((2, *model.input_shape))

    result = SliceChannelsPass(model.input_shape)(folded)

    sliced = result.model
    assert sliced.features.conv1.out_channels == sliced.features.conv2.in_channels == 1
    torch.testing.assert_close(sliced.features.conv2.weight, folded.features.conv2.weight[:, most_read:most_read + 1])
    assert result.notes["removed_channels"]["features.conv1"] == 19
    check_outputs(torch_run(sliced, x), torch_run(folded, x))
    assert SliceChannelsPass(model.input_shape)(sliced).modified is False


def test_a_model_without_zero_channels_is_left_alone(randomize_bn, check_outputs, torch_run):
    model = randomize_bn(create_model("resnet20").eval(), seed=13)
    result = SliceChannelsPass(model.input_shape)(model)
    assert result.modified is False and result.notes == {"removed_channels": {}}
    assert count_params(result.model) == count_params(model)
    assert slice_channels(model).features.stem[0].out_channels == 16  # functional form, input_shape from the model


def test_a_gated_model_must_be_folded_first():
    model = create_model("lenet5").eval()
    groups = channel_groups(model, model.input_shape)
    scale = torch.ones(groups[0].size)
    scale[0] = 0.0
    gate_group(groups[0], scale)
    with pytest.raises(ValueError, match="fold its gates first"):
        SliceChannelsPass(model.input_shape).run(model)


def test_padded_channels_of_a_stage_without_branches_are_sliced(randomize_bn, check_outputs, torch_run):
    model = randomize_bn(create_model("resnet20").eval(), seed=14)
    for unit in model.features.stage2:
        unit.branch = None  # what RemoveDeadSkipUnits leaves when every unit of the stage was gated 0
    x = torch.randn((2, *model.input_shape))

    result = SliceChannelsPass(model.input_shape)(model)

    check_outputs(torch_run(result.model, x), torch_run(model, x))
    assert result.modified is True
    assert result.model.features.stage2[0].shortcut.out_channels == 16
    assert result.model.features.stage3[0].branch[0].in_channels == 16
