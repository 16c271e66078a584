"""Tests of the gate vocabulary (compressor.passes.gates): channel gates as parametrizations of the layers producing a
group's channels, unit gates on residual and dense units (a dense unit gated 0 is exactly a model without it),
the helpers that find gates and units, and the errors for gates that cannot be placed."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

import compressor.gates as gates_at_the_old_path
from compressor.models import create_model
from compressor.models.units import DenseUnit, FeaturesClassifier, pooled_classifier
from compressor.passes.analysis.groups import channel_groups
from compressor.passes.gates import (ChannelGate, FeatureRangeGate, UnitGate, attach_channel_gate, dense_unit_readers,
                                    gate_group, gate_unit, gates_of, units_of)
from shared import randomize_batchnorm_, single_torch_thread

RELATIVE_TOLERANCE = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_torch_thread():
        yield


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def assert_close_outputs(actual: torch.Tensor, reference: torch.Tensor) -> None:
    assert actual.shape == reference.shape
    scale = reference.abs().max().item()
    assert scale > 0
    assert (actual - reference).abs().max().item() <= RELATIVE_TOLERANCE * scale


def inputs_for(model: nn.Module, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn((batch, *model.input_shape), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ channel gates


@pytest.mark.parametrize("layer", [nn.Conv2d(3, 4, 3, bias=True), nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4),
                                   nn.Linear(5, 4)], ids=["conv", "conv-no-bias", "batchnorm", "linear"])
def test_channel_gate_scales_each_output_channel(layer):
    layer = randomize_batchnorm_(copy.deepcopy(layer), seed=1).eval()
    x = torch.randn((2, 4, 6, 6) if isinstance(layer, nn.BatchNorm2d) else (2, 3, 6, 6)
                    if isinstance(layer, nn.Conv2d) else (2, 5))
    reference = outputs(layer, x)
    scale = torch.tensor([0.0, 1.0, 0.5, 1.5])

    gate = attach_channel_gate(layer, scale)

    assert isinstance(gate, ChannelGate) and torch.equal(gate.value(), scale)
    assert parametrize.is_parametrized(layer, "weight")
    shape = (1, 4, 1, 1) if reference.dim() == 4 else (1, 4)
    torch.testing.assert_close(outputs(layer, x), reference * scale.reshape(shape))
    assert not outputs(layer, x)[:, 0].any(), "a gate of 0 makes the channel exactly zero"
    assert gates_of(layer) == [gate], "a gate shared by weight and bias is listed once"


def test_channel_gate_refuses_a_batchnorm_without_affine_parameters():
    with pytest.raises(ValueError, match="affine"):
        attach_channel_gate(nn.BatchNorm2d(4, affine=False), torch.ones(4))


def test_gate_group_zeroes_a_root_channel_wherever_the_group_produces_it():
    torch.manual_seed(0)
    model = randomize_batchnorm_(create_model("resnet20").eval(), seed=2)
    group = next(g for g in channel_groups(model, model.input_shape) if g.root == "features.stem.0")
    seen = {}
    hooks = [point.module.register_forward_hook(lambda module, args, out, name=point.name: seen.__setitem__(name, out))
             for point in group.gate_points]
    scale = torch.ones(group.size)
    scale[3] = 0.0
    scale[7] = 0.5

    gates = gate_group(group, scale)
    outputs(model, inputs_for(model))

    assert len(gates) == len(group.gate_points) == 4
    for point in group.gate_points:
        channel = group.member_channels(point, [3])
        assert not seen[point.name][:, channel].any(), point.name
        assert seen[point.name][:, group.member_channels(point, [4])].any(), point.name
    for hook in hooks:
        hook.remove()


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "densenet40"])
def test_gate_group_of_ones_changes_nothing(name):
    torch.manual_seed(0)
    model = randomize_batchnorm_(create_model(name).eval(), seed=3)
    x = inputs_for(model)
    reference = outputs(model, x)
    for group in channel_groups(model, model.input_shape):
        gate_group(group, torch.ones(group.size))
    assert gates_of(model)
    assert_close_outputs(outputs(model, x), reference)


# --------------------------------------------------------------------------------------------- residual units


def test_residual_unit_gate_scales_the_branch():
    torch.manual_seed(0)
    model = randomize_batchnorm_(create_model("resnet20").eval(), seed=4)
    unit = model.features.stage2[0]  # option-A shortcut
    x = torch.randn(2, 16, 32, 32)
    expected = outputs(unit.post_activation, 0.3 * outputs(unit.branch, x) + outputs(unit.shortcut, x))

    gate = gate_unit(model, unit, 0.3, model.input_shape)

    assert isinstance(gate, UnitGate) and unit.gate is gate and float(gate.value()) == pytest.approx(0.3)
    torch.testing.assert_close(outputs(unit, x), expected)
    assert gate in gates_of(model)


def test_residual_unit_gate_of_zero_leaves_the_projection_shortcut_of_the_preactivation():
    torch.manual_seed(0)
    model = randomize_batchnorm_(create_model("wrn16_8").eval(), seed=5)
    unit = model.features.group2[0]
    assert unit.shortcut_uses_preact
    x = torch.randn(2, 128, 8, 8)
    gate_unit(model, unit, 0.0, model.input_shape)
    torch.testing.assert_close(outputs(unit, x), outputs(unit.shortcut, outputs(unit.preact, x)))


def test_gate_unit_refuses_a_removed_branch_and_other_modules():
    model = create_model("resnet20").eval()
    unit = model.features.stage1[1]
    unit.branch = None
    with pytest.raises(ValueError, match="no branch"):
        gate_unit(model, unit, 0.5, model.input_shape)
    assert all(candidate is not unit for _, candidate in units_of(model)), "a removed branch is no unit any more"
    with pytest.raises(TypeError, match="ResidualUnit or DenseUnit"):
        gate_unit(model, model.features.stem, 0.5, model.input_shape)


# ------------------------------------------------------------------------------------------------ dense units


class TinyDenseNet(FeaturesClassifier):
    """stem(4) → dense unit (+2) → dense unit (+2) → BN-ReLU → pool → linear: small enough to prune by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shape = (3, 8, 8)
        self.num_classes = 3
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=False),
            DenseUnit(nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1, bias=False))),
            DenseUnit(nn.Sequential(nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 2, 3, padding=1, bias=False))),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.classifier = pooled_classifier(8, 3)


