"""Bernoulli gates: structures present with a trainable probability, sampled in training, expected in eval.

A stochastic gate holds a probability (θ for a skip-unit, one π per channel of a channel group) and a flag
per structure saying whether it is still alive. In training mode it multiplies what it gates by a Bernoulli
sample drawn per example, `m = s + p − p.detach()` with `s ~ Bernoulli(p)`: the forward uses the 0/1 sample and
the backward passes ∂loss/∂m to p unchanged (the straight-through estimate of the change in loss between the
structure on and off). The path is computed even where s = 0, so that gradient exists. In eval mode the gate
is its expected value, p. A dead structure's probability is 0: it samples 0 and gets no gradient.

- `BernoulliUnitGate` is a `UnitGate` (compressor.passes.gates): a residual unit's branch is scaled per example; a dense
  unit's features are gated where its readers normalise them (their BatchNorm parameters, shared by the
  batch), so a dense unit draws one sample per batch. FoldGates and RemoveDeadSkipUnits read its eval value
  like any unit gate.
- `BernoulliChannelGate` scales the channels of one channel group where they are read: the input of every
  Conv/Linear layer that reads them, after the activation that produced them, so its eval value is exactly the
  expected input of those layers for any activation. It lives in the model (its probabilities train and are
  saved with the weights) and acts through forward pre-hooks on the readers.

`draw_per_forward` makes every gate of a model draw fresh samples at each forward pass; `remove_stochastic_gates`
takes them all out again, leaving the weights as they were under them.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from compressor.models.units import DenseUnit, ResidualUnit
from compressor.modules import unparametrize
from compressor.passes.analysis.groups import ChannelGroup
from compressor.passes.gates import FeatureRangeGate, UnitGate

# Where a model keeps its channel gates, so their probabilities are parameters of the model.
CHANNEL_GATES = "bernoulli_channel_gates"


def straight_through_sample(probability: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A 0/1 sample of Bernoulli(`probability`) broadcast to `shape`, whose gradient flows to `probability`."""
    expanded = probability.expand(shape)
    return torch.bernoulli(expanded.detach()) + expanded - expanded.detach()


