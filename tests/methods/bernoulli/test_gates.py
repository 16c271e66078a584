"""Tests of the Bernoulli method's stochastic gates (compressor.methods.bernoulli.gates): samples in training,
the expected value in eval, the straight-through gradient, a dense unit's one sample per batch, and a unit gate of
0 (dead) removed by RemoveDeadSkipUnits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.methods import create_method
from compressor.methods.bernoulli.gates import CHANNEL_GATES, BernoulliChannelGate, BernoulliUnitGate, draw_per_forward
from compressor.models import create_model
from compressor.models.resnet_cifar import basic_unit
from compressor.passes.analysis.groups import analyse_channels
from compressor.passes.gates import dense_unit_readers
from compressor.passes.remove_dead_skip_units import RemoveDeadSkipUnitsPass
from shared import randomize_batchnorm_
from structured_methods import SHAPE, generator


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
        for _, gate in method.gates(model):
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
