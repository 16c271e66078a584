"""Complexity-aware Bernoulli pruning of channels and whole skip-units during training (Guenter & Sideris).

Every skip-unit gets a layer variable ξ ~ Bernoulli(θ) on its branch (a dense unit: on its new features) and
every hidden channel group inside a unit (or, in a network without skip-units, every hidden layer) a unit
variable η ~ Bernoulli(π) per channel (the gates are in `compressor.methods.bernoulli.gates`). Training samples
them per example and minimises, beside the task loss,

    ρ · [κ·L·E[MACs]/MACs₀ + (1−κ)·L·E[params]/params₀ + ν·Σθ]

where the expectations are exact functions of (θ, π) read off the compiler's own per-layer counts
(`compressor.passes.analysis.expected_counts`), L is the number of skip-units (of gated layers without them), and
MACs₀, params₀ are the dense model's. θ and π train with Adam at a constant rate, without weight decay,
are projected onto [0, 1] after every step, and a structure whose probability falls below ε is dead for good:
it samples 0 from then on. At the end of every epoch the dead structures are removed physically, by the
compiler's passes (a dead unit through a unit gate of 0 and RemoveDeadSkipUnits, dead channels through
channel gates of 0 and SliceChannels; `restructure`), so later epochs train, and cost, a smaller network; the
optimizer state of the survivors is carried over. A unit whose hidden channels all died goes as a whole. At the end
every survivor is set to 1, a deterministic network the compiler passes through unchanged.

The paper has only ρ. `--target` (MACs removed; `--target-params` for parameters) makes ρ a controller
(`controller`): it starts at `rho` and doubles (`rho_growth`) every epoch while the network that would ship, with
every survivor at 1, is above the budget; once it is within budget ρ drops to 0 and deaths that would take it
further are refused (the structure stays at ε). The run so ends at most one structure past the target, which the
report states as counted. From the next epoch boundary on every survivor is fixed at 1 and the remaining epochs
fine-tune the deterministic network that will ship: a survivor left at, say, π = 0.4 and only set to 1 at the end
would change the function the weights were trained for (on digits, resnet56 at 50%: 98.9% before that final step,
93.6% after it). The paper reaches the same end state (Theorem 3.1: minima lie at 0 or 1) by training long enough
for the survivors to climb; its fixed-ρ mode here keeps its behaviour.
`--target-latency` budgets the latency the latency table (compressor.methods.latency_goal) predicts for the
network that would ship, in the same way: the regulariser still weighs MACs (the paper's complexity), the
controller weighs milliseconds.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from compressor.counting import count_macs, count_params
from compressor.data import DataBundle
from compressor.distributed import from_main, group as process_group
from compressor.errors import CompressorError
from compressor.methods.base import Method, MethodOutcome, StructureOutcome, register_method
from compressor.methods.bernoulli.controller import Removed, RhoController
from compressor.methods.bernoulli.gates import (CHANNEL_GATES, BernoulliChannelGate, BernoulliUnitGate,
                                                draw_per_forward, remove_stochastic_gates, unit_gates)
from compressor.methods.bernoulli.restructure import compile_away_dead, fix_survivors
from compressor.methods.latency_goal import (LatencyGoal, check_latency_settings, latency_backend_field,
                                             latency_cache_field, target_latency_field)
from compressor.models.units import DenseUnit, ResidualUnit
from compressor.options import target_params_field
from compressor.passes.analysis.expected_counts import ExpectedCounts, unit_layers
from compressor.passes.analysis.groups import ChannelGroup, analyse_channels
from compressor.passes.analysis.zero_flow import WEIGHT_LAYERS
from compressor.passes.gates import dense_unit_readers, gate_unit, units_of
from compressor.runtime.latency_model import LatencyModel
from compressor.structure import apply_structure, describe_structure

logger = logging.getLogger(__name__)

PRUNE = ("both", "units", "layers")


def _parse_number(text: str, option: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise CompressorError(f"option {option} of method bernoulli takes a number, not {text!r}") from None


def _parse_prune(text: str) -> str:
    if text not in PRUNE:
        raise CompressorError(f"option prune of method bernoulli takes one of {', '.join(PRUNE)}, not {text!r}")
    return text


@dataclass
class BernoulliConfig:
    """Hyper-parameters; the paper's where it states them, ours (with the reason) where its cells were lost."""

    # Pruning level ρ. Without a target it is the paper's fixed ρ; with one it is where the controller starts.
    rho: float | None = field(default=None, metadata={"parse": lambda text: _parse_number(text, "rho")})
    # FLOPs (1) against parameters (0). The paper's value per experiment is lost; 1 prunes for what --target asks.
    kappa: float = 1.0
    # Cost per skip-unit, beyond its FLOPs and parameters: larger ν removes more whole units (0: β = 0).
    nu: float = 0.0
    # Pruning threshold ε on θ and π, the paper's in every setup.
    epsilon: float = 0.1
    # Initial θ and π. The paper's value is lost; 1 starts from the user's trained network unchanged.
    initial_probability: float = 1.0
    # Adam's constant rate for θ and π. The paper's value is lost. Adam moves a probability by about its rate
    # per step, so from 1 to ε takes at least 0.9/rate steps: at 1e-3 more than a CIFAR epoch (391 steps) but
    # 40 epochs of digits (23 steps); 1e-2 lets a structure die within a few epochs on small data.
    probability_lr: float = 0.01
    # With a target: the factor ρ grows by per epoch while the network is above the budget.
    rho_growth: float = 2.0
    # What is pruned: channels and skip-units ("both", the paper), or only one kind (its ablations).
    prune: str = field(default="both", metadata={"parse": _parse_prune})
    target_params: float | None = target_params_field()
    # With a latency target the controller also asks the latency table (compressor.methods.latency_goal) what the
    # network that would ship costs, after every death it weighs and at every epoch boundary.
    target_latency: float | None = target_latency_field()
    latency_backend: str | None = latency_backend_field()
    latency_cache: str | None = latency_cache_field()


