"""Tests of the per-layer latency model: layers are recorded as they run after export (BatchNorm folded into a
bias, the ReLU fused), a spec's one-layer ONNX computes what its torch module computes, the table measures each
shape once and answers from its file after that, a model's prediction is the sum of its layers' entries, and
whole models are timed on the same backend."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from compressor.errors import CompressorError
from compressor.models import create_model
from compressor.runtime.backends import Subject
from compressor.runtime.latency_model import (LatencyModel, LatencyTable, LayerSpec, check_latency_backend,
                                              latency_backend_unavailable, measure_models, probe_layers)
from compressor.runtime.ort_backend import CPU_PROVIDER, OrtBackend


def synthetic(spec: LayerSpec) -> float:
    """A made-up latency: proportional to the layer's MACs per sample, plus a fixed cost."""
    return 0.01 + 1e-6 * spec.in_channels * spec.out_channels * max(1, int(np.prod(spec.spatial or (1,))))


class Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self, spec: LayerSpec) -> float:
        self.calls += 1
        return synthetic(spec)


def test_layers_are_recorded_as_exported_with_batchnorm_folded_and_relu_fused():
    model = create_model("resnet20").eval()
    layers, untimed = probe_layers(model, model.input_shape)
    by_name = {layer.name: layer.spec for layer in layers}
    assert untimed == {}
    assert len(layers) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    stem = by_name["features.stem.0"]
    assert (stem.in_channels, stem.out_channels, stem.spatial, stem.bias, stem.activation) == (3, 16, (32, 32), True, "relu")
    # The second convolution of a branch ends in the residual add: no activation of its own.
    second = by_name["features.stage1.0.branch.3"]
    assert second.activation is None and second.bias
    downsampling = by_name["features.stage2.0.branch.0"]
    assert (downsampling.stride, downsampling.spatial, downsampling.out_channels) == ((2, 2), (32, 32), 32)
    assert by_name["classifier.fc"] == LayerSpec("linear", 64, 10, (), bias=True, activation=None)


def test_a_depthwise_layer_keeps_one_group_per_channel_at_every_width():
    model = create_model("mobilenet_v1").eval()
    layers, _ = probe_layers(model, model.input_shape)
    depthwise = next(layer.spec for layer in layers if layer.spec.depthwise)
    narrower = depthwise.at(depthwise.in_channels - 8, depthwise.out_channels - 8)
    assert narrower.in_channels == narrower.out_channels == narrower.groups == depthwise.out_channels - 8


