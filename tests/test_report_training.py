"""The report of a method that changes the network while it trains: the training cost per epoch against the
dense model's, per stage what was removed, and the survivors' final keep-probabilities; in report.json (and back),
report.md and training_cost.png. A report without them (other methods, older report.json files) renders as
before."""

import difflib
import json

import matplotlib.pyplot as plt
import pytest
import torch

from compressor.api import compress
from compressor.report import (CompressedStats, DenseStats, EpochCost, LatencyStats, LayerShape, LayerStats, OnnxStats,
                               PassStats, ProbabilityCounts, Report, StageStats, StructureStats, render_markdown,
                               write_report)

DENSE_MACS = 1000
# Σ MACs trained = 2,400 of 3 epochs × 1,000 dense: 80%.
TRAINING_COST = [EpochCost(epoch=1, seconds=2.5, macs_trained=1000, predicted_macs_alive=800.0, test_accuracy=0.5),
                 EpochCost(epoch=2, seconds=2.0, macs_trained=800, predicted_macs_alive=600.0, test_accuracy=0.75),
                 EpochCost(epoch=3, seconds=1.5, macs_trained=600, predicted_macs_alive=600.0, test_accuracy=0.875)]
STAGES = [
    StageStats("features.stage1", ["features.stage1.0", "features.stage1.1"], ["features.stage1.1"],
               {"features.stage1.0.branch.conv1": [16, 9], "features.stage1.1.branch.conv1": [16, 0]}),
    StageStats("classifier.fc1", [], [], {"classifier.fc1": [500, 120]}),
]
# The float32 ε a structure held at the threshold reads back as: at ε, not between ε and 0.9.
HELD_AT_EPSILON = float(torch.tensor(0.1, dtype=torch.float32))
PROBABILITIES = [ProbabilityCounts.count("θ", "skip-units", [1.0], 0.1),
                 ProbabilityCounts.count("π", "channels", [HELD_AT_EPSILON, 0.3, 0.5, 0.89, 0.9, 1.0], 0.1)]
NOTES = ["features.stage2.0: not gated: a test note"]


def _report(training: bool = True) -> Report:
    """A structured report by hand; `training` adds what a method that prunes while it trains records."""
    structure = StructureStats(
        macs_removed=0.4, params_removed=0.3, removed_units=["features.stage1.1"],
        layers=[LayerShape("features.stage1.0.branch.conv1", [16, 16, 3, 3], [9, 16, 3, 3]),
                LayerShape("features.stage1.1.branch.conv1", [16, 16, 3, 3], None)],
        predicted_macs_removed=0.4,
        **(dict(stages=STAGES, probabilities=PROBABILITIES, notes=NOTES) if training else {}))
    return Report(
        tool_version="0.1.0", model="net.pt", arch="resnet20", input_shape=[1, 28, 28], data="digits",
        method="bernoulli", target=0.4, pattern="structured", epochs=3, method_config={"epsilon": 0.1},
        dense=DenseStats(params=500, macs=DENSE_MACS, accuracy=0.9),
        compressed=CompressedStats(params=350, params_nonzero=350, macs=600, macs_nonzero=600, sparsity=0.0,
                                   accuracy=0.875),
        layers=[LayerStats("features.stage1.0.branch.conv1", "Conv2d", [9, 16, 3, 3], 1296, 0, 0.0, "structured")],
        onnx=OnnxStats(path="model.onnx", opset=18, max_abs_diff=1e-6, tolerance=1e-3, sparsity=0.0, nodes=12),
        latency=LatencyStats(backend="onnxruntime-cpu", batch=1, threads=None, dense_ms=1.0, compressed_ms=0.6,
                             dense_p90_ms=1.1, compressed_p90_ms=0.7, runs=50),
        passes=[PassStats("SliceChannels", True, 0.1)],
        structure=structure,
        training_cost=TRAINING_COST if training else [])


def test_relative_training_cost_is_the_macs_trained_over_as_many_dense_epochs():
    assert _report().relative_training_cost == pytest.approx(2400 / (3 * DENSE_MACS))
    assert _report(training=False).relative_training_cost is None


def test_probabilities_are_binned_with_the_ones_held_at_epsilon_apart():
    pi = PROBABILITIES[1]
    assert (pi.low, pi.middle, pi.high, pi.survivors) == (2, 2, 2, 6)
    # 0.3, 0.5 and 0.89: not the one held at ε, not 0.9 or above.
    assert pi.undecided == 3
    theta = PROBABILITIES[0]
    assert (theta.low, theta.middle, theta.high, theta.undecided) == (0, 0, 1, 0)


def test_report_json_round_trip_keeps_the_new_fields():
    report = _report()
    loaded = Report.from_dict(json.loads(json.dumps(report.to_dict())))
    assert loaded == report
    assert loaded.training_cost[1].macs_trained == 800
    assert loaded.structure.stages[0].channels["features.stage1.0.branch.conv1"] == [16, 9]


