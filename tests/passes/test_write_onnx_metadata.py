"""Tests of WriteOnnxMetadataPass and read_onnx_metadata."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from compressor import __version__
from compressor.passes.write_onnx_metadata import PREFIX, WriteOnnxMetadataPass, read_onnx_metadata, write_onnx_metadata

FACTS = {
    "version": __version__,
    "method": "magnitude",
    "target": {"sparsity": 0.5, "pattern": "2:4"},
    "layers": [{"name": "features.conv2.weight", "sparsity": 0.5}, {"name": "classifier.fc1.weight", "sparsity": 0.5}],
    "eligible": 3,
}


@pytest.fixture
def model_with_foreign_metadata(lenet5_export):
    model = lenet5_export.fresh_proto()
    model.metadata_props.add(key="author", value="someone else")
    model.metadata_props.add(key="license", value="MIT")
    return model


def test_facts_land_under_compressor_keys_as_json(model_with_foreign_metadata, lenet5_export, onnx_run,
                                                 check_outputs):
    model = model_with_foreign_metadata
    original = model.SerializeToString()
    x = lenet5_export.inputs(2, seed=5)
    reference = onnx_run(model, x)

    result = WriteOnnxMetadataPass(FACTS)(model)

    assert result.modified is True
    assert result.notes["keys"] == sorted(PREFIX + key for key in FACTS)
    assert model.SerializeToString() == original, "the pass mutated its input"
    written = result.model
    props = {p.key: p.value for p in written.metadata_props}
    assert len(props) == len(written.metadata_props), "duplicate metadata keys"
    for key, value in FACTS.items():
        assert json.loads(props[f"compressor.{key}"]) == value
    # Unrelated metadata is kept as it was.
    assert props["author"] == "someone else" and props["license"] == "MIT"
    assert set(props) == {"author", "license"} | {f"compressor.{key}" for key in FACTS}
    assert read_onnx_metadata(written) == FACTS
    # The graph and everything else are untouched; outputs are identical.
    assert written.graph.SerializeToString() == model.graph.SerializeToString()
    onnx.checker.check_model(written)
    np.testing.assert_array_equal(onnx_run(written, x), reference)
    check_outputs(onnx_run(written, x), reference)

    again = WriteOnnxMetadataPass(FACTS)(written)
    assert again.modified is False and again.model is written


def test_round_trip_through_the_file_format(lenet5_export, tmp_path):
    written = write_onnx_metadata(lenet5_export.fresh_proto(), FACTS)
    path = tmp_path / "model.onnx"
    onnx.save(written, path)
    assert read_onnx_metadata(onnx.load(path)) == FACTS


def test_changed_fact_is_updated_in_place_without_duplicates(lenet5_export):
    first = write_onnx_metadata(lenet5_export.fresh_proto(), FACTS)
    updated_facts = {**FACTS, "method": "two_four"}

    result = WriteOnnxMetadataPass({"method": "two_four"})(first)

    assert result.modified is True
    keys = [p.key for p in result.model.metadata_props]
    assert keys.count("compressor.method") == 1
    assert read_onnx_metadata(result.model) == updated_facts
    assert read_onnx_metadata(first) == FACTS  # input untouched
    assert WriteOnnxMetadataPass({"method": "two_four"})(result.model).modified is False


def test_read_ignores_foreign_keys_and_empty_facts_change_nothing(model_with_foreign_metadata):
    assert read_onnx_metadata(model_with_foreign_metadata) == {}
    result = WriteOnnxMetadataPass({})(model_with_foreign_metadata)
    assert result.modified is False and result.model is model_with_foreign_metadata


def test_unserialisable_fact_is_rejected_up_front():
    with pytest.raises(TypeError):
        WriteOnnxMetadataPass({"bad": object()})
