"""Tests of the Torch-Pruning adapters (compressor.passes.analysis.torch_pruning): the PadShortcut pruner, the
dependency graph's cached index mappings, and the per-layer MACs its trace records."""

from __future__ import annotations

import pytest
import torch

from compressor.counting import count_layer_macs
from compressor.models import create_model
from compressor.models.units import PadShortcut
from compressor.modules import copy_model
from compressor.passes.analysis.torch_pruning import PadShortcutPruner, dependency_graph
from group_lookups import groups_of


# ----------------------------------------------------------------------------------------------- dependency graph


def test_group_queries_see_the_index_mappings_a_prune_changed():
    model = create_model("densenet40").eval()
    groups = groups_of(model)
    pruned_once = copy_model(model)
    first, second = groups_of(pruned_once)[:2]
    first.prune([0, 1])
    after = [(item.dep.target.name, list(item.idxs)) for item in second.dependency_graph.get_pruning_group(
        second.members[0].module, second.tp_group[0].dep.handler, list(range(second.size)))]
    fresh = copy_model(model)
    fresh_first, fresh_second = groups_of(fresh)[:2]
    fresh_first.prune([0, 1])
    retraced = dependency_graph(fresh, model.input_shape)
    expected = [(item.dep.target.name, list(item.idxs)) for item in retraced.get_pruning_group(
        fresh.get_submodule(second.root), second.tp_group[0].dep.handler, list(range(second.size)))]
    assert after == expected
    assert len(groups) == len(groups_of(model))


@pytest.mark.parametrize("name", ["resnet20", "densenet40", "mobilenet_v1"])
def test_the_trace_records_the_layer_macs_a_forward_counts(name):
    model = create_model(name).eval()
    assert dependency_graph(model, model.input_shape).layer_macs == count_layer_macs(model, model.input_shape)


# ------------------------------------------------------------------------------------------ PadShortcut pruner


def test_pad_shortcut_pruner_removes_outputs_and_turns_removed_inputs_into_zeros():
    pruner = PadShortcutPruner()
    shortcut = PadShortcut(4, 8, stride=2)
    assert shortcut.sources == [-1, -1, 0, 1, 2, 3, -1, -1] and shortcut.is_padding
    pruner.prune_out_channels(shortcut, [0, 7])
    assert shortcut.sources == [-1, 0, 1, 2, 3, -1] and shortcut.is_padding
    assert pruner.get_out_channels(shortcut) == 6 and pruner.get_in_channels(shortcut) == 4
    pruner.prune_in_channels(shortcut, [1])
    assert shortcut.sources == [-1, 0, -1, 1, 2, -1] and not shortcut.is_padding
    x = torch.randn(2, 3, 4, 4)
    expected = torch.zeros(2, 6, 2, 2)
    expected[:, [1, 3, 4]] = x[:, :, ::2, ::2]
    assert torch.equal(shortcut(x), expected)
