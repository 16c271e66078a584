"""Tests of RemoveDeadSkipUnitsPass: residual units gated 0 (or with a provably zero branch) become their shortcut
(identity, option-A padding or projection), dead dense units disappear and their readers physically lose the
unit's channels; outputs stay equal, the input is not mutated and a second run changes nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compressor.counting import count_macs, count_params
from compressor.models import create_model
from compressor.models.units import DenseUnit, PadShortcut, ResidualUnit
from compressor.passes.analysis.counts import predict_counts
from compressor.passes.analysis.groups import channel_groups
from compressor.passes.fold_gates import fold_gates
from compressor.passes.gates import gate_unit, last_layer, producing_group
from compressor.passes.remove_dead_skip_units import RemoveDeadSkipUnitsPass


def inputs(model: nn.Module, seed: int = 0) -> torch.Tensor:
    return torch.randn((2, *model.input_shape), generator=torch.Generator().manual_seed(seed))


def run_and_check(model, expected_removed, snapshot, check_unchanged, check_outputs, torch_run):
    """The standard pass test; returns the result."""
    x = inputs(model)
    reference = torch_run(model, x)
    state = snapshot(model)

    result = RemoveDeadSkipUnitsPass(model.input_shape)(model)

    assert result.modified is True
    assert sorted(result.notes["removed_units"]) == sorted(expected_removed)
    check_outputs(torch_run(result.model, x), reference)
    check_unchanged(model, state)
    again = RemoveDeadSkipUnitsPass(model.input_shape)(result.model)
    assert again.modified is False and again.notes["removed_units"] == []
    return result


# --------------------------------------------------------------------------------------------- residual units


@pytest.mark.parametrize("name, unit_name, shortcut_type", [
    ("resnet20", "features.stage1.1", nn.Identity),
    ("resnet20", "features.stage2.0", PadShortcut),
    ("resnet164", "features.stage2.0", nn.Conv2d),
    ("wrn16_8", "features.group3.0", nn.Conv2d),
    ("wrn16_8", "features.group1.1", nn.Identity),
])
def test_residual_unit_gated_zero_becomes_its_shortcut(name, unit_name, shortcut_type, randomize_bn, snapshot,
                                                       check_unchanged, check_outputs, torch_run):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name).eval(), seed=1)
    unit = model.get_submodule(unit_name)
    assert isinstance(unit.shortcut, shortcut_type)
    gate_unit(model, unit, 0.0, model.input_shape)
    folded = fold_gates(model)

    result = run_and_check(folded, [unit_name], snapshot, check_unchanged, check_outputs, torch_run)

    removed = result.model.get_submodule(unit_name)
    assert isinstance(removed, ResidualUnit) and removed.branch is None
    assert isinstance(removed.gate, nn.Identity) and isinstance(removed.shortcut, shortcut_type)
    # the pre-activation stays only when the (projection) shortcut reads it
    assert isinstance(removed.preact, nn.Identity) is (not unit.shortcut_uses_preact)
    assert count_params(result.model) == count_params(folded) - count_params(unit.branch) - (
        0 if unit.shortcut_uses_preact else count_params(unit.preact))


def test_residual_unit_gated_zero_is_recognised_before_folding(randomize_bn, snapshot, check_unchanged,
                                                                check_outputs, torch_run):
    model = randomize_bn(create_model("resnet20").eval(), seed=2)
    gate_unit(model, model.features.stage3[2], 0.0, model.input_shape)
    result = run_and_check(model, ["features.stage3.2"], snapshot, check_unchanged, check_outputs, torch_run)
    assert result.model.features.stage3[2].branch is None


@pytest.mark.parametrize("name, unit_name", [("resnet20", "features.stage2.2"), ("wrn16_8", "features.group2.1")])
def test_residual_unit_with_a_zero_last_layer_becomes_its_shortcut(name, unit_name, randomize_bn, snapshot,
                                                                    check_unchanged, check_outputs, torch_run):
    model = randomize_bn(create_model(name).eval(), seed=3)
    last = last_layer(model.get_submodule(unit_name).branch)
    with torch.no_grad():
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()
    result = run_and_check(model, [unit_name], snapshot, check_unchanged, check_outputs, torch_run)
    assert result.model.get_submodule(unit_name).branch is None


def test_every_unit_of_a_stage_can_go(randomize_bn, snapshot, check_unchanged, check_outputs, torch_run):
    model = randomize_bn(create_model("resnet20").eval(), seed=4)
    names = [f"features.stage2.{i}" for i in range(3)]
    for name in names:
        gate_unit(model, model.get_submodule(name), 0.0, model.input_shape)
    result = run_and_check(fold_gates(model), names, snapshot, check_unchanged, check_outputs, torch_run)
    # what is left of the stage is the option-A shortcut: a stride-2 zero-padding
    stage = result.model.features.stage2
    assert all(unit.branch is None for unit in stage)
    assert isinstance(stage[0].shortcut, PadShortcut) and stage[0].shortcut.is_padding


def test_a_live_branch_with_small_gate_is_kept(randomize_bn):
    model = randomize_bn(create_model("resnet20").eval(), seed=5)
    gate_unit(model, model.features.stage1[0], 1e-6, model.input_shape)
    result = RemoveDeadSkipUnitsPass(model.input_shape)(fold_gates(model))
    assert result.modified is False and result.model.features.stage1[0].branch is not None


# ------------------------------------------------------------------------------------------------ dense units


def dense_units(model: nn.Module) -> dict[str, DenseUnit]:
    return {name: module for name, module in model.named_modules() if isinstance(module, DenseUnit)}


def expected_counts_without(model: nn.Module, unit_names: list[str]) -> tuple[int, int]:
    """Counts of `model` once the named dense units are gone and their readers lost their channels."""
    groups = channel_groups(model, model.input_shape)
    removed = [[] for _ in groups]
    modules = set()
    for name in unit_names:
        unit = model.get_submodule(name)
        group, channels = producing_group(groups, last_layer(unit.new_features))
        removed[next(i for i, g in enumerate(groups) if g is group)] = channels
        modules.update(unit.modules())
    return predict_counts(model, model.input_shape, groups, removed, modules)


@pytest.mark.parametrize("name, unit_names", [
    ("densenet40", ["features.block2.3"]),
    ("densenet40", ["features.block1.2", "features.block1.3", "features.block3.11"]),
    ("densenet100", ["features.block1.0", "features.block2.7"]),
])
def test_dead_dense_units_go_and_their_readers_narrow(name, unit_names, randomize_bn, snapshot, check_unchanged,
                                                      check_outputs, torch_run):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name).eval(), seed=6)
    growth = model.get_submodule(unit_names[0]).growth
    for unit_name in unit_names:
        gate_unit(model, model.get_submodule(unit_name), 0.0, model.input_shape)
    folded = fold_gates(model)
    expected = expected_counts_without(folded, unit_names)
    widths_before = {n: u.new_features[0].num_features for n, u in dense_units(folded).items()}

    result = run_and_check(folded, unit_names, snapshot, check_unchanged, check_outputs, torch_run)

    compiled = result.model
    for unit_name in unit_names:
        assert isinstance(compiled.get_submodule(unit_name), nn.Identity)
    # every later unit of the block reads `growth` fewer channels per removed unit before it: no zero-filling
    for unit_name, unit in dense_units(compiled).items():
        block, position = unit_name.rsplit(".", 1)
        earlier = sum(1 for removed in unit_names
                      if removed.rsplit(".", 1)[0] == block and int(removed.rsplit(".", 1)[1]) < int(position))
        first_bn, first_conv = unit.new_features[0], unit.new_features[2]
        assert first_bn.num_features == first_conv.in_channels == widths_before[unit_name] - earlier * growth
    assert (count_params(compiled), count_macs(compiled, compiled.input_shape)) == expected


def test_last_dense_unit_going_narrows_the_classifier(randomize_bn, snapshot, check_unchanged, check_outputs,
                                                      torch_run):
    model = randomize_bn(create_model("densenet40").eval(), seed=7)
    in_features = model.classifier.fc.in_features
    gate_unit(model, model.features.block3[11], 0.0, model.input_shape)
    result = run_and_check(fold_gates(model), ["features.block3.11"], snapshot, check_unchanged, check_outputs,
                           torch_run)
    assert result.model.features.final_bn.num_features == result.model.classifier.fc.in_features == in_features - 12


def test_dense_unit_zero_in_only_some_readers_is_kept(randomize_bn):
    model = randomize_bn(create_model("densenet40").eval(), seed=8)
    reader = model.features.block1[5].new_features[0]
    with torch.no_grad():
        reader.weight[-12:] = 0
        reader.bias[-12:] = 0
    result = RemoveDeadSkipUnitsPass(model.input_shape)(model)
    assert result.modified is False
    assert isinstance(result.model.features.block1[4], DenseUnit)


def test_a_gated_dense_unit_needs_its_gates_folded_first(randomize_bn):
    model = randomize_bn(create_model("densenet40").eval(), seed=9)
    gate_unit(model, model.features.block1[0], 0.0, model.input_shape)
    with pytest.raises(ValueError, match="fold its gates first"):
        RemoveDeadSkipUnitsPass(model.input_shape).run(model)
