"""Tests of the Bernoulli method's physical removal of dead structures mid-training
(compressor.methods.bernoulli.restructure): outputs unchanged, the survivors' θ/π, Adam state and weight momentum
carried over, the counts cut by what was predicted, and models from outside the zoo.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from compressor.counting import count_macs, count_params
from compressor.methods import create_method
from compressor.methods.bernoulli.gates import CHANNEL_GATES, remove_stochastic_gates
from compressor.models import create_model
from compressor.modules import copy_model
from compressor.passes.analysis.groups import analyse_channels
from compressor.passes.gates import dense_unit_readers
from compressor.training import plain_parameter_name
from shared import randomize_batchnorm_
from structured_methods import generator, prepared, set_random_probabilities
from user_models import build


# ========================================================================================= physical removal


def kill(method, model, units, channels) -> None:
    gates = dict(method.gates(model))
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
    for _, gate in method.gates(model):
        gate.probability.grad = torch.randn(gate.probability.shape, generator=generator(13))
    adam.step()
    set_random_probabilities(method, model, 14)
    kill(method, model, dead_units, dead_channels)
    before_gates = {key: (gate.probability.detach().clone(), gate.alive.clone()) for key, gate in method.gates(model)}
    before_adam = {key: {k: v.clone() for k, v in adam.state[gate.probability].items()}
                   for key, gate in method.gates(model)}
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
    gates = dict(method.gates(model))
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


@pytest.mark.parametrize("name", ["senet", "resnext", "split", "encoder-decoder", "bias-free-mlp", "lambda"])
def test_models_outside_the_zoo_lose_their_dead_channels_and_keep_their_function(name):
    """Models the coupling analysis understands (tests/user_models.py): gated, a channel of every group killed,
    compiled away mid-training with eval outputs unchanged, and finalized without a gate left."""
    torch.manual_seed(0)
    model = randomize_batchnorm_(build(name))
    method = create_method("bernoulli", 0.3, "structured")
    method.prepare(model, None)
    gates = method.gates(model)
    assert gates
    with torch.no_grad():
        for _, gate in gates:
            gate.probability.view(-1)[0] = 0.0
    method.after_step(model, 1)
    x = torch.randn(4, *model.input_shape)
    model.eval()
    before = model(x)
    params = count_params(model)
    method.remove_dead(model, None)
    assert count_params(model) < params
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
    method.finalize(model)
    assert not parametrize.is_parametrized(model) and not hasattr(model, CHANNEL_GATES)
