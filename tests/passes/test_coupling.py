"""Tests of the channel-coupling analysis (compressor.passes.coupling): the groups Torch-Pruning finds on the zoo (with the
custom PadShortcut pruner for option-A shortcuts), which channels are dead, what slicing can realise, reader
importance and the analytic parameter/MAC prediction, checked against counts of really pruned models."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compressor.counting import count_macs, count_params, count_layer_macs
from compressor.gates import gate_group
from compressor.models import create_model, list_models
from compressor.models.units import PadShortcut
from compressor.modules import copy_model
from compressor.passes.coupling import (CountPredictor, PadShortcutPruner, analyse_channels, channel_groups, dead_channels,
                                        dependency_graph, predict_counts, reader_importance, realizable)


def groups_of(model: nn.Module):
    return channel_groups(model, model.input_shape)


def group_rooted_at(groups, root: str):
    return next(group for group in groups if group.root == root)


def member_named(group, name: str, produces: bool | None = None):
    return next(m for m in group.members if m.name == name and (produces is None or m.produces is produces))


def pad_shortcut_members(groups):
    return [(group, member) for group in groups for member in group.members if isinstance(member.module, PadShortcut)]


# ------------------------------------------------------------------------------------------------ zoo-wide facts


@pytest.mark.parametrize("name", list_models())
def test_prediction_with_nothing_removed_is_the_counted_model(name):
    model = create_model(name).eval()
    groups = groups_of(model)
    assert groups, "every zoo model has channels that can be removed"
    predicted = predict_counts(model, model.input_shape, groups, [[] for _ in groups])
    assert predicted == (count_params(model), count_macs(model, model.input_shape))


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


# ------------------------------------------------------------------------------------------------ dead channels


def test_a_channel_is_dead_only_when_zero_at_every_gate_point():
    model = create_model("resnet20").eval()
    group = group_rooted_at(groups_of(model), "features.stem.0")
    points = group.gate_points
    with torch.no_grad():
        for point in points:
            for channel in group.member_channels(point, [5]):
                point.module.weight[channel] = 0
                point.module.bias[channel] = 0
        for channel in group.member_channels(points[0], [9]):  # zero at one gate point only
            points[0].module.weight[channel] = 0
            points[0].module.bias[channel] = 0
    assert dead_channels(group) == [5]


def test_padded_channels_are_dead_once_the_other_producers_are_zero():
    model = create_model("resnet20").eval()
    group = next(g for g in groups_of(model)
                 if any(m.name == "features.stage2.0.shortcut" and m.produces for m in g.members))
    shortcut = member_named(group, "features.stage2.0.shortcut", produces=True)
    with torch.no_grad():
        for point in group.gate_points:
            point.module.weight.zero_()
            point.module.bias.zero_()
    padded = [root for idx, root in zip(shortcut.idxs, shortcut.root_idxs) if shortcut.module.sources[idx] < 0]
    assert dead_channels(group) == sorted(padded) and len(padded) == 16


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


# -------------------------------------------------------------------------------------------------- prediction


@pytest.mark.parametrize("name", ["resnet20", "lenet5", "mobilenet_v1", "densenet40", "wrn16_8"])
def test_prediction_equals_the_counts_after_pruning(name):
    model = create_model(name).eval()
    groups = groups_of(model)
    generator = torch.Generator().manual_seed(0)
    plan = [torch.randperm(g.size, generator=generator)[: g.size // 3].tolist() for g in groups]
    plan = realizable(groups, plan)
    predicted = predict_counts(model, model.input_shape, groups, plan)
    pruned = copy_model(model)
    # one dependency graph serves every group (Torch-Pruning renumbers concatenations as it prunes), as in SliceChannels
    for group, channels in zip(groups_of(pruned), plan):
        group.prune(channels)
    assert predicted == (count_params(pruned), count_macs(pruned, model.input_shape))
    assert predicted[0] < count_params(model)


def test_prediction_with_removed_modules_leaves_them_out():
    model = create_model("resnet20").eval()
    groups = groups_of(model)
    branch = model.features.stage1[1].branch
    params, macs = predict_counts(model, model.input_shape, groups, [[] for _ in groups], branch.modules())
    assert params == count_params(model) - count_params(branch)
    branch_macs = sum(m.weight.numel() * 32 * 32 for m in branch.modules() if isinstance(m, nn.Conv2d))
    assert macs == count_macs(model, model.input_shape) - branch_macs


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_prediction_on_a_gated_model_equals_the_prediction_before_gating(name):
    model = create_model(name).eval()
    groups = groups_of(model)
    plan = [[0] for _ in groups]
    before = predict_counts(model, model.input_shape, groups, plan)
    for group in groups:
        gate_group(group, torch.ones(group.size))
    gated_groups = groups_of(model)
    assert predict_counts(model, model.input_shape, gated_groups, plan) == before


@pytest.mark.parametrize("name", ["resnet20", "lenet5", "densenet40"])
def test_a_count_predictor_gives_what_predict_counts_gives_plan_after_plan(name):
    model = create_model(name).eval()
    groups = groups_of(model)
    predict = CountPredictor(model, model.input_shape, groups)
    generator = torch.Generator().manual_seed(0)
    for step in range(12):
        plan = [torch.randperm(g.size, generator=generator)[: int(torch.randint(g.size, (1,), generator=generator))]
                .tolist() if (step + index) % 3 else [] for index, g in enumerate(groups)]
        plan = plan[: len(plan) - step % 2]  # groups left out of a plan lose nothing
        assert predict(plan) == predict_counts(model, model.input_shape, groups, plan), step
    assert predict([]) == (count_params(model), count_macs(model, model.input_shape))


def test_group_queries_see_the_index_mappings_a_prune_changed():
    model = create_model("densenet40").eval()
    groups = groups_of(model)
    pruned_once = copy_model(model)
    first, second = groups_of(pruned_once)[:2]
    first.prune([0, 1])
    after = [(item.dep.target.name, list(item.idxs)) for item in second.dependency_graph.get_pruning_group(
        second.members[0].module, second.tp_group[0].dep.handler, list(range(second.size)))]
    fresh = copy_model(model)
    fresh_first, fresh_second = groups_of(fresh)[:2]
    fresh_first.prune([0, 1])
    retraced = dependency_graph(fresh, model.input_shape)
    expected = [(item.dep.target.name, list(item.idxs)) for item in retraced.get_pruning_group(
        fresh.get_submodule(second.root), second.tp_group[0].dep.handler, list(range(second.size)))]
    assert after == expected
    assert len(groups) == len(groups_of(model))


@pytest.mark.parametrize("name", ["resnet20", "densenet40", "mobilenet_v1"])
def test_the_trace_records_the_layer_macs_a_forward_counts(name):
    model = create_model(name).eval()
    assert dependency_graph(model, model.input_shape).layer_macs == count_layer_macs(model, model.input_shape)


# ---------------------------------------------------------------------------------------------- reader importance


def test_reader_importance_is_the_l1_norm_of_the_reading_weights():
    model = create_model("lenet5").eval()
    group = group_rooted_at(groups_of(model), "features.conv1")
    expected = model.features.conv2.weight.detach().abs().sum(dim=(0, 2, 3))
    torch.testing.assert_close(reader_importance(group), expected)
    fc_group = group_rooted_at(groups_of(model), "features.conv2")
    per_channel = model.classifier.fc1.weight.detach().abs().reshape(500, 50, 16).sum(dim=(0, 2))
    torch.testing.assert_close(reader_importance(fc_group), per_channel)


def test_reader_importance_of_a_grouped_convolution_counts_each_input_with_its_own_group():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1, groups=4),
                          nn.Flatten(), nn.Linear(8 * 64, 10)).eval()
    group = group_rooted_at(channel_groups(model, (3, 8, 8)), "0")
    weight = model[2].weight.detach().abs().sum(dim=(2, 3))  # [8 filters, 4 inputs of their group]
    # Input channel 4g + j is read by the 2 filters of group g, at their position j.
    expected = weight.reshape(4, 2, 4).sum(dim=1).flatten()
    torch.testing.assert_close(reader_importance(group), expected)


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


# ------------------------------------------------------------------------------------------ PadShortcut pruner


def test_pad_shortcut_pruner_removes_outputs_and_turns_removed_inputs_into_zeros():
    pruner = PadShortcutPruner()
    shortcut = PadShortcut(4, 8, stride=2)
    assert shortcut.sources == [-1, -1, 0, 1, 2, 3, -1, -1] and shortcut.is_padding
    pruner.prune_out_channels(shortcut, [0, 7])
    assert shortcut.sources == [-1, 0, 1, 2, 3, -1] and shortcut.is_padding
    assert pruner.get_out_channels(shortcut) == 6 and pruner.get_in_channels(shortcut) == 4
    pruner.prune_in_channels(shortcut, [1])
    assert shortcut.sources == [-1, 0, -1, 1, 2, -1] and not shortcut.is_padding
    x = torch.randn(2, 3, 4, 4)
    expected = torch.zeros(2, 6, 2, 2)
    expected[:, [1, 3, 4]] = x[:, :, ::2, ::2]
    assert torch.equal(shortcut(x), expected)


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


def test_grouped_convolutions_lose_the_same_channels_in_every_group_as_predicted():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=4),
                          nn.ReLU(), nn.Conv2d(16, 8, 1), nn.Flatten(), nn.Linear(8 * 64, 10)).eval()
    shape = (3, 8, 8)
    groups = channel_groups(model, shape)
    assert predict_counts(model, shape, groups, [[] for _ in groups]) == (count_params(model), count_macs(model, shape))
    into, out_of = group_rooted_at(groups, "0"), group_rooted_at(groups, "2")
    # Channel c of every group of 4 is one unit: removing it keeps the 4 groups equal.
    assert into.unit_size == out_of.unit_size == 4
    assert into.whole_units([0, 4, 8, 12, 1]) == [0, 4, 8, 12]
    plan = [[0, 4, 8, 12] if group is into else [1, 5, 9, 13] if group is out_of else [] for group in groups]
    predicted = predict_counts(model, shape, groups, plan)
    pruned = copy_model(model)
    for group, channels in zip(channel_groups(pruned, shape), plan):
        if channels:
            group.prune(channels)
    assert pruned[2].groups == 4 and tuple(pruned[2].weight.shape) == (12, 3, 3, 3)
    assert predicted == (count_params(pruned), count_macs(pruned, shape))


def test_a_layer_the_forward_never_calls_counts_its_parameters_and_no_work():
    class WithUnusedHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(8, 10)
            self.auxiliary = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.body(x).mean((2, 3)))

    model = WithUnusedHead().eval()
    groups = channel_groups(model, (1, 8, 8))
    assert predict_counts(model, (1, 8, 8), groups, [[] for _ in groups]) == (
        count_params(model), count_macs(model, (1, 8, 8)))


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
