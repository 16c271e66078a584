"""The Bernoulli method's removal of dead structures while it trains: the dead skip-units and channels are compiled
away by the compiler's passes (a dead unit through a unit gate of 0 and RemoveDeadSkipUnits, dead channels through
channel gates of 0 and SliceChannels), the model is rebuilt in place at its new shapes, and what the survivors
carry is sliced as they were: their probabilities, alive flags and Adam state, and the weights' optimizer state,
whose positions are found by compiling a probe of the model whose weights are their own indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from compressor.methods.bernoulli.gates import remove_stochastic_gates
from compressor.modules import copy_model
from compressor.passes.analysis.groups import analyse_channels
from compressor.passes.gates import gate_group, gate_unit, units_of
from compressor.passes.pipeline import compile_model
from compressor.structure import take_shape_of

# A probe weight is its flat index times 2^-24: exact in float32 for tensors of up to 2^24 values, so the
# compiled probe says, value by value, which entry of the old tensor each new entry is.
_PROBE_SCALE = 2.0 ** -24
_PROBE_LIMIT = 2 ** 24


@dataclass
class Survivors:
    """What a removal leaves gated: the skip-units and channel-group roots, each one's probabilities, alive flags
    and Adam state (the probabilities' optimizer's, keyed like the gates), and what went."""

    units: list[str]
    roots: list[str]
    probabilities: dict[str, torch.Tensor]
    alive: dict[str, torch.Tensor]
    adam_state: dict[str, dict]
    dead_units: list[str]
    channels_removed: int


def compile_away_dead(model: nn.Module, input_shape: tuple[int, ...], units: list[str], groups: list[str],
                      gates: dict[str, nn.Module], epsilon: float, adam: torch.optim.Optimizer | None,
                      optimizer_state: dict[str, dict] | None) -> Survivors:
    """Compile the dead structures of `model` away and rebuild it in place, without its stochastic gates.

    `units` and `groups` are the gated skip-units and channel-group roots, `gates` their gates by name, `adam` the
    optimizer of their probabilities; `optimizer_state` (the weights' optimizer state by parameter name, or None)
    is sliced as the weights are.
    """
    plain = copy_model(model)
    remove_stochastic_gates(plain)
    owner = {root: name for name, _ in units_of(plain) for root in groups if root.startswith(name + ".")}
    dead_units = {name for name in units if not bool(gates[name].alive)}
    # A unit whose hidden channels all died goes as a whole; a layer outside units keeps its best channel.
    for root in groups:
        gate = gates[root]
        if not bool(gate.alive.any()):
            if root in owner:
                dead_units.add(owner[root])
            else:
                best = int(gate.probability.argmax())
                with torch.no_grad():
                    gate.alive[best] = True
                    gate.probability[best] = max(float(gate.probability[best]), epsilon)
    adam_state = {key: adam.state.get(gate.probability, {}) for key, gate in gates.items()} if adam else {}
    values = {key: gate.probability.detach().clone() for key, gate in gates.items()}
    flags = {key: gate.alive.clone() for key, gate in gates.items()}
    gone = lambda root: any(root.startswith(name + ".") for name in dead_units)  # noqa: E731
    channels_removed = sum(int((~flags[root]).sum()) for root in groups if not gone(root))

    old_shapes = {name: parameter.shape for name, parameter in plain.named_parameters()}
    analysis = analyse_channels(plain, input_shape)
    by_root = {group.root: group for group in analysis.groups}
    for name in sorted(dead_units):
        gate_unit(plain, plain.get_submodule(name), 0.0, input_shape, groups=analysis.groups)
    for root in groups:
        if not gone(root) and not bool(flags[root].all()):
            gate_group(by_root[root], flags[root].float().cpu())
    compiled = compile_model(plain, input_shape).model
    positions = _surviving_positions(plain, compiled, input_shape)
    if optimizer_state is not None:
        _carry_momentum(optimizer_state, compiled, positions)

    remove_stochastic_gates(model)
    take_shape_of(model, compiled)
    kept_units = [name for name in units if name not in dead_units]
    roots, kept_values, kept_flags = [], {}, {}
    for root in groups:
        if gone(root):
            continue
        index = positions.get(root + ".weight")
        if index is None:
            kept = torch.nonzero(flags[root]).flatten()
        else:
            # The old output channel of each new one, read off its first value's old flat index; a transposed
            # convolution keeps its output channels in the weight's second dimension.
            shape = old_shapes[root + ".weight"]
            dim = 1 if isinstance(plain.get_submodule(root), nn.ConvTranspose2d) else 0
            first = index.movedim(dim, 0).reshape(index.shape[dim], -1)[:, 0]
            kept = (first // shape[dim + 1:].numel() % shape[dim]).to(flags[root].device)
        roots.append(root)
        kept_values[root], kept_flags[root] = values[root][kept], flags[root][kept]
        adam_state[root] = {k: (v[kept.to(v.device)] if isinstance(v, torch.Tensor) and v.dim() else v)
                            for k, v in adam_state.get(root, {}).items()}
    for name in kept_units:
        kept_values[name], kept_flags[name] = values[name], flags[name]
    return Survivors(kept_units, roots, kept_values, kept_flags, adam_state, sorted(dead_units), channels_removed)


def fix_survivors(gates: list[nn.Module]) -> None:
    """Every survivor at 1, every dead structure at 0: the deterministic network."""
    for gate in gates:
        gate.probability.copy_(gate.alive.float())


def _surviving_positions(gated: nn.Module, compiled: nn.Module, input_shape: tuple[int, ...]
                         ) -> dict[str, torch.Tensor]:
    """Per parameter of `compiled` (the compiled `gated`), the flat index in the tensor of `gated` that each of
    its values came from, found by compiling a copy whose weights are their own indices.

    Parameters whose shape the probe does not reproduce (a channel that is zero in the model's own weights, which
    the probe's weights do not share) are left out, as are tensors too large to index exactly.
    """
    probe = copy_model(gated)
    with torch.no_grad():
        for parameter in probe.parameters():
            if parameter.numel() <= _PROBE_LIMIT:
                parameter.copy_((torch.arange(parameter.numel(), device=parameter.device, dtype=torch.float32) + 1)
                                .mul_(_PROBE_SCALE).reshape(parameter.shape))
    compiled_probe = compile_model(probe, input_shape).model
    probes = dict(compiled_probe.named_parameters())
    positions = {}
    for name, parameter in compiled.named_parameters():
        found = probes.get(name)
        if found is None or found.shape != parameter.shape:
            continue
        index = torch.round(found.detach() / _PROBE_SCALE).long() - 1
        if bool((index >= 0).all()):
            positions[name] = index
    return positions


def _carry_momentum(optimizer_state: dict[str, dict], compiled: nn.Module, positions: dict[str, torch.Tensor]) -> None:
    """Slice each surviving parameter's optimizer state as the parameter was sliced; drop the rest."""
    shapes = {name: parameter.shape for name, parameter in compiled.named_parameters()}
    for name in list(optimizer_state):
        index = positions.get(name)
        if name not in shapes or index is None:
            del optimizer_state[name]
            continue
        optimizer_state[name] = {
            key: (value.reshape(-1)[index.to(value.device)] if isinstance(value, torch.Tensor) and value.dim() else value)
            for key, value in optimizer_state[name].items()}
