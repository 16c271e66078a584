"""Tests of the zero-propagation analysis (compressor.passes.analysis.zero_flow) as the channel groups use it: a
channel is removable when it is zero wherever it is read, through products (squeeze-and-excitation), GroupNorm groups,
grouped convolutions, transposed convolutions and channel splits; and a group that cannot be removed says which
layer or op keeps it whole. Every slicing is checked against the model before it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compressor.counting import count_macs, count_params
from compressor.passes.analysis.counts import predict_counts
from compressor.passes.analysis.groups import analyse_channels, channel_groups
from compressor.passes.analysis.importance import dead_channels
from compressor.passes.gates import gate_group
from compressor.passes.pipeline import compile_model
from compressor.passes.slice_channels import slice_channels
from user_models import build

from shared import randomize_batchnorm_


def _group(model: nn.Module, root: str):
    return next(group for group in channel_groups(model, model.input_shape) if group.root == root)


def _zero_output_channels(module: nn.Module, channels: list[int]) -> None:
    with torch.no_grad():
        if isinstance(module, nn.ConvTranspose2d):
            module.weight[:, channels] = 0
        else:
            module.weight[channels] = 0
        if module.bias is not None:
            module.bias[channels] = 0


def _assert_slices_exactly(model: nn.Module) -> nn.Module:
    sliced = slice_channels(model, model.input_shape)
    x = torch.randn(8, *model.input_shape)
    with torch.no_grad():
        reference, actual = model.eval()(x), sliced.eval()(x)
    assert (actual - reference).abs().max() <= 1e-5 * reference.abs().max()
    return sliced


def test_a_product_with_a_zero_channel_is_zero_whatever_the_excitation():
    """x * sigmoid(fc2(...)): the channel dies with x although sigmoid(fc2) is 0.5 or more there."""
    model = randomize_batchnorm_(build("senet", seed=0)).eval()
    group = next(g for g in channel_groups(model, model.input_shape)
                 if any(m.name == "block1.se.fc2" and m.produces for m in g.members))
    fc2 = next(m for m in group.members if m.name == "block1.se.fc2")
    assert not fc2.gate_point  # a gate there could not zero the product: sigmoid(0) = 0.5
    for point in group.gate_points:
        _zero_output_channels(point.module, group.member_channels(point, [3]))
    assert dead_channels(group) == [3]
    sliced = _assert_slices_exactly(model)
    assert sliced.block1.se.fc2.out_features == model.block1.se.fc2.out_features - 1


def test_gating_a_squeeze_and_excitation_group_slices_the_se_layer_with_it():
    model = randomize_batchnorm_(build("senet-conv", seed=1)).eval()
    group = next(g for g in channel_groups(model, model.input_shape)
                 if any(m.name == "block2.se.fc2" and m.produces for m in g.members))
    scale = torch.ones(group.size)
    scale[:8] = 0
    gate_group(group, scale)
    compiled = compile_model(model, model.input_shape).model
    assert compiled.block2.se.fc2.out_channels == group.size - 8


def test_groupnorm_channels_go_a_whole_group_at_a_time():
    model = randomize_batchnorm_(build("groupnorm", seed=0)).eval()
    group = _group(model, "features.0")
    norm = model.features[1]
    assert isinstance(norm, nn.GroupNorm) and group.unit_size == norm.num_channels // norm.num_groups == 4
    _zero_output_channels(norm, [0, 1, 2, 3, 5])  # one whole group and one channel of the next
    assert dead_channels(group) == [0, 1, 2, 3]
    sliced = _assert_slices_exactly(model)
    assert (sliced.features[1].num_groups, sliced.features[1].num_channels) == (3, 12)


def test_grouped_convolutions_keep_their_groups_equal():
    model = randomize_batchnorm_(build("resnext", seed=0)).eval()
    groups = channel_groups(model, model.input_shape)
    grouped = [g for g in groups if any(isinstance(m.module, nn.Conv2d) and m.module.groups > 1 for m in g.members)]
    assert grouped and all(g.unit_size > 1 for g in grouped)
    for group in grouped:
        scale = torch.ones(group.size)
        scale[torch.nonzero(group.units == group.units[0]).flatten()] = 0
        gate_group(group, scale)
    compiled = compile_model(model, model.input_shape).model
    convs = [m for m in compiled.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert convs and all(m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0 for m in convs)
    assert sum(p.numel() for p in compiled.parameters()) < count_params(model)


def test_a_transposed_convolution_is_gated_and_sliced_on_its_output_axis():
    model = randomize_batchnorm_(build("encoder-decoder", seed=0)).eval()
    up = next(name for name, m in model.named_modules() if isinstance(m, nn.ConvTranspose2d))
    group = _group(model, up)
    scale = torch.ones(group.size)
    scale[[1, 4]] = 0
    gate_group(group, scale)
    compiled = compile_model(model, model.input_shape).model
    assert compiled.get_submodule(up).out_channels == group.size - 2
    plan = [[1, 4] if g.root == up else [] for g in channel_groups(model, model.input_shape)]
    predicted = predict_counts(model, model.input_shape, channel_groups(model, model.input_shape), plan)
    assert predicted == (count_params(compiled), count_macs(compiled, model.input_shape))


def test_chunk_halves_lose_the_same_channels_and_still_compile():
    model = randomize_batchnorm_(build("chunk", seed=0)).eval()
    group = next(g for g in channel_groups(model, model.input_shape) if g.unit_size == 2)
    scale = torch.ones(group.size)
    scale[torch.nonzero(group.units == group.units[3]).flatten()] = 0
    gate_group(group, scale)
    compile_model(model, model.input_shape)  # checks the output against the gated model


class _FixedSplit(nn.Module):
    """torch.split with literal sizes: the halves cannot shrink."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.left, self.right = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(16, 10)
        self.input_shape = (1, 8, 8)

    def forward(self, x):
        a, b = torch.split(self.stem(x), [8, 8], dim=1)
        return self.head(torch.cat([self.left(a), self.right(b)], 1).mean((2, 3)))


class _ChannelMean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 4, 1)
        self.head = nn.Linear(4, 10)
        self.input_shape = (1, 8, 8)

    def forward(self, x):
        y = self.conv(x)
        return self.head(self.out(y - y.mean(1, keepdim=True)).mean((2, 3)))


@pytest.mark.parametrize("model, layer, words", [
    (_FixedSplit(), "stem.0", "torch.split"),
    (build("shuffle", seed=0), None, "Transpose"),
    (build("tiny-vit", seed=0), None, "LayerNorm"),
    (_ChannelMean(), "conv", "across the channels"),
], ids=["fixed-split", "shuffle", "layernorm", "channel-mean"])
def test_channels_left_whole_name_the_layer_or_op_responsible(model, layer, words):
    analysis = analyse_channels(model.eval(), model.input_shape)
    reasons = {item.layer: item.reason for item in analysis.left_whole}
    assert any(words in reason for reason in reasons.values()), reasons
    if layer is not None:
        assert words in reasons[layer] and all(group.root != layer for group in analysis.groups)
