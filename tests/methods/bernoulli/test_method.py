"""Tests of the Bernoulli method ("bernoulli", Guenter & Sideris): the regulariser, the projection and pruning
test during training, resume across a removal, option validation, and the deterministic network it ends with.

Training runs use resnet20 on the 8x8 digits (2.5M MACs per sample), so a few epochs take seconds.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from compressor.counting import count_macs
from compressor.data import load_data
from compressor.errors import CompressorError
from compressor.methods import create_method
from compressor.methods.bernoulli.gates import CHANNEL_GATES, BernoulliUnitGate
from compressor.models import create_model
from compressor.modules import copy_model
from compressor.passes.pipeline import compile_model
from compressor.training import TrainConfig, train
from structured_methods import EPSILON, SHAPE, generator, prepared, set_random_probabilities


# ========================================================================================== the regulariser


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


def test_regulariser_gradient_matches_finite_differences():
    model, method = prepared("resnet20", rho=0.5, kappa=0.4, nu=0.3)
    set_random_probabilities(method, model, 11)
    method.regulariser(model, 0.5).backward()
    gates = dict(method.gates(model))
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
    gates = dict(method.gates(model))
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
            gates = method.gates(model)
            self.steps.append(dict(
                step=step, macs=float(macs), reached=method.reached_epoch, rho=method.rho_now,
                penalty=method.extra_loss(model) is not None,
                probability={key: gate.probability.detach().clone() for key, gate in gates},
                alive={key: gate.alive.clone() for key, gate in gates}))

        def recorded_restructure(model, optimizer_state):
            changed = restructure(model, optimizer_state)
            gates = method.gates(model)
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
        for _, gate in method.gates(shipped):
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
    assert method.gates(model) == [] and method.method_optimizer(model) is None
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
    assert method.outcome().structure.notes == method.notes
    _, resnet = prepared("resnet20", 0.5)
    assert not any("no layer was removed" in note for note in resnet.notes)