@pytest.mark.parametrize("spec", [
    LayerSpec("conv", 8, 16, (9, 9), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, False, True, "relu"),
    LayerSpec("conv", 8, 8, (7, 7), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 8, True, False, "relu6"),
    LayerSpec("conv", 4, 6, (8, 8), (2, 2), (1, 1), (0, 0, 1, 1), (1, 1), 1, False, True, None),
    LayerSpec("conv", 4, 6, (12,), (3,), (1,), (2, 2), (2,), 2, False, True, "relu"),
    LayerSpec("linear", 32, 16, (), bias=True, activation="relu"),
    LayerSpec("linear", 32, 16, (5,), bias=False, activation=None),
])
def test_the_one_layer_onnx_computes_what_the_torch_layer_computes(spec):
    x = np.random.default_rng(1).standard_normal((3, *spec.sample_shape), dtype=np.float32)
    module = spec.module()
    # Both are built from the same seed, but each draws its own weights: copy the ONNX weights into torch.
    from onnx import numpy_helper

    weights = {init.name: numpy_helper.to_array(init) for init in spec.onnx_model().graph.initializer}
    layer = next(m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)))
    with torch.no_grad():
        weight = weights["W"].T if spec.kind == "linear" and spec.spatial else weights["W"]
        layer.weight.copy_(torch.from_numpy(np.array(weight)))
        if spec.bias:
            layer.bias.copy_(torch.from_numpy(np.array(weights["B"])))
        expected = module(torch.from_numpy(x)).numpy()
    got = OrtBackend(spec.onnx_model(), providers=[CPU_PROVIDER]).run(x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_a_second_table_on_the_same_cache_measures_nothing(tmp_path):
    model = create_model("resnet20").eval()
    first = Counting()
    table = LatencyTable("ort-cpu", 32, threads=2, cache_dir=tmp_path, measure=first)
    predicted = LatencyModel(model, model.input_shape, table).predict()
    table.save()
    distinct = len({layer.spec for layer in probe_layers(model, model.input_shape)[0]})
    assert first.calls == table.measured == distinct
    again = Counting()
    cached = LatencyTable("ort-cpu", 32, threads=2, cache_dir=tmp_path, measure=again)
    assert LatencyModel(model, model.input_shape, cached).predict() == predicted
    assert again.calls == cached.measured == 0 and cached.hits > 0
    # Another batch size, or thread count, is another entry.
    other = Counting()
    LatencyModel(model, model.input_shape, LatencyTable("ort-cpu", 1, threads=2, cache_dir=tmp_path,
                                                        measure=other)).predict()
    assert other.calls == distinct


def test_the_prediction_is_the_sum_of_the_layers_entries(tmp_path):
    model = create_model("resnet20").eval()
    table = LatencyTable("ort-cpu", 8, cache_dir=tmp_path, measure=synthetic)
    latency = LatencyModel(model, model.input_shape, table)
    layers, _ = probe_layers(model, model.input_shape)
    assert latency.predict() == pytest.approx(sum(layer.calls * synthetic(layer.spec) for layer in layers))
    # At other widths, the entries at those widths.
    first = layers[1]
    assert latency.layer_ms(first.module, 8, 8) == synthetic(first.spec.at(8, 8))


def test_a_layer_called_twice_counts_twice(tmp_path):
    shared = nn.Linear(16, 16)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    layers, _ = probe_layers(model, (16,))
    assert [(layer.name, layer.calls) for layer in layers] == [("0", 2)]
    latency = LatencyModel(model, (16,), LatencyTable("ort-cpu", 4, cache_dir=tmp_path, measure=synthetic))
    assert latency.predict() == pytest.approx(2 * synthetic(layers[0].spec))


def test_a_damaged_cache_is_measured_again_not_fatal(tmp_path, caplog):
    table = LatencyTable("ort-cpu", 4, cache_dir=tmp_path, measure=synthetic)
    table.ms(LayerSpec("linear", 8, 8))
    table.save()
    table.path.write_text("{ not json")
    counting = Counting()
    again = LatencyTable("ort-cpu", 4, cache_dir=tmp_path, measure=counting)
    again.ms(LayerSpec("linear", 8, 8))
    assert counting.calls == 1 and "ignoring the latency cache" in caplog.text
    again.save()
    assert json.loads(again.path.read_text())["entries"]


def test_a_real_entry_is_timed_on_onnxruntime_and_written_with_the_machine(tmp_path):
    table = LatencyTable("ort-cpu", 2, threads=1, cache_dir=tmp_path)
    ms = table.ms(LayerSpec("conv", 8, 8, (8, 8), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)))
    table.save()
    document = json.loads(table.path.read_text())
    entries = document["entries"]
    assert ms > 0 and set(entries) == {table.key(LayerSpec("conv", 8, 8, (8, 8), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))),
                                       table.reference_key}
    assert document["machine"]["cpus"] and document["backend"] == "ort-cpu"
    assert document["machine"]["timing"].startswith("profiled kernels, relative to conv 32>32")
    assert entries[table.reference_key] > 0 and table.reference_key.endswith("| batch 2 | fp32 | threads 1")


def test_entries_measured_under_another_load_join_the_table_on_its_reference(tmp_path):
    """A second run that measured the same setting's reference anew scales its entries to the file's reference
    when it saves; a run at another batch size keeps its own reference and its entries as measured."""
    spec = LayerSpec("conv", 8, 8, (8, 8), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    first = LatencyTable("ort-cpu", 2, threads=1, cache_dir=tmp_path, measure=lambda s: 1.0)
    second = LatencyTable("ort-cpu", 2, threads=1, cache_dir=tmp_path, measure=lambda s: 3.0)
    other_batch = LatencyTable("ort-cpu", 8, threads=1, cache_dir=tmp_path, measure=lambda s: 5.0)
    for table, reference in ((first, 2.0), (second, 4.0), (other_batch, 8.0)):
        table.entries[table.reference_key] = reference
    first.ms(spec)
    first.save()
    second.ms(spec.at(8, 16))
    second.save()
    other_batch.ms(spec)
    other_batch.save()
    entries = json.loads(first.path.read_text())["entries"]
    assert entries[first.reference_key] == 2.0 and entries[other_batch.reference_key] == 8.0
    assert (entries[first.key(spec)], entries[first.key(spec.at(8, 16))], entries[other_batch.key(spec)]) == (1.0, 1.5, 5.0)


def test_whole_models_are_timed_on_the_latency_backend():
    from compressor.api import export_onnx

    models = [nn.Sequential(nn.Flatten(), nn.Linear(48, width), nn.ReLU(), nn.Linear(width, 10)).eval()
              for width in (8, 512)]
    subjects = [Subject(str(i), export_onnx(m, input_shape=(3, 4, 4)).model, m, (3, 4, 4)) for i, m in enumerate(models)]
    small, large = measure_models("ort-cpu", subjects, batch=64, threads=1, runs=10)
    assert 0 < small < large


def test_backends_are_checked_by_name_and_by_machine():
    with pytest.raises(CompressorError, match="unknown latency backend 'tpu'"):
        check_latency_backend("tpu")
    assert latency_backend_unavailable("ort-cpu") is None
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in latency_backend_unavailable("torch-cuda")
        with pytest.raises(CompressorError, match="cannot run here"):
            LatencyTable("torch-cuda", 1)
