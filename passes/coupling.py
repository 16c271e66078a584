"""Channel coupling: which channels of which layers must be removed together, shared by methods and passes.

Removing output channel c of a convolution also removes input channel c of every layer that reads it, the
same channel of the BatchNorm in between, and, across a residual add, channel c of every tensor joined by
that add. Torch-Pruning's dependency graph is the field's library for finding these groups (through
concatenations, depthwise convolutions and flatten→linear too); this module builds it with one extension,
a pruner for the option-A zero-padding shortcut (`PadShortcut`) that Torch-Pruning cannot handle on its own,
and turns each Torch-Pruning group into a `ChannelGroup` that says:

- which members *produce* the group's channels and where a channel gate goes (`gate_points`): every
  BatchNorm, and every Conv/Linear whose output is not read only by BatchNorms of the same group;
- which channels are provably zero everywhere they are read (`dead_channels`), i.e. zero at every gate
  point and not copied by a shortcut from a live channel, so slicing them away cannot change the output;
- what a model's parameters and MACs become when given channels are removed (`predict_counts`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.dependency import index_mapping as tp_index_mapping
from torch.nn.utils import parametrize

from compressor.counting import NORM_TYPES, LayerMacs, count_layer_macs, recording_layer_macs
from compressor.errors import CompressorError
from compressor.models.units import PadShortcut
from compressor.passes.base import copy_model, unparametrize

_SLICEABLE_TYPES = (nn.Conv2d, nn.Linear, *NORM_TYPES, PadShortcut)


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


@dataclass
class GroupMember:
    """One layer's share of a channel group: its channel indices along the pruned dimension."""

    name: str
    module: nn.Module
    produces: bool  # the group's channels are this layer's outputs (else its inputs)
    idxs: list[int]
    root_idxs: list[int]
    gate_point: bool = False


