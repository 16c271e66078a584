"""Channel coupling: which channels of which layers must be removed together, shared by methods and passes.

Removing output channel c of a convolution also removes input channel c of every layer that reads it, the
same channel of the norm in between, and, across a residual add or a product, channel c of every tensor joined
by it. Torch-Pruning's dependency graph is the field's library for finding these groups (through
concatenations, splits, depthwise and grouped convolutions, transposed convolutions and flatten→linear too);
this module builds it with two extensions (a pruner for the option-A zero-padding shortcut `PadShortcut`,
which Torch-Pruning cannot handle, and a GroupNorm pruner that removes whole groups), asks it for one root layer
at a time, and turns each Torch-Pruning group into a `ChannelGroup` that says:

- which members *produce* the group's channels and where a channel gate goes (`gate_points`): every norm, and
  every Conv/Linear whose output is not read only by norms of the same group and whose gate is needed to zero
  the channels (not the SE layer of `x * sigmoid(fc(x))`);
- which channels are provably zero everywhere they are read (`dead_channels`, by zero propagation:
  compressor.passes.zero_flow), so slicing them away cannot change the output;
- which channels can only go together (`units`): a GroupNorm's group, the same offset in every group of a
  grouped convolution or every part of an equal split;
- what a model's parameters and MACs become when given channels are removed (`predict_counts`).

The analysis keeps its per-channel bookkeeping on the CPU, wherever the model is and whatever torch's default
device, and moves indices to a layer's device where they meet its weights.

`analyse_channels` also lists the groups it leaves whole (`LeftWhole`) with the layer or op responsible, so a
structured method can say why it cannot remove more.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.dependency import index_mapping as tp_index_mapping
from torch.nn.utils import parametrize

from compressor.counting import LayerMacs, count_layer_macs, output_axis, recording_layer_macs
from compressor.errors import CompressorError
from compressor.models.units import PadShortcut
from compressor.modules import copy_model, unparametrize, model_device
from compressor.passes.zero_flow import NORM_LAYERS, WEIGHT_LAYERS, ZeroFlow, op_name


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
    flow: ZeroFlow | None = field(default=None, repr=False)
    units: torch.Tensor | None = field(default=None, repr=False)  # per root channel, the unit it is removed with

    @functools.cached_property
    def unit_size(self) -> int:
        """Channels per unit: 1 unless a GroupNorm, a grouped convolution or an equal split ties channels."""
        return self.size // (int(self.units.max()) + 1) if self.units is not None and self.size else 1

    def whole_units(self, channels: Iterable[int]) -> list[int]:
        """The channels among `channels` whose whole unit is among them (only those can be removed)."""
        if self.units is None or self.unit_size == 1:
            return sorted(set(channels))
        chosen = torch.zeros(self.size, dtype=torch.bool, device="cpu")
        chosen[torch.as_tensor(sorted(set(channels)), dtype=torch.long, device="cpu")] = True
        count = int(self.units.max()) + 1
        total = torch.bincount(self.units, minlength=count)
        picked = torch.bincount(self.units[chosen], minlength=count)
        return torch.nonzero(chosen & (picked == total)[self.units]).flatten().tolist()

    def unit_order(self, scores: torch.Tensor) -> list[int]:
        """Root channels, a unit at a time, units by increasing mean score, channels by score within a unit."""
        if self.units is None or self.unit_size == 1:
            return scores.argsort().tolist()
        count = int(self.units.max()) + 1
        unit_score = (torch.zeros(count, device="cpu").index_add_(0, self.units, scores.float())
                      / torch.bincount(self.units))
        # Sorted by the last key first: score, then unit (so a unit's channels stay together), then unit score.
        order = scores.float().argsort(stable=True)
        order = order[self.units[order].argsort(stable=True)]
        return order[unit_score[self.units[order]].argsort(stable=True)].tolist()

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


@dataclass
class LeftWhole:
    """Channels the analysis leaves whole: the layer producing them, and the layer or op that keeps them."""

    layer: str
    reason: str


@dataclass
class ChannelAnalysis:
    """The model's removable channel groups, and the layers whose channels must stay, with the reason."""

    groups: list[ChannelGroup]
    left_whole: list[LeftWhole]

    def explain(self, limit: int = 3) -> str:
        """The first reasons channels were left whole, for a one-line message."""
        reasons = [f"{item.layer}: {item.reason}" for item in self.left_whole[:limit]]
        more = len(self.left_whole) - limit
        return "; ".join(reasons) + (f"; and {more} more" if more > 0 else "")


