"""Channel coupling: which channels of which layers must be removed together, shared by methods and passes.

Removing output channel c of a convolution also removes input channel c of every layer that reads it, the
same channel of the norm in between, and, across a residual add or a product, channel c of every tensor joined
by it. Torch-Pruning's dependency graph finds these groups (compressor.passes.analysis.torch_pruning adapts it to
this compiler); this module asks it for one root layer at a time, and turns each Torch-Pruning group into a
`ChannelGroup` that says:

- which members *produce* the group's channels and where a channel gate goes (`gate_points`): every norm, and
  every Conv/Linear whose output is not read only by norms of the same group and whose gate is needed to zero
  the channels (not the SE layer of `x * sigmoid(fc(x))`);
- how its channels flow to the layers that read them (`flow`, zero propagation: compressor.passes.analysis.zero_flow),
  from which `dead_channels` (compressor.passes.analysis.importance) proves channels zero wherever they are read;
- which channels can only go together (`units`): a GroupNorm's group, the same offset in every group of a
  grouped convolution or every part of an equal split.

What a model's parameters and MACs become when given channels are removed is compressor.passes.analysis.counts.
The analysis keeps its per-channel bookkeeping on the CPU, wherever the model is and whatever torch's default
device, and moves indices to a layer's device where they meet its weights.

`analyse_channels` also lists the groups it leaves whole (`LeftWhole`) with the layer or op responsible, so a
structured method can say why it cannot remove more; `realizable` takes out of a removal plan what an option-A
shortcut keeps alive.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.nn.utils import parametrize

from compressor.models.units import PadShortcut
from compressor.modules import copy_model, unparametrize, model_device
from compressor.passes.analysis.torch_pruning import dependency_graph
from compressor.passes.analysis.zero_flow import NORM_LAYERS, WEIGHT_LAYERS, ZeroFlow, op_name


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
