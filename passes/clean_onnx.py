"""CleanOnnxPass: one idempotent onnx-graphsurgeon cleanup of an exported graph.

Import → fold constants → remove dead nodes and tensors → topologically sort → export, the order
onnx-graphsurgeon recommends. The pass reports `modified` only when the resulting graph differs from the
input, so a second run is a no-op.
"""

from __future__ import annotations

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
        graph.fold_constants().cleanup().toposort()
        cleaned = gs.export_onnx(graph)
        # graphsurgeon rebuilds the model proto; keep the original's identity and metadata.
        cleaned.ir_version = model.ir_version
        cleaned.producer_name, cleaned.producer_version = model.producer_name, model.producer_version
        cleaned.metadata_props.extend(model.metadata_props)
        modified = cleaned.graph.SerializeToString() != model.graph.SerializeToString()
        result = cleaned if modified else model
        return PassResult(result, modified=modified, notes={"nodes_before": nodes_before, "nodes_after": len(result.graph.node)})


def clean_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    """Functional form of `CleanOnnxPass`."""
    return CleanOnnxPass().run(model).model