def channel_groups(model: nn.Module, input_shape: Sequence[int]) -> list[ChannelGroup]:
    """Every group of coupled channels that could be removed without changing the model's output width."""
    return analyse_channels(model, input_shape).groups


def analyse_channels(model: nn.Module, input_shape: Sequence[int]) -> ChannelAnalysis:
    """The groups of coupled channels that can be removed, and for every other group the reason it cannot.

    Groups that reach the model's output (the classifier's logits) are the model's interface and are left out
    silently; groups with a member this compiler does not slice (LayerNorm, a bare parameter, an op that mixes
    channels) are listed in `left_whole` with the layer or op responsible.
    """
    parametrized = any(parametrize.is_parametrized(module) for module in model.modules())
    traced = _plain_copy(model) if parametrized else model
    graph = dependency_graph(traced, input_shape)
    names = {module: name for name, module in traced.named_modules()}
    describe = _describer(names)
    groups: list[ChannelGroup] = []
    left_whole: list[LeftWhole] = []
    for root, tp_group, error in _groups_by_root(graph):
        if error is not None:
            left_whole.append(LeftWhole(names.get(root, type(root).__name__), error))
            continue
        if _touches_output(graph, tp_group):
            continue
        size = len(tp_group[0].idxs)
        flow = ZeroFlow(list(tp_group), graph, size, names, describe)
        problem = flow.problem or _unequal_split(tp_group, names[root])
        if problem is None:
            members = _members(tp_group, graph, names, model)
            group = ChannelGroup(members[0].name, size, members, graph, tp_group, traced, traced is model, flow,
                                 _units(members, tp_group, size))
            problem = _mark_gate_points(group, graph, traced)
        if problem is not None:
            left_whole.append(LeftWhole(names[root], problem))
            continue
        groups.append(group)
    splitting = [group for group in groups if _splits(group)]
    if splitting:
        refused = _splits_that_do_not_follow(traced, input_shape, splitting)
        groups = [group for group in groups if group.root not in refused]
        left_whole += [LeftWhole(root, reason) for root, reason in refused.items()]
    return ChannelAnalysis(groups, left_whole)


def _splits(group: ChannelGroup) -> bool:
    return any(True for _ in _split_sizes(group.tp_group))


def _splits_that_do_not_follow(traced: nn.Module, input_shape: Sequence[int],
                               groups: list[ChannelGroup]) -> dict[str, str]:
    """Groups whose channels pass through a split whose sizes the forward fixes, with the reason.

    `torch.chunk(x, 2)` splits whatever width it gets, `torch.split(x, [16, 16])` does not, and the autograd
    graph cannot tell them apart. So a copy of the model loses one unit of every such group and runs: a forward
    that still works proves the splits follow. Only when it fails is each group tried alone, to name it.
    """
    def forward_fails(tried: list[ChannelGroup]) -> bool:
        copy = copy_model(traced).eval()
        graph = dependency_graph(copy, input_shape)
        try:
            with torch.no_grad():
                for group in tried:
                    root = copy.get_submodule(group.root)
                    handler = next(item.dep.handler for item in group.tp_group if item.dep.target.module is
                                   group.traced.get_submodule(group.root))
                    unit = torch.nonzero(group.units == group.units[0]).flatten().tolist()
                    pruner = graph.get_pruner_of_module(root)
                    fn = pruner.prune_out_channels if graph.is_out_channel_pruning_fn(handler) else pruner.prune_in_channels
                    graph.get_pruning_group(root, fn, unit).prune(record_history=False)
                copy(torch.zeros(1, *input_shape, device=model_device(copy)))
        except Exception:  # any failure of the shrunken copy's forward means the split sizes are fixed
            return True
        return False

    if not forward_fails(groups):
        return {}
    return {group.root: "its channels are split by torch.split (or chunk) into parts whose sizes the forward "
                        "fixes, so they cannot lose channels" for group in groups if forward_fails([group])}


_ROOT_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, PadShortcut)


