"""SliceChannelsPass: physically remove channels that are zero wherever they are read.

Channels are removed a whole coupled group at a time (compressor.passes.analysis.groups, on Torch-Pruning's
dependency graph): a convolution's output channel goes with the BatchNorm after it, the input channel of every
reader, the matching channel of every tensor joined by a residual add, the index mapping of an option-A padding
shortcut, the offsets of a concatenation, a depthwise convolution's channel, and the block of features a channel
becomes after flatten→linear. A channel is removed only when it is exactly zero at every point where the group's
channels are produced (see `dead_channels`), so the output cannot change; slicing a stage's channel can make the
padding shortcut of the next stage copy a zero, so the pass repeats until nothing is left to remove. Every group
keeps at least one channel. Afterwards the pass checks the output on a random input.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from compressor.passes.base import Pass, PassResult, check_same_function
from compressor.modules import copy_model
from compressor.passes.analysis.groups import ChannelGroup, channel_groups
from compressor.passes.analysis.importance import dead_channels, reader_importance

class SliceChannelsPass(Pass):
    """Remove every provably zero channel group by group; `choose` decides which dead channels go."""

    name = "SliceChannels"

    def __init__(self, input_shape: Sequence[int] | None = None) -> None:
        self.input_shape = tuple(input_shape) if input_shape is not None else None

    def choose(self, group: ChannelGroup, dead: list[int]) -> list[int]:
        """The dead root channels to remove: all of them, but never a group's last channel (or unit of channels)."""
        if len(dead) < group.size:
            return dead
        keep = int(reader_importance(group).argmax())
        kept = set(torch.nonzero(group.units == group.units[keep]).flatten().tolist())
        return [c for c in dead if c not in kept]

    def run(self, model: nn.Module) -> PassResult:
        original = model
        model = copy_model(model).eval()
        input_shape = self.input_shape or tuple(getattr(model, "input_shape", None) or ())
        if not input_shape:
            raise ValueError(f"{self.name} needs the model's input shape (C,H,W): give input_shape")
        removed: dict[str, int] = {}
        while True:
            plan = [(group, self.choose(group, dead_channels(group))) for group in channel_groups(model, input_shape)]
            plan = [(group, channels) for group, channels in plan if channels]
            if not plan:
                break
            with torch.no_grad():
                for group, channels in plan:
                    group.prune(channels)
                    removed[group.root] = removed.get(group.root, 0) + len(channels)
        notes = {"removed_channels": removed}
        if removed:
            notes["max_abs_diff"] = check_same_function(copy_model(original), model, input_shape, self.name)
        return PassResult(model, modified=bool(removed), notes=notes)


def slice_channels(model: nn.Module, input_shape: Sequence[int] | None = None) -> nn.Module:
    """Functional form of `SliceChannelsPass`."""
    return SliceChannelsPass(input_shape).run(model).model
