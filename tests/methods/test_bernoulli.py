"""Tests of the Bernoulli method ("bernoulli", Guenter & Sideris): its stochastic gates, the regulariser, the
projection and pruning test during training, physical removal with the survivors' state carried over, the budget
controller, resume across a removal, and the deterministic network it ends with.

Training runs use resnet20 on the 8x8 digits (2.5M MACs per sample), so a few epochs take seconds.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from compressor.counting import count_macs, count_params
from compressor.data import load_data
from compressor.errors import CompressorError
from compressor.gates import dense_unit_readers
from compressor.methods import create_method
from compressor.methods.bernoulli import BernoulliMethod
from compressor.models import create_model
from compressor.models.resnet_cifar import basic_unit
from compressor.modules import copy_model
from compressor.passes.coupling import analyse_channels
from compressor.passes.pipeline import compile_model
from compressor.passes.remove_dead_skip_units import RemoveDeadSkipUnitsPass
from compressor.stochastic_gates import (CHANNEL_GATES, BernoulliChannelGate, BernoulliUnitGate, draw_per_forward,
                                         remove_stochastic_gates)
from compressor.training import TrainConfig, plain_parameter_name, train
from shared import macs_latency_table, randomize_batchnorm_, single_torch_thread
from user_models import build

SHAPE = (3, 8, 8)
EPSILON = 0.1


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_torch_thread():
        yield


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ============================================================================================ the gates


def lenet_with_channel_gate(probability: float):
    """lenet300_100 with a BernoulliChannelGate on fc1's 300 neurons (read by fc2), every neuron active (a large
    bias), and hooks that record fc1's activation and what fc2 reads of it."""
    torch.manual_seed(0)
    model = create_model("lenet300_100")
    with torch.no_grad():
        model.features.fc1.bias.fill_(3.0)
    group = next(g for g in analyse_channels(model, model.input_shape).groups if g.root == "features.fc1")
    gate = BernoulliChannelGate(group, torch.full((300,), probability))
    setattr(model, CHANNEL_GATES, nn.ModuleDict({"fc1": gate}))
    draw_per_forward(model)
    seen = {}
    model.features.relu1.register_forward_hook(lambda module, args, output: seen.__setitem__("hidden", output))
    model.features.fc2.register_forward_hook(lambda module, args, output: seen.__setitem__("read", args[0]))
    model.features.fc2.register_forward_hook(lambda module, args, output: seen.__setitem__("fc2", output))
    return model, gate, seen


def digit_batch(batch: int = 32, seed: int = 0):
    g = generator(seed)
    return torch.randn(batch, 1, 28, 28, generator=g) * 0.1, torch.randint(0, 10, (batch,), generator=g)


def test_unit_gate_at_one_samples_ones_and_at_zero_zeros():
    branch = torch.randn(64, 3, 4, 4, generator=generator(0))
    for probability in (1.0, 0.0):
        gate = BernoulliUnitGate(probability).train()
        for _ in range(5):
            assert torch.equal(gate(branch), branch * probability)
            gate.new_forward()
            assert float(gate.value().detach()) == probability  # a dense unit's one sample per batch


def test_channel_gate_at_one_samples_ones_and_at_zero_zeros():
    x, _ = digit_batch()
    for probability in (1.0, 0.0):
        model, _, seen = lenet_with_channel_gate(probability)
        model.train()
        for _ in range(3):
            model(x)
            assert torch.equal(seen["read"], seen["hidden"] * probability)


def test_unit_gate_samples_differ_per_example_in_training():
    gate = BernoulliUnitGate(0.5).train()
    torch.manual_seed(1)
    out = gate(torch.ones(256, 3, 2, 2))
    per_example = out[:, :1, :1, :1]
    assert torch.equal(out, per_example.expand_as(out)), "one sample per example, broadcast over its features"
    assert set(per_example.flatten().tolist()) == {0.0, 1.0}
    assert 0.35 < float(per_example.detach().mean()) < 0.65
    assert not torch.equal(gate(torch.ones(256, 3, 2, 2)), out), "a new draw at every forward"


def test_channel_gate_samples_differ_per_example_and_channel_in_training():
    model, _, seen = lenet_with_channel_gate(0.5)
    model.train()
    torch.manual_seed(2)
    x, _ = digit_batch(64)
    model(x)
    sample = (seen["read"] / seen["hidden"]).detach()
    assert set(sample.unique().tolist()) == {0.0, 1.0}
    assert 0.4 < float(sample.mean()) < 0.6
    assert not bool((sample[1:] == sample[:1]).all(dim=1).any()), "examples draw their own channels"
    first = sample.clone()
    model(x)
    assert not torch.equal(seen["read"] / seen["hidden"], first), "a new draw at every forward"


def test_eval_multiplies_by_the_probability():
    gate = BernoulliUnitGate(0.3).eval()
    branch = torch.randn(8, 3, 4, 4, generator=generator(3))
    assert torch.equal(gate(branch), branch * gate.probability.detach())
    assert float(gate.value().detach()) == pytest.approx(0.3)

    model, gate, seen = lenet_with_channel_gate(1.0)
    with torch.no_grad():
        gate.probability.copy_(torch.rand(300, generator=generator(4)))
    model.eval()
    x, _ = digit_batch()
    model(x)
    assert torch.allclose(seen["read"], seen["hidden"] * gate.probability.detach(), rtol=1e-6, atol=0)
    # a dead channel reads 0 in eval whatever its probability
    with torch.no_grad():
        gate.alive[:10] = False
    model(x)
    assert bool((seen["read"][:, :10] == 0).all()) and bool((seen["read"][:, 10:] != 0).all())


