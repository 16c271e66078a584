"""RoundChannelsPass: slice zero channels, but keep each group's width at a hardware-friendly multiple.

GPU kernels (tensor-core GEMMs, cuDNN convolutions) run fastest when channel counts are multiples of 8, 16 or
32, so a layer sliced to 61 channels can be slower than one kept at 64. This pass removes dead channels like
SliceChannels, except that it keeps just enough of them to round each group's remaining width up to a
multiple of `multiple`, choosing the ones whose readers weigh them most (the next most important channels).
Kept channels are still exactly zero, so the output is unchanged.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from compressor.passes.analysis.groups import ChannelGroup
from compressor.passes.analysis.importance import reader_importance
from compressor.passes.slice_channels import SliceChannelsPass


class RoundChannelsPass(SliceChannelsPass):
    """SliceChannels with every group's remaining width rounded up to a multiple of `multiple`."""

    name = "RoundChannels"

    def __init__(self, multiple: int, input_shape: Sequence[int] | None = None) -> None:
        if multiple < 1:
            raise ValueError(f"channel multiple must be at least 1, got {multiple}")
        super().__init__(input_shape)
        self.multiple = multiple

    def choose(self, group: ChannelGroup, dead: list[int]) -> list[int]:
        # A group whose channels go a unit at a time (GroupNorm groups, grouped convolutions) rounds to units too.
        multiple = math.lcm(self.multiple, group.unit_size)
        alive = group.size - len(dead)
        width = min(group.size, max(multiple, math.ceil(alive / multiple) * multiple))
        surplus = width - alive
        if surplus <= 0:
            return super().choose(group, dead)
        # Keep whole units (single channels unless channels are tied), the ones whose readers weigh them most.
        unit_importance = torch.zeros(int(group.units.max()) + 1, device="cpu").index_add_(
            0, group.units, reader_importance(group))
        units = group.units[torch.as_tensor(dead, dtype=torch.long, device="cpu")]
        by_unit = units.argsort(stable=True)
        ranked = by_unit[unit_importance[units[by_unit]].argsort(descending=True, stable=True)]
        ranked = [dead[i] for i in ranked.tolist()]
        kept = set(ranked[:surplus])
        return [c for c in dead if c not in kept]