def test_an_older_report_json_loads_with_the_new_fields_empty():
    data = _report(training=False).to_dict()
    del data["training_cost"]
    for key in ("stages", "probabilities", "notes"):
        del data["structure"][key]
    loaded = Report.from_dict(data)
    assert loaded == _report(training=False)
    assert loaded.training_cost == [] and loaded.structure.stages == [] and loaded.structure.notes == []


def test_markdown_has_the_training_cost_table_and_the_cumulative_cost():
    markdown = render_markdown(_report())
    section = markdown[markdown.index("## Training cost"):markdown.index("## Passes")]
    assert "![MACs trained per epoch and cumulative cost against the dense model](training_cost.png)" in section
    assert ("| epoch | seconds | MACs trained | of dense | MACs that would ship (predicted) | test accuracy |"
            in section)
    assert "| 1 | 2.50 | 1,000 | 100.00% | 800 | 50.00% |" in section
    assert "| 2 | 2.00 | 800 | 80.00% | 600 | 75.00% |" in section
    assert "| 3 | 1.50 | 600 | 60.00% | 600 | 87.50% |" in section
    assert ("Cumulative training cost: 2,400 MACs trained over 3 epochs, 80.00% of training the dense model "
            "(1,000 MACs) for as many epochs.") in section


def test_markdown_structure_has_the_stages_the_probabilities_and_the_notes():
    markdown = render_markdown(_report())
    structure = markdown[markdown.index("## Structure"):markdown.index("![output channels kept per layer]")]
    assert "| stage | skip-units kept | skip-units removed | hidden channels before → after |" in structure
    # Its removed unit's channels count as 0 after.
    assert "| `features.stage1` | 1/2 | `features.stage1.1` | 32 → 9 (2 layers) |" in structure
    assert "| `classifier.fc1` | - | - | 500 → 120 (1 layer) |" in structure
    assert ("| probability of the survivors when fixed at 1 | [ε=0.1, 0.5) | [0.5, 0.9) | [0.9, 1] | "
            "strictly between ε=0.1 and 0.9 | survivors |") in structure
    assert "| θ (skip-units) | 0 | 0 | 1 | 0 | 1 |" in structure
    assert "| π (channels) | 2 | 2 | 2 | 3 | 6 |" in structure
    assert "- features.stage2.0: not gated: a test note" in structure


def test_write_report_writes_a_training_cost_png(tmp_path):
    write_report(_report(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["channels.png", "report.json", "report.md",
                                                         "training_cost.png"]
    png = tmp_path / "training_cost.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = plt.imread(png).shape
    assert height > 100 and width > 100
    assert "](training_cost.png)" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["training_cost"][2]["macs_trained"] == 600


STRUCTURE_WITHOUT_TRAINING = """## Structure

MACs removed (counted on the compiled model): 40.00% (the method predicted 40.00%); parameters removed: 30.00%.

Skip-units removed: `features.stage1.1`.

![output channels kept per layer](channels.png)

| layer | weight before | weight after | output channels kept |
|---|---|---|---|
| `features.stage1.0.branch.conv1` | 16x16x3x3 | 9x16x3x3 | 56% |
| `features.stage1.1.branch.conv1` | 16x16x3x3 | removed | 0% |

## Passes"""


def test_a_report_without_the_fields_renders_as_before(tmp_path):
    plain = _report(training=False)
    markdown = render_markdown(plain)
    headings = [line for line in markdown.splitlines() if line.startswith("#")]
    assert headings == ["# Compression report: resnet20", "## Summary", "## ONNX", "## Latency", "## Structure",
                        "## Passes"]
    assert STRUCTURE_WITHOUT_TRAINING in markdown
    assert "training_cost.png" not in markdown
    # The new content only adds lines: from the plain report to the full one, nothing changes or goes.
    edits = difflib.SequenceMatcher(a=markdown.splitlines(), b=render_markdown(_report()).splitlines(),
                                    autojunk=False).get_opcodes()
    assert {tag for tag, *_ in edits} == {"equal", "insert"}
    write_report(plain, tmp_path)
    assert not (tmp_path / "training_cost.png").exists()


def test_bernoulli_run_reports_its_training_cost(lenet5_checkpoint, tmp_path):
    out = tmp_path / "o"
    report = compress(lenet5_checkpoint, "bernoulli", "50%", epochs=1, out=out, progress=False)
    [epoch] = report.training_cost
    # The first epoch trains the whole network.
    assert epoch.epoch == 1 and epoch.macs_trained == report.dense.macs and epoch.seconds > 0
    assert report.relative_training_cost == pytest.approx(1.0)
    # lenet5 has no skip-units: one stage per gated layer, and a note saying why no layer went.
    assert report.structure.stages and all(not stage.units for stage in report.structure.stages)
    assert [row.variable for row in report.structure.probabilities] == ["π"]
    assert any("no skip-units" in note for note in report.structure.notes)
    assert (out / "training_cost.png").read_bytes()[:4] == b"\x89PNG"
    assert Report.from_dict(json.loads((out / "report.json").read_text())) == report
    markdown = (out / "report.md").read_text()
    assert "## Training cost" in markdown and "| stage |" in markdown