def test_unit_gate_straight_through_gradient_is_dloss_dm_at_the_sample():
    torch.manual_seed(5)
    unit = randomize_batchnorm_(basic_unit(4, 4, 1), 5).train()
    unit.gate = BernoulliUnitGate(0.5)
    seen = {}
    unit.branch.register_forward_hook(lambda module, args, output: seen.__setitem__("branch", output.detach()))
    unit.gate.register_forward_hook(lambda module, args, output: seen.__setitem__("gated", output.detach()))
    x = torch.relu(torch.randn(16, 4, 5, 5, generator=generator(5)))
    weights = torch.randn(16, 4, 5, 5, generator=generator(6))
    loss = (unit(x) * weights).sum()  # nonlinear in the sample: the unit ends with a ReLU
    loss.backward()

    ratio = seen["gated"] / seen["branch"]
    sample = ratio[:, :1, :1, :1]
    assert torch.equal(ratio, sample.expand_as(ratio)) and set(sample.flatten().tolist()) == {0.0, 1.0}
    m = sample.clone().requires_grad_()
    reference = (torch.relu(seen["branch"] * m + x) * weights).sum()
    assert float(reference.detach()) == pytest.approx(float(loss.detach()), rel=1e-6)
    reference.backward()
    assert float(unit.gate.probability.grad) == pytest.approx(float(m.grad.sum()), rel=1e-5)


def test_channel_gate_straight_through_gradient_is_dloss_dm_at_the_sample():
    model, gate, seen = lenet_with_channel_gate(0.6)
    model.train()
    torch.manual_seed(7)
    x, y = digit_batch()
    loss = F.cross_entropy(model(x), y)
    loss.backward()

    hidden = seen["hidden"].detach()
    m = (seen["read"].detach() / hidden).requires_grad_()
    assert set(m.unique().tolist()) == {0.0, 1.0}
    fc2, fc = model.features.fc2, model.classifier.fc
    reference = F.cross_entropy(F.linear(torch.relu(F.linear(hidden * m, fc2.weight, fc2.bias)), fc.weight, fc.bias), y)
    assert float(reference.detach()) == pytest.approx(float(loss.detach()), rel=1e-6)
    reference.backward()
    assert torch.allclose(gate.probability.grad, m.grad.sum(dim=0), rtol=1e-4, atol=1e-9)
    assert float(gate.probability.grad.abs().sum()) > 0


def test_straight_through_gradient_is_the_exact_difference_when_the_loss_is_linear():
    """ℓ linear in m: ∂ℓ/∂m = ℓ(1) − ℓ(0), whatever was sampled, which is the exact gradient of E[ℓ] (eq. 21)."""
    branch = torch.randn(32, 3, 4, 4, generator=generator(8))
    weights = torch.randn(32, 3, 4, 4, generator=generator(9))

    def unit_loss(probability, seed):
        gate = BernoulliUnitGate(probability).train()
        torch.manual_seed(seed)
        loss = (gate(branch) * weights).sum()
        loss.backward()
        return float(loss.detach()), float(gate.probability.grad)

    difference = unit_loss(1.0, 0)[0] - unit_loss(0.0, 0)[0]
    losses = set()
    for seed in range(3):
        loss, gradient = unit_loss(0.4, seed)
        losses.add(loss)
        assert gradient == pytest.approx(difference, rel=1e-5)
    assert len(losses) == 3, "the samples differed, the gradient did not"

    model, gate, seen = lenet_with_channel_gate(0.4)
    model.train()
    x, _ = digit_batch()
    weights = torch.randn(32, 100, generator=generator(10))
    fc2 = model.features.fc2
    gradients = []
    for seed in range(2):
        gate.probability.grad = None
        torch.manual_seed(seed)
        model(x)
        (seen["fc2"] * weights).sum().backward()  # fc2's output is linear in what it reads
        gradients.append(gate.probability.grad.clone())
    hidden = seen["hidden"].detach()

    def linear_loss(m):
        return (F.linear(hidden * m, fc2.weight, fc2.bias) * weights).sum(dim=(0, 1))

    # ℓ(channel r on for every example) − ℓ(channel r off), for all r at once: m = [examples, r, channels]
    base = (seen["read"].detach() / hidden).unsqueeze(1).expand(-1, 300, -1).clone()
    eye = torch.eye(300, dtype=torch.bool).unsqueeze(0).expand(32, -1, -1)
    on, off = base.masked_fill(eye, 1.0), base.masked_fill(eye, 0.0)
    with torch.no_grad():
        exact = torch.stack([linear_loss(on[:, r]) - linear_loss(off[:, r]) for r in range(300)])
    for gradient in gradients:
        assert torch.allclose(gradient, exact, rtol=1e-3, atol=1e-4)
    assert not torch.equal(gradients[0], torch.zeros(300))


def test_a_dense_unit_draws_one_sample_per_batch_shared_by_its_readers():
    """A dense unit's features are gated where each reader normalises them (its BatchNorm's weight and bias):
    one sample per forward, the same in every reader, θ in eval mode, and the gradient reaches θ."""
    torch.manual_seed(0)
    model = create_model("densenet40")
    model.input_shape = SHAPE
    method = create_method("bernoulli", None, "structured", rho=0.5)
    method.prepare(model, None)
    unit = model.features.block1[2]
    readers = dense_unit_readers(unit, analyse_channels(model, SHAPE).groups)
    assert len(readers) == 10  # the nine later units of the block and the transition
    with torch.no_grad():
        for _, gate in method._gates(model):
            gate.probability.fill_(0.5)

    def factors():
        return [(norm.weight / norm.parametrizations.weight.original)[start:stop] for norm, start, stop in readers]

    model.train()
    x = torch.randn(8, *SHAPE, generator=generator(19))
    seen = set()
    for seed in range(6):
        torch.manual_seed(seed)
        output = model(x)
        values = torch.cat(factors()).detach()
        assert bool((values == values[0]).all()), "every reader, every channel: the one sample of this forward"
        seen.add(float(values[0]))
        if seed == 0:
            output.square().sum().backward()
            assert float(unit.gate.probability.grad) != 0.0
    assert seen == {0.0, 1.0}
    model.eval()
    with torch.no_grad():
        unit.gate.probability.fill_(0.3)
    assert all(torch.allclose(f, torch.full_like(f, 0.3)) for f in factors())


