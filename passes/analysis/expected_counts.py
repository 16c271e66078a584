"""Expected parameters and MACs of a model whose skip-units and channels are each present with a probability.

A method that keeps skip-unit u with probability θ_u and channel r of a channel group g with probability π_gr
(independent Bernoulli variables) needs the expected size of the sub-network it samples, as a differentiable
function of the probabilities. It is read off the same per-layer counts that predict the compiler's results
(`compressor.passes.analysis.counts.layer_counts`): a layer has `alive_out × alive_in` channel pairs, the active
counts are Poisson-binomial with means `Σ π`, and different variables are independent, so the expectation of
each layer's count is the product of the expected active counts, times the probability of every unit the layer
belongs to. That is exact, not an approximation, as long as a layer's inputs, outputs and enclosing units
depend on different variables, which holds for every layer of a skip-unit network (a hidden group lies inside
one unit; a dense unit's features are read by layers outside it).

- A residual unit's layers (its branch, and its pre-activation when only the branch reads it) exist with
  probability θ_u; a dense unit's layers too, and each layer that reads its features loses them with
  probability 1 − θ_u.
- A gated group's channels are lost with probability 1 − π_gr in every layer that produces or reads them.
- Everything else is counted as it is (the stem, the classifier, projection shortcuts).

With every probability at 1 the counts equal the model's counted parameters and MACs; at 0/1 values they equal
the compiler's prediction for the sub-network that removes the structures at 0.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from compressor.counting import count_layer_macs
from compressor.models.units import DenseUnit, ResidualUnit
from compressor.modules import model_device
from compressor.passes.analysis.counts import channel_multiplicity, layer_counts
from compressor.passes.analysis.groups import ChannelGroup
from compressor.passes.gates import last_layer, producing_group


def unit_layers(unit: nn.Module) -> list[nn.Module]:
    """The modules that disappear with a skip-unit: a residual unit's branch (and its pre-activation when only
    the branch reads it, as RemoveDeadSkipUnits does), or a dense unit's new-features layers."""
    if isinstance(unit, ResidualUnit):
        parts = [unit.branch] + ([] if unit.shortcut_uses_preact else [unit.preact])
        return [module for part in parts for module in part.modules()]
    if isinstance(unit, DenseUnit):
        return list(unit.new_features.modules())
    raise TypeError(f"skip-units are ResidualUnit or DenseUnit modules, not {type(unit).__name__}")