@dataclass
class _Structure:
    """What is gated: skip-unit names and channel-group roots, with the counts built on the plain model."""

    units: list[str]
    groups: list[str]
    expected: ExpectedCounts


def _key(root: str) -> str:
    return root.replace(".", "-")


def hidden_groups(groups: list[ChannelGroup], units: list[nn.Module]) -> tuple[list[ChannelGroup], dict[str, str]]:
    """The channel groups that get a unit variable, and for the others that stay inside one unit, the reason.

    A group gets one when every member lies inside the same skip-unit (a branch's hidden channels), or outside
    every unit in a network without units, and its channels are read only by plain Conv/Linear layers, where
    the gate scales them; groups that cross a unit's merge point carry the units' own channels (the paper's ζ,
    left at 1).
    """
    owner = {module: index for index, unit in enumerate(units) for module in unit_layers(unit)}
    chosen, refused = [], {}
    for group in groups:
        owners = {owner.get(member.module) for member in group.members}
        if len(owners) != 1 or (units and owners == {None}):
            continue
        readers = {id(m.module): m.module for m in group.members if not m.produces and isinstance(m.module, WEIGHT_LAYERS)}
        plain = all(isinstance(r, (nn.Conv2d, nn.Linear)) and getattr(r, "groups", 1) == 1 for r in readers.values())
        if not readers or not plain or len(group.flow.readers) != len(readers):
            refused[group.root] = "its channels are read by something other than plain Conv/Linear layers"
        elif group.unit_size != 1:
            refused[group.root] = "its channels can only be removed in tied groups"
        else:
            chosen.append(group)
    return chosen, refused


