"""CleanOnnxPass: one idempotent onnx-graphsurgeon cleanup of an exported graph.

Import → fold weight transposes → fold constants → remove dead nodes and tensors → topologically sort →
export, the order onnx-graphsurgeon recommends. A bias-free Linear exports as Transpose(weight) → MatMul;
constant folding alone would store the transposed weight under the Transpose's output name (and once per
call of a shared layer), so such weights are stored pre-transposed under their own name first: the sparsity
check and the report find every weight by its torch name, once. The pass reports `modified` only when the
resulting graph differs from the input, so a second run is a no-op.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from compressor.passes.base import Pass, PassResult


class CleanOnnxPass(Pass):
    """Constant folding, dead-code removal and toposort with onnx-graphsurgeon."""

    name = "CleanOnnx"

    def run(self, model: onnx.ModelProto) -> PassResult:
        # graphsurgeon's constant folding runs shape inference on the model it was given, which writes into
        # that proto; a pass must leave its input as it was.
        source = onnx.ModelProto()
        source.CopyFrom(model)
        graph = gs.import_onnx(source)
        nodes_before = len(graph.nodes)
        _fold_weight_transposes(graph)
        graph.fold_constants().cleanup().toposort()
        cleaned = gs.export_onnx(graph)
        # graphsurgeon rebuilds the model proto; keep the original's identity and metadata.
        cleaned.ir_version = model.ir_version
        cleaned.producer_name, cleaned.producer_version = model.producer_name, model.producer_version
        cleaned.metadata_props.extend(model.metadata_props)
        modified = cleaned.graph.SerializeToString() != model.graph.SerializeToString()
        result = cleaned if modified else model
        return PassResult(result, modified=modified, notes={"nodes_before": nodes_before, "nodes_after": len(result.graph.node)})


def _fold_weight_transposes(graph: gs.Graph) -> None:
    """Store each initializer that is read only through Transposes of one permutation pre-transposed."""
    for tensor in list(graph.tensors().values()):
        readers = list(tensor.outputs)
        if not isinstance(tensor, gs.Constant) or not readers or any(node.op != "Transpose" for node in readers):
            continue
        # Transpose's default permutation reverses the axes.
        perms = {tuple(node.attrs.get("perm", range(tensor.values.ndim - 1, -1, -1))) for node in readers}
        if len(perms) != 1 or any(output in graph.outputs for node in readers for output in node.outputs):
            continue
        tensor.values = np.ascontiguousarray(np.transpose(tensor.values, perms.pop()))
        for node in readers:
            (transposed,) = node.outputs
            for consumer in list(transposed.outputs):
                for index, value in enumerate(consumer.inputs):
                    if value is transposed:
                        consumer.inputs[index] = tensor
            node.outputs.clear()


def clean_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    """Functional form of `CleanOnnxPass`."""
    return CleanOnnxPass().run(model).model
