"""The Bernoulli method's budget controller: the pruning level ρ, when the budget is met, and which deaths it lets
through. Without a target ρ is the paper's fixed level and it decides nothing. With one (MACs, parameters or
predicted latency removed) ρ grows by `growth` at every epoch boundary while the network that would ship is above
the budget; once it is within budget ρ is 0 and a death that would take the network more than `OVERSHOOT` past a
target is refused; from the first epoch boundary with the budget met the survivors are settled (fixed at 1). The
controller sees the network only through what the method measures of the one that would ship (every survivor at
1): the fractions of the dense model's parameters, MACs and predicted latency it removes.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

# How far past a target a death may take the network: half the tolerance a user is promised (2 points).
OVERSHOOT = 0.01

# What the network that would ship removes, as fractions of the dense model's: (parameters, MACs, predicted
# latency, None without a latency target).
Removed = tuple[float, float, float | None]


class RhoController:
    """ρ and the budget of one run; `epoch` is the last completed epoch, `reached_epoch` the one in which the
    budget was met (None until then)."""

    def __init__(self, rho: float, growth: float, target_macs: float | None, target_params: float | None,
                 target_latency: float | None) -> None:
        self.rho = rho
        self.growth = growth
        self.target_macs, self.target_params, self.target_latency = target_macs, target_params, target_latency
        self.budgeted = target_macs is not None or target_params is not None or target_latency is not None
        self.reached_epoch: int | None = None
        self.epoch = 0

    @property
    def rho_now(self) -> float:
        """The ρ the regulariser applies now: 0 once the budget is met."""
        return 0.0 if self.reached_epoch is not None else self.rho

    @property
    def settled(self) -> bool:
        """Whether the survivors are fixed at 1: the budget was met by an epoch boundary already passed."""
        return self.reached_epoch is not None and self.reached_epoch <= self.epoch

    def rho_during(self, epoch: int) -> float:
        """ρ as it was while `epoch` trained (until the budget was met, if that happened in it)."""
        return self.rho if self.reached_epoch is None or self.reached_epoch == epoch else 0.0

    def within_budget(self, removed: Removed) -> bool:
        params, macs, latency = removed
        met_macs = self.target_macs is None or macs >= self.target_macs
        met_params = self.target_params is None or params >= self.target_params
        met_latency = latency is None or latency >= self.target_latency
        return met_macs and met_params and met_latency

    def overshoots(self, removed: Removed) -> bool:
        """Whether the network removes more than `OVERSHOOT` beyond a target."""
        params, macs, latency = removed
        over_macs = self.target_macs is not None and macs > self.target_macs + OVERSHOOT
        over_params = self.target_params is not None and params > self.target_params + OVERSHOOT
        over_latency = latency is not None and latency > self.target_latency + OVERSHOOT
        return over_macs or over_params or over_latency

    def accept_deaths(self, gates: list[nn.Module], epsilon: float, removed: Callable[[], Removed]) -> None:
        """Let structures below ε die, lowest probability first, while the shipped network (`removed()`, asked
        after each death weighed) stays within `OVERSHOOT` of the target; the others are held at ε. The budget is
        reached when it is met."""
        # Flattened, so that a unit's 0-dimensional θ yields index 0 rather than no index at all.
        dying = [(gate, torch.nonzero((gate.alive & (gate.probability < epsilon)).reshape(-1)).flatten())
                 for gate in gates]
        dying = [(gate, index) for gate, index in dying if index.numel()]
        if not dying:
            return
        candidates = sorted(((float(gate.probability.reshape(-1)[i]), n, int(i)) for n, (gate, index) in
                             enumerate(dying) for i in index), key=lambda item: item[:2])
        for _, n, i in candidates:
            gate = dying[n][0]
            if self.reached_epoch is None:
                gate.alive.view(-1)[i] = False
                shipped = removed()
                if not self.overshoots(shipped):
                    if self.within_budget(shipped):
                        self.reached_epoch = self.epoch + 1
                    continue
                gate.alive.view(-1)[i] = True
            gate.probability.view(-1)[i] = epsilon

    def end_epoch(self, epoch: int, removed: Callable[[], Removed]) -> bool:
        """At the boundary after `epoch`: with a budget not yet met, note it met (`removed()` is the network that
        would ship) or grow ρ. Whether this is the first boundary with the budget met: the survivors settle now."""
        self.epoch = epoch
        if self.budgeted and self.reached_epoch is None:
            if self.within_budget(removed()):
                self.reached_epoch = epoch
            else:
                self.rho *= self.growth
        return self.reached_epoch == epoch