# ========================================================================================== the regulariser


def prepared(name: str, target: float | None = None, input_shape=None, **options):
    torch.manual_seed(0)
    model = create_model(name)
    if input_shape is not None:
        model.input_shape = input_shape
    method = create_method("bernoulli", target, "structured", **options)
    method.prepare(model, None)
    return model, method


@pytest.mark.parametrize("name, blocks, rho, kappa, nu", [
    ("resnet20", 9, 0.3, 0.25, 0.5),
    ("densenet40", 36, 2.0, 1.0, 0.1),
    ("lenet300_100", 2, 0.7, 0.5, 0.0),  # no skip-units: L counts the gated layers, and there is no θ for ν
])
def test_regulariser_at_all_ones_is_rho_l_one_plus_nu(name, blocks, rho, kappa, nu):
    model, method = prepared(name, rho=rho, kappa=kappa, nu=nu)
    assert method.blocks == blocks
    assert float(method.regulariser(model, rho).detach()) == pytest.approx(rho * blocks * (1 + nu), rel=1e-6)
    assert float(method.extra_loss(model).detach()) == pytest.approx(rho * blocks * (1 + nu), rel=1e-6)


def set_random_probabilities(method, model, seed: int, low: float = 0.2, high: float = 0.9) -> None:
    g = generator(seed)
    with torch.no_grad():
        for _, gate in method._gates(model):
            gate.probability.copy_(torch.rand(gate.probability.shape, generator=g) * (high - low) + low)


def test_regulariser_gradient_matches_finite_differences():
    model, method = prepared("resnet20", rho=0.5, kappa=0.4, nu=0.3)
    set_random_probabilities(method, model, 11)
    method.regulariser(model, 0.5).backward()
    gates = dict(method._gates(model))
    step = 0.25  # the regulariser is multilinear: a central difference is exact up to rounding
    checked = 0
    for key, index in [("features.stage1.0", None), ("features.stage3.2", None), ("features.stage2.0.branch.0", 0),
                       ("features.stage3.1.branch.0", 63), ("features.stage1.2.branch.0", 7)]:
        probability = gates[key].probability
        values = []
        for shift in (step, -step):
            with torch.no_grad():
                if index is None:
                    probability += shift
                else:
                    probability[index] += shift
                values.append(float(method.regulariser(model, 0.5)))
                if index is None:
                    probability -= shift
                else:
                    probability[index] -= shift
        gradient = probability.grad if index is None else probability.grad[index]
        assert float(gradient) == pytest.approx((values[0] - values[1]) / (2 * step), rel=2e-3), key
        checked += 1
    assert checked == 5


# =========================================================================== training: projection and death


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", SHAPE, batch_size=64, seed=0)


# A fixed ρ strong enough that structures die in every one of three epochs of the 8x8 digits.
FIXED_RHO = dict(rho=0.02, initial_probability=0.4, probability_lr=0.03)
KILLED_UNIT = "features.stage1.0"
KILLED_CHANNELS = ("features.stage1.1.branch.0", [0, 1])


def fixed_rho_run_setup(data):
    """resnet20 on 8x8 inputs, prepared with FIXED_RHO, one unit and two channels put below ε by hand."""
    torch.manual_seed(0)
    model = create_model("resnet20")
    model.input_shape = SHAPE
    method = create_method("bernoulli", None, "structured", **FIXED_RHO)
    method.prepare(model, data)
    gates = dict(method._gates(model))
    with torch.no_grad():
        gates[KILLED_UNIT].probability.fill_(0.05)
        gates[KILLED_CHANNELS[0]].probability[KILLED_CHANNELS[1]] = 0.05
    return model, method


def config(epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=0.05, seed=0)


class Recorder:
    """Wraps a method's after_step and restructure (on the instance) to record what they leave."""

    def __init__(self, method):
        self.steps, self.restructures = [], []
        after_step, restructure = method.after_step, method.restructure

        def recorded_step(model, step):
            after_step(model, step)
            with torch.no_grad():
                _, macs = method.complexity(model, deterministic=True)
            gates = method._gates(model)
            self.steps.append(dict(
                step=step, macs=float(macs), reached=method.reached_epoch, rho=method._rho_now(),
                penalty=method.extra_loss(model) is not None,
                probability={key: gate.probability.detach().clone() for key, gate in gates},
                alive={key: gate.alive.clone() for key, gate in gates}))

        def recorded_restructure(model, optimizer_state):
            changed = restructure(model, optimizer_state)
            gates = method._gates(model)
            adam = method.method_optimizer(model)
            self.restructures.append(dict(
                after_step=len(self.steps), changed=changed,
                all_alive=all(bool(gate.alive.all()) for _, gate in gates),
                adam_holds_the_gates=adam is not None and [id(p) for p in adam.param_groups[0]["params"]]
                == [id(gate.probability) for _, gate in gates]))
            return changed

        method.after_step, method.restructure = recorded_step, recorded_restructure


@pytest.fixture(scope="module")
def fixed_rho_run(digits):
    """Three epochs with a fixed ρ, recorded step by step; then finalised. Also the reference of the resume test."""
    model, method = fixed_rho_run_setup(digits)
    recorder = Recorder(method)
    dense_macs = count_macs(model, SHAPE)
    result = train(model, digits.train, digits.test, config(3), hooks=method, progress=False)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    x = torch.randn(16, *SHAPE, generator=generator(12))
    shipped = copy_model(model).eval()
    with torch.no_grad():
        for _, gate in method._gates(shipped):
            gate.probability.copy_(gate.alive.float())
        shipped_output = shipped(x)
    final = method.finalize(model)
    return dict(model=final, method=method, recorder=recorder, result=result, state=state, x=x,
                shipped_output=shipped_output, dense_macs=dense_macs)


