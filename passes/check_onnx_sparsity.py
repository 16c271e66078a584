"""CheckOnnxSparsityPass: read sparsity back from the exported ONNX and validate the 2:4 layout.

The report's sparsity must describe the file that ships, not the torch model it came from. This analysis
pass counts zeros in the weight initializer of every Conv, ConvTranspose, Gemm and MatMul node (reached
through Transpose nodes too, on either operand of a MatMul), checks TensorRT's 2:4 layout per layer
(docs/ARCHITECTURE.md), and fails when a layer that should be 2:4 is not. It never changes the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from compressor.passes.analysis.two_four import is_two_four, onnx_weight_groups
from compressor.passes.base import Pass, PassResult

# The inputs that may hold a layer's weight, in the order they are tried: exporters write `x @ W` (B) for a
# Linear, but a weight may also stand first (`W @ x`).
WEIGHT_INPUTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (1, 0), "MatMul": (1, 0)}
# Nodes that only rearrange a weight on its way to the layer reading it: a bias-free Linear exports as
# Transpose(weight) → MatMul when its Transpose is not folded into the initializer.
LAYOUT_OPS = ("Transpose", "Identity")


@dataclass
class OnnxLayerSparsity:
    """Counted zeros of one ONNX weight initializer and its 2:4 status, as read by one layer node.

    `name` is the initializer's name (reached through Transpose/Identity nodes where the layer reads it through
    them) and `shape` its stored shape. `node` is the reading node's name, or its first output's name when the
    node has none. A weight read by several nodes gives one row per node.
    """

    name: str
    op_type: str
    shape: tuple[int, ...]
    weights: int
    zeros: int
    two_four_eligible: bool
    two_four: bool
    node: str = ""

    @property
    def sparsity(self) -> float:
        return self.zeros / self.weights if self.weights else 0.0


def _ints(node: onnx.NodeProto) -> dict[str, int | list[int]]:
    return {a.name: (list(a.ints) if a.type == onnx.AttributeProto.INTS else a.i) for a in node.attribute
            if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS)}


def _weight_operand(name: str, producers: dict[str, onnx.NodeProto],
                    initializers: dict[str, onnx.TensorProto]) -> tuple[str, np.ndarray] | None:
    """The initializer behind a node input (through layout-only nodes) and the tensor the node reads, or None."""
    chain = []
    while name not in initializers:
        producer = producers.get(name)
        if producer is None or producer.op_type not in LAYOUT_OPS:
            return None
        chain.append(producer)
        name = producer.input[0]
    operand = numpy_helper.to_array(initializers[name])
    for producer in reversed(chain):
        if producer.op_type == "Transpose":
            operand = np.transpose(operand, _ints(producer).get("perm"))
    return name, operand


def read_onnx_sparsity(model: onnx.ModelProto) -> list[OnnxLayerSparsity]:
    """Per-layer sparsity of the Conv/ConvTranspose/Gemm/MatMul weights that are initializers, in graph order."""
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    rows = []
    for node in model.graph.node:
        for index in WEIGHT_INPUTS.get(node.op_type, ()):
            found = _weight_operand(node.input[index], producers, initializers) if len(node.input) > index else None
            if found is not None:
                break
        else:
            continue
        name, operand = found
        attributes = _ints(node)
        groups = onnx_weight_groups(node.op_type, operand, attributes.get("transB", 0) == 1,
                                    attributes.get("group", 1), index, attributes.get("transA", 0) == 1)
        rows.append(
            OnnxLayerSparsity(
                name=name,
                op_type=node.op_type,
                shape=tuple(initializers[name].dims),
                weights=int(operand.size),
                zeros=int(operand.size - np.count_nonzero(operand)),
                two_four_eligible=groups is not None,
                two_four=groups is not None and is_two_four(groups),
                node=node.name or (node.output[0] if node.output else ""),
            )
        )
    return rows


def distinct_weights(rows: list[OnnxLayerSparsity]) -> list[OnnxLayerSparsity]:
    """One row per initializer: the zeros a file holds count a weight read by several nodes once."""
    first: dict[str, OnnxLayerSparsity] = {}
    for row in rows:
        first.setdefault(row.name, row)
    return list(first.values())


class CheckOnnxSparsityPass(Pass):
    """Count ONNX weight zeros; raise if a layer named in `expect_two_four` breaks the 2:4 layout."""

    name = "CheckOnnxSparsity"

    def __init__(self, expect_two_four: Iterable[str] = ()):
        self.expect_two_four = set(expect_two_four)

    def run(self, model: onnx.ModelProto) -> PassResult:
        rows = read_onnx_sparsity(model)
        missing = sorted(self.expect_two_four - {row.name for row in rows})
        if missing:
            raise ValueError(f"expected 2:4 weights not found in the ONNX graph: {', '.join(missing)}")
        # A weight read by several nodes must be 2:4 as each of them reads it.
        broken = sorted({row.name for row in rows if row.name in self.expect_two_four and not row.two_four})
        if broken:
            raise ValueError(f"weights that should be 2:4 are not: {', '.join(broken)}")
        return PassResult(model, modified=False, notes={"layers": rows})
