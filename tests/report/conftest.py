"""Shared fixtures of the report tests: a small unstructured report made by hand (a fixture that returns the
function making it, because the test modules are imported with `--import-mode=importlib`, where importing
`conftest` by name is not reliable), and the snapshot and switcher methods' sections of a run, with a sweep and a
top-up.
"""

from dataclasses import replace

import pytest

from compressor.methods.snapshot import EfficiencyPoint, SnapshotSection, ThresholdGroup
from compressor.methods.switcher import SwitchedLayer, SwitcherSection
from compressor.report import CompressedStats, DenseStats, LatencyStats, LayerStats, OnnxStats, PassStats, Report


@pytest.fixture
def make_report():
    """A function that makes a two-layer magnitude report; keyword arguments replace its fields."""

    def make(**changes) -> Report:
        report = Report(
            tool_version="0.1.0", model="net.pt", arch="lenet5", input_shape=[1, 28, 28], data="digits",
            method="magnitude", target=0.8, pattern="unstructured", epochs=1,
            method_config={"retrain_weight_decay": 0.0},
            dense=DenseStats(params=1000, macs=5000, accuracy=0.9),
            compressed=CompressedStats(params=1000, params_nonzero=200, macs=5000, macs_nonzero=1000, sparsity=0.8,
                                       accuracy=0.88),
            layers=[LayerStats("conv1", "Conv2d", [6, 1, 5, 5], 150, 120, 0.8, "unstructured"),
                    LayerStats("fc1", "Linear", [10, 85], 850, 680, 0.8, "unstructured")],
            onnx=OnnxStats(path="model.onnx", opset=18, max_abs_diff=1e-6, tolerance=1e-3, sparsity=0.8, nodes=7),
            latency=LatencyStats(backend="onnxruntime-cpu", batch=1, threads=None, dense_ms=0.1, compressed_ms=0.09,
                                 dense_p90_ms=0.11, compressed_p90_ms=0.1, runs=50),
            passes=[PassStats("BakeMasks", True, 0.01)])
        return replace(report, **changes)

    return make



@pytest.fixture
def snapshot_section() -> SnapshotSection:
    """A target run: the conv group at a pooled σ, the linear group at each layer's own, and a two-point sweep."""
    return SnapshotSection(
        mode="target", groups=[ThresholdGroup("conv", ["conv1"], 1.8, 1.4, 0.2, 0.36, 150, 120),
                               ThresholdGroup("linear", ["fc1"], 1.6, 1.25, None, None, 850, 680)],
        accuracy_after_pruning=0.7, params=216, params_dense=1016, sparsity=0.8, bits=8000.5, scale=1.28,
        family="LeNet-5", swept_group="conv",
        sweep=[EfficiencyPoint(0, 0.5, 600, 1016, 0.4, 20000.0, 0.89, 0.9),
               EfficiencyPoint(9, 1.4, 300, 1016, 0.7, 10000.0, 0.8, 0.87)])


@pytest.fixture
def switcher_section() -> SwitcherSection:
    """A neuron-mode run topped up to its target, its one gated layer cut."""
    return SwitcherSection(
        mode="neuron", emergent_sparsity=0.5, final_sparsity=0.8, accuracy_emergent=0.85, topped_up=True,
        layers=[SwitchedLayer("fc1", 850, {"zero": 10, "weak": 40, "strong": 35},
                              {"zero": 40, "weak": 20, "strong": 25}, 100, 425, 680, 85, 40, {"conv2": 3})],
        cut_layers=["fc1"])