@dataclass
class ChannelGroup:
    """Channels that can only be removed together; channel r of the group is channel r of its root layer."""

    root: str
    size: int
    members: list[GroupMember]
    dependency_graph: tp.DependencyGraph = field(repr=False)
    tp_group: tp.dependency.Group = field(repr=False)
    traced: nn.Module = field(repr=False)  # the model the graph was traced on (a plain copy of a gated one)
    prunable: bool = True  # False when traced on a copy: the analysis is then read-only

    def node(self, name: str) -> tp.dependency.Node:
        """The dependency-graph node of the layer called `name`."""
        return self.dependency_graph.module2node[self.traced.get_submodule(name)]

    @property
    def gate_points(self) -> list[GroupMember]:
        return [m for m in self.members if m.gate_point]

    def member_channels(self, member: GroupMember, root_channels: Iterable[int]) -> list[int]:
        """The indices in `member` that carry the group's root channels `root_channels`."""
        wanted = set(root_channels)
        return [i for i, r in zip(member.idxs, member.root_idxs) if r in wanted]

    def prune(self, root_channels: Sequence[int]) -> None:
        """Remove `root_channels` from every member, in place (Torch-Pruning does the surgery)."""
        if not self.prunable:
            raise ValueError("channels of a gated model cannot be removed: fold its gates first")
        root_member = self.members[0]
        handler = self.tp_group[0].dep.handler
        self.dependency_graph.get_pruning_group(root_member.module, handler, sorted(root_channels)).prune(
            record_history=False
        )


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
    example = torch.zeros(1, *input_shape)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), recording_layer_macs(model) as layer_macs:
            graph = CouplingGraph().build_dependency(
                model, example, customized_pruners={PadShortcut: PadShortcutPruner()}, verbose=False
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


def _plain_copy(model: nn.Module) -> nn.Module:
    # Gated or masked layers compute their weights from a parametrization, which tracing would take for
    # extra inputs of the layer; a copy with plain weights has the same structure and traces cleanly.
    plain = copy_model(model)
    for module in plain.modules():
        if parametrize.is_parametrized(module):
            unparametrize(module)
    return plain


def _touches_output(graph: tp.DependencyGraph, group: tp.dependency.Group) -> bool:
    # A layer whose output nobody reads produces the model's output: its channels are the model's interface.
    return any(
        not dep.target.outputs and dep.target.type != tp.ops.OPTYPE.PARAMETER
        and not graph.is_in_channel_pruning_fn(dep.handler)
        for dep, _ in group
    )


def channel_groups(model: nn.Module, input_shape: Sequence[int]) -> list[ChannelGroup]:
    """Every group of coupled channels that could be removed without changing the model's output width.

    Groups that reach the model's output (the classifier's logits) are left out, and so are groups with a
    member Torch-Pruning handles but this compiler does not verify (LayerNorm, grouped non-depthwise convs…).
    """
    parametrized = any(parametrize.is_parametrized(module) for module in model.modules())
    traced = _plain_copy(model) if parametrized else model
    graph = dependency_graph(traced, input_shape)
    names = {module: name for name, module in traced.named_modules()}
    groups = []
    # PadShortcut is a root too: once every branch of a stage is removed, the shortcut alone produces the
    # stage's channels, and its zero-padded ones must still be found.
    try:
        tp_groups = list(graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear, PadShortcut)))
    except Exception as error:  # Torch-Pruning's index mapping over ops it half supports (recurrent layers)
        raise _analysis_error(error) from error
    for tp_group in tp_groups:
        if _touches_output(graph, tp_group):
            continue
        members = []
        supported = True
        for item in tp_group:
            node = item.dep.target
            if node.type in _ELEMENTWISE_TYPES:
                if not _keeps_zero(node):
                    supported = False
                    break
                continue
            module = node.module
            # A bare nn.Parameter used in the forward (F.conv2d(x, self.w), x + self.bias) is outside every
            # layer this compiler slices; so are LayerNorm, grouped convolutions and the like.
            if not isinstance(module, _SLICEABLE_TYPES) or _is_grouped(module):
                supported = False
                break
            members.append(GroupMember(
                name=names[module],
                module=model.get_submodule(names[module]),
                produces=graph.is_out_channel_pruning_fn(item.dep.handler),
                idxs=list(item.idxs),
                root_idxs=list(item.root_idxs),
            ))
        if not supported or not members:
            continue
        _mark_gate_points(graph, members, traced)
        groups.append(ChannelGroup(members[0].name, len(members[0].idxs), members, graph, tp_group, traced, traced is model))
    return groups


_ELEMENTWISE_TYPES = {
    tp.ops.OPTYPE.ELEMENTWISE, tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.RESHAPE,
    tp.ops.OPTYPE.SLICE, tp.ops.OPTYPE.EXPAND, tp.ops.OPTYPE.UNBIND,
}


def _is_grouped(module: nn.Module) -> bool:
    """A grouped convolution other than a depthwise one (groups = in = out), which slicing does not support."""
    return isinstance(module, nn.Conv2d) and module.groups != 1 and not is_depthwise(module)


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels > 1


# Element-wise ops (autograd names without "Backward<n>") after which a channel that is zero everywhere is still
# zero, channel by channel. Anything else (sigmoid, softmax, adding a constant, a mean across channels) would
# turn a gated-off channel into something its readers see, so a group passing through it is not sliced.
_ZERO_KEEPING_OPS = {
    "Relu", "Hardtanh", "LeakyRelu", "Elu", "Silu", "Gelu", "Tanh", "Hardswish", "Mish", "Mul", "Div",
    "AvgPool2D", "MaxPool2DWithIndices", "AdaptiveAvgPool2D", "AdaptiveMaxPool2D", "UpsampleNearest2D",
    "UpsampleBilinear2D", "View", "Reshape", "UnsafeView", "ReshapeAlias", "Clone", "Cat", "Split",
    "SplitWithSizes", "Unbind", "Expand", "Add", "Sub", "Mean", "Sum", "Slice", "ConstantPadNd",
}


