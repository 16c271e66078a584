"""Tests of the analytic parameter/MAC prediction (compressor.passes.analysis.counts), checked against counts of
really pruned models, and of the count predictor that answers a search's plans."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compressor.counting import count_macs, count_params
from compressor.models import create_model, list_models
from compressor.modules import copy_model
from compressor.passes.analysis.counts import CountPredictor, predict_counts
from compressor.passes.analysis.groups import channel_groups, realizable
from compressor.passes.gates import gate_group
from group_lookups import group_rooted_at, groups_of


# ------------------------------------------------------------------------------------------------ zoo-wide facts


@pytest.mark.parametrize("name", list_models())
def test_prediction_with_nothing_removed_is_the_counted_model(name):
    model = create_model(name).eval()
    groups = groups_of(model)
    assert groups, "every zoo model has channels that can be removed"
    predicted = predict_counts(model, model.input_shape, groups, [[] for _ in groups])
    assert predicted == (count_params(model), count_macs(model, model.input_shape))


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


# ------------------------------------------------------------------------- grouped convolutions and unused layers


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
