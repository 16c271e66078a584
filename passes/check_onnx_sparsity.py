"""CheckOnnxSparsityPass: read sparsity back from the exported ONNX and validate the 2:4 layout.

The report's sparsity must describe the file that ships, not the torch model it came from. This analysis
pass counts zeros in the weight initializer of every Conv, Gemm and MatMul node, checks TensorRT's 2:4
layout per layer (DESIGN.md), and fails when a layer that should be 2:4 is not. It never changes the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from compressor.passes.analysis import is_two_four, onnx_weight_groups
from compressor.passes.base import Pass, PassResult

WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1}


@dataclass
class OnnxLayerSparsity:
    """Counted zeros of one ONNX weight initializer and its 2:4 status, as read by one Conv/Gemm/MatMul node.

    `node` is that node's name, or its first output's name when the node has none. A weight read by several
    nodes gives one row per node.
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


def read_onnx_sparsity(model: onnx.ModelProto) -> list[OnnxLayerSparsity]:
    """Per-layer sparsity of the Conv/Gemm/MatMul weights that are initializers, in graph order."""
    initializers = {init.name: init for init in model.graph.initializer}
    rows = []
    for node in model.graph.node:
        index = WEIGHT_INPUT.get(node.op_type)
        if index is None or len(node.input) <= index or node.input[index] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[node.input[index]])
        attributes = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
        groups = onnx_weight_groups(node.op_type, weight, attributes.get("transB", 0) == 1, attributes.get("group", 1))
        rows.append(
            OnnxLayerSparsity(
                name=node.input[index],
                op_type=node.op_type,
                shape=tuple(weight.shape),
                weights=int(weight.size),
                zeros=int(weight.size - np.count_nonzero(weight)),
                two_four_eligible=groups is not None,
                two_four=groups is not None and is_two_four(groups),
                node=node.name or (node.output[0] if node.output else ""),
            )
        )
    return rows


class CheckOnnxSparsityPass(Pass):
    """Count ONNX weight zeros; raise if a layer named in `expect_two_four` breaks the 2:4 layout."""

    name = "CheckOnnxSparsity"

    def __init__(self, expect_two_four: Iterable[str] = ()):
        self.expect_two_four = set(expect_two_four)

    def run(self, model: onnx.ModelProto) -> PassResult:
        rows = read_onnx_sparsity(model)
        found = {row.name: row for row in rows}
        missing = sorted(self.expect_two_four - found.keys())
        if missing:
            raise ValueError(f"expected 2:4 weights not found in the ONNX graph: {', '.join(missing)}")
        broken = sorted(name for name in self.expect_two_four if not found[name].two_four)
        if broken:
            raise ValueError(f"weights that should be 2:4 are not: {', '.join(broken)}")
        return PassResult(model, modified=False, notes={"layers": rows})