def _keeps_zero(node: tp.dependency.Node) -> bool:
    grad_fn = node.grad_fn
    if grad_fn is None:
        return node.type in (tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.RESHAPE)
    if not node.inputs:
        # Computed from parameters alone (the transpose of a Linear's weight): it shapes an operand, and the
        # op that combines that operand with the channels is the one checked.
        return True
    op = re.sub(r"Backward\d*$", "", grad_fn.name())
    if op not in _ZERO_KEEPING_OPS:
        return False
    if op in ("Add", "Sub"):
        # Every operand must come from the network's layers: x + 1, x + (a parameter), or x + (the model's
        # input, which is no node) would lift a zero channel.
        return len(node.inputs) >= 2 and all(
            operand.inputs or operand.type not in _ELEMENTWISE_TYPES | {tp.ops.OPTYPE.PARAMETER}
            for operand in node.inputs)
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
    rank = len(sizes) if sizes is not None else 4
    if op in ("Mean", "Sum", "Slice"):
        dims = getattr(grad_fn, "_saved_dim", ())
        dims = dims if isinstance(dims, (tuple, list)) else (dims,)
        return all(int(d) % rank != 1 for d in dims)  # reducing or striding across channels mixes them
    if op == "ConstantPadNd":
        pad = list(getattr(grad_fn, "_saved_pad", ()))
        channel_pair = pad[2 * (rank - 2): 2 * (rank - 1)]  # F.pad lists pairs from the last dimension back
        return not any(channel_pair)
    return True


def _mark_gate_points(graph: tp.DependencyGraph, members: list[GroupMember], traced: nn.Module) -> None:
    # A Conv/Linear read only by BatchNorms of its own group does not need a gate: those BatchNorms are gated
    # and every later reader sees their (zeroed) output. Anything else that produces the channels does.
    group_norms = {traced.get_submodule(m.name) for m in members if isinstance(m.module, NORM_TYPES)}
    for member in members:
        if not member.produces or isinstance(member.module, PadShortcut):
            continue
        if isinstance(member.module, NORM_TYPES):
            member.gate_point = True
            continue
        readers = graph.module2node[traced.get_submodule(member.name)].outputs
        member.gate_point = not readers or not all(node.module in group_norms for node in readers)


def zero_channels(module: nn.Module, idxs: Sequence[int]) -> torch.Tensor:
    """For each of `idxs`, whether `module` outputs exactly zero on that channel whatever its input.

    True only for what the weights prove: a BatchNorm with zero scale and shift, a Conv/Linear row of zero
    weights and bias, a padding shortcut's zero channel. Other layer types prove nothing.
    """
    idxs = list(idxs)
    index = torch.as_tensor(idxs, dtype=torch.long)
    if isinstance(module, PadShortcut):
        return torch.as_tensor([module.sources[i] < 0 for i in idxs], dtype=torch.bool)
    if isinstance(module, NORM_TYPES):
        if not module.affine:
            return torch.zeros(len(idxs), dtype=torch.bool)
        return (module.weight.detach()[index] == 0) & (module.bias.detach()[index] == 0)
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        return torch.zeros(len(idxs), dtype=torch.bool)
    weight = module.weight.detach()[index].flatten(1)
    zero = (weight == 0).all(dim=1)
    if module.bias is not None:
        zero &= module.bias.detach()[index] == 0
    return zero


def dead_channels(group: ChannelGroup) -> list[int]:
    """Root channels of `group` that are exactly zero wherever a later layer reads them."""
    dead = torch.ones(group.size, dtype=torch.bool)
    for member in group.members:
        if member.gate_point or (member.produces and isinstance(member.module, PadShortcut)):
            zero = zero_channels(member.module, member.idxs)
            alive_roots = torch.as_tensor(member.root_idxs, dtype=torch.long)[~zero]
            dead[alive_roots] = False
    return torch.nonzero(dead).flatten().tolist()