class ExpectedCounts(nn.Module):
    """`forward(unit_probabilities, channel_probabilities) -> (E[params], E[MACs])`, differentiable.

    `model` must be plain (no gates): its parameters and the MACs of one forward of `input_shape` are the
    counts at probability 1. `units` are its skip-units, in the order of `unit_probabilities` (a vector);
    `channel_groups` the gated groups, in the order of `channel_probabilities` (one vector per group, over its
    root channels); `all_groups` every group of the model's analysis, where dense units' readers are found.
    The constants live on the model's device.
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], units: Sequence[nn.Module],
                 channel_groups: Sequence[ChannelGroup], all_groups: Sequence[ChannelGroup] = ()) -> None:
        super().__init__()
        layers, others = layer_counts(model, count_layer_macs(model, tuple(input_shape)))
        device = model_device(model)
        keys = list(layers)
        row = {module: index for index, module in enumerate(keys)}
        sizes = [group.size for group in channel_groups]
        columns = sum(sizes) + len(units)
        lost_out = torch.zeros(len(keys), columns, dtype=torch.float64, device="cpu")
        lost_in = torch.zeros(len(keys), columns, dtype=torch.float64, device="cpu")

        def add(group: ChannelGroup, first_column: int, skip: set[nn.Module], per_root: bool) -> None:
            group_keys, multiplicity = channel_multiplicity(group)
            for (module, produces), counts in zip(group_keys, multiplicity):
                if module not in row or module in skip:
                    continue
                target = lost_out if produces else lost_in
                if per_root:
                    target[row[module], first_column:first_column + group.size] += counts.double()
                else:
                    target[row[module], first_column] += counts.sum().double()

        start = 0
        for group in channel_groups:
            add(group, start, set(), per_root=True)
            start += group.size
        containment = torch.zeros(len(keys), len(units), dtype=torch.bool, device="cpu")
        other_modules = list(others)
        other_containment = torch.zeros(len(other_modules), len(units), dtype=torch.bool, device="cpu")
        other_row = {module: index for index, module in enumerate(other_modules)}
        for index, unit in enumerate(units):
            inside = set(unit_layers(unit))
            for module in inside:
                if module in row:
                    containment[row[module], index] = True
                elif module in other_row:
                    other_containment[other_row[module], index] = True
            if isinstance(unit, DenseUnit):
                found = producing_group(all_groups, last_layer(unit.new_features))
                if found is None:
                    raise ValueError("a dense unit's features must be read by later layers to be counted")
                add(found[0], start + index, inside, per_root=False)

        def constant(values, dtype=torch.float64) -> torch.Tensor:
            return torch.as_tensor(values, dtype=dtype, device="cpu").to(device)

        self.sizes = sizes
        # The Conv/Linear/norm layers counted, in the order of the per-layer buffers (not submodules).
        self.counted_layers = keys
        self.register_buffer("lost_out", lost_out.to(device))
        self.register_buffer("lost_in", lost_in.to(device))
        self.register_buffer("containment", containment.to(device))
        self.register_buffer("other_containment", other_containment.to(device))
        self.register_buffer("other_params", constant([others[m] for m in other_modules]))
        self.register_buffer("out_total", constant([layers[m].out_total for m in keys]))
        self.register_buffer("in_total", constant([layers[m].in_total for m in keys]))
        self.register_buffer("per_pair", constant([layers[m].per_pair for m in keys]))
        self.register_buffer("bias", constant([float(layers[m].has_bias) for m in keys]))
        self.register_buffer("macs_per_pair", constant([layers[m].macs_per_pair for m in keys]))
        self.register_buffer("is_norm", constant([layers[m].kind == "norm" for m in keys], torch.bool))
        self.register_buffer("depthwise", constant([layers[m].reading == "depthwise" for m in keys], torch.bool))
        self.register_buffer("in_groups", constant([layers[m].groups if layers[m].reading == "grouped" else 1
                                                    for m in keys]))

    def alive_channels(self, unit_probabilities: torch.Tensor, channel_probabilities: Sequence[torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per layer of `counted_layers`: E[input channels] (all of them, a depthwise layer's equal to its
        outputs), E[output channels] and the probability that the layer is there at all (its units' θ)."""
        theta = unit_probabilities.to(torch.float64).reshape(-1)
        present = torch.cat([*(p.to(torch.float64).reshape(-1) for p in channel_probabilities), theta])
        absent = 1 - present
        alive_out = self.out_total - self.lost_out @ absent
        alive_in = torch.where(self.depthwise, alive_out, self.in_total - self.lost_in @ absent)
        layer_factor = torch.where(self.containment, theta, torch.ones_like(theta)).prod(dim=1)
        return alive_in, alive_out, layer_factor

    def forward(self, unit_probabilities: torch.Tensor, channel_probabilities: Sequence[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        theta = unit_probabilities.to(torch.float64).reshape(-1)
        alive_in, alive_out, layer_factor = self.alive_channels(unit_probabilities, channel_probabilities)
        alive_in = torch.where(self.depthwise, torch.ones_like(self.in_total), alive_in / self.in_groups)
        other_factor = torch.where(self.other_containment, theta, torch.ones_like(theta)).prod(dim=1)
        pairs = alive_out * alive_in
        params = torch.where(self.is_norm, self.per_pair * alive_out,
                             pairs * self.per_pair + self.bias * alive_out)
        macs = torch.where(self.is_norm, torch.zeros_like(pairs), pairs * self.macs_per_pair)
        expected_params = (layer_factor * params).sum() + (other_factor * self.other_params).sum()
        return expected_params, (layer_factor * macs).sum()
