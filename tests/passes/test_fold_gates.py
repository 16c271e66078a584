"""Tests of FoldGatesPass: channel gates (parametrizations) and unit gates are folded into plain weights, the
output is unchanged, no gate module is left, the input model is not mutated, and a second run changes nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from compressor.models import create_model
from compressor.passes.analysis.groups import channel_groups
from compressor.passes.fold_gates import FoldGatesPass, fold_gates
from compressor.passes.gates import UnitGate, attach_channel_gate, gate_group, gate_unit, gates_of, units_of


def has_parametrizations(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(module) for module in model.modules())


def gate_every_group(model: nn.Module, seed: int) -> None:
    """Random channel gates (0, 1 or a scale in (0.5, 1.5)) on every group."""
    generator = torch.Generator().manual_seed(seed)
    for group in channel_groups(model, model.input_shape):
        kind = torch.randint(0, 3, (group.size,), generator=generator)
        between = 0.5 + torch.rand(group.size, generator=generator)
        scale = torch.where(kind == 0, 0.0, torch.where(kind == 1, 1.0, between))
        gate_group(group, scale)


def gated_parametrizations(model: nn.Module) -> int:
    return sum(len(chain) for module in model.modules() if parametrize.is_parametrized(module)
               for chain in module.parametrizations.values())


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "densenet40", "mobilenet_v1", "wrn16_8"])
def test_fold_gates_keeps_outputs_and_leaves_no_gate(name, randomize_bn, snapshot, check_unchanged, check_outputs,
                                                      torch_run):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name).eval(), seed=1)
    gate_every_group(model, seed=2)
    units = units_of(model)
    for index, (unit_name, unit) in enumerate(units[:3]):
        gate_unit(model, unit, (0.0, 0.7, 1.3)[index], model.input_shape)
    x = torch.randn((2, *model.input_shape), generator=torch.Generator().manual_seed(3))
    reference = torch_run(model, x)
    state = snapshot(model)
    parametrizations = gated_parametrizations(model)

    result = FoldGatesPass()(model)

    folded = result.model
    assert result.modified is True
    assert result.notes == {"channel_gates": parametrizations, "unit_gates": len(units[:3])}
    assert gates_of(folded) == [] and not has_parametrizations(folded)
    assert all(isinstance(unit.gate, nn.Identity) for _, unit in units_of(folded))
    assert not folded.training
    check_outputs(torch_run(folded, x), reference)
    check_unchanged(model, state)
    assert gates_of(model), "the input keeps its gates"

    again = FoldGatesPass()(folded)
    assert again.modified is False and again.notes == {"channel_gates": 0, "unit_gates": 0}


def test_residual_unit_gate_is_folded_into_the_last_batchnorm_of_the_branch(randomize_bn, check_outputs, torch_run):
    torch.manual_seed(0)
    model = randomize_bn(create_model("resnet20").eval(), seed=4)
    unit = model.features.stage2[1]
    last_bn = unit.branch[4]
    weight, bias = last_bn.weight.detach().clone(), last_bn.bias.detach().clone()
    gate_unit(model, unit, 0.7, model.input_shape)
    x = torch.randn((2, *model.input_shape), generator=torch.Generator().manual_seed(5))
    reference = torch_run(model, x)

    folded = fold_gates(model)

    folded_unit = folded.features.stage2[1]
    assert isinstance(folded_unit.gate, nn.Identity)
    torch.testing.assert_close(folded_unit.branch[4].weight, 0.7 * weight)
    torch.testing.assert_close(folded_unit.branch[4].bias, 0.7 * bias)
    torch.testing.assert_close(folded_unit.branch[3].weight, unit.branch[3].weight)  # only the last layer scales
    check_outputs(torch_run(folded, x), reference)


def test_residual_unit_gate_is_folded_into_a_branch_ending_in_a_convolution(randomize_bn, check_outputs, torch_run):
    torch.manual_seed(0)
    model = randomize_bn(create_model("wrn16_8").eval(), seed=6)
    unit = model.features.group1[1]
    last_conv = unit.branch[-1]
    assert isinstance(last_conv, nn.Conv2d)
    weight = last_conv.weight.detach().clone()
    gate_unit(model, unit, 0.7, model.input_shape)
    x = torch.randn((2, *model.input_shape), generator=torch.Generator().manual_seed(7))
    reference = torch_run(model, x)

    folded = fold_gates(model)

    torch.testing.assert_close(folded.features.group1[1].branch[-1].weight, 0.7 * weight)
    check_outputs(torch_run(folded, x), reference)


def test_residual_unit_gate_of_zero_leaves_a_provably_zero_branch(randomize_bn):
    model = randomize_bn(create_model("resnet20").eval(), seed=8)
    gate_unit(model, model.features.stage1[0], 0.0, model.input_shape)
    folded = fold_gates(model)
    last_bn = folded.features.stage1[0].branch[4]
    assert not last_bn.weight.any() and not last_bn.bias.any()


def test_dense_unit_gate_is_folded_into_its_readers_batchnorms(randomize_bn, check_outputs, torch_run):
    torch.manual_seed(0)
    model = randomize_bn(create_model("densenet40").eval(), seed=9)
    unit = model.features.block2[3]
    reader = model.features.block2[4].new_features[0]
    start = reader.num_features - unit.growth
    weight = reader.weight.detach().clone()
    gate_unit(model, unit, 0.0, model.input_shape)
    x = torch.randn((2, *model.input_shape), generator=torch.Generator().manual_seed(10))
    reference = torch_run(model, x)

    result = FoldGatesPass()(model)

    folded_reader = result.model.features.block2[4].new_features[0]
    assert not folded_reader.weight[start:].any() and not folded_reader.bias[start:].any()
    torch.testing.assert_close(folded_reader.weight[:start], weight[:start])
    assert result.notes["unit_gates"] == 1
    check_outputs(torch_run(result.model, x), reference)


class TrainingNoise(UnitGate):
    """A gate that is stochastic in training mode (as a learnt gate may be) and deterministic in eval mode."""

    def value(self) -> torch.Tensor:
        return self.scale * (1 + torch.rand(()) if self.training else 1)


def test_fold_gates_folds_the_eval_mode_value_of_a_model_in_training_mode(randomize_bn, check_outputs, torch_run):
    torch.manual_seed(0)
    model = randomize_bn(create_model("resnet20"), seed=11)
    unit = model.features.stage1[2]
    unit.gate = TrainingNoise(0.6)
    x = torch.randn((2, *model.input_shape), generator=torch.Generator().manual_seed(12))
    reference = torch_run(model.eval(), x)
    model.train()

    folded = fold_gates(model)

    assert model.training, "the input model keeps its mode"
    check_outputs(torch_run(folded, x), reference)


def test_fold_gates_on_a_model_without_gates_changes_nothing(randomize_bn, check_outputs, torch_run):
    model = randomize_bn(create_model("lenet5").eval(), seed=13)
    x = torch.randn((2, *model.input_shape))
    result = FoldGatesPass()(model)
    assert result.modified is False
    check_outputs(torch_run(result.model, x), torch_run(model, x))


class Doubling(nn.Module):
    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return 2 * tensor


def test_fold_gates_refuses_a_layer_mixing_gates_with_another_parametrization():
    layer = nn.Sequential(nn.Linear(4, 3))
    parametrize.register_parametrization(layer[0], "weight", Doubling())
    attach_channel_gate(layer[0], torch.ones(3))
    with pytest.raises(ValueError, match="mixes gates"):
        FoldGatesPass().run(layer)
