"""Which channels of a coupled group are provably zero where they are read: zero propagation on the traced graph.

A channel may be sliced away only if every layer that reads it sees exactly zero there. `ZeroFlow` follows the
channels of one Torch-Pruning group through the traced graph in topological order and answers, for each root
channel, whether it is zero at every reader, given which channels the group's producers output as zero:

- a producer (a Conv/Linear/ConvTranspose output, a BatchNorm or GroupNorm, a padding shortcut) is zero where
  its weights prove it, or where a gate is assumed at 0;
- a depthwise convolution is a producer too: its channel c reads only input channel c, so the input channel
  goes wherever the output channel goes and is no reader of its own;
- ops that keep a zero channel zero (ReLU, pooling, reshapes, concatenation, splits) pass zeros on;
- a sum is zero where all its operands are; a product where any operand is, which is why the channels of a
  squeeze-and-excitation block `x * sigmoid(fc(x))` die with `x` whatever the SE layer outputs; a quotient
  where its numerator is;
- anything else that works channel by channel (a sigmoid, adding a constant) lifts a zero.

Ops that mix channels (a mean, a softmax or a norm across channels, a transpose that permutes them) and layers
this compiler does not slice make a group's channels impossible to remove: `problem` names the first one, so a
refusal can say which layer or op keeps the channels whole. The per-channel masks are CPU tensors, wherever the
model is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from compressor.models.units import PadShortcut

OPTYPE = tp.ops.OPTYPE
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)
WEIGHT_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)

# Autograd op names (without "Backward<n>") after which a zero channel is still zero, channel by channel.
_ZERO_KEEPING_OPS = {
    "Relu", "Relu6", "Hardtanh", "LeakyRelu", "Elu", "Silu", "Gelu", "Tanh", "Hardswish", "Mish", "Neg", "Abs",
    "AvgPool2D", "AvgPool1D", "MaxPool2DWithIndices", "MaxPool1DWithIndices", "AdaptiveAvgPool2D",
    "AdaptiveAvgPool1D", "AdaptiveMaxPool2D", "UpsampleNearest2D", "UpsampleBilinear2D", "View", "Reshape",
    "UnsafeView", "ReshapeAlias", "Clone", "ToCopy", "Cat", "Split", "SplitWithSizes", "Unbind", "Expand",
    "Squeeze", "Unsqueeze", "Mean", "Sum", "Slice", "ConstantPadNd",
}
# Products that contract over their operands' last axis (a Linear applied to tokens is a view, an addmm and a view):
# a zero channel adds nothing to them, so they read the channels like a layer does, and pass zeros on where the
# channels survive in their output.
_MATMUL_OPS = {"Addmm", "Mm", "Bmm", "Matmul", "Baddbmm"}
# Channel-wise ops that turn a zero into something else.
_ZERO_LIFTING_OPS = {"Sigmoid", "Hardsigmoid", "Exp", "Softplus", "Cos", "Softmax", "LogSoftmax"}
# Reductions and slices are channel-wise only when they leave the channel axis alone.
_AXIS_OPS = {"Mean", "Sum", "Slice", "Softmax", "LogSoftmax"}


def op_name(node: tp.dependency.Node) -> str:
    """The autograd name of a traced op ("Relu", "Add", ...) without its "Backward<n>" suffix."""
    return re.sub(r"Backward\d*$", "", node.grad_fn.name()) if node.grad_fn is not None else type(node.module).__name__


def _rank(node: tp.dependency.Node) -> int:
    """The rank of the op's input: from the sizes autograd saved, else from the shape of its output."""
    sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
    if sizes is not None:
        return len(sizes)
    metadata = getattr(node.grad_fn, "_input_metadata", ())  # the shapes of the op's outputs
    return len(metadata[0].shape) if metadata else 4


def _touches_channel_axis(node: tp.dependency.Node, op: str) -> bool:
    grad_fn = node.grad_fn
    rank = _rank(node)
    if op in _AXIS_OPS:
        dims = getattr(grad_fn, "_saved_dim", None)
        if dims is None:
            return op in ("Mean", "Sum")  # x.mean() and x.sum() reduce every axis
        dims = dims if isinstance(dims, (tuple, list)) else (dims,)
        return any(int(d) % rank == 1 for d in dims)
    if op == "ConstantPadNd":
        pad = list(getattr(grad_fn, "_saved_pad", ()))
        return any(pad[2 * (rank - 2): 2 * (rank - 1)])  # F.pad lists pairs from the last dimension back
    return False


