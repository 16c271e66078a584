"""Tests of ExpectedCounts: the expected parameters and MACs of a network whose skip-units and hidden channels are
each present with a probability (method bernoulli's complexity cost).

The reference is always an independent counter: `count_params` / `count_macs` of the dense model at probability 1,
`CountPredictor` (the compiler's own prediction) on the sub-network a 0/1 configuration keeps, exact enumeration of
every configuration of a tiny network, a Monte-Carlo mean over sampled sub-networks, and the paper's closed forms
for the gradient of a basic block.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn

from compressor.counting import count_layer_macs, count_macs, count_params
from compressor.methods.bernoulli import hidden_groups
from compressor.models import create_model, list_models
from compressor.models.densenet import DenseNet
from compressor.models.resnet_cifar import CifarResNet
from compressor.models.units import DenseUnit, FeaturesClassifier, ResidualUnit, pooled_classifier
from compressor.passes.analysis.counts import CountPredictor
from compressor.passes.analysis.expected_counts import ExpectedCounts
from compressor.passes.analysis.groups import analyse_channels
from compressor.passes.gates import last_layer, producing_group, units_of
from shared import single_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_torch_thread():
        yield


class Gated:
    """A plain model with the skip-units and hidden channel groups `BernoulliMethod.prepare` would gate, and the
    ExpectedCounts built on them."""

    def __init__(self, model: nn.Module, input_shape=None):
        self.model = model.eval()
        self.shape = tuple(input_shape or model.input_shape)
        analysis = analyse_channels(model, self.shape)
        self.all_groups = analysis.groups
        self.unit_names = [name for name, _ in units_of(model)]
        self.units = [model.get_submodule(name) for name in self.unit_names]
        self.groups, _ = hidden_groups(analysis.groups, self.units)
        self.expected = ExpectedCounts(model, self.shape, self.units, self.groups, analysis.groups)
        self.layer_macs = count_layer_macs(model, self.shape)

    @property
    def sizes(self) -> list[int]:
        return [group.size for group in self.groups]

    def __call__(self, theta, pi) -> tuple[float, float]:
        params, macs = self.expected(torch.as_tensor(theta, dtype=torch.float64),
                                     [torch.as_tensor(p, dtype=torch.float64) for p in pi])
        return float(params), float(macs)

    def plan(self, theta01, pi01):
        """(groups, removed root channels per group, removed modules) of the sub-network that drops every unit
        and channel at 0; a dense unit at 0 also takes its features from every layer that reads them."""
        removed: dict[int, tuple] = {}
        for group, values in zip(self.groups, pi01):
            removed[id(group)] = (group, {int(i) for i in np.flatnonzero(np.asarray(values) == 0)})
        modules = set()
        for unit, value in zip(self.units, theta01):
            if value:
                continue
            modules.update(unit_modules(unit))
            if isinstance(unit, DenseUnit):
                group, _ = producing_group(self.all_groups, last_layer(unit.new_features))
                entry = removed.setdefault(id(group), (group, set()))
                entry[1].update(range(group.size))
        groups = [group for group, _ in removed.values()]
        return groups, [sorted(channels) for _, channels in removed.values()], modules

    def predicted(self, theta01, pi01) -> tuple[int, int]:
        """CountPredictor's (params, MACs) of the sub-network at the 0/1 values."""
        groups, channels, modules = self.plan(theta01, pi01)
        return CountPredictor(self.model, self.shape, groups, modules, self.layer_macs)(channels)


def unit_modules(unit: nn.Module) -> set[nn.Module]:
    """What RemoveDeadSkipUnits deletes with a unit: a residual unit's branch, and its pre-activation unless the
    (projection) shortcut reads it; a dense unit's new-features layers."""
    if isinstance(unit, DenseUnit):
        return set(unit.new_features.modules())
    kept = unit.shortcut_uses_preact or isinstance(unit.preact, nn.Identity)
    return set(unit.branch.modules()) | (set() if kept else set(unit.preact.modules()))


def random_probabilities(gated: Gated, generator: torch.Generator, low: float = 0.1, high: float = 0.95):
    span = high - low
    theta = torch.rand(len(gated.units), generator=generator, dtype=torch.float64) * span + low
    pi = [torch.rand(size, generator=generator, dtype=torch.float64) * span + low for size in gated.sizes]
    return theta, pi


# ----------------------------------------------------------------------------------------- all probabilities 1