def realizable(groups: Sequence[ChannelGroup], plan: Sequence[Iterable[int]]) -> list[list[int]]:
    """`plan` (root channels to remove per group) less what slicing could not remove.

    A channel that an option-A shortcut copies from a channel another group keeps stays alive however it is
    gated, so it is dropped from the plan; the check repeats because shortcuts chain stage to stage.
    """
    removed = [set(channels) for channels in plan]
    copied_from: dict[nn.Module, tuple[int, GroupMember]] = {}
    copies: list[tuple[int, GroupMember]] = []
    # Only the shortcuts' members can drop a channel, so they are collected once rather than searched for in
    # every group on every repetition (methods call this once per step of their search).
    for index, group in enumerate(groups):
        for member in group.members:
            if isinstance(member.module, PadShortcut):
                if member.produces:
                    copies.append((index, member))
                else:
                    copied_from[member.module] = (index, member)
    copies = [(index, member) for index, member in copies if member.module in copied_from]
    changed = bool(copies)
    while changed:
        changed = False
        for index, member in copies:
            channels = removed[index]
            source_index, source_member = copied_from[member.module]
            source_root = dict(zip(source_member.idxs, source_member.root_idxs))
            for idx, root in zip(member.idxs, member.root_idxs):
                source = member.module.sources[idx]
                if root in channels and source >= 0 and source_root.get(source) not in removed[source_index]:
                    channels.discard(root)
                    changed = True
    return [sorted(channels) for channels in removed]


def reader_importance(group: ChannelGroup) -> torch.Tensor:
    """L1 norm of the weights that read each root channel (the layers consuming the group's channels)."""
    importance = torch.zeros(group.size)
    for member in group.members:
        module = member.module
        if member.produces or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        weight = module.weight.detach().abs().transpose(0, 1).flatten(1).sum(dim=1)
        importance.index_add_(0, torch.as_tensor(member.root_idxs), weight[torch.as_tensor(member.idxs)])
    return importance


def predict_counts(
    model: nn.Module,
    input_shape: Sequence[int],
    groups: Sequence[ChannelGroup],
    removed_channels: Sequence[Iterable[int]],
    removed_modules: Iterable[nn.Module] = (),
    layer_macs: dict | None = None,
) -> tuple[int, int]:
    """(parameters, MACs) of `model` after removing `removed_channels[i]` (root indices) of `groups[i]`.

    `removed_modules` are layers that disappear entirely (a removed unit's branch). The prediction is
    analytic: every Conv/Linear/BatchNorm keeps `alive_out × alive_in` of its weights and MACs.
    `layer_macs` (from `count_layer_macs`) saves a forward pass; to predict many plans on one model, build
    a `CountPredictor` once instead.
    """
    return CountPredictor(model, input_shape, groups, removed_modules, layer_macs)(removed_channels)


