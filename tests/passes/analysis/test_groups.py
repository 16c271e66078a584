"""Tests of the channel-coupling groups (compressor.passes.analysis.groups): the groups Torch-Pruning finds on the
zoo (with the custom PadShortcut pruner for option-A shortcuts), where their gates go, what slicing can realise,
and which ops and layers leave a group whole."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compressor.models import create_model, list_models
from compressor.models.units import PadShortcut
from compressor.passes.analysis.groups import analyse_channels, channel_groups, realizable
from compressor.passes.analysis.importance import dead_channels
from compressor.passes.gates import gate_group
from group_lookups import group_rooted_at, groups_of, member_named


def pad_shortcut_members(groups):
    return [(group, member) for group in groups for member in group.members if isinstance(member.module, PadShortcut)]


# ------------------------------------------------------------------------------------------------ zoo-wide facts


@pytest.mark.parametrize("name", list_models())
def test_a_fresh_zoo_model_has_no_dead_channel_and_every_group_has_a_gate_point(name):
    model = create_model(name).eval()
    for group in groups_of(model):
        assert group.prunable
        assert group.gate_points, group.root
        assert all(m.produces for m in group.gate_points)
        assert dead_channels(group) == [], group.root


@pytest.mark.parametrize("name", list_models())
def test_no_group_reaches_the_logits(name):
    model = create_model(name).eval()
    last = [module for module in model.modules() if isinstance(module, nn.Linear)][-1]
    for group in groups_of(model):
        assert not any(m.module is last and m.produces for m in group.members), group.root


# ------------------------------------------------------------------------------------ structures of the groups


def test_resnet20_groups_follow_the_option_a_shortcuts():
    model = create_model("resnet20").eval()
    groups = groups_of(model)
    # the stem and the three 16-channel units are one group, read by the first 32-channel unit and its shortcut
    stage1 = group_rooted_at(groups, "features.stem.0")
    assert stage1.size == 16
    produced = {m.name for m in stage1.members if m.produces}
    assert {"features.stem.1", "features.stage1.0.branch.4", "features.stage1.2.branch.4"} <= produced
    shortcut_in = member_named(stage1, "features.stage2.0.shortcut", produces=False)
    assert shortcut_in.idxs == list(range(16))
    # the shortcut also produces channels of the 32-channel group, independently of its input
    stage2 = next(g for g in groups if any(m.name == "features.stage2.0.shortcut" and m.produces for m in g.members))
    assert stage2.size == 32 and stage2 is not stage1
    assert not member_named(stage2, "features.stage2.0.shortcut", produces=True).gate_point
    assert len(pad_shortcut_members(groups)) == 4  # two shortcuts, each an input and an output member


def test_lenet5_flatten_linear_reads_sixteen_features_per_channel():
    model = create_model("lenet5").eval()
    group = group_rooted_at(groups_of(model), "features.conv2")
    fc1 = member_named(group, "classifier.fc1")
    assert group.size == 50 and len(fc1.idxs) == 800
    assert group.member_channels(fc1, [3]) == list(range(48, 64))


def test_mobilenet_depthwise_conv_shares_the_group_of_the_pointwise_before_it():
    model = create_model("mobilenet_v1").eval()
    group = group_rooted_at(groups_of(model), "features.block12.depthwise.0")
    names = {m.name for m in group.members}
    assert {"features.block11.pointwise.0", "features.block11.pointwise.1", "features.block12.depthwise.1",
            "features.block12.pointwise.0"} <= names
    assert member_named(group, "features.block12.depthwise.0").produces


def test_densenet_unit_group_reaches_every_later_reader_of_the_block():
    model = create_model("densenet40").eval()
    groups = groups_of(model)
    group = group_rooted_at(groups, "features.block1.0.new_features.2")
    readers = [m for m in group.members if isinstance(m.module, nn.BatchNorm2d)]
    # the 11 later units of block 1 and the first transition normalise the unit's 12 channels
    assert len(readers) == 12 and all(len(m.idxs) == 12 for m in readers)
    assert all(m.idxs == list(range(16, 28)) for m in readers)


# ------------------------------------------------------------------------------------------------- realizable


def test_realizable_drops_channels_a_shortcut_copies_from_a_kept_channel():
    model = create_model("resnet20").eval()
    groups = groups_of(model)
    stage1 = next(i for i, g in enumerate(groups) if g.root == "features.stem.0")
    stage2 = next(i for i, g in enumerate(groups)
                  if any(m.name == "features.stage2.0.shortcut" and m.produces for m in g.members))
    plan = [[] for _ in groups]
    # stage-2 channel 8 copies stage-1 channel 0, channel 9 copies channel 1; channels 0 and 31 are padding
    plan[stage2] = [0, 8, 9, 31]
    plan[stage1] = [1]
    realized = realizable(groups, plan)
    assert realized[stage2] == [0, 9, 31]
    assert realized[stage1] == [1]
    assert realizable(groups, [[] for _ in groups]) == [[] for _ in groups]


def test_realizable_follows_shortcuts_from_stage_to_stage():
    model = create_model("resnet20").eval()
    groups = groups_of(model)
    index = {g.root: i for i, g in enumerate(groups)}
    stage2 = next(i for i, g in enumerate(groups)
                  if any(m.name == "features.stage2.0.shortcut" and m.produces for m in g.members))
    stage3 = next(i for i, g in enumerate(groups)
                  if any(m.name == "features.stage3.0.shortcut" and m.produces for m in g.members))
    plan = [[] for _ in groups]
    # stage-3 channel 24 copies stage-2 channel 8, which copies stage-1 channel 0 (kept): neither can go
    plan[stage3] = [24]
    plan[stage2] = [8]
    assert realizable(groups, plan)[stage3] == [] and realizable(groups, plan)[stage2] == []
    plan[index["features.stem.0"]] = [0]
    realized = realizable(groups, plan)
    assert realized[stage3] == [24] and realized[stage2] == [8]


# ----------------------------------------------------------------------------------------------- gated models


def test_groups_of_a_gated_model_are_read_only():
    model = create_model("resnet20").eval()
    for group in groups_of(model):
        gate_group(group, torch.ones(group.size))
    groups = groups_of(model)
    assert groups and not any(group.prunable for group in groups)
    # the members are the gated model's own layers, so gates can be read and attached through them
    assert groups[0].members[0].module is model.get_submodule(groups[0].members[0].name)
    with pytest.raises(ValueError, match="fold its gates first"):
        groups[0].prune([0])


# ----------------------------------------------------------------------------------------- ops between the layers


class _Chain(nn.Module):
    """conv-BN → `between` → conv-BN-ReLU → mean → linear: the first group's channels pass through `between`."""

    def __init__(self, between) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.between = between
        self.second = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.second(self.between(self.first(x))).mean((2, 3)))