@pytest.mark.parametrize("name", list_models())
def test_all_ones_equals_the_counted_model(name):
    torch.manual_seed(0)
    gated = Gated(create_model(name))
    params, macs = gated(torch.ones(len(gated.units)), [torch.ones(size) for size in gated.sizes])
    assert params == count_params(gated.model)
    assert macs == count_macs(gated.model, gated.shape)
    # the counts are exact functions: the same at float32 probabilities
    params32, macs32 = gated.expected(torch.ones(len(gated.units)), [torch.ones(size) for size in gated.sizes])
    assert (float(params32), float(macs32)) == (params, macs)


@pytest.mark.parametrize("name, mega_macs, mega_params", [
    ("resnet20", 40.55, 0.270),
    ("resnet56", 125.49, 0.853),
    ("resnet110", 252.89, 1.728),
])
def test_all_ones_equals_the_reference_counts_of_the_paper(name, mega_macs, mega_params):
    gated = Gated(create_model(name))
    assert len(gated.units) == len(gated.groups) == (int(name[6:]) - 2) // 2
    params, macs = gated(torch.ones(len(gated.units)), [torch.ones(size) for size in gated.sizes])
    assert round(macs / 1e6, 2) == mega_macs
    assert round(params / 1e6, 3) == mega_params


# ---------------------------------------------------------------------------------- 0/1 values: sub-networks


@pytest.mark.parametrize("name, draws", [
    ("resnet20", 6),
    ("resnet164", 3),
    ("densenet40", 4),
    ("lenet300_100", 6),
    ("mobilenet_v1", 3),
])
def test_zero_one_values_equal_the_count_predictor_on_the_sub_network(name, draws):
    torch.manual_seed(0)
    gated = Gated(create_model(name))
    generator = torch.Generator().manual_seed(1)
    dense = gated(torch.ones(len(gated.units)), [torch.ones(size) for size in gated.sizes])
    for draw in range(draws):
        # alternately few and many zeros; a draw where every unit is at 0 and every channel at 1 as well
        keep = 0.8 if draw % 2 else 0.4
        theta = (torch.rand(len(gated.units), generator=generator) < keep).double()
        pi = [(torch.rand(size, generator=generator) < keep).double() for size in gated.sizes]
        if draw == 0 and gated.units:
            theta, pi = torch.zeros_like(theta), [torch.ones_like(p) for p in pi]
        expected = gated(theta, pi)
        assert expected == gated.predicted(theta.tolist(), [p.numpy() for p in pi]), draw
        if not (bool(theta.all()) and all(bool(p.all()) for p in pi)):
            assert expected[0] < dense[0] and expected[1] < dense[1]


@pytest.mark.parametrize("name", ["resnet20", "resnet164", "lenet300_100", "densenet40"])
def test_zero_one_values_equal_the_compiled_sub_network(name):
    """The compiler itself, not only its prediction, agrees: gate the structures at 0, compile, count."""
    from compressor.passes.gates import gate_group, gate_unit
    from compressor.passes.pipeline import compile_model

    torch.manual_seed(0)
    gated = Gated(create_model(name))
    generator = torch.Generator().manual_seed(2)
    theta = (torch.rand(len(gated.units), generator=generator) < 0.7).double()
    pi = []
    for size in gated.sizes:
        values = (torch.rand(size, generator=generator) < 0.6).double()
        values[0] = 1  # SliceChannels keeps a channel of every group
        pi.append(values)
    expected = gated(theta, pi)
    for unit, value in zip(gated.units, theta):
        if not value:
            gate_unit(gated.model, unit, 0.0, gated.shape, groups=gated.all_groups)
    for group, values in zip(gated.groups, pi):
        gate_group(group, values.float())
    compiled = compile_model(gated.model, gated.shape).model
    assert expected == (count_params(compiled), count_macs(compiled, gated.shape))


# ------------------------------------------------------------------------------------ exact expectation