class CountPredictor:
    """`predict_counts` for many plans on one model and one list of groups, as a search asks for them.

    The model is walked once; each call then recounts only the groups whose channels differ from the
    previous call's and the layers those groups touch, so a search that moves one group per step pays for
    that group alone. The model's shapes must not change while the predictor is in use.
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], groups: Sequence[ChannelGroup],
                 removed_modules: Iterable[nn.Module] = (), layer_macs: dict | None = None) -> None:
        gone = set(removed_modules)
        layer_macs = layer_macs if layer_macs is not None else count_layer_macs(model, tuple(input_shape))
        names = {module: name for name, module in model.named_modules()}
        self._fixed_params = 0
        self._layers: dict[nn.Module, tuple] = {}
        for module in model.modules():
            if isinstance(module, parametrize.ParametrizationList) or module in gone:
                continue  # a gated layer's weights are counted with the layer, at their gated shape
            direct = [p for p in module.parameters(recurse=False)]
            if parametrize.is_parametrized(module):
                direct += [getattr(module, name) for name in module.parametrizations]
            if not direct and not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                out_total = module.weight.shape[0]
                # A depthwise filter reads one channel; any other grouped convolution is never sliced (see
                # _is_grouped), so each filter keeps reading its weight.shape[1] channels.
                grouped = isinstance(module, nn.Conv2d) and module.groups > 1
                in_total = module.weight.shape[1] * (module.groups if isinstance(module, nn.Conv2d) else 1)
                layer = layer_macs.get(names[module])
                # Layers the forward never calls do no work.
                macs_per_pair = layer.macs // (out_total * module.weight.shape[1]) if layer is not None else 0
                self._layers[module] = ("layer", out_total, in_total, module.weight.shape[1] if grouped else None,
                                        module.weight[0, 0].numel(), module.bias is not None, macs_per_pair)
            elif isinstance(module, NORM_TYPES):
                self._layers[module] = ("norm", sum(p.numel() for p in direct), module.num_features)
            else:
                self._fixed_params += sum(p.numel() for p in direct)
        self._lost = {(module, produces): 0 for module in self._layers for produces in (True, False)}
        self._terms = {module: self._term(module) for module in self._layers}
        self._params = self._fixed_params + sum(params for params, _ in self._terms.values())
        self._macs = sum(macs for _, macs in self._terms.values())
        # Per group: the (layer, produces) pairs it touches and, for each, how many of its indices carry each
        # root channel (a member may list a root channel more than once: the features after flatten→linear).
        self._groups = []
        for group in groups:
            keys = list(dict.fromkeys((m.module, m.produces) for m in group.members))
            rows = {key: row for row, key in enumerate(keys)}
            multiplicity = torch.zeros(len(keys), group.size, dtype=torch.long)
            for member in group.members:
                roots = torch.as_tensor(member.root_idxs, dtype=torch.long)
                multiplicity[rows[(member.module, member.produces)]].index_add_(
                    0, roots, torch.ones_like(roots))
            self._groups.append((keys, multiplicity))
        self._plan: list[frozenset[int]] = [frozenset() for _ in groups]
        self._counts: list[list[int]] = [[0] * len(keys) for keys, _ in self._groups]

    def _term(self, module: nn.Module) -> tuple[int, int]:
        """(parameters, MACs) of one layer at its current lost output and input channels."""
        layer = self._layers[module]
        lost_out = self._lost[(module, True)]
        if layer[0] == "norm":
            _, total, features = layer
            return total // features * (features - lost_out), 0
        _, out_total, in_total, grouped_in, per_pair, has_bias, macs_per_pair = layer
        alive_out = out_total - lost_out
        alive_in = grouped_in if grouped_in is not None else in_total - self._lost[(module, False)]
        params = alive_out * alive_in * per_pair + (alive_out if has_bias else 0)
        return params, macs_per_pair * alive_out * alive_in

    def __call__(self, removed_channels: Sequence[Iterable[int]]) -> tuple[int, int]:
        touched = set()
        plan = list(removed_channels)
        for index in range(len(self._groups)):
            # A group the plan does not reach loses nothing.
            channels = frozenset(plan[index]) if index < len(plan) else frozenset()
            if channels == self._plan[index]:
                continue
            keys, multiplicity = self._groups[index]
            # Channels outside the group carry nothing, as in `ChannelGroup.member_channels`.
            inside = sorted(c for c in channels if 0 <= c < multiplicity.shape[1])
            counts = multiplicity[:, inside].sum(dim=1).tolist() if inside else [0] * len(keys)
            for key, old, new in zip(keys, self._counts[index], counts):
                if key in self._lost and old != new:
                    self._lost[key] += new - old
                    touched.add(key[0])
            self._plan[index], self._counts[index] = channels, counts
        for module in touched:
            params, macs = self._term(module)
            old_params, old_macs = self._terms[module]
            self._params += params - old_params
            self._macs += macs - old_macs
            self._terms[module] = (params, macs)
        return self._params, self._macs