def _groups_by_root(graph: tp.DependencyGraph):
    """(root layer, Torch-Pruning group, None), or (root layer, None, why) where Torch-Pruning cannot map it.

    Torch-Pruning's `get_all_groups` stops at the first layer whose channels it cannot map (a channel shuffle
    can end in a division by zero inside its index mapping); asking one root at a time keeps every other group.
    """
    visited: set[nn.Module] = set()
    ignored = set(graph.IGNORED_LAYERS_IN_TRACING)
    for module in list(graph.module2node):
        if module in ignored or module in visited or not isinstance(module, _ROOT_TYPES):
            continue
        pruner = graph.get_pruner_of_module(module)
        channels = pruner.get_out_channels(module) if pruner is not None else None
        if channels is None:
            continue
        try:
            group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(channels)))
        except Exception as error:  # Torch-Pruning's index mapping over ops it half supports
            visited.add(module)
            yield module, None, f"Torch-Pruning cannot map its channels ({_one_line(error)}){_mapping_ops(graph, module)}"
            continue
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                visited.add(dep.target.module)
        yield module, group, None


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:160] or type(error).__name__


def _mapping_ops(graph: tp.DependencyGraph, module: nn.Module) -> str:
    """', through <op>, <op>' for the ops between `module` and the layers that read it, to name the culprit."""
    ops, frontier, seen = [], list(graph.module2node[module].outputs), set()
    while frontier and len(ops) < 4:
        node = frontier.pop(0)
        if node in seen or isinstance(node.module, (*WEIGHT_LAYERS, *NORM_LAYERS)):
            continue
        seen.add(node)
        ops.append(op_name(node))
        frontier.extend(node.outputs)
    return f", through {' → '.join(ops)}" if ops else ""


def _describer(names: dict[nn.Module, str]):
    def describe(node: tp.dependency.Node) -> str:
        if node.module in names:
            return f"{names[node.module]} ({type(node.module).__name__})"
        if node.type == tp.ops.OPTYPE.PARAMETER:
            return f"parameter {node._name or ''}".strip()
        frontier, seen = list(node.inputs), set()
        while frontier:  # name the op by the nearest layer before it
            before = frontier.pop(0)
            if before.module in names:
                return f"{op_name(node)} after {names[before.module]}"
            if before not in seen:
                seen.add(before)
                frontier.extend(before.inputs)
        return f"{op_name(node)} on the model's input"
    return describe


def _members(tp_group, graph: tp.DependencyGraph, names: dict[nn.Module, str], model: nn.Module) -> list[GroupMember]:
    members = []
    for item in tp_group:
        module = item.dep.target.module
        if module not in names:
            continue
        members.append(GroupMember(
            name=names[module],
            module=model.get_submodule(names[module]),
            produces=graph.is_out_channel_pruning_fn(item.dep.handler),
            idxs=list(item.idxs),
            root_idxs=list(item.root_idxs),
        ))
    return members


def _segments(member: GroupMember) -> int:
    """How many equal blocks a member cuts its channels into: a grouped conv's groups, a GroupNorm's groups."""
    module = member.module
    if isinstance(module, nn.GroupNorm):
        return module.num_groups
    if isinstance(module, nn.Conv2d) and module.groups > 1 and not is_depthwise(module):
        return module.groups
    return 1


def _unequal_split(tp_group, root: str) -> str | None:
    """Why the group's channels cannot shrink when a split cuts them into unequal parts, else None."""
    for _, sizes in _split_sizes(tp_group):
        if len(set(sizes)) > 1:
            return f"torch.split into unequal parts {sizes} after {root}: parts of fixed sizes cannot lose channels"
    return None


def _split_sizes(tp_group):
    """(item, part sizes) of every split of the group's channels, as Torch-Pruning recorded them."""
    for item in tp_group:
        if item.dep.target.type in (tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.UNBIND):
            yield item, list(getattr(item.dep.target.module, "split_sizes", None) or [])