class TinyResidualNet(FeaturesClassifier):
    """stem conv(2→4)-BN-ReLU, one residual unit whose branch has a hidden group of 3 channels, a classifier."""

    def __init__(self):
        super().__init__()
        self.input_shape = (2, 6, 6)
        branch = nn.Sequential(nn.Conv2d(4, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
                               nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
        self.features = nn.Sequential(OrderedDict(
            stem=nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU()),
            unit=ResidualUnit(branch, nn.Identity(), post_activation=nn.ReLU())))
        self.classifier = pooled_classifier(4, 3)


def bernoulli_probability(values, probabilities) -> float:
    result = 1.0
    for value, p in zip(values, probabilities):
        result *= p if value else 1 - p
    return result


def enumerated_expectation(gated: Gated, theta: torch.Tensor, pi: list[torch.Tensor],
                           enumerate_groups: list[int]) -> tuple[float, float]:
    """Σ over every 0/1 configuration of the units and of the channels of groups `enumerate_groups` (the other
    groups' probabilities must be 1) of its probability times CountPredictor's counts."""
    for index, p in enumerate(pi):
        assert index in enumerate_groups or bool((p == 1).all())
    sizes = [gated.sizes[index] for index in enumerate_groups]
    probabilities = theta.tolist() + [v for index in enumerate_groups for v in pi[index].tolist()]
    params = macs = 0.0
    for values in itertools.product((0, 1), repeat=len(probabilities)):
        weight = bernoulli_probability(values, probabilities)
        unit_values = values[:len(gated.units)]
        channel_values = [np.ones(size) for size in gated.sizes]
        start = len(gated.units)
        for index, size in zip(enumerate_groups, sizes):
            channel_values[index] = np.asarray(values[start:start + size])
            start += size
        p, m = gated.predicted(list(unit_values), channel_values)
        params += weight * p
        macs += weight * m
    return params, macs


def test_exact_enumeration_of_a_residual_unit_equals_the_expectation():
    torch.manual_seed(0)
    gated = Gated(TinyResidualNet())
    assert len(gated.units) == 1 and gated.sizes == [3]
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        theta, pi = random_probabilities(gated, generator, 0.05, 0.95)
        params, macs = enumerated_expectation(gated, theta, pi, [0])  # 2^4 configurations
        expected = gated(theta, pi)
        assert expected[0] == pytest.approx(params, rel=1e-13)
        assert expected[1] == pytest.approx(macs, rel=1e-13)


def test_exact_enumeration_of_dense_units_equals_the_expectation():
    """Three DenseNet-BC units: removing one takes its features from every later reader; one unit's bottleneck
    channels are enumerated too (2^3 · 2^4 configurations)."""
    torch.manual_seed(0)
    model = DenseNet(10, 1, bottleneck=True, compression=0.5)
    model.input_shape = (3, 8, 8)
    gated = Gated(model)
    assert len(gated.units) == 3 and all(isinstance(unit, DenseUnit) for unit in gated.units)
    assert gated.sizes == [4, 4, 4]
    generator = torch.Generator().manual_seed(4)
    theta, pi = random_probabilities(gated, generator, 0.05, 0.95)
    pi = [pi[0], torch.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)]
    params, macs = enumerated_expectation(gated, theta, pi, [0])
    expected = gated(theta, pi)
    assert expected[0] == pytest.approx(params, rel=1e-13)
    assert expected[1] == pytest.approx(macs, rel=1e-13)


# ------------------------------------------------------------------------------------------- Monte Carlo


def test_monte_carlo_mean_of_sampled_sub_networks_is_within_one_percent():
    """20,000 sub-networks of a ResNet-8 (3 units, 112 hidden channels) sampled per variable, counted by one
    CountPredictor per unit configuration: their mean counts are within 1% of the expectation."""
    torch.manual_seed(0)
    gated = Gated(CifarResNet(8))
    generator = torch.Generator().manual_seed(5)
    theta, pi = random_probabilities(gated, generator, 0.3, 0.9)
    samples = 20_000
    units = torch.bernoulli(theta.expand(samples, -1), generator=generator).to(torch.int64).numpy()
    channels = torch.bernoulli(torch.cat(pi).expand(samples, -1), generator=generator).numpy() == 0
    bounds = np.cumsum([0] + gated.sizes)
    predictors = {}
    totals = np.zeros(2)
    for unit_values, zeros in zip(units, channels):
        key = tuple(unit_values.tolist())
        if key not in predictors:
            groups, _, modules = gated.plan(key, [np.ones(size) for size in gated.sizes])
            assert all(a is b for a, b in zip(groups, gated.groups)) and len(groups) == len(gated.groups)
            predictors[key] = CountPredictor(gated.model, gated.shape, groups, modules, gated.layer_macs)
        removed = [np.flatnonzero(zeros[start:stop]).tolist() for start, stop in zip(bounds[:-1], bounds[1:])]
        totals += predictors[key](removed)
    mean_params, mean_macs = totals / samples
    expected_params, expected_macs = gated(theta, pi)
    assert len(predictors) == 8
    assert mean_params == pytest.approx(expected_params, rel=0.01)
    assert mean_macs == pytest.approx(expected_macs, rel=0.01)
    # the mean is not the dense count: the check has something to find
    assert expected_macs < 0.7 * count_macs(gated.model, gated.shape)


# -------------------------------------------------------------------------------------------------- gradient