def without_first_dense_unit(model: TinyDenseNet) -> nn.Module:
    """The same network with its first dense unit deleted by hand: readers lose channels 4 and 5."""
    kept = [0, 1, 2, 3, 6, 7]

    def narrowed_norm(norm: nn.BatchNorm2d, channels: list[int]) -> nn.BatchNorm2d:
        new = nn.BatchNorm2d(len(channels))
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new, name).data.copy_(getattr(norm, name).detach()[channels])
        return new

    second = model.features[2].new_features
    conv = nn.Conv2d(4, 2, 3, padding=1, bias=False)
    conv.weight.data.copy_(second[2].weight.detach()[:, :4])
    fc = nn.Linear(6, 3)
    fc.weight.data.copy_(model.classifier.fc.weight.detach()[:, kept])
    fc.bias.data.copy_(model.classifier.fc.bias.detach())
    stem = copy.deepcopy(model.features[0])
    return nn.Sequential(
        stem,
        DenseUnit(nn.Sequential(narrowed_norm(second[0], [0, 1, 2, 3]), nn.ReLU(), conv)),
        narrowed_norm(model.features[3], kept), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc,
    )


def test_dense_unit_gate_of_zero_is_the_model_without_the_unit():
    torch.manual_seed(0)
    model = randomize_batchnorm_(TinyDenseNet().eval(), seed=6)
    x = inputs_for(model)
    reference = outputs(without_first_dense_unit(model), x)

    gate = gate_unit(model, model.features[1], 0.0, model.input_shape)

    assert model.features[1].gate is gate
    assert_close_outputs(outputs(model, x), reference)
    # invisible: whatever the unit computes, nothing downstream sees it
    with torch.no_grad():
        model.features[1].new_features[2].weight.mul_(1000.0)
    assert_close_outputs(outputs(model, x), reference)