@register_method
class BernoulliMethod(Method):
    """Learn which channels and skip-units to keep, with Bernoulli gates under a complexity-aware cost."""

    name = "bernoulli"
    Config = BernoulliConfig
    patterns = ("structured",)
    structured = True
    default_epochs = 30
    default_lr = 0.05

    def __init__(self, target, pattern="structured", config=None, run=None):
        super().__init__(target, pattern, config, run)
        c = self.config
        budget = target is not None or c.target_params is not None or c.target_latency is not None
        if c.rho is None and not budget:
            raise CompressorError("method bernoulli needs --target (fraction of MACs to remove), --target-params, "
                                  "--target-latency, or a fixed pruning level --option rho=...")
        check_latency_settings(c.target_latency, c.latency_backend)
        for name, value, low, high in (("rho", c.rho, 0, None), ("kappa", c.kappa, 0, 1), ("nu", c.nu, 0, None),
                                       ("epsilon", c.epsilon, 0, 1), ("initial_probability", c.initial_probability, 0, 1),
                                       ("probability_lr", c.probability_lr, 0, None), ("rho_growth", c.rho_growth, 1, None)):
            if value is not None and (value < low or (high is not None and value > high)):
                bounds = f"[{low}, {high}]" if high is not None else f"at least {low}"
                raise CompressorError(f"option {name} of method bernoulli must be {bounds}, got {value}")
        if c.initial_probability < c.epsilon:
            raise CompressorError("option initial_probability of method bernoulli must be at least epsilon")
        _parse_prune(c.prune)  # options given in Python (compress's method_options) skip the command-line parser
        self.controller = RhoController(c.rho if c.rho is not None else 0.1, c.rho_growth, target, c.target_params,
                                        c.target_latency)
        self.removed_units: list[str] = []
        self.epochs: list[dict[str, float]] = []
        self.stages: dict[str, dict[str, Any]] = {}
        self.final_probabilities: dict[str, list[float]] = {}
        self.notes: list[str] = []
        self.predicted: dict[str, float] = {}
        self._structure: _Structure | None = None
        self._adam: torch.optim.Adam | None = None
        self._latency: LatencyModel | None = None  # the current network's layers on the latency goal's table

    # --- setting up -----------------------------------------------------------------------------------------

    def prepare(self, model: nn.Module, data: DataBundle) -> nn.Module:
        self.shape = tuple(model.input_shape)
        self.dense_macs = count_macs(model, self.shape)
        self.dense_params = count_params(model)
        analysis = analyse_channels(model, self.shape)
        units = [name for name, unit in units_of(model) if self._can_gate(model, name, unit, analysis.groups)]
        if self.config.prune == "units":
            units_gated, self.notes = [], self.notes + ["skip-units are not pruned (prune=units)"]
        else:
            units_gated = units
        groups, refused = hidden_groups(analysis.groups, [model.get_submodule(u) for u in units])
        self.notes += [f"{root}: not gated: {why}" for root, why in refused.items()]
        if self.config.prune == "layers":
            groups = []
        if not units:
            self.notes.append("no layer was removed: the model has no skip-units (residual or dense units), so only "
                              "channels and neurons were pruned")
        if not units_gated and not groups:
            raise CompressorError("method bernoulli finds nothing to prune in this model: no skip-unit and no hidden "
                                  "channel group read only by Conv/Linear layers")
        # L of the paper's eq. 13: the units carrying ξ, or the gated layers in a network without units.
        self.blocks = len(units) or len(groups)
        self.stages = self._stage_widths(model, units, groups)
        if self.config.target_latency is not None and process_group().main:
            self.latency_goal = LatencyGoal(model, self.shape, self.config.target_latency, self.config.latency_backend,
                                            self.run.bench_batch, self.run.threads, self.config.latency_cache,
                                            self.latency_measure)
        self._attach(model, units_gated, [g.root for g in groups], analysis.groups)
        return model

    def _can_gate(self, model: nn.Module, name: str, unit: nn.Module, groups: list[ChannelGroup]) -> bool:
        if isinstance(unit, DenseUnit):
            try:
                dense_unit_readers(unit, groups)
            except ValueError as error:
                self.notes.append(f"{name}: not gated: {error}")
                return False
        return True

    def _attach(self, model: nn.Module, units: list[str], roots: list[str], all_groups: list[ChannelGroup],
                probabilities: dict[str, torch.Tensor] | None = None, alive: dict[str, torch.Tensor] | None = None
                ) -> None:
        """Gate `units` and the groups rooted at `roots` of the plain `model`, with the given probabilities and
        alive flags (1 and alive where none are given), and build the expected counts and θ/π's Adam."""
        self._layers = describe_structure(model)
        # A group is known by the layer that produced its channels when it was gated: after slicing, the analysis
        # may name the group after another of its layers. A group the analysis no longer offers (its layer is
        # down to what must stay) keeps its channels, ungated.
        producers = {member.name: group for group in all_groups for member in group.members if member.produces}
        roots = [root for root in roots if root in producers]
        groups = [producers[root] for root in roots]
        unit_modules = [model.get_submodule(name) for name in units]
        expected = ExpectedCounts(model, self.shape, unit_modules, groups, all_groups)
        if self.latency_goal is not None:
            self._latency = LatencyModel(model, self.shape, self.latency_goal.table)
        probabilities, alive = probabilities or {}, alive or {}
        initial = self.config.initial_probability
        for name, unit in zip(units, unit_modules):
            gate = BernoulliUnitGate(initial, device=next(unit.parameters()).device)
            if name in probabilities:
                with torch.no_grad():
                    gate.probability.copy_(probabilities[name])
                    gate.alive.copy_(alive[name])
            if isinstance(unit, ResidualUnit):
                unit.gate = gate
            else:
                gate_unit(model, unit, 1.0, self.shape, gate=gate, groups=all_groups)
        container = nn.ModuleDict()
        for root, group in zip(roots, groups):
            start = probabilities.get(root)
            if start is None:
                start = torch.full((group.size,), initial, device="cpu")
            container[_key(root)] = BernoulliChannelGate(group, start, alive.get(root))
        setattr(model, CHANNEL_GATES, container)
        draw_per_forward(model)
        self._structure = _Structure(units, roots, expected)
        self._physical_macs = count_macs(model, self.shape)

    def gates(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """(key, gate) of every stochastic gate, units first: the order of θ/π in the optimizer."""
        units = dict(unit_gates(model))
        containers = getattr(model, CHANNEL_GATES)
        return ([(name, units[name]) for name in self._structure.units]
                + [(root, containers[_key(root)]) for root in self._structure.groups])

    def method_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        if self._adam is None:
            probabilities = [gate.probability for _, gate in self.gates(model)]
            if not probabilities:
                return None  # every gated structure has been removed: nothing left to learn
            self._adam = torch.optim.Adam(probabilities, lr=self.config.probability_lr, weight_decay=0.0)
        return self._adam

    # --- the objective ----------------------------------------------------------------------------------------

    def _probabilities(self, model: nn.Module, deterministic: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """θ (a vector over the gated units) and π (one vector per gated group): expected values, or with
        `deterministic` the network that would ship (survivors 1, dead 0)."""
        def value(gate):
            return gate.alive.float() if deterministic else gate.expected()

        gates = self.gates(model)
        units = len(self._structure.units)
        device = next(model.parameters()).device
        theta = (torch.stack([value(gate) for _, gate in gates[:units]]) if units
                 else torch.zeros(0, device=device))
        return theta, [value(gate) for _, gate in gates[units:]]

    def complexity(self, model: nn.Module, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[params], E[MACs]) of the gated model; with `deterministic`, of the network that would ship."""
        theta, pi = self._probabilities(model, deterministic)
        return self._structure.expected(theta, pi)

    def latency_removed(self, model: nn.Module) -> float | None:
        """The share of the dense model's predicted latency that the network that would ship (survivors at 1)
        removes, from the latency table at each layer's surviving widths; None without a latency target. Only the
        main process has the table: its answer is every process's."""
        if self.config.target_latency is None:
            return None
        removed = None
        if self._latency is not None:
            theta, pi = self._probabilities(model, deterministic=True)
            alive_in, alive_out, present = (values.tolist() for values in
                                            self._structure.expected.alive_channels(theta, pi))
            row = {module: index for index, module in enumerate(self._structure.expected.counted_layers)}

            def surviving(module: nn.Module) -> tuple[int, int] | None:
                index = row[module]
                widths = round(alive_in[index]), round(alive_out[index])
                # A layer without inputs or outputs left goes with its unit when the dead are removed.
                return widths if present[index] > 0 and min(widths) >= 1 else None

            removed = 1 - self._latency.predict_at(surviving) / self.latency_goal.dense_predicted_ms
        return from_main(removed)

    def regulariser(self, model: nn.Module, rho: float) -> torch.Tensor:
        """ρ[κ·L·E[MACs]/MACs₀ + (1−κ)·L·E[params]/params₀ + ν·Σθ] at the gates' current probabilities."""
        c = self.config
        theta, pi = self._probabilities(model)
        params, macs = self._structure.expected(theta, pi)
        cost = (c.kappa * self.blocks * macs / self.dense_macs
                + (1 - c.kappa) * self.blocks * params / self.dense_params + c.nu * theta.sum())
        return (rho * cost).float()

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        rho = self.rho_now
        return self.regulariser(model, rho) if rho > 0 else None

    def _removed(self, model: nn.Module) -> Removed:
        """The fractions of the dense model's parameters, MACs and predicted latency that the network that would
        ship removes."""
        params, macs = (float(v) for v in self.complexity(model, deterministic=True))
        return 1 - params / self.dense_params, 1 - macs / self.dense_macs, self.latency_removed(model)

    # --- the controller's state, read-only ----------------------------------------------------------------------

    @property
    def budgeted(self) -> bool:
        """Whether a target steers ρ (otherwise ρ is the paper's fixed level)."""
        return self.controller.budgeted

    @property
    def rho(self) -> float:
        return self.controller.rho

    @property
    def rho_now(self) -> float:
        """The ρ the regulariser applies now: 0 once the budget is met."""
        return self.controller.rho_now

    @property
    def reached_epoch(self) -> int | None:
        """The epoch in which the budget was met; None until then."""
        return self.controller.reached_epoch

    @property
    def settled(self) -> bool:
        """Whether the survivors are fixed at 1: the budget was met by an epoch boundary already passed."""
        return self.controller.settled

    # --- per step: projection and the pruning test -------------------------------------------------------------

    def after_step(self, model: nn.Module, step: int) -> None:
        epsilon = self.config.epsilon
        gates = [gate for _, gate in self.gates(model)]
        with torch.no_grad():
            if self.settled:
                fix_survivors(gates)
                return
            for gate in gates:
                gate.probability.clamp_(0.0, 1.0)
            if self.budgeted and self.reached_epoch is not None:
                # Within budget: no structure may die any more.
                for gate in gates:
                    gate.probability.copy_(torch.where(gate.alive, gate.probability.clamp_min(epsilon), 0.0))
                return
            if self.budgeted:
                self.controller.accept_deaths(gates, epsilon, lambda: self._removed(model))
            for gate in gates:
                gate.alive &= gate.probability >= epsilon
                gate.probability.mul_(gate.alive)

    # --- per epoch: the training cost, the controller, physical removal --------------------------------------------

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        with torch.no_grad():
            params, macs = self.complexity(model, deterministic=True)
            expected_params, expected_macs = self.complexity(model)
        self.epochs.append({"epoch": epoch, "macs_trained": self._physical_macs, "macs_alive": float(macs),
                            "params_alive": float(params), "expected_macs": float(expected_macs),
                            "rho": self.controller.rho_during(epoch)})
        shipped = lambda: (1 - float(params) / self.dense_params, 1 - float(macs) / self.dense_macs,  # noqa: E731
                           self.latency_removed(model))
        if self.controller.end_epoch(epoch, shipped):  # the first boundary with the budget met: from here on, settled
            self._record_probabilities(model)
            with torch.no_grad():
                fix_survivors([gate for _, gate in self.gates(model)])

    def restructure(self, model: nn.Module, optimizer_state: dict[str, dict]) -> bool:
        gates = self.gates(model)
        dead_units = [name for name, gate in gates[:len(self._structure.units)] if not bool(gate.alive)]
        groups_with_dead = [root for root, gate in gates[len(self._structure.units):] if not bool(gate.alive.all())]
        if not dead_units and not groups_with_dead:
            return False
        self.remove_dead(model, optimizer_state)
        return True

    def remove_dead(self, model: nn.Module, optimizer_state: dict[str, dict] | None) -> None:
        """Compile the dead structures away and rebuild `model` in place, carrying the survivors' θ/π, their
        Adam state and (in `optimizer_state`) the weights' momentum."""
        survivors = compile_away_dead(model, self.shape, self._structure.units, self._structure.groups,
                                      dict(self.gates(model)), self.config.epsilon, self._adam, optimizer_state)
        self.removed_units += survivors.dead_units
        self._attach(model, survivors.units, survivors.roots, analyse_channels(model, self.shape).groups,
                     survivors.probabilities, survivors.alive)
        if self._adam is not None:
            self._adam = None
            adam = self.method_optimizer(model)
            for key, gate in self.gates(model):
                if survivors.adam_state.get(key):
                    adam.state[gate.probability] = survivors.adam_state[key]
        logger.info("bernoulli: removed %d skip-units and %d channels; the model trains with %s MACs per sample now",
                    len(survivors.dead_units), survivors.channels_removed, f"{self._physical_macs:,}")

    # --- the end ------------------------------------------------------------------------------------------------

    def finalize(self, model: nn.Module) -> nn.Module:
        """Remove what died since the last epoch, record the final θ and π, and set every survivor to 1."""
        if self._structure is None:
            return model
        gates = self.gates(model)
        if any(not bool(gate.alive.all()) for _, gate in gates):
            self.remove_dead(model, None)
            gates = self.gates(model)
        if not self.settled:
            self._record_probabilities(model)
        with torch.no_grad():
            params, macs = self.complexity(model, deterministic=True)
        self.predicted = {"macs_removed": 1 - float(macs) / self.dense_macs,
                          "params_removed": 1 - float(params) / self.dense_params}
        self._finish_stages(model)
        remove_stochastic_gates(model)
        self._structure = None
        return model

    def _record_probabilities(self, model: nn.Module) -> None:
        """Keep θ and π of the survivors as they are before being fixed at 1."""
        gates = self.gates(model)
        units = len(self._structure.units)
        self.final_probabilities = {
            "theta": [float(gate.probability.detach()) for _, gate in gates[:units] if bool(gate.alive)],
            "pi": [float(v) for _, gate in gates[units:] for v in gate.probability.detach()[gate.alive].cpu()]}

    def _stage_widths(self, model: nn.Module, units: list[str], groups: list[ChannelGroup]) -> dict[str, dict[str, Any]]:
        """Per stage (the module holding a run of skip-units, or a gated layer of a network without units):
        its units and the width of its gated channels, before training."""
        stages: dict[str, dict[str, Any]] = {}
        for name in units:
            stage = stages.setdefault(name.rpartition(".")[0] or name, {"units": [], "channels": {}})
            stage["units"].append(name)
        for group in groups:
            owner = next((name for name in units if group.root.startswith(name + ".")), None)
            stage = (owner.rpartition(".")[0] or owner) if owner else group.root
            stages.setdefault(stage, {"units": [], "channels": {}})["channels"][group.root] = [group.size, None]
        return stages

    def _finish_stages(self, model: nn.Module) -> None:
        widths = {root: int(gate.alive.sum()) for root, gate in self.gates(model)[len(self._structure.units):]}
        for stage in self.stages.values():
            stage["removed_units"] = [name for name in stage["units"] if name in self.removed_units]
            for root, sizes in stage["channels"].items():
                sizes[1] = widths.get(root, 0)

    # --- resume ---------------------------------------------------------------------------------------------------

    def structure(self) -> dict | None:
        if self._structure is None:
            return None
        return {"layers": self._layers, "units": list(self._structure.units), "groups": list(self._structure.groups)}

    def restore_structure(self, model: nn.Module, structure: dict) -> None:
        remove_stochastic_gates(model)
        apply_structure(model, structure["layers"])
        self._adam = None
        self._attach(model, list(structure["units"]), list(structure["groups"]),
                     analyse_channels(model, self.shape).groups)

    def fingerprint(self) -> dict[str, Any]:
        # The settings only: what the run has learned so far is its state, not its identity.
        return self.settings()

    def state_dict(self) -> dict:
        return {"rho": self.rho, "reached_epoch": self.reached_epoch, "probabilities": dict(self.final_probabilities), "removed_units": list(self.removed_units),
                "epochs": [dict(record) for record in self.epochs], "epoch": self.controller.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.controller.rho = float(state["rho"])
        self.controller.reached_epoch = state["reached_epoch"]
        self.final_probabilities = dict(state["probabilities"])
        self.removed_units = list(state["removed_units"])
        self.epochs = [dict(record) for record in state["epochs"]]
        self.controller.epoch = int(state["epoch"])

    def outcome(self) -> MethodOutcome:
        structure = StructureOutcome(predicted=dict(self.predicted), removed_units=list(self.removed_units),
                                     training_cost=[dict(record) for record in self.epochs], stages=self.stages,
                                     probabilities=dict(self.final_probabilities), notes=list(self.notes))
        return dataclasses.replace(super().outcome(), structure=structure,
                                   details={"target_reached_epoch": self.reached_epoch, "rho_final": self.rho})