@dataclass
class _Step:
    kind: str  # "produce", "pass", "add", "mul", "div", "lift"
    node: int
    inputs: list[int]
    member: str | None = None
    label: str = ""  # what the op is, for messages


class ZeroFlow:
    """The zero-propagation program of one channel group (see the module docstring)."""

    def __init__(self, items: Sequence, graph: tp.DependencyGraph, size: int, names: dict[nn.Module, str],
                 describe: Callable[[tp.dependency.Node], str]) -> None:
        self.size = size
        self.problem: str | None = None
        carried: dict[tp.dependency.Node, torch.Tensor] = {}
        producing: set[tp.dependency.Node] = set()
        reading: set[tp.dependency.Node] = set()
        for item in items:
            node = item.dep.target
            mask = carried.setdefault(node, torch.zeros(size, dtype=torch.bool, device="cpu"))
            mask[torch.as_tensor(list(item.root_idxs), dtype=torch.long, device="cpu")] = True
            if isinstance(node.module, nn.Module) and node.module in names:
                (producing if graph.is_out_channel_pruning_fn(item.dep.handler) else reading).add(node)
        order = _topological(carried)
        index = {node: i for i, node in enumerate(order)}
        self.carried = (torch.stack([carried[node] for node in order]) if order
                        else torch.zeros(0, size, dtype=torch.bool, device="cpu"))
        self.steps: list[_Step] = []
        self.readers: list[tuple[int, list[int]]] = []  # (node, the nodes whose output it reads)
        self.weights: set[int] = set()  # nodes computed from parameters alone
        for node in order:
            inputs = [index[n] for n in node.inputs if n in index]
            problem = self._add_step(node, index, inputs, node in producing, node in reading, names, describe)
            if problem is not None:
                self.problem = problem
                return
            outside = [n for n in node.outputs if n not in index]
            if outside and node not in reading and not (node in producing and _is_weight_layer(node.module)):
                self.problem = f"{describe(outside[0])} reads the channels of {describe(node)} but is not a " \
                               "layer whose channels follow them"
                return

    def _add_step(self, node, index: dict, inputs: list[int], produces: bool, reads: bool,
                  names: dict[nn.Module, str], describe) -> str | None:
        i = index[node]
        module = node.module
        if node.type == OPTYPE.PARAMETER:
            return f"{describe(node)} is a bare parameter used in the forward, not a layer whose channels are sliced"
        if module in names:
            name = names[module]
            if isinstance(module, nn.LayerNorm):
                return f"LayerNorm {name} normalises across the channels"
            if not isinstance(module, (*WEIGHT_LAYERS, *NORM_LAYERS, PadShortcut)):
                return f"{name} is a {type(module).__name__}, a layer whose channels are not sliced"
            if isinstance(module, nn.ConvTranspose2d) and module.groups != 1:
                return f"{name} is a grouped ConvTranspose2d (groups={module.groups})"
            if isinstance(module, NORM_LAYERS) and not module.affine:
                return f"{name} has no affine parameters to carry a channel gate"
            if produces or isinstance(module, NORM_LAYERS) or node.type == OPTYPE.DEPTHWISE_CONV:
                self.steps.append(_Step("produce", i, inputs, name))
            if reads and not isinstance(module, NORM_LAYERS) and node.type != OPTYPE.DEPTHWISE_CONV:
                self.readers.append((i, [j for j in inputs if j not in self.weights]))
            return None
        if node.grad_fn is None:
            # Torch-Pruning's index-mapping nodes (concatenation, split, flatten) without an autograd op of their own.
            if node.type in (OPTYPE.CONCAT, OPTYPE.SPLIT, OPTYPE.RESHAPE, OPTYPE.UNBIND):
                self.steps.append(_Step("pass", i, inputs))
                return None
            return f"{describe(node)} is not an op whose channels can be followed"
        if not node.inputs:
            # Computed from parameters alone (the transpose of a Linear's weight): it shapes an operand, and the op
            # that combines that operand with the channels is the one that counts.
            self.steps.append(_Step("lift", i, inputs))
            self.weights.add(i)
            return None
        op = op_name(node)
        if op in _AXIS_OPS or op == "ConstantPadNd":
            if _touches_channel_axis(node, op):
                return f"{describe(node)} works across the channels"
        if op in ("Add", "Sub"):
            # Every operand must be a traced tensor of the group: x + 1, x + (a parameter) or x + (the model's
            # input) would lift a zero channel.
            whole = len(node.inputs) >= 2 and len(inputs) == len(node.inputs)
            self.steps.append(_Step("add", i, inputs) if whole else
                              _Step("lift", i, inputs, label=f"{describe(node)} adds something outside the channels"))
        elif op == "Mul":
            self.steps.append(_Step("mul", i, inputs))
        elif op in _MATMUL_OPS:
            self.steps.append(_Step("pass", i, [j for j in inputs if j not in self.weights]))
            self.readers.append((i, [j for j in inputs if j not in self.weights]))
        elif op == "Transpose" and _rank(node) <= 3:
            # [N, C, T] ↔ [N, T, C]: the channels move to another axis but stay channels. A transpose of a higher
            # rank view is how a channel shuffle permutes them.
            self.steps.append(_Step("pass", i, inputs))
        elif op == "Div":
            numerator = _operand_node(node, 0)
            self.steps.append(_Step("div", i, [index[numerator]] if numerator in index else []))
        elif op in _ZERO_LIFTING_OPS:
            self.steps.append(_Step("lift", i, inputs, label=describe(node)))
        elif op in _ZERO_KEEPING_OPS:
            self.steps.append(_Step("pass", i, inputs))
        else:
            return f"{describe(node)} is not an op channels are sliced through"
        return None

    def lifting_ops(self) -> str:
        """The ops that turn a zero channel into a non-zero one, for messages."""
        return ", ".join(step.label for step in self.steps if step.kind == "lift" and step.label)

    def zero_at_readers(self, producer_zero: Callable[[str], torch.Tensor]) -> torch.Tensor:
        """Per root channel, whether every reader of the group sees exactly zero there.

        `producer_zero(member_name)` gives, per root channel, whether that producing layer outputs zero there.
        """
        count = len(self.carried)
        zero = torch.zeros(count, self.size, dtype=torch.bool, device="cpu")
        for step in self.steps:
            carried = self.carried[step.node]
            operands = zero[step.inputs] if step.inputs else zero.new_zeros(0, self.size)
            present = self.carried[step.inputs] if step.inputs else operands
            if step.kind == "produce":
                value = producer_zero(step.member)
            elif step.kind == "pass":
                value = ((operands | ~present).all(0) & present.any(0)) if len(step.inputs) else torch.zeros_like(carried)
            elif step.kind == "add":
                value = (operands & present).all(0)
            elif step.kind == "mul":
                value = (operands & present).any(0)
            elif step.kind == "div":
                value = operands[0] & present[0] if len(step.inputs) else torch.zeros_like(carried)
            else:
                value = torch.zeros_like(carried)
            zero[step.node] = value & carried
        dead = torch.ones(self.size, dtype=torch.bool, device="cpu")
        for _, inputs in self.readers:
            if not inputs:
                continue
            read = self.carried[inputs].any(0)
            dead &= ~read | (zero[inputs] | ~self.carried[inputs]).all(0)
        return dead


def _is_weight_layer(module: nn.Module) -> bool:
    return isinstance(module, (*WEIGHT_LAYERS, PadShortcut))


def _operand_node(node: tp.dependency.Node, position: int) -> tp.dependency.Node | None:
    """The traced node that feeds operand `position` of an op, when it is one of the op's inputs."""
    functions = [fn for fn, _ in node.grad_fn.next_functions]
    if position >= len(functions) or functions[position] is None:
        return None
    return next((n for n in node.inputs if n.grad_fn is functions[position]), None)


def _topological(nodes: dict) -> list:
    """`nodes` (keys) ordered so that each node comes after the ones among them it reads."""
    pending = {node: sum(1 for n in node.inputs if n in nodes) for node in nodes}
    ready = [node for node, count in pending.items() if count == 0]
    order: list = []
    while ready:
        node = ready.pop()
        order.append(node)
        for out in node.outputs:
            if out in pending:
                pending[out] -= 1
                if pending[out] == 0:
                    ready.append(out)
    # A node whose inputs never all arrive (an input listed twice, say) still belongs to the group: it goes last,
    # which at worst makes its zeros unknown, never wrongly known.
    return order + [node for node in nodes if node not in set(order)]
