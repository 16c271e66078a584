"""Tests of the channel scores and dead channels (compressor.passes.analysis.importance): a channel is dead only
where every producer is zero, and reader importance is the L1 norm of the weights that read a channel."""

from __future__ import annotations

import torch
import torch.nn as nn

from compressor.models import create_model
from compressor.passes.analysis.groups import channel_groups
from compressor.passes.analysis.importance import dead_channels, reader_importance
from group_lookups import group_rooted_at, groups_of, member_named


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