def test_dense_unit_gate_scales_the_features_where_each_reader_normalises_them():
    torch.manual_seed(0)
    model = randomize_batchnorm_(TinyDenseNet().eval(), seed=7)
    unit = model.features[1]
    readers = dense_unit_readers(unit, channel_groups(model, model.input_shape))
    assert [(start, stop) for _, start, stop in readers] == [(4, 6), (4, 6)]
    assert {id(norm) for norm, _, _ in readers} == {id(model.features[2].new_features[0]), id(model.features[3])}
    weights = {id(norm): (norm.weight.detach().clone(), norm.bias.detach().clone()) for norm, _, _ in readers}

    gate = gate_unit(model, unit, 0.25, model.input_shape)

    for norm, start, stop in readers:
        weight, bias = weights[id(norm)]
        factor = torch.ones(norm.num_features)
        factor[start:stop] = 0.25
        torch.testing.assert_close(norm.weight, weight * factor)
        torch.testing.assert_close(norm.bias, bias * factor)
    range_gates = [g for g in gates_of(model) if isinstance(g, FeatureRangeGate)]
    assert len(range_gates) == 4 and all(g.unit_gate is gate for g in range_gates)
    assert sum(isinstance(g, UnitGate) for g in gates_of(model)) == 1
    # the unit gate is one value: changing it changes every reader
    gate.scale.fill_(0.5)
    weight, _ = weights[id(model.features[3])]
    assert model.features[3].weight[4].item() == pytest.approx(0.5 * weight[4].item())


def test_feature_range_gate_scales_only_its_channels():
    gate = FeatureRangeGate(UnitGate(0.5), 2, 4)
    tensor = torch.arange(1.0, 7.0)
    assert torch.equal(gate(tensor), torch.tensor([1.0, 2.0, 1.5, 2.0, 5.0, 6.0]))


def test_dense_unit_read_without_a_batchnorm_cannot_be_gated():
    class RawReader(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_shape = (3, 6, 6)
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.unit = DenseUnit(nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)))
            self.reader = nn.Conv2d(6, 5, 1)  # reads the concatenation as it is
            self.head = pooled_classifier(5, 2)

        def forward(self, x):
            return self.head(self.reader(self.unit(self.stem(x))))

    model = RawReader().eval()
    with pytest.raises(ValueError, match="without a BatchNorm"):
        gate_unit(model, model.unit, 0.0, model.input_shape)


def test_units_of_lists_residual_and_dense_units():
    assert len(units_of(create_model("resnet20"))) == 9
    assert len(units_of(create_model("densenet40"))) == 36
    assert units_of(create_model("vgg16")) == []


# ------------------------------------------------------------------------------------------------ old import path


def test_a_gate_pickled_under_the_old_import_path_loads_as_the_same_class():
    for gate_type in (ChannelGate, UnitGate, FeatureRangeGate):
        assert getattr(gates_at_the_old_path, gate_type.__name__) is gate_type
    # Protocol 0 names a class as "module\nname\n": this is the pickle of a gate whose class was compressor.gates'.
    pickled = pickle.dumps(UnitGate(0.5), protocol=0).replace(b"compressor.passes.gates\n", b"compressor.gates\n")
    assert b"compressor.gates\nUnitGate" in pickled
    loaded = pickle.loads(pickled)
    assert type(loaded) is UnitGate and loaded.value().item() == 0.5
