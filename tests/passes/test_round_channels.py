"""Tests of RoundChannelsPass: zero channels are sliced like SliceChannels does, but each group keeps a width that
is a multiple of the rounding (or its full width), keeping the zero channels its readers weigh most; the output is
unchanged, the input is not mutated and a second run changes nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compressor.counting import count_params
from compressor.models import create_model
from compressor.passes.analysis.groups import channel_groups
from compressor.passes.analysis.importance import reader_importance
from compressor.passes.fold_gates import fold_gates
from compressor.passes.gates import gate_group
from compressor.passes.pipeline import compile_model
from compressor.passes.round_channels import RoundChannelsPass
from compressor.passes.slice_channels import SliceChannelsPass


def zero_gated(model: nn.Module, seed: int, fraction: float = 0.45) -> nn.Module:
    """`model` with a random `fraction` of every group's channels gated 0, folded into plain weights."""
    generator = torch.Generator().manual_seed(seed)
    for group in channel_groups(model, model.input_shape):
        scale = torch.ones(group.size)
        scale[torch.randperm(group.size, generator=generator)[: min(int(fraction * group.size), group.size - 1)]] = 0
        gate_group(group, scale)
    return fold_gates(model)


def conv_widths(model: nn.Module) -> dict[str, int]:
    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "densenet40", "mobilenet_v1", "vgg16"])
def test_round_channels_keeps_multiples_of_eight(name, randomize_bn, snapshot, check_unchanged, check_outputs,
                                                 torch_run):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name).eval(), seed=1)
    widths_before = conv_widths(model)
    folded = zero_gated(model, seed=2)
    x = torch.randn((2, *model.input_shape), generator=torch.Generator().manual_seed(3))
    reference = torch_run(folded, x)
    state = snapshot(folded)

    result = RoundChannelsPass(8, model.input_shape)(folded)

    rounded = result.model
    assert result.modified is True
    check_outputs(torch_run(rounded, x), reference)
    check_unchanged(folded, state)
    for layer, width in conv_widths(rounded).items():
        # a layer whose channels are the model's input/output interface, or narrower than 8, keeps its width
        assert width % 8 == 0 or width == widths_before[layer], (layer, width)
    assert count_params(rounded) < count_params(folded)
    assert count_params(SliceChannelsPass(model.input_shape)(folded).model) <= count_params(rounded)

    again = RoundChannelsPass(8, model.input_shape)(rounded)
    assert again.modified is False
    assert conv_widths(again.model) == conv_widths(rounded)


def test_round_channels_keeps_the_zero_channels_read_most(randomize_bn, check_outputs, torch_run):
    model = randomize_bn(create_model("lenet5").eval(), seed=4)
    group = next(g for g in channel_groups(model, model.input_shape) if g.root == "features.conv1")
    importance = reader_importance(group)
    dead = list(range(15))  # 5 live channels: rounded up to 8, so the 3 most read dead channels stay
    scale = torch.ones(20)
    scale[dead] = 0
    gate_group(group, scale)
    folded = fold_gates(model)
    kept_dead = sorted(importance[dead].argsort(descending=True)[:3].tolist())
    kept = sorted(kept_dead + list(range(15, 20)))

    rounded = RoundChannelsPass(8, model.input_shape)(folded).model

    assert rounded.features.conv1.out_channels == 8
    torch.testing.assert_close(rounded.features.conv2.weight, folded.features.conv2.weight[:, kept])
    x = torch.randn((2, *model.input_shape))
    check_outputs(torch_run(rounded, x), torch_run(folded, x))


def test_round_channels_does_not_widen_a_group_that_is_already_a_multiple(randomize_bn):
    model = randomize_bn(create_model("lenet5").eval(), seed=5)
    group = next(g for g in channel_groups(model, model.input_shape) if g.root == "features.conv2")
    scale = torch.ones(50)
    scale[:34] = 0  # 16 live channels
    gate_group(group, scale)
    rounded = RoundChannelsPass(16, model.input_shape)(fold_gates(model)).model
    assert rounded.features.conv2.out_channels == 16
    assert rounded.classifier.fc1.in_features == 16 * 16


def test_round_channels_of_one_is_slice_channels(randomize_bn):
    model = randomize_bn(create_model("resnet20").eval(), seed=6)
    folded = zero_gated(model, seed=7)
    rounded = RoundChannelsPass(1, model.input_shape)(folded).model
    sliced = SliceChannelsPass(model.input_shape)(folded).model
    assert conv_widths(rounded) == conv_widths(sliced)


def test_round_channels_refuses_a_multiple_below_one():
    with pytest.raises(ValueError, match="at least 1"):
        RoundChannelsPass(0)


def test_compile_model_rounds_when_asked(randomize_bn, check_outputs, torch_run):
    model = randomize_bn(create_model("resnet20").eval(), seed=8)
    groups = channel_groups(model, model.input_shape)
    for group in groups:
        scale = torch.ones(group.size)
        scale[: group.size // 2 - 3] = 0  # leaves 16 → 11 live → rounded to 16 (nothing to remove); 32 → 19 → 24
        gate_group(group, scale)
    x = torch.randn((2, *model.input_shape))

    result = compile_model(model, round_to=8)

    assert [step.name for step in result.steps] == ["FoldGates", "RemoveDeadSkipUnits", "RoundChannels"]
    check_outputs(torch_run(result.model, x), torch_run(model, x))
    widths = conv_widths(result.model)
    assert {width for layer, width in widths.items() if ".stage2." in layer} == {24}
    assert {width for layer, width in widths.items() if ".stage3." in layer} == {40}
    assert {width for layer, width in widths.items() if ".stage1." in layer or ".stem." in layer} == {16}


def test_a_grouped_convolution_rounds_by_whole_units_and_keeps_its_groups():
    """Surplus zero channels kept to round a width are whole units: the same offset in every group."""
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32 * 64, 10)).eval()
    model.input_shape = (3, 8, 8)
    group = next(g for g in channel_groups(model, model.input_shape) if g.root == "0")
    assert group.unit_size == 4
    scale = torch.ones(group.size)
    scale[torch.nonzero(group.units < 3).flatten()] = 0  # 3 units (12 channels) gated off
    gate_group(group, scale)
    compiled = compile_model(model, model.input_shape, round_to=8).model
    # 20 live channels round up to 24: one of the three zero units is kept whole.
    assert compiled[3].in_channels == 24 and compiled[3].groups == 4