class BernoulliUnitGate(UnitGate):
    """A skip-unit present with probability θ (`probability`), until it is pruned (`alive` false)."""

    def __init__(self, probability: float = 1.0, device: torch.device | str | None = None) -> None:
        nn.Module.__init__(self)
        self.probability = nn.Parameter(torch.tensor(float(probability), device=device))
        self.register_buffer("alive", torch.tensor(True, device=device))
        self._batch_sample: torch.Tensor | None = None

    def expected(self) -> torch.Tensor:
        return self.probability * self.alive

    def value(self) -> torch.Tensor:
        # One sample per forward pass, shared by every reader that asks (a dense unit's readers' BatchNorms).
        if not self.training:
            return self.expected()
        if self._batch_sample is None:
            self._batch_sample = straight_through_sample(self.expected(), ())
        return self._batch_sample

    def new_forward(self) -> None:
        self._batch_sample = None

    def forward(self, branch_output: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return branch_output * self.expected()
        shape = (branch_output.shape[0],) + (1,) * (branch_output.dim() - 1)
        return branch_output * straight_through_sample(self.expected(), shape)


class BernoulliChannelGate(nn.Module):
    """The root channels of one channel group, each present with probability π (`probability`).

    `readers` are the group's Conv/Linear members that read its channels; each gets a forward pre-hook that
    scales its input channels (axis 1 of a convolution's input, the last axis of a linear layer's) by the
    sample, or by π in eval mode. Input channels that do not carry the group's channels are left as they are.
    """

    def __init__(self, group: ChannelGroup, probability: torch.Tensor | None = None,
                 alive: torch.Tensor | None = None) -> None:
        super().__init__()
        readers = [m for m in group.members if not m.produces and isinstance(m.module, (nn.Conv2d, nn.Linear))]
        device = readers[0].module.weight.device
        self.size = group.size
        self.probability = nn.Parameter(torch.ones(group.size, device=device) if probability is None
                                        else probability.detach().to(device, torch.float32).clone())
        self.register_buffer("alive", torch.ones(group.size, dtype=torch.bool, device=device) if alive is None
                             else alive.to(device).clone())
        self._sample: torch.Tensor | None = None
        for member in readers:
            width = member.module.weight.shape[1] * getattr(member.module, "groups", 1)
            # Input position → root channel, or `size` (a column of ones) for positions outside the group.
            position_root = torch.full((width,), group.size, dtype=torch.long, device=device)
            position_root[torch.as_tensor(member.idxs, device=device)] = torch.as_tensor(member.root_idxs,
                                                                                          device=device)
            conv = isinstance(member.module, nn.Conv2d)
            member.module.register_forward_pre_hook(_ReaderScale(self, position_root, conv))

    def expected(self) -> torch.Tensor:
        return self.probability * self.alive

    def new_forward(self) -> None:
        self._sample = None

    def per_position(self, batch: int, position_root: torch.Tensor) -> torch.Tensor:
        """The factor of each input position of a reader: [batch, positions] in training, [positions] in eval."""
        if not self.training:
            return torch.cat([self.expected(), self.probability.new_ones(1)]).index_select(0, position_root)
        if self._sample is None or self._sample.shape[0] != batch:
            self._sample = straight_through_sample(self.expected(), (batch, self.size))
        with_ones = torch.cat([self._sample, self._sample.new_ones(batch, 1)], dim=1)
        return with_ones.index_select(1, position_root)


class _ReaderScale:
    """The forward pre-hook of one reader of a `BernoulliChannelGate` (a class, so that model copies keep it)."""

    def __init__(self, gate: BernoulliChannelGate, position_root: torch.Tensor, conv: bool) -> None:
        self.gate, self.position_root, self.conv = gate, position_root, conv

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        inputs = args[0]
        factor = self.gate.per_position(inputs.shape[0], self.position_root)
        shape = _broadcast_shape(factor, inputs, self.conv, per_example=factor.dim() == 2)
        return (inputs * factor.reshape(shape), *args[1:])


def _broadcast_shape(factor: torch.Tensor, inputs: torch.Tensor, conv: bool, per_example: bool) -> list[int]:
    """The shape that lines `factor` up with the channel axis of `inputs` (axis 1 for a convolution, the last
    axis for a linear layer), with the batch axis when the factor is per example."""
    shape = [1] * inputs.dim()
    axis = 1 if conv else inputs.dim() - 1
    shape[axis] = factor.shape[-1]
    if per_example:
        shape[0] = factor.shape[0]
    return shape


def channel_gates(model: nn.Module) -> list[BernoulliChannelGate]:
    container = getattr(model, CHANNEL_GATES, None)
    return list(container.values()) if container is not None else []


def unit_gates(model: nn.Module) -> list[tuple[str, BernoulliUnitGate]]:
    """(unit name, gate) for every skip-unit of `model` that carries a Bernoulli gate."""
    return [(name, module.gate) for name, module in model.named_modules()
            if isinstance(module, (ResidualUnit, DenseUnit)) and isinstance(module.gate, BernoulliUnitGate)]


def _new_samples(model: nn.Module, args: tuple) -> None:
    for _, gate in unit_gates(model):
        gate.new_forward()
    for gate in channel_gates(model):
        gate.new_forward()


def draw_per_forward(model: nn.Module) -> None:
    """Make the stochastic gates of `model` draw new samples at every forward pass."""
    model.register_forward_pre_hook(_new_samples)


def _remove_hooks(module: nn.Module, kind) -> None:
    # Hooks are found by what they are rather than by handle: a handle of a copied model would point into the
    # hook table of the model it was copied from.
    hooks = module._forward_pre_hooks
    for key in [key for key, hook in hooks.items() if kind(hook)]:
        del hooks[key]


def remove_stochastic_gates(model: nn.Module) -> None:
    """Take every Bernoulli gate out of `model` (in place); the weights stay as they were under the gates."""
    _remove_hooks(model, lambda hook: hook is _new_samples)
    for module in model.modules():
        _remove_hooks(module, lambda hook: isinstance(hook, _ReaderScale))
    if hasattr(model, CHANNEL_GATES):
        delattr(model, CHANNEL_GATES)
    for module in model.modules():
        if parametrize.is_parametrized(module) and any(
                isinstance(p, FeatureRangeGate) and isinstance(p.unit_gate, BernoulliUnitGate)
                for chain in module.parametrizations.values() for p in chain):
            unparametrize(module, keep_value=False)
    for module in model.modules():
        if isinstance(module, (ResidualUnit, DenseUnit)) and isinstance(module.gate, BernoulliUnitGate):
            module.gate = nn.Identity()
