"""WriteOnnxMetadataPass: record the compression facts inside the ONNX file.

A deployed .onnx outlives the report that came with it, so the facts (tool version, method, target,
pattern, per-layer sparsity) travel in the model's `metadata_props` under `compressor.*` keys, as JSON
strings, where any ONNX tool can read them.
"""

from __future__ import annotations

import json
from typing import Any

import onnx

from compressor.passes.base import Pass, PassResult

PREFIX = "compressor."


class WriteOnnxMetadataPass(Pass):
    """Set `compressor.<key>` metadata entries; entries already equal are left as they are."""

    name = "WriteOnnxMetadata"

    def __init__(self, facts: dict[str, Any]):
        self.entries = {PREFIX + key: json.dumps(value, sort_keys=True) for key, value in facts.items()}

    def run(self, model: onnx.ModelProto) -> PassResult:
        current = {prop.key: prop.value for prop in model.metadata_props}
        if all(current.get(key) == value for key, value in self.entries.items()):
            return PassResult(model, modified=False, notes={"keys": sorted(self.entries)})
        result = onnx.ModelProto()
        result.CopyFrom(model)
        merged = {**current, **self.entries}
        del result.metadata_props[:]
        for key in sorted(merged):
            result.metadata_props.add(key=key, value=merged[key])
        return PassResult(result, modified=True, notes={"keys": sorted(self.entries)})


def read_onnx_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """The `compressor.*` facts of a model, decoded."""
    return {p.key[len(PREFIX):]: json.loads(p.value) for p in model.metadata_props if p.key.startswith(PREFIX)}


def write_onnx_metadata(model: onnx.ModelProto, facts: dict[str, Any]) -> onnx.ModelProto:
    """Functional form of `WriteOnnxMetadataPass`."""
    return WriteOnnxMetadataPass(facts).run(model).model