def resnet20_setup():
    gated = Gated(create_model("resnet20"))
    theta, pi = random_probabilities(gated, torch.Generator().manual_seed(6), 0.2, 0.9)
    return gated, theta.requires_grad_(), [p.requires_grad_() for p in pi]


@pytest.mark.parametrize("unit_name, c_in, c_out, size_1, size_2", [
    ("features.stage1.1", 16, 16, 32, 32),
    ("features.stage2.0", 16, 32, 16, 16),  # stride 2: the first conv's output is already 16x16
    ("features.stage3.2", 64, 64, 8, 8),
])
def test_gradient_of_a_basic_block_has_the_closed_form(unit_name, c_in, c_out, size_1, size_2):
    gated, theta, pi = resnet20_setup()
    index = gated.unit_names.index(unit_name)
    group = next(i for i, g in enumerate(gated.groups) if g.root == unit_name + ".branch.0")
    params, macs = gated.expected(theta, pi)
    macs_theta, macs_pi = torch.autograd.grad(macs, [theta, pi[group]], retain_graph=True)
    params_theta, params_pi = torch.autograd.grad(params, [theta, pi[group]])

    a1, a2 = 9 * size_1 * size_1, 9 * size_2 * size_2
    t, s = float(theta[index].detach()), float(pi[group].detach().sum())
    # ∂E[F]/∂π_i = θ(a1·Cin + a2·Cout), the same for every unit of the layer; ∂E[P]/∂π_i = θ(9Cin + 9Cout + 2)
    assert torch.allclose(macs_pi, torch.full_like(macs_pi, t * (a1 * c_in + a2 * c_out)), rtol=1e-12)
    assert torch.allclose(params_pi, torch.full_like(params_pi, t * (9 * c_in + 9 * c_out + 2)), rtol=1e-12)
    # ∂E[F]/∂θ = a1·Cin·S + a2·S·Cout and ∂E[P]/∂θ = 9·Cin·S + 9·S·Cout + 2S + 2Cout (the second BN stays)
    assert float(macs_theta[index]) == pytest.approx(a1 * c_in * s + a2 * s * c_out, rel=1e-12)
    assert float(params_theta[index]) == pytest.approx(9 * c_in * s + 9 * s * c_out + 2 * s + 2 * c_out, rel=1e-12)


def test_gradient_matches_finite_differences():
    gated, theta, pi = resnet20_setup()
    params, macs = gated.expected(theta, pi)
    grads = torch.autograd.grad(macs + 7 * params, [theta, *pi])

    def cost(theta, pi):
        params, macs = gated.expected(theta, pi)
        return float(macs + 7 * params)

    step = 0.05  # multilinear: a central difference is exact for any step
    with torch.no_grad():
        for index in range(len(gated.units)):
            up, down = theta.detach().clone(), theta.detach().clone()
            up[index] += step
            down[index] -= step
            difference = (cost(up, pi) - cost(down, pi)) / (2 * step)
            assert float(grads[0][index]) == pytest.approx(difference, rel=1e-9)
        for group in (0, 4, 8):
            for channel in (0, gated.sizes[group] - 1):
                up = [p.detach().clone() for p in pi]
                down = [p.detach().clone() for p in pi]
                up[group][channel] += step
                down[group][channel] -= step
                difference = (cost(theta, up) - cost(theta, down)) / (2 * step)
                assert float(grads[1 + group][channel]) == pytest.approx(difference, rel=1e-9)


def test_counts_are_linear_in_each_probability():
    """Multilinear (Theorem 3.1): the second derivative along any one θ or π is 0, while mixed ones are not."""
    gated, theta, pi = resnet20_setup()
    _, macs = gated.expected(theta, pi)
    d_theta, d_pi = torch.autograd.grad(macs, [theta, pi[3]], create_graph=True)
    second_theta = torch.autograd.grad(d_theta[3], theta, retain_graph=True)[0]
    assert float(second_theta[3]) == 0.0
    second_pi, mixed = torch.autograd.grad(d_pi[5], [pi[3], theta], retain_graph=True)
    assert float(second_pi[5]) == 0.0
    assert float(mixed[3]) != 0.0, "π of unit 3's hidden group interacts with unit 3's θ"
    # and along a line: E(x + h) - 2E(x) + E(x - h) = 0 for large h
    with torch.no_grad():
        values = []
        for shift in (-0.15, 0.0, 0.15):
            moved = theta.detach().clone()
            moved[3] += shift
            values.append(float(gated.expected(moved, pi)[1]))
        assert values[0] - 2 * values[1] + values[2] == pytest.approx(0.0, abs=1e-6 * values[1])