class _PlusOne(nn.Module):
    def forward(self, x):
        return x + 1.0


class _ChannelAttention(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x.mean(1, keepdim=True))


class _BareParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.ones(1, 8, 1, 1))

    def forward(self, x):
        return x + self.offset


@pytest.mark.parametrize("between", [nn.ReLU(), nn.Hardswish(), nn.MaxPool2d(1)], ids=["relu", "hardswish", "pool"])
def test_ops_that_keep_zeros_leave_the_group_sliceable(between):
    groups = channel_groups(_Chain(between).eval(), (1, 8, 8))
    assert any(group.root == "first.0" for group in groups)


@pytest.mark.parametrize("between", [nn.Sigmoid(), nn.Softmax(dim=1), _PlusOne(), _ChannelAttention(), _BareParameter()],
                         ids=["sigmoid", "softmax", "plus-one", "channel-attention", "bare-parameter"])
def test_ops_that_lift_a_zero_channel_leave_the_group_whole(between):
    groups = channel_groups(_Chain(between).eval(), (1, 8, 8))
    assert all(group.root != "first.0" for group in groups)


def test_an_addition_with_the_model_input_leaves_the_group_whole():
    class InputResidual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3))
            self.fc = nn.Linear(3, 10)

        def forward(self, x):
            return self.fc((x + self.body(x)).mean((2, 3)))

    assert channel_groups(InputResidual().eval(), (3, 8, 8)) == []


def test_a_layer_torch_pruning_cannot_map_is_left_whole_by_name():
    class ConvThenGru(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.gru = nn.GRU(8, 16, batch_first=True)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            sequence = self.conv(x).flatten(2).transpose(1, 2)
            return self.fc(self.gru(sequence)[0][:, -1])

    analysis = analyse_channels(ConvThenGru().eval(), (1, 8, 8))
    assert analysis.groups == []
    assert [item.layer for item in analysis.left_whole] == ["conv"]
    assert "Torch-Pruning cannot map its channels" in analysis.left_whole[0].reason
