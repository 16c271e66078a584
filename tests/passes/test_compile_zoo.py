"""Differential test of `compile_model` over the whole zoo, and on a user model that is not in the zoo.

Every zoo model gets realistic BatchNorm statistics, random channel gates on every coupled channel group (zeros,
ones and scales in (0.5, 1.5), with one group left with a single live channel) and random unit gates on its skip
units (some 0, some another value; one ResNet loses a whole stage, one loses its first unit, which has the option-A
shortcut). Compilation (FoldGates → RemoveDeadSkipUnits → SliceChannels) must then give a plain model that

- computes what the gated model computes (eval mode, fp32: max |diff| <= 1e-5 * max |ref|),
- holds no gate and no parametrization,
- has exactly the parameters and MACs that `predict_counts` predicts for the removed channels and units,
- exports to an ONNX that onnxruntime runs to the same output (for a representative subset: the dynamo exporter
  takes seconds per model), and
- compiles a second time to itself (no step modified).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from compressor.api import export_onnx
from compressor.passes.pipeline import compile_model
from compressor.counting import count_macs, count_params
from compressor.gates import gate_group, gate_unit, gates_of, last_layer, producing_group, units_of
from compressor.models import create_model, list_models
from compressor.models.units import DenseUnit, PadShortcut, ResidualUnit
from compressor.passes.base import PipelineResult
from compressor.passes.coupling import ChannelGroup, channel_groups, predict_counts, realizable

ONNX_TOLERANCE = 1e-4

# Exporting is the slow part of this file (seconds per model), so ONNX is checked on one model per structural
# feature: flatten→linear (lenet5), option-A shortcuts (resnet20), depthwise convolutions (mobilenet_v1) and projection
# shortcuts (wrn16_8); concatenations are exported with the user model at the end (a DenseNet takes over 10 s).
ONNX_CHECKED = {"lenet5", "resnet20", "mobilenet_v1", "wrn16_8"}

# Units gated off as a whole stage: resnet20 loses stage 2 (whose first unit has an option-A PadShortcut, so the
# stage's padded channels die with it), resnet56 its last stage (the classifier then reads only the shortcut's
# copies), resnet164 the projection-shortcut stage 2.
STAGES_OFF = {"resnet20": "features.stage2", "resnet56": "features.stage3", "resnet164": "features.stage2"}

# `gate_unit` analyses the whole model for each dense unit, so DenseNets get a few unit gates, not one per unit.
MAX_DENSE_UNIT_GATES = 6


@dataclass
class GatePlan:
    """The gates a test puts on a model: a scale per root channel of each group and a value per unit."""

    groups: list[ChannelGroup]
    channel_scales: list[torch.Tensor]
    unit_values: dict[str, float] = field(default_factory=dict)

    def zero_channels(self) -> list[list[int]]:
        return [torch.nonzero(scale == 0).flatten().tolist() for scale in self.channel_scales]

    def dead_units(self) -> list[str]:
        return [name for name, value in self.unit_values.items() if value == 0.0]


def random_channel_scale(size: int, generator: torch.Generator) -> torch.Tensor:
    """About a third each of 0, 1 and a scale in (0.5, 1.5), never all zero."""
    kind = torch.randint(0, 3, (size,), generator=generator)
    scale = torch.where(kind == 0, 0.0, torch.where(kind == 1, 1.0, 0.5 + torch.rand(size, generator=generator)))
    if not scale.any():
        scale[int(torch.randint(0, size, (1,), generator=generator))] = 1.0
    return scale


def plan_gates(model: nn.Module, seed: int, stage_off: str | None = None) -> GatePlan:
    generator = torch.Generator().manual_seed(seed)
    groups = channel_groups(model, model.input_shape)
    scales = [random_channel_scale(group.size, generator) for group in groups]
    # One group keeps a single channel (the widest one, so that most of it goes).
    widest = max(range(len(groups)), key=lambda i: groups[i].size)
    single = torch.zeros(groups[widest].size)
    single[int(torch.randint(0, groups[widest].size, (1,), generator=generator))] = 0.5 + float(
        torch.rand(1, generator=generator))
    scales[widest] = single
    plan = GatePlan(groups, scales)

    units = units_of(model)
    order = torch.randperm(len(units), generator=generator).tolist()
    if any(isinstance(unit, DenseUnit) for _, unit in units):
        order = order[:MAX_DENSE_UNIT_GATES]
    for position, index in enumerate(order):
        name, _ = units[index]
        draw = float(torch.rand(1, generator=generator))
        # The first two units drawn are always gated: one off, one scaled.
        if position == 0 or (position > 1 and draw < 0.3):
            plan.unit_values[name] = 0.0
        elif position == 1 or draw < 0.65:
            plan.unit_values[name] = 0.5 + float(torch.rand(1, generator=generator))
    if stage_off is not None:
        for name, _ in units:
            if name.startswith(stage_off + "."):
                plan.unit_values[name] = 0.0
    return plan


def apply_gates(model: nn.Module, plan: GatePlan) -> nn.Module:
    for group, scale in zip(plan.groups, plan.channel_scales):
        gate_group(group, scale)
    for name, value in plan.unit_values.items():
        gate_unit(model, model.get_submodule(name), value, model.input_shape)
    return model


def index_of(groups: list[ChannelGroup], group: ChannelGroup) -> int:
    return next(i for i, candidate in enumerate(groups) if candidate is group)


def expected_counts(model: nn.Module, plan: GatePlan) -> tuple[int, int]:
    """Parameters and MACs after compilation, predicted on the model before gating.

    - A channel gated 0 goes, unless an option-A shortcut copies it from a channel that stays (`realizable`).
    - A residual unit gated 0 loses its branch (and its pre-activation, when its shortcut does not read it); a
      group whose every gate point was in removed branches is then produced by an option-A shortcut alone, so its
      padded channels (and copies of removed ones) go too.
    - A dense unit gated 0 goes with its modules, and every reader loses the unit's channels: its producing group
      goes entirely.
    """
    groups = plan.groups
    removed_channels = [set(channels) for channels in plan.zero_channels()]
    removed_modules: set[nn.Module] = set()
    removed_groups: set[int] = set()
    for name in plan.dead_units():
        unit = model.get_submodule(name)
        if isinstance(unit, ResidualUnit):
            removed_modules.update(unit.branch.modules())
            if not unit.shortcut_uses_preact:
                removed_modules.update(unit.preact.modules())
        else:
            removed_modules.update(unit.modules())
            group, channels = producing_group(groups, last_layer(unit.new_features))
            removed_groups.add(index_of(groups, group))
            removed_channels[index_of(groups, group)].update(channels)
    for index, group in enumerate(groups):
        if group.gate_points and all(point.module in removed_modules for point in group.gate_points):
            survivors = [m for m in group.members if m.module not in removed_modules]
            if any(isinstance(m.module, PadShortcut) and m.produces for m in survivors) or not survivors:
                removed_channels[index] = set(range(group.size))
    plan_removed = realizable(groups, removed_channels)
    for index, (group, channels) in enumerate(zip(groups, plan_removed)):
        # SliceChannels keeps one channel of a group it would empty; the plans here never ask it to.
        survivors = [m for m in group.members if m.module not in removed_modules]
        emptied = survivors and index not in removed_groups and len(channels) == group.size
        assert not emptied, f"the test plan empties group {group.root}"
    return predict_counts(model, model.input_shape, groups, plan_removed, removed_modules)


def has_parametrizations(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(module) for module in model.modules())


@dataclass
class CompiledCase:
    """A gated zoo model, what compiling it should give, and what compiling it gave."""

    gated: nn.Module
    plan: GatePlan
    expected_params: int
    expected_macs: int
    inputs: torch.Tensor
    reference: torch.Tensor
    result: PipelineResult


def compile_case(name: str, stage_off: str | None, randomize_bn, torch_run) -> CompiledCase:
    seed = zlib.crc32(name.encode())
    torch.manual_seed(seed)
    model = randomize_bn(create_model(name).eval(), seed=seed)
    plan = plan_gates(model, seed, stage_off)
    expected_params, expected_macs = expected_counts(model, plan)
    gated = apply_gates(model, plan).eval()
    inputs = torch.randn((2, *model.input_shape), generator=torch.Generator().manual_seed(seed))
    reference = torch_run(gated, inputs)
    return CompiledCase(gated, plan, expected_params, expected_macs, inputs, reference,
                        compile_model(gated, model.input_shape))


@pytest.fixture(scope="module")
def case_cache() -> dict:
    """Compiled cases by (model name, stage gated off), shared by the tests of this module."""
    return {}


@pytest.fixture
def compiled_cases(case_cache, randomize_bn, torch_run):
    def get(name: str, stage_off: str | None) -> CompiledCase:
        if (name, stage_off) not in case_cache:
            case_cache[name, stage_off] = compile_case(name, stage_off, randomize_bn, torch_run)
        return case_cache[name, stage_off]

    return get


@pytest.mark.parametrize("name", list_models())
def test_compiled_zoo_model_equals_gated_model(name, compiled_cases, check_outputs, torch_run, onnx_run):
    case = compiled_cases(name, STAGES_OFF.get(name))
    gated, compiled = case.gated, case.result.model
    shape = tuple(gated.input_shape)
    assert gates_of(gated), "the test should have gated the model"

    assert [step.modified for step in case.result.steps] == [True, bool(case.plan.dead_units()), True]
    check_outputs(torch_run(compiled, case.inputs), case.reference)
    assert gates_of(compiled) == [] and not has_parametrizations(compiled)
    assert all(isinstance(unit.gate, nn.Identity) for _, unit in units_of(compiled))
    assert count_params(compiled) < count_params(gated)
    assert count_macs(compiled, shape) < count_macs(gated, shape)
    for unit_name in case.plan.dead_units():
        unit = compiled.get_submodule(unit_name)
        assert isinstance(unit, nn.Identity) or (isinstance(unit, ResidualUnit) and unit.branch is None), unit_name

    if name in ONNX_CHECKED:
        proto = export_onnx(compiled, input_shape=shape).model
        check_outputs(onnx_run(proto, case.inputs), case.reference, rel=ONNX_TOLERANCE)

    again = compile_model(compiled, shape)
    assert [step.modified for step in again.steps] == [False, False, False]
    assert count_params(again.model) == count_params(compiled)
    check_outputs(torch_run(again.model, case.inputs), case.reference)


# Every zoo model as gated above, and the models that lose a stage also with random unit gates only.
COUNT_CASES = [(name, STAGES_OFF.get(name)) for name in list_models()] + [(name, None) for name in STAGES_OFF]
COUNT_CASE_PARAMS = [pytest.param(name, stage, id=f"{name}-{stage or 'random'}") for name, stage in COUNT_CASES]


@pytest.mark.parametrize("name, stage_off", COUNT_CASE_PARAMS)
def test_compiled_zoo_model_has_the_predicted_macs(name, stage_off, compiled_cases):
    case = compiled_cases(name, stage_off)
    assert count_macs(case.result.model, tuple(case.gated.input_shape)) == case.expected_macs


@pytest.mark.parametrize("name, stage_off", COUNT_CASE_PARAMS)
def test_compiled_zoo_model_has_the_predicted_params(name, stage_off, compiled_cases):
    case = compiled_cases(name, stage_off)
    assert count_params(case.result.model) == case.expected_params


def test_the_stages_gated_off_exist():
    """The stage-wide removals above name real stages of residual units."""
    for name, stage in STAGES_OFF.items():
        units = [unit for unit_name, unit in units_of(create_model(name)) if unit_name.startswith(stage + ".")]
        assert units and all(isinstance(unit, ResidualUnit) for unit in units), (name, stage)


# --------------------------------------------------------------------------------- a model that is not in the zoo


class TwoBranchNet(nn.Module):
    """A user model with the structures channel slicing must follow: a depthwise convolution, a concatenation of
    two branches, a residual add with a projection (1x1 conv + BN) shortcut, and flatten→linear."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shape = (3, 12, 12)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                                       nn.ReLU())
        self.left = nn.Sequential(nn.Conv2d(16, 12, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(20, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24),
                                    nn.ReLU(), nn.Conv2d(24, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24))
        self.projection = nn.Sequential(nn.Conv2d(20, 24, 1, stride=2, bias=False), nn.BatchNorm2d(24))
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(24 * 9, 32), nn.ReLU(), nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(self.stem(x))
        x = torch.cat([self.left(x), self.right(x)], 1)
        x = torch.relu(self.branch(x) + self.projection(x))
        return self.head(self.pool(x))


def test_compiled_user_model_equals_gated_model_and_is_smaller(randomize_bn, check_outputs, torch_run, onnx_run):
    torch.manual_seed(0)
    model = randomize_bn(TwoBranchNet().eval(), seed=2)
    shape = model.input_shape
    plan = plan_gates(model, seed=3)
    assert len(plan.groups) >= 4  # stem+depthwise, left, right, branch inner, residual, hidden linear
    expected_params, expected_macs = expected_counts(model, plan)
    gated = apply_gates(model, plan).eval()
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(4))
    reference = torch_run(gated, x)

    result = compile_model(gated, shape)

    compiled = result.model
    check_outputs(torch_run(compiled, x), reference)
    assert gates_of(compiled) == [] and not has_parametrizations(compiled)
    assert (count_params(compiled), count_macs(compiled, shape)) == (expected_params, expected_macs)
    assert count_params(compiled) < count_params(TwoBranchNet())
    depthwise = compiled.depthwise[0]
    assert depthwise.in_channels == depthwise.out_channels == depthwise.groups < 16
    concat_width = compiled.left[0].out_channels + compiled.right[0].out_channels
    assert compiled.branch[0].in_channels == compiled.projection[0].in_channels == concat_width < 20
    residual_width = compiled.branch[3].out_channels
    assert compiled.projection[0].out_channels == residual_width < 24
    assert compiled.head[1].in_features == residual_width * 9
    check_outputs(onnx_run(export_onnx(compiled, input_shape=shape).model, x), reference, rel=ONNX_TOLERANCE)
    assert [step.modified for step in compile_model(compiled, shape).steps] == [False, False, False]