def test_every_probability_stays_in_the_unit_interval(fixed_rho_run):
    steps = fixed_rho_run["recorder"].steps
    assert len(steps) == 3 * 23
    for record in steps:
        for key, probability in record["probability"].items():
            assert 0.0 <= float(probability.min()) and float(probability.max()) <= 1.0, (record["step"], key)
    # the probabilities did move off their start; without a target ρ stays the fixed one and always applies
    assert any(bool((p != 0.4).any()) for p in steps[-1]["probability"].values())
    assert all(record["rho"] == 0.02 and record["penalty"] and record["reached"] is None for record in steps)


def test_a_structure_below_epsilon_dies_at_once_and_stays_dead(fixed_rho_run):
    recorder, method = fixed_rho_run["recorder"], fixed_rho_run["method"]
    first = recorder.steps[0]
    assert not bool(first["alive"][KILLED_UNIT]) and float(first["probability"][KILLED_UNIT]) == 0.0
    root, channels = KILLED_CHANNELS
    assert not bool(first["alive"][root][channels].any()) and bool((first["probability"][root][channels] == 0).all())

    removal_steps = {record["after_step"] for record in recorder.restructures}
    deaths = 0
    for before, after in zip(recorder.steps, recorder.steps[1:]):
        for key, alive in before["alive"].items():
            dead = ~alive
            # a dead structure's probability is 0, and it is 0 from the step it died on
            assert bool((before["probability"][key][dead] == 0).all()), (before["step"], key)
            assert bool((before["probability"][key][alive] >= EPSILON).all()), (before["step"], key)
            if before["step"] in removal_steps:
                continue  # channels were renumbered by the removal
            if key in after["alive"]:
                assert not bool((dead & after["alive"][key]).any()), f"{key} revived at step {after['step']}"
                deaths += int((alive & ~after["alive"][key]).sum())
    assert deaths > 0, "structures died during training, not only the ones killed by hand"
    # removed for good: the unit's branch is gone, and it is out of the method's structure and optimizer
    assert KILLED_UNIT in method.removed_units
    assert fixed_rho_run["model"].get_submodule(KILLED_UNIT).branch is None
    assert [record["changed"] for record in recorder.restructures] == [True, True, True]
    for record in recorder.restructures:
        assert record["all_alive"] and record["adam_holds_the_gates"], record


def test_training_cost_never_increases(fixed_rho_run):
    method, steps = fixed_rho_run["method"], fixed_rho_run["recorder"].steps
    macs = [record["macs"] for record in steps]
    assert all(b <= a for a, b in zip(macs, macs[1:])), "per step, the network that would ship never grows"
    trained = [record["macs_trained"] for record in method.epochs]
    assert [record["epoch"] for record in method.epochs] == [1, 2, 3]
    assert trained[0] == fixed_rho_run["dense_macs"]
    assert all(b <= a for a, b in zip(trained, trained[1:]))
    assert trained[-1] < trained[1] < trained[0], "each of the first two epochs' removals made training cheaper"
    for earlier, later in zip(method.epochs, method.epochs[1:]):
        assert later["macs_trained"] <= earlier["macs_alive"]


def test_finalize_leaves_a_deterministic_network_the_compiler_passes_through(fixed_rho_run):
    model, method, x = fixed_rho_run["model"], fixed_rho_run["method"], fixed_rho_run["x"]
    assert not hasattr(model, CHANNEL_GATES)
    assert not any(isinstance(module, BernoulliUnitGate) for module in model.modules())
    assert not any(module._forward_pre_hooks for module in model.modules())
    assert not any(parametrize.is_parametrized(module) for module in model.modules())
    assert not any(name.endswith("probability") for name, _ in model.named_parameters())
    model.eval()
    with torch.no_grad():
        output = model(x)
    # every survivor at 1: what the gated model computed with its survivors set to 1
    assert torch.allclose(output, fixed_rho_run["shipped_output"], atol=1e-5, rtol=0)
    assert all(p >= EPSILON for values in method.final_probabilities.values() for p in values)
    assert method.predicted["macs_removed"] == pytest.approx(1 - count_macs(model, SHAPE) / fixed_rho_run["dense_macs"],
                                                             abs=1e-12)

    before = {key: value.clone() for key, value in model.state_dict().items()}
    compiled = compile_model(model, SHAPE)
    assert [step.modified for step in compiled.steps] == [False, False, False]
    assert compiled.model.state_dict().keys() == before.keys()
    assert all(torch.equal(compiled.model.state_dict()[key], value) for key, value in before.items())
    with torch.no_grad():
        assert torch.equal(compiled.model.eval()(x), output)


def test_training_goes_on_when_every_gated_structure_has_been_removed(digits):
    """A strong ρ removes every skip-unit of resnet20 in the first epoch (and with them every gated channel):
    the later epochs train the rest without a probability optimizer, and the result compiles unchanged."""
    torch.manual_seed(0)
    model = create_model("resnet20")
    model.input_shape = SHAPE
    method = create_method("bernoulli", None, "structured", rho=1.0, initial_probability=0.15, probability_lr=0.05)
    method.prepare(model, digits)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(digits.train.dataset, range(256)), batch_size=64,
                                         shuffle=True, generator=generator(0))
    result = train(model, loader, digits.test, config(2), hooks=method, progress=False)
    assert len(result.history) == 2
    assert sorted(method.removed_units) == sorted(f"features.stage{s}.{u}" for s in (1, 2, 3) for u in range(3))
    assert method._gates(model) == [] and method.method_optimizer(model) is None
    assert [record["macs_trained"] for record in method.epochs][1] == count_macs(model, SHAPE)
    final = method.finalize(model)
    assert [step.modified for step in compile_model(final, SHAPE).steps] == [False, False, False]


# ================================================================================== resume across a removal