def _units(members: list[GroupMember], tp_group, size: int) -> torch.Tensor:
    """The unit each root channel belongs to: channels of one unit can only be removed together.

    A GroupNorm's group is a unit (removing part of it would change the statistics the rest is normalised
    with). A grouped convolution keeps its groups equal, so the channels at the same offset in every group form
    a unit (Torch-Pruning's own rule for grouped convolutions); an equal split (`torch.chunk`) likewise. Units that
    share a channel merge.
    """
    parent = list(range(size))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(channels: Sequence[int]) -> None:
        first = find(channels[0])
        for channel in channels[1:]:
            parent[find(channel)] = first

    def blocks(idxs: list[int], roots: list[int], total: int, count: int, whole: bool) -> None:
        width = total // count
        by_key: dict[int, list[int]] = {}
        for idx, root in zip(idxs, roots):
            by_key.setdefault(idx // width if whole else idx % width, []).append(root)
        for channels in by_key.values():
            join(channels)

    for member in members:
        count = _segments(member)
        if count > 1:
            module = member.module
            total = (module.num_channels if isinstance(module, nn.GroupNorm) else
                     module.out_channels if member.produces else module.in_channels)
            blocks(member.idxs, member.root_idxs, total, count, whole=isinstance(module, nn.GroupNorm))
    for item, sizes in _split_sizes(tp_group):
        if len(sizes) > 1:
            blocks(list(item.idxs), list(item.root_idxs), sum(sizes), len(sizes), whole=False)
    roots = torch.as_tensor([find(i) for i in range(size)], device="cpu")
    return torch.unique(roots, return_inverse=True)[1]


def _mark_gate_points(group: ChannelGroup, graph: tp.DependencyGraph, traced: nn.Module) -> str | None:
    """Choose where channel gates go; the reason the group cannot be gated to zero, or None.

    Candidates are every norm and every Conv/Linear producing the channels, except a Conv/Linear read only by
    norms of its own group (those norms are gated, and every later reader sees their output). A candidate is
    dropped when the channels still die without it: the SE layer of `x * sigmoid(fc(x))` needs no gate,
    since x's gate zeroes the product (and a gate on fc could not: sigmoid(0) is not 0).
    """
    group_norms = {traced.get_submodule(m.name) for m in group.members if isinstance(m.module, NORM_LAYERS)}
    candidates = []
    for member in group.members:
        if not member.produces or isinstance(member.module, PadShortcut):
            continue
        if not isinstance(member.module, NORM_LAYERS):
            readers = graph.module2node[traced.get_submodule(member.name)].outputs
            if readers and all(node.module in group_norms for node in readers):
                continue
        candidates.append(member)

    # A padding shortcut's copies die with the channels they copy, which `realizable` follows across groups.
    shortcuts = {m.name for m in group.members if isinstance(m.module, PadShortcut) and m.produces}
    everything = torch.ones(group.size, dtype=torch.bool, device="cpu")
    nothing = torch.zeros(group.size, dtype=torch.bool, device="cpu")

    def killed(gated: list[GroupMember]) -> bool:
        zeroed = shortcuts | {m.name for m in gated}
        return bool(group.flow.zero_at_readers(lambda name: everything if name in zeroed else nothing).all())

    if not killed(candidates):
        return "gating every layer that produces these channels still leaves them non-zero where they are read " \
               f"({group.flow.lifting_ops() or 'an op lifts zeros'})"
    chosen = list(candidates)
    for member in [m for m in candidates if not isinstance(m.module, NORM_LAYERS)]:
        trial = [m for m in chosen if m is not member]
        if trial and killed(trial):
            chosen = trial
    for member in chosen:
        member.gate_point = True
    return None


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels > 1


def zero_channels(module: nn.Module, idxs: Sequence[int]) -> torch.Tensor:
    """For each of `idxs`, whether `module` outputs exactly zero on that channel whatever its input.

    True only for what the weights prove: a BatchNorm or GroupNorm with zero scale and shift, a Conv/Linear
    (or ConvTranspose) filter of zero weights and bias, a padding shortcut's zero channel. Other layer types
    prove nothing.
    """
    idxs = list(idxs)
    if isinstance(module, PadShortcut):
        return torch.as_tensor([module.sources[i] < 0 for i in idxs], dtype=torch.bool, device="cpu")
    affine_norm = isinstance(module, NORM_LAYERS) and module.affine
    if not (affine_norm or isinstance(module, WEIGHT_LAYERS)):
        return torch.zeros(len(idxs), dtype=torch.bool, device="cpu")
    index = torch.as_tensor(idxs, dtype=torch.long, device=module.weight.device)
    if affine_norm:
        return ((module.weight.detach()[index] == 0) & (module.bias.detach()[index] == 0)).cpu()
    weight = module.weight.detach().transpose(0, output_axis(module))[index].flatten(1)
    zero = (weight == 0).all(dim=1)
    if module.bias is not None:
        zero &= module.bias.detach()[index] == 0
    return zero.cpu()  # the analysis keeps its bookkeeping on the CPU, wherever the model is


def dead_channels(group: ChannelGroup) -> list[int]:
    """Root channels of `group` that are exactly zero wherever a later layer reads them, whole units only."""
    producers: dict[str, GroupMember] = {}
    for member in group.members:
        if member.produces or member.name not in producers:
            producers[member.name] = member

    def zero_roots(name: str) -> torch.Tensor:
        member = producers[name]
        zero = torch.zeros(group.size, dtype=torch.bool, device="cpu")
        roots = torch.as_tensor(member.root_idxs, dtype=torch.long, device="cpu")
        zero[roots] = True
        zero[roots[~zero_channels(member.module, member.idxs)]] = False  # a root is zero only if all its copies are
        return zero

    dead = group.flow.zero_at_readers(zero_roots)
    return group.whole_units(torch.nonzero(dead).flatten().tolist())


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


def channel_l1(module: nn.Module, output: bool) -> torch.Tensor:
    """Per output channel (or per input channel) of a Conv/ConvTranspose/Linear layer, the L1 norm of its weights.

    An input channel of a grouped convolution is read by its own group's filters only.
    """
    weight = module.weight.detach().abs().transpose(0, output_axis(module))  # [out, in / groups, ...]
    per_pair = weight.flatten(2).sum(dim=2) if weight.dim() > 2 else weight
    if output:
        return per_pair.sum(dim=1)
    groups = getattr(module, "groups", 1)
    return per_pair.reshape(groups, -1, per_pair.shape[1]).sum(dim=1).flatten()


def group_l1(group: ChannelGroup, produces: bool, per_layer: bool = False) -> torch.Tensor:
    """Per root channel, the summed L1 norm of the group's Conv/Linear weights that produce it (the filters, with
    `produces`) or that read it; on the CPU. With `per_layer`, each layer's norms are divided by their mean over
    the layer's channels before summing, so a channel scores about one per layer it appears in."""
    total = torch.zeros(group.size, device="cpu")
    for member in group.members:
        if member.produces != produces or not isinstance(member.module, WEIGHT_LAYERS):
            continue
        norms = channel_l1(member.module, output=produces)
        if per_layer:
            norms = norms / norms.mean().clamp_min(1e-12)
        index = torch.as_tensor(member.idxs, dtype=torch.long, device=norms.device)
        total.index_add_(0, torch.as_tensor(member.root_idxs, dtype=torch.long, device="cpu"), norms[index].cpu())
    return total


def reader_importance(group: ChannelGroup) -> torch.Tensor:
    """L1 norm of the weights that read each root channel (the layers consuming the group's channels)."""
    return group_l1(group, produces=False)


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
    analytic: every Conv/Linear/ConvTranspose/norm keeps `alive_out × alive_in` of its weights and MACs.
    `layer_macs` (from `count_layer_macs`) saves a forward pass; to predict many plans on one model, build
    a `CountPredictor` once instead.
    """
    return CountPredictor(model, input_shape, groups, removed_modules, layer_macs)(removed_channels)


@dataclass(frozen=True)
class LayerCount:
    """What a layer's parameters and MACs are made of, for counting them at other widths.

    A Conv/Linear/ConvTranspose (`kind` "layer") has `out_total × in_total` channel pairs (inputs divided by
    `groups` when `reading` is "grouped", one input per filter when "depthwise"), `per_pair` weights per pair,
    a bias per output channel when `has_bias`, and `macs_per_pair` MACs per pair for one sample; a norm (`kind`
    "norm") has `per_pair` parameters per channel of its `out_total`.
    """

    kind: str
    out_total: int
    in_total: int = 0
    reading: str = "all"
    groups: int = 1
    per_pair: int = 0
    has_bias: bool = False
    macs_per_pair: int = 0


def layer_counts(model: nn.Module, layer_macs: dict[str, LayerMacs], removed_modules: Iterable[nn.Module] = ()
                 ) -> tuple[dict[nn.Module, LayerCount], dict[nn.Module, int]]:
    """Per Conv/Linear/norm layer its `LayerCount`, and per other module its own parameter count.

    A gated layer's weights are counted with the layer, at their gated shape; `removed_modules` are left out.
    """
    gone = set(removed_modules)
    names = {module: name for name, module in model.named_modules()}
    layers: dict[nn.Module, LayerCount] = {}
    others: dict[nn.Module, int] = {}
    for module in model.modules():
        if isinstance(module, parametrize.ParametrizationList) or module in gone:
            continue
        direct = [p for p in module.parameters(recurse=False)]
        if parametrize.is_parametrized(module):
            direct += [getattr(module, name) for name in module.parametrizations]
        if not direct and not isinstance(module, WEIGHT_LAYERS):
            continue
        if isinstance(module, WEIGHT_LAYERS):
            transposed = isinstance(module, nn.ConvTranspose2d)
            conv_groups = getattr(module, "groups", 1)
            # Weights are [out, in / groups, ...], or [in, out / groups, ...] for a transposed convolution.
            out_total = module.weight.shape[1] * conv_groups if transposed else module.weight.shape[0]
            in_total = module.weight.shape[0] if transposed else module.weight.shape[1] * conv_groups
            # A depthwise filter reads one channel; a grouped convolution keeps its groups, each filter
            # reading its group's remaining channels.
            reading = ("depthwise" if is_depthwise(module) else
                       "grouped" if conv_groups > 1 and not transposed else "all")
            per_filter = module.weight.shape[0 if transposed else 1]
            layer = layer_macs.get(names[module])
            # Layers the forward never calls do no work.
            macs_per_pair = layer.macs // (out_total * per_filter) if layer is not None else 0
            layers[module] = LayerCount("layer", out_total, in_total, reading, conv_groups,
                                        module.weight[0, 0].numel(), module.bias is not None, macs_per_pair)
        elif isinstance(module, NORM_LAYERS):
            channels = module.num_channels if isinstance(module, nn.GroupNorm) else module.num_features
            layers[module] = LayerCount("norm", channels, per_pair=sum(p.numel() for p in direct) // channels)
        else:
            others[module] = sum(p.numel() for p in direct)
    return layers, others


def channel_multiplicity(group: ChannelGroup) -> tuple[list[tuple[nn.Module, bool]], torch.Tensor]:
    """The (layer, produces) pairs `group` touches, and for each how many of its indices carry each root channel
    (a member may list a root channel more than once: the features after flatten→linear); on the CPU."""
    keys = list(dict.fromkeys((m.module, m.produces) for m in group.members))
    rows = {key: row for row, key in enumerate(keys)}
    multiplicity = torch.zeros(len(keys), group.size, dtype=torch.long, device="cpu")
    for member in group.members:
        roots = torch.as_tensor(member.root_idxs, dtype=torch.long, device="cpu")
        multiplicity[rows[(member.module, member.produces)]].index_add_(0, roots, torch.ones_like(roots))
    return keys, multiplicity


class CountPredictor:
    """`predict_counts` for many plans on one model and one list of groups, as a search asks for them.

    The model is walked once; each call then recounts only the groups whose channels differ from the
    previous call's and the layers those groups touch, so a search that moves one group per step pays for
    that group alone. The model's shapes must not change while the predictor is in use.
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], groups: Sequence[ChannelGroup],
                 removed_modules: Iterable[nn.Module] = (), layer_macs: dict | None = None) -> None:
        layer_macs = layer_macs if layer_macs is not None else count_layer_macs(model, tuple(input_shape))
        self._layers, others = layer_counts(model, layer_macs, removed_modules)
        self._fixed_params = sum(others.values())
        self._lost = {(module, produces): 0 for module in self._layers for produces in (True, False)}
        self._terms = {module: self._term(module) for module in self._layers}
        self._params = self._fixed_params + sum(params for params, _ in self._terms.values())
        self._macs = sum(macs for _, macs in self._terms.values())
        self._groups = [channel_multiplicity(group) for group in groups]
        self._plan: list[frozenset[int]] = [frozenset() for _ in groups]
        self._counts: list[list[int]] = [[0] * len(keys) for keys, _ in self._groups]

    def _term(self, module: nn.Module) -> tuple[int, int]:
        """(parameters, MACs) of one layer at its current lost output and input channels."""
        layer = self._layers[module]
        alive_out = layer.out_total - self._lost[(module, True)]
        if layer.kind == "norm":
            return layer.per_pair * alive_out, 0
        alive_in = layer.in_total - self._lost[(module, False)]
        alive_in = 1 if layer.reading == "depthwise" else alive_in // layer.groups if layer.reading == "grouped" else alive_in
        params = alive_out * alive_in * layer.per_pair + (alive_out if layer.has_bias else 0)
        return params, layer.macs_per_pair * alive_out * alive_in

    def widths(self, module: nn.Module) -> tuple[int, int]:
        """(input, output) channels of Conv/Linear `module` under the last plan predicted (its input features
        for a Linear after flatten); a depthwise convolution's input follows its output."""
        layer = self._layers[module]
        alive_out = layer.out_total - self._lost[(module, True)]
        alive_in = alive_out if layer.reading == "depthwise" else layer.in_total - self._lost[(module, False)]
        return alive_in, alive_out

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
