"""Tests of the Bernoulli method's budget controller (compressor.methods.bernoulli.controller): projection and
death after a step, deaths accepted within the budget and refused past it, ρ growing below it, and a latency target
steered by the latency table.
"""

from __future__ import annotations

import pytest
import torch

from compressor.counting import count_macs
from compressor.methods.bernoulli import BernoulliMethod
from compressor.models import create_model
from shared import macs_latency_table
from structured_methods import EPSILON, SHAPE, prepared


# ===================================================================================== the budget controller


def test_after_a_step_probabilities_are_projected_and_those_below_epsilon_die():
    model, method = prepared("resnet20", rho=0.5)
    gates = dict(method.gates(model))
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
    gates = dict(method.gates(model))
    with torch.no_grad():
        gates["features.stage3.2"].probability.fill_(0.04)
        gates["features.stage1.0"].probability.fill_(0.05)
    method.after_step(model, 1)
    # the lowest went and met the target within the overshoot; the other was held at ε
    assert not bool(gates["features.stage3.2"].alive)
    held = gates["features.stage1.0"]
    assert bool(held.alive) and float(held.probability.detach()) == pytest.approx(EPSILON)
    assert method.reached_epoch == 1
    assert method.rho_now == 0.0 and method.extra_loss(model) is None
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
    for _, gate in method.gates(model):
        assert torch.equal(gate.probability.detach(), gate.alive.float())
    with torch.no_grad():
        gates["features.stage2.1.branch.0"].probability.mul_(0.5)
    method.after_step(model, 3)
    assert bool((gates["features.stage2.1.branch.0"].probability.detach() == 1).all())
    model.eval()
    assert float(gates["features.stage1.0"].value().detach()) == 1.0


def test_the_controller_refuses_a_death_past_the_target_and_grows_rho_below_it():
    model, method = prepared("resnet20", 0.05, rho=0.3)
    gates = dict(method.gates(model))
    with torch.no_grad():
        gates["features.stage3.2"].probability.fill_(0.04)  # 11.6% of the MACs: past 5% + the 1% overshoot
        gates["features.stage1.0.branch.0"].probability[3] = 0.05  # 0.7%
    method.after_step(model, 1)
    assert bool(gates["features.stage3.2"].alive)
    assert float(gates["features.stage3.2"].probability.detach()) == pytest.approx(EPSILON)
    assert not bool(gates["features.stage1.0.branch.0"].alive[3])
    assert method.reached_epoch is None and method.rho_now == 0.3
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
        records.append(dict(step=step, reached=self.reached_epoch, rho=self.rho_now,
                            penalty=self.extra_loss(model) is not None,
                            alive=[int(gate.alive.sum()) for _, gate in self.gates(model)], macs=float(macs),
                            lowest=min((float(gate.probability.detach()[gate.alive].min())
                                        for _, gate in self.gates(model) if bool(gate.alive.any())), default=1.0)))

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


def test_the_controller_steers_by_the_latency_table_when_given_a_latency_target(tmp_path, monkeypatch):
    monkeypatch.setattr(BernoulliMethod, "latency_measure", staticmethod(macs_latency_table))
    model, method = prepared("resnet20", None, rho=0.3, target_latency=0.125, latency_cache=str(tmp_path))
    goal = method.latency_goal
    unit_ms = sum(ms for layer, ms in goal.model.per_layer() if layer.name.startswith("features.stage3.2."))
    assert method.latency_removed(model) == 0.0 and 0.11 < unit_ms / goal.dense_predicted_ms < 0.12
    gates = dict(method.gates(model))
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
    gates = dict(method.gates(model))
    with torch.no_grad():
        gates["features.stage3.2"].probability.fill_(0.04)  # 11.6% of the predicted latency: past 5% + 1%
    method.after_step(model, 1)
    assert bool(gates["features.stage3.2"].alive) and method.reached_epoch is None
