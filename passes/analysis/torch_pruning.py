"""Torch-Pruning adapted to this compiler: the dependency graph that the channel analysis is built on.

Torch-Pruning's dependency graph is the field's library for finding coupled channels (through concatenations,
splits, depthwise and grouped convolutions, transposed convolutions and flatten→linear too). This module adds a
pruner for the option-A zero-padding shortcut `PadShortcut`, which Torch-Pruning cannot handle, a GroupNorm pruner
that removes whole groups, and a graph (`CouplingGraph`) that recomputes its index mappings only after a prune;
`dependency_graph` traces a model into it, recording the model's per-layer MACs on the way.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.dependency import index_mapping as tp_index_mapping

from compressor.counting import LayerMacs, recording_layer_macs
from compressor.errors import CompressorError
from compressor.models.units import PadShortcut
from compressor.modules import model_device


class PadShortcutPruner(tp.pruner.BasePruningFunc):
    """Torch-Pruning pruner for `PadShortcut`: its input and output channels are pruned independently.

    Removing an output channel drops what it copied; removing an input channel turns the output channel
    that copied it into a zero channel. The two are different functions, so Torch-Pruning does not couple
    the shortcut's input with its output (like a convolution, unlike an element-wise op).
    """

    TARGET_MODULES = (PadShortcut,)

    def prune_out_channels(self, layer: PadShortcut, idxs: Sequence[int]) -> PadShortcut:
        removed = set(idxs)
        layer.set_sources(layer.in_channels, [s for o, s in enumerate(layer.sources) if o not in removed])
        return layer

    def prune_in_channels(self, layer: PadShortcut, idxs: Sequence[int]) -> PadShortcut:
        removed = set(idxs)
        kept = [i for i in range(layer.in_channels) if i not in removed]
        renumbered = {old: new for new, old in enumerate(kept)}
        layer.set_sources(len(kept), [renumbered.get(s, -1) for s in layer.sources])
        return layer

    def get_out_channels(self, layer: PadShortcut) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: PadShortcut) -> int:
        return layer.in_channels


class GroupNormPruner(tp.pruner.function.GroupNormPruner):
    """Torch-Pruning's GroupNorm pruner, keeping the channels per group: whole groups go, so `num_groups` drops.

    Torch-Pruning leaves `num_groups` as it was, which regroups the remaining channels; the analysis only ever
    removes whole groups (see `_units`), and this keeps each remaining group's statistics what they were.
    """

    def prune_out_channels(self, layer: nn.GroupNorm, idxs: Sequence[int]) -> nn.GroupNorm:
        per_group = layer.num_channels // layer.num_groups
        if len(idxs) % per_group:
            raise ValueError(f"GroupNorm channels are removed a whole group of {per_group} at a time, not {len(idxs)}")
        layer.num_groups -= len(idxs) // per_group
        return super().prune_out_channels(layer, idxs)

    prune_in_channels = prune_out_channels


_update_index_mapping = tp_index_mapping.update_index_mapping


def _update_index_mapping_when_stale(graph: tp.DependencyGraph) -> None:
    if not getattr(graph, "index_mapping_current", False):
        _update_index_mapping(graph)


# Installed once for every graph; graphs other than `CouplingGraph` never set the flag and update as before.
tp_index_mapping.update_index_mapping = _update_index_mapping_when_stale


class CouplingGraph(tp.DependencyGraph):
    """Torch-Pruning's dependency graph, with its index mappings recomputed only after a prune.

    Torch-Pruning recomputes the index mapping of every concatenation, split and reshape at the start of
    each `get_pruning_group`, so enumerating the groups of a network of concatenations (a DenseNet, an
    Inception) costs roots × concatenations × their inputs², most of the analysis. The mappings follow from
    the layers' widths alone, which change only when a group of this graph prunes: such a group marks the
    mappings stale and the next query brings them up to date once.

    `layer_macs` is `count_layer_macs` of the traced model, recorded during the trace (see `dependency_graph`).
    """

    index_mapping_current = False
    layer_macs: dict[str, LayerMacs]

    def build_dependency(self, *args, **kwargs) -> CouplingGraph:
        self.index_mapping_current = False
        super().build_dependency(*args, **kwargs)
        self.index_mapping_current = True  # Torch-Pruning's build ends by updating them
        return self

    def get_pruning_group(self, module: nn.Module, pruning_fn, idxs: Sequence[int]) -> tp.dependency.Group:
        group = super().get_pruning_group(module, pruning_fn, idxs)
        self.index_mapping_current = True
        prune = group.prune

        def prune_and_mark_stale(*args, **kwargs):
            self.index_mapping_current = False
            try:
                return prune(*args, **kwargs)
            finally:
                self.index_mapping_current = False

        group.prune = prune_and_mark_stale
        return group


def dependency_graph(model: nn.Module, input_shape: Sequence[int]) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of `model` (traced once on a zero input), with our custom pruners.

    The trace is a forward of one sample in eval mode, so it also records the model's per-layer MACs
    (`graph.layer_macs`), which spares a caller that needs both a second forward.
    """
    example = torch.zeros(1, *input_shape, device=model_device(model))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), recording_layer_macs(model) as layer_macs:
            graph = CouplingGraph().build_dependency(
                model, example, customized_pruners={PadShortcut: PadShortcutPruner(), nn.GroupNorm: GroupNormPruner()},
                verbose=False,
            )
        graph.layer_macs = layer_macs
    except Exception as error:  # the trace runs the user's forward and Torch-Pruning's index mapping on it
        raise _analysis_error(error) from error
    finally:
        model.train(was_training)
    return graph


def _analysis_error(error: Exception) -> CompressorError:
    detail = " ".join(str(error).split())[:200] or type(error).__name__
    return CompressorError(f"Torch-Pruning cannot analyse this model's channel coupling: {detail}")