def test_resume_across_a_removal_is_bitwise_identical(fixed_rho_run, digits, tmp_path):
    """Interrupted in epoch 2 (the state saved after epoch 1, whose end removed structure) and resumed by a fresh
    model and method, the run ends with the weights, θ/π and records of the uninterrupted one."""
    state_path = tmp_path / "train.state"
    model, method = fixed_rho_run_setup(digits)
    after_epoch = method.after_epoch

    def interrupt(model, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        after_epoch(model, epoch)

    method.after_epoch = interrupt
    with pytest.raises(KeyboardInterrupt):
        train(model, digits.train, digits.test, config(3), hooks=method, state_path=state_path, progress=False)
    saved = torch.load(state_path, weights_only=True)
    assert saved["epoch"] == 1
    assert KILLED_UNIT not in saved["structure"]["units"], "the saved state holds the model after the removal"

    torch.manual_seed(999)  # a new process
    resumed_model, resumed_method = fixed_rho_run_setup(digits)
    result = train(resumed_model, digits.train, digits.test, config(3), hooks=resumed_method, state_path=state_path,
                   resume=True, progress=False)

    assert result.resumed_from_epoch == 1
    reference = fixed_rho_run["state"]
    state = resumed_model.state_dict()
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(state[key], value), key
    reference_method = fixed_rho_run["method"]
    assert resumed_method.epochs == reference_method.epochs
    assert resumed_method.removed_units == reference_method.removed_units
    expected = fixed_rho_run["result"]
    assert [(r.epoch, r.train_loss, r.test_accuracy) for r in result.history] == [
        (r.epoch, r.train_loss, r.test_accuracy) for r in expected.history]
    # the resumed part removed structure too
    assert reference_method.epochs[2]["macs_trained"] < reference_method.epochs[1]["macs_trained"]


# ========================================================================================= physical removal


def kill(method, model, units, channels) -> None:
    gates = dict(method._gates(model))
    with torch.no_grad():
        for name in units:
            gates[name].probability.zero_()
            gates[name].alive.fill_(False)
        for root, indices in channels.items():
            gates[root].probability[indices] = 0
            gates[root].alive[indices] = False


def keep_except(size: int, removed) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[list(removed)] = False
    return torch.nonzero(mask).flatten()


def resnet20_slices(model):
    """How each parameter of the hand-killed resnet20 is sliced: name → [(axis, kept indices)]."""
    slices = {}
    for root, removed in REMOVAL_CASES["resnet20"][1].items():
        unit = root.rsplit(".branch", 1)[0]
        keep = keep_except(model.get_submodule(root).out_channels, removed)
        slices[f"{unit}.branch.0.weight"] = [(0, keep)]
        slices[f"{unit}.branch.1.weight"] = slices[f"{unit}.branch.1.bias"] = [(0, keep)]
        slices[f"{unit}.branch.3.weight"] = [(1, keep)]
    return slices


def densenet40_slices(model):
    groups = analyse_channels(model, model.input_shape).groups
    slices = {}
    for name in REMOVAL_CASES["densenet40"][0]:
        for norm, start, stop in dense_unit_readers(model.get_submodule(name), groups):
            norm_name = next(n for n, m in model.named_modules() if m is norm)
            parent, _, index = norm_name.rpartition(".")
            keep = keep_except(norm.num_features, range(start, stop))
            slices[f"{norm_name}.weight"] = slices[f"{norm_name}.bias"] = [(0, keep)]
            slices[f"{parent}.{int(index) + 2}.weight"] = [(1, keep)]  # BN-ReLU-conv: the conv reads them
    return slices


def lenet_slices(model):
    fc1 = keep_except(300, REMOVAL_CASES["lenet300_100"][1]["features.fc1"])
    fc2 = keep_except(100, REMOVAL_CASES["lenet300_100"][1]["features.fc2"])
    return {"features.fc1.weight": [(0, fc1)], "features.fc1.bias": [(0, fc1)],
            "features.fc2.weight": [(0, fc2), (1, fc1)], "features.fc2.bias": [(0, fc2)],
            "classifier.fc.weight": [(1, fc2)]}


REMOVAL_CASES = {
    "resnet20": (["features.stage2.1"], {"features.stage1.0.branch.0": [1, 5, 7],
                                         "features.stage3.2.branch.0": [0, 30, 63]}),
    "densenet40": (["features.block2.3"], {}),
    "lenet300_100": ([], {"features.fc1": [0, 3, 299], "features.fc2": [10, 11]}),
}
SLICES = {"resnet20": resnet20_slices, "densenet40": densenet40_slices, "lenet300_100": lenet_slices}


def sliced(tensor: torch.Tensor, operations) -> torch.Tensor:
    for axis, keep in operations:
        tensor = tensor.index_select(axis, keep)
    return tensor


@pytest.mark.parametrize("name", list(REMOVAL_CASES))
def test_removal_keeps_outputs_and_survivors_state_and_cuts_what_was_predicted(name):
    dead_units, dead_channels = REMOVAL_CASES[name]
    torch.manual_seed(0)
    model = randomize_batchnorm_(create_model(name), 1)
    dense_params, dense_macs = count_params(model), count_macs(model, model.input_shape)
    slices = SLICES[name](model)
    method = create_method("bernoulli", None, "structured", rho=0.5)
    method.prepare(model, None)
    # the probabilities' Adam gets some state to carry
    adam = method.method_optimizer(model)
    for _, gate in method._gates(model):
        gate.probability.grad = torch.randn(gate.probability.shape, generator=generator(13))
    adam.step()
    set_random_probabilities(method, model, 14)
    kill(method, model, dead_units, dead_channels)
    before_gates = {key: (gate.probability.detach().clone(), gate.alive.clone()) for key, gate in method._gates(model)}
    before_adam = {key: {k: v.clone() for k, v in adam.state[gate.probability].items()}
                   for key, gate in method._gates(model)}
    parameters = {plain_parameter_name(n): p.detach().clone() for n, p in model.named_parameters()
                  if not n.endswith("probability")}
    momentum = {n: torch.randn(p.shape, generator=generator(15)) for n, p in parameters.items()}
    optimizer_state = {n: {"momentum_buffer": momentum[n].clone(), "shadow": 3 * parameters[n] + 1, "step": 7}
                       for n in parameters}
    model.eval()
    x = torch.randn(4, *model.input_shape, generator=generator(16))
    with torch.no_grad():
        reference = model(x)
        predicted_params, predicted_macs = (float(v) for v in method.complexity(model, deterministic=True))

    assert method.restructure(model, optimizer_state) is True

    # the function is unchanged: the dead structures contributed exactly 0
    with torch.no_grad():
        assert torch.allclose(model(x), reference, atol=1e-5, rtol=0)
    # it is physically smaller, by what ExpectedCounts predicted
    plain = copy_model(model)
    remove_stochastic_gates(plain)
    assert (count_params(plain), count_macs(plain, plain.input_shape)) == (predicted_params, predicted_macs)
    assert predicted_params < dense_params and predicted_macs < dense_macs
    assert method.removed_units == dead_units
    for unit in dead_units:
        assert not hasattr(model.get_submodule(unit), "branch") or model.get_submodule(unit).branch is None
    # the survivors keep their θ/π and their Adam state; the dead are out of the optimizer
    gates = dict(method._gates(model))
    # a dead unit takes its hidden channels' gate with it
    inside_dead = lambda key: any(key == u or key.startswith(u + ".") for u in dead_units)  # noqa: E731
    assert set(gates) == {key for key in before_gates if not inside_dead(key)}
    new_adam = method.method_optimizer(model)
    assert [id(p) for p in new_adam.param_groups[0]["params"]] == [id(gate.probability) for gate in gates.values()]
    for key, gate in gates.items():
        probability, alive = before_gates[key]
        keep = torch.nonzero(alive.reshape(-1)).flatten()
        assert torch.equal(gate.probability.detach().reshape(-1), probability.reshape(-1)[keep]), key
        assert bool(gate.alive.all())
        for k, value in before_adam[key].items():
            carried = new_adam.state[gate.probability][k]
            expected = value if value.dim() == 0 else value[keep]
            assert torch.equal(carried, expected), (key, k)
    # the weights' momentum: dropped with removed parameters, sliced as the survivors were
    new_parameters = {plain_parameter_name(n): p.detach() for n, p in model.named_parameters()
                      if not n.endswith("probability")}
    assert set(optimizer_state) == set(new_parameters)
    changed = {n for n, p in new_parameters.items() if p.shape != parameters[n].shape}
    assert changed == set(slices)
    for n, p in new_parameters.items():
        state = optimizer_state[n]
        assert torch.equal(state["momentum_buffer"], sliced(momentum[n], slices.get(n, []))), n
        assert torch.equal(p, sliced(parameters[n], slices.get(n, []))), n
        assert torch.equal(state["shadow"], 3 * p + 1) and state["step"] == 7, n

    # finalising removes nothing more and leaves no gate behind
    method.finalize(model)
    assert not any(parametrize.is_parametrized(m) or m._forward_pre_hooks for m in model.modules())
    assert (count_params(model), count_macs(model, model.input_shape)) == (predicted_params, predicted_macs)


def test_a_unit_whose_hidden_channels_all_died_goes_as_a_whole():
    """The block goes although its second BatchNorm's shift made its output a constant, not 0;
    the counts then drop by that BatchNorm's parameters beyond the prediction."""
    model, method = prepared("resnet20", rho=0.5)
    kill(method, model, [], {"features.stage1.2.branch.0": list(range(16))})
    with torch.no_grad():
        predicted_params, predicted_macs = (float(v) for v in method.complexity(model, deterministic=True))
    method.restructure(model, {})
    assert method.removed_units == ["features.stage1.2"]
    assert model.features.stage1[2].branch is None
    plain = copy_model(model)
    remove_stochastic_gates(plain)
    assert count_macs(plain, plain.input_shape) == predicted_macs
    assert count_params(plain) == predicted_params - 2 * 16


# ==================================================================================== a pruned residual unit


@pytest.mark.parametrize("unit_name", ["features.stage1.1", "features.stage2.0"])
def test_a_unit_gate_at_zero_is_removed_and_the_unit_equals_its_shortcut(unit_name):
    torch.manual_seed(0)
    model = randomize_batchnorm_(create_model("resnet20"), 2).eval()
    unit = model.get_submodule(unit_name)
    unit.gate = BernoulliUnitGate(0.0)
    channels = 16
    x = torch.relu(torch.randn(2, channels, 32, 32, generator=generator(17)))
    # x >= 0 (it follows a ReLU), so the post-activation ReLU passes the shortcut through unchanged
    assert torch.equal(unit(x), unit.shortcut(x))
    images = torch.randn(2, *model.input_shape, generator=generator(18))
    with torch.no_grad():
        reference = model(images)

    result = RemoveDeadSkipUnitsPass(model.input_shape).run(model)

    assert result.notes["removed_units"] == [unit_name]
    removed = result.model.get_submodule(unit_name)
    assert removed.branch is None
    assert torch.equal(removed(x), unit.shortcut(x))
    with torch.no_grad():
        assert torch.allclose(result.model(images), reference, atol=1e-5, rtol=0)


def test_a_dead_unit_gate_is_removed_whatever_its_probability_and_a_live_small_one_is_kept():
    model = randomize_batchnorm_(create_model("resnet20"), 3).eval()
    dead, small = BernoulliUnitGate(0.7), BernoulliUnitGate(0.01)
    dead.alive.fill_(False)
    model.features.stage3[1].gate, model.features.stage2[2].gate = dead, small
    result = RemoveDeadSkipUnitsPass(model.input_shape).run(model)
    assert result.notes["removed_units"] == ["features.stage3.1"]
    assert result.model.features.stage2[2].branch is not None


# ===================================================================================== the budget controller


def test_after_a_step_probabilities_are_projected_and_those_below_epsilon_die():
    model, method = prepared("resnet20", rho=0.5)
    gates = dict(method._gates(model))
    high, low, group = gates["features.stage1.0"], gates["features.stage1.1"], gates["features.stage2.0.branch.0"]
    with torch.no_grad():
        high.probability.fill_(1.3)
        low.probability.fill_(-0.2)
        group.probability[:4] = torch.tensor([1.7, -0.5, 0.05, 0.5])
    method.after_step(model, 1)
    assert float(high.probability.detach()) == 1.0 and bool(high.alive)
    assert float(low.probability.detach()) == 0.0 and not bool(low.alive)
    assert group.probability[:4].tolist() == [1.0, 0.0, 0.0, 0.5]
    assert group.alive[:4].tolist() == [True, False, False, True] and bool(group.alive[4:].all())
    # an optimizer step that moves a dead probability back up does not revive it
    with torch.no_grad():
        low.probability.fill_(0.8)
        group.probability[1] = 0.9
    method.after_step(model, 2)
    assert float(low.probability.detach()) == 0.0 and not bool(low.alive)
    assert float(group.probability[1].detach()) == 0.0 and not bool(group.alive[1])


UNIT_MACS = 2 * 9 * 16 * 16 * 32 * 32  # a stage-1 (or stage-3) basic block of resnet20: 11.6% of its MACs


def test_the_controller_accepts_deaths_within_the_budget_lowest_first_then_holds_the_rest():
    model, method = prepared("resnet20", 0.11, rho=0.3)
    dense = count_macs(model, model.input_shape)
    assert 0.11 < UNIT_MACS / dense < 0.12
    gates = dict(method._gates(model))
    with torch.no_grad():
        gates["features.stage3.2"].probability.fill_(0.04)
        gates["features.stage1.0"].probability.fill_(0.05)
    method.after_step(model, 1)
    # the lowest went and met the target within the overshoot; the other was held at ε
    assert not bool(gates["features.stage3.2"].alive)
    held = gates["features.stage1.0"]
    assert bool(held.alive) and float(held.probability.detach()) == pytest.approx(EPSILON)
    assert method.reached_epoch == 1
    assert method._rho_now() == 0.0 and method.extra_loss(model) is None
    with torch.no_grad():
        _, macs = method.complexity(model, deterministic=True)
    assert float(macs) == dense - UNIT_MACS
    # within budget nothing dies any more
    with torch.no_grad():
        gates["features.stage2.1"].probability.fill_(0.02)
        gates["features.stage2.1.branch.0"].probability[:8] = 0.0
    method.after_step(model, 2)
    assert bool(gates["features.stage2.1"].alive) and bool(gates["features.stage2.1.branch.0"].alive.all())
    assert float(gates["features.stage2.1"].probability.detach()) == pytest.approx(EPSILON)
    rho = method.rho
    method.after_epoch(model, 1)
    # ρ stays where it was; the epoch's record gives the ρ it trained with until the budget was met in it
    assert method.rho == rho and method.epochs[-1]["rho"] == rho
    # at the epoch boundary the survivors are fixed at 1, their values kept for the report, and stay there
    assert method.settled
    assert min(method.final_probabilities["theta"]) == pytest.approx(EPSILON)
    assert len(method.final_probabilities["theta"]) == 8
    for _, gate in method._gates(model):
        assert torch.equal(gate.probability.detach(), gate.alive.float())
    with torch.no_grad():
        gates["features.stage2.1.branch.0"].probability.mul_(0.5)
    method.after_step(model, 3)
    assert bool((gates["features.stage2.1.branch.0"].probability.detach() == 1).all())
    model.eval()
    assert float(gates["features.stage1.0"].value().detach()) == 1.0


def test_the_controller_refuses_a_death_past_the_target_and_grows_rho_below_it():
    model, method = prepared("resnet20", 0.05, rho=0.3)
    gates = dict(method._gates(model))
    with torch.no_grad():
        gates["features.stage3.2"].probability.fill_(0.04)  # 11.6% of the MACs: past 5% + the 1% overshoot
        gates["features.stage1.0.branch.0"].probability[3] = 0.05  # 0.7%
    method.after_step(model, 1)
    assert bool(gates["features.stage3.2"].alive)
    assert float(gates["features.stage3.2"].probability.detach()) == pytest.approx(EPSILON)
    assert not bool(gates["features.stage1.0.branch.0"].alive[3])
    assert method.reached_epoch is None and method._rho_now() == 0.3
    method.after_epoch(model, 1)
    assert method.rho == pytest.approx(0.6), "below the budget ρ doubles every epoch"
    record = method.epochs[-1]
    assert record["epoch"] == 1 and record["rho"] == 0.3
    assert record["macs_trained"] == count_macs(create_model("resnet20"), (3, 32, 32))
    # one hidden channel of a stage-1 block: one of conv1's 16 filters and one of conv2's 16 input channels
    assert record["macs_alive"] == record["macs_trained"] - UNIT_MACS // 16



def test_compress_meets_the_target_and_the_controller_stops_pruning(tmp_path, monkeypatch):
    records = []
    after_step = BernoulliMethod.after_step

    def recorded(self, model, step):
        after_step(self, model, step)
        with torch.no_grad():
            _, macs = self.complexity(model, deterministic=True)
        records.append(dict(step=step, reached=self.reached_epoch, rho=self._rho_now(),
                            penalty=self.extra_loss(model) is not None,
                            alive=[int(gate.alive.sum()) for _, gate in self._gates(model)], macs=float(macs),
                            lowest=min((float(gate.probability.detach()[gate.alive].min())
                                        for _, gate in self._gates(model) if bool(gate.alive.any())), default=1.0)))

    monkeypatch.setattr(BernoulliMethod, "after_step", recorded)
    from compressor.api import compress

    torch.manual_seed(0)
    target = 0.3
    report = compress(create_model("resnet20"), method="bernoulli", target=target, epochs=2, input_shape=SHAPE,
                      out=tmp_path / "out", bench_runs=1, progress=False, device="cpu",
                      method_options=dict(rho=1.0, probability_lr=0.05, initial_probability=0.5))

    removed = 1 - report.compressed.macs / report.dense.macs
    assert target <= removed <= target + 0.02
    reached = [record for record in records if record["reached"] is not None]
    assert reached and records[0]["reached"] is None
    # before the budget ρ pushes; from the step it is met, ρ is 0, nothing dies, survivors are held at ε or above
    assert all(record["rho"] > 0 and record["penalty"] for record in records[:len(records) - len(reached)])
    first = reached[0]
    epoch_of = lambda record: (record["step"] - 1) // 23 + 1  # noqa: E731
    for record in reached:
        assert record["rho"] == 0.0 and not record["penalty"]
        assert record["lowest"] >= EPSILON
        if epoch_of(record) == epoch_of(first):
            assert record["alive"] == first["alive"] and record["macs"] == first["macs"]
    later = [record for record in reached if epoch_of(record) > epoch_of(first)]
    assert all(record["alive"] == later[0]["alive"] for record in later)
    assert 1 - first["macs"] / report.dense.macs == pytest.approx(removed, abs=1e-9)


# ======================================================================================== option validation


@pytest.mark.parametrize("target, options, message", [
    (None, {}, "needs --target"),
    (0.5, {"kappa": 1.5}, "kappa"),
    (0.5, {"kappa": -0.1}, "kappa"),
    (0.5, {"epsilon": 1.5}, "epsilon"),
    (0.5, {"rho": -1.0}, "rho"),
    (0.5, {"initial_probability": 0.05}, "initial_probability"),
    (0.5, {"prune": "unit"}, "prune"),
])
def test_bad_options_are_user_errors(target, options, message):
    with pytest.raises(CompressorError, match=message):
        create_method("bernoulli", target, "structured", **options)


def test_a_fixed_rho_or_a_parameter_target_is_enough():
    assert create_method("bernoulli", None, "structured", rho=0.1).budgeted is False
    assert create_method("bernoulli", None, "structured", target_params=0.5).budgeted is True


def test_a_model_without_skip_units_gets_a_note_saying_why_no_layer_was_removed():
    model, method = prepared("lenet300_100", 0.5)
    assert any("no layer was removed" in note and "no skip-units" in note for note in method.notes)
    assert method.facts()["notes"] == method.notes
    _, resnet = prepared("resnet20", 0.5)
    assert not any("no layer was removed" in note for note in resnet.notes)


@pytest.mark.parametrize("name", ["senet", "resnext", "split", "encoder-decoder", "bias-free-mlp", "lambda"])
def test_models_outside_the_zoo_lose_their_dead_channels_and_keep_their_function(name):
    """Models the coupling analysis understands (tests/user_models.py): gated, a channel of every group killed,
    compiled away mid-training with eval outputs unchanged, and finalized without a gate left."""
    torch.manual_seed(0)
    model = randomize_batchnorm_(build(name))
    method = create_method("bernoulli", 0.3, "structured")
    method.prepare(model, None)
    gates = method._gates(model)
    assert gates
    with torch.no_grad():
        for _, gate in gates:
            gate.probability.view(-1)[0] = 0.0
    method.after_step(model, 1)
    x = torch.randn(4, *model.input_shape)
    model.eval()
    before = model(x)
    params = count_params(model)
    method._remove_dead(model, None)
    assert count_params(model) < params
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
    method.finalize(model)
    assert not parametrize.is_parametrized(model) and not hasattr(model, CHANNEL_GATES)


def test_the_controller_steers_by_the_latency_table_when_given_a_latency_target(tmp_path, monkeypatch):
    monkeypatch.setattr(BernoulliMethod, "latency_measure", staticmethod(macs_latency_table))
    model, method = prepared("resnet20", None, rho=0.3, target_latency=0.125, latency_cache=str(tmp_path))
    goal = method.latency_goal
    unit_ms = sum(ms for layer, ms in goal.model.per_layer() if layer.name.startswith("features.stage3.2."))
    assert method.latency_removed(model) == 0.0 and 0.11 < unit_ms / goal.dense_predicted_ms < 0.12
    gates = dict(method._gates(model))
    with torch.no_grad():
        gates["features.stage1.1.branch.0"].probability[:2] = 0.05
    method.after_step(model, 1)
    # Two hidden channels of a stage-1 unit: its first conv loses two outputs, its second two inputs.
    spec = {layer.name: layer.spec for layer in goal.model.layers}
    first, second = spec["features.stage1.1.branch.0"], spec["features.stage1.1.branch.3"]
    saved = (macs_latency_table(first) - macs_latency_table(first.at(16, 14))
             + macs_latency_table(second) - macs_latency_table(second.at(14, 16)))
    assert method.latency_removed(model) == pytest.approx(saved / goal.dense_predicted_ms)
    assert method.reached_epoch is None
    with torch.no_grad():
        gates["features.stage3.2"].probability.fill_(0.04)
    method.after_step(model, 2)
    # The unit's death reaches the latency target within the overshoot: the budget is met.
    assert not bool(gates["features.stage3.2"].alive) and method.reached_epoch == 1
    assert method.latency_removed(model) == pytest.approx((unit_ms + saved) / goal.dense_predicted_ms)


def test_the_controller_refuses_a_death_past_the_latency_target(tmp_path, monkeypatch):
    monkeypatch.setattr(BernoulliMethod, "latency_measure", staticmethod(macs_latency_table))
    model, method = prepared("resnet20", None, rho=0.3, target_latency=0.05, latency_cache=str(tmp_path))
    gates = dict(method._gates(model))
    with torch.no_grad():
        gates["features.stage3.2"].probability.fill_(0.04)  # 11.6% of the predicted latency: past 5% + 1%
    method.after_step(model, 1)
    assert bool(gates["features.stage3.2"].alive) and method.reached_epoch is None
