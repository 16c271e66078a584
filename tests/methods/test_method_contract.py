"""The method contract end to end: a method written in the tests folder, registered, and run through `compress`
gets its own section in report.md and report.json, its facts into the ONNX metadata and the checkpoint, and the
run's settings through its `RunContext`, with no edit anywhere but its own file and the registry."""

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import onnx
import pytest
import torch
import torch.nn as nn

from compressor.api import compress
from compressor.data import DataBundle
from compressor.methods import Method, MethodOutcome, RunContext, create_method, list_methods, register_method
from compressor.methods.base import _METHODS
from compressor.passes.write_onnx_metadata import read_onnx_metadata
from compressor.report import Report, ReportSection
from compressor.report.section import SECTIONS


@dataclass
class LargestRowsSection(ReportSection):
    """The small method's own part of the report."""

    key: ClassVar[str] = "largest_rows"

    kept_rows: dict[str, int]
    bench_batch: int

    def markdown(self, report: Report) -> list[str]:
        rows = ", ".join(f"{name}: {kept}" for name, kept in self.kept_rows.items())
        return ["## Largest rows", "", f"Rows kept per layer ({rows}), planned for batch {self.bench_batch}.", ""]


@dataclass
class LargestRowsConfig:
    rows: int = 2


class LargestRowsMethod(Method):
    """Keeps the `rows` output rows of largest L1 norm in every Linear layer, masking the others (no training)."""

    name = "largest_rows"
    Config = LargestRowsConfig
    default_epochs = 0

    def prepare(self, model: nn.Module, data: DataBundle) -> nn.Module:
        self.kept = {}
        for name, layer in model.named_modules():
            if isinstance(layer, nn.Linear):
                rows = min(self.config.rows, layer.out_features)
                keep = layer.weight.detach().abs().sum(dim=1).topk(rows).indices
                mask = torch.zeros_like(layer.weight)
                mask[keep] = 1
                torch.nn.utils.prune.custom_from_mask(layer, "weight", mask)
                self.kept[name] = rows
        return model

    def outcome(self) -> MethodOutcome:
        return dataclasses.replace(super().outcome(), details={"largest_rows": dict(self.kept)},
                                   sections=[LargestRowsSection(dict(self.kept), self.run.bench_batch)])


@pytest.fixture
def registered():
    """The method and its section registered for one test, and forgotten after it."""
    sections = dict(SECTIONS)
    register_method(LargestRowsMethod)
    yield
    del _METHODS[LargestRowsMethod.name]
    SECTIONS.clear()
    SECTIONS.update(sections)


def test_a_method_from_outside_the_package_has_its_section_in_both_reports(registered, lenet5_checkpoint, tmp_path):
    assert "largest_rows" in list_methods()
    report = compress(lenet5_checkpoint, "largest_rows", None, out=tmp_path / "out", bench_batch=3, bench_runs=3,
                      method_options={"rows": 3}, progress=False)
    kept = {"classifier.fc1": 3, "classifier.fc2": 3}
    assert report.sections["largest_rows"] == LargestRowsSection(kept, 3)

    markdown = (tmp_path / "out" / "report.md").read_text()
    assert ("## Largest rows\n\nRows kept per layer (classifier.fc1: 3, classifier.fc2: 3), planned for batch 3.\n"
            in markdown)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["largest_rows"] == {"kept_rows": kept, "bench_batch": 3}
    assert data["method"] == "largest_rows" and data["method_config"] == {"rows": 3}
    assert Report.from_dict(data).sections["largest_rows"] == report.sections["largest_rows"]

    # The method's facts travel in the ONNX file and the checkpoint.
    metadata = read_onnx_metadata(onnx.load(tmp_path / "out" / "model.onnx"))
    assert metadata["largest_rows"] == kept and metadata["method"] == "largest_rows"
    checkpoint = torch.load(tmp_path / "out" / "model.pt", weights_only=False)
    assert checkpoint["extra"]["compression"]["largest_rows"] == kept
    for row in data["layers"]:
        if row["kind"] == "Linear":
            assert row["weights"] - row["zeros"] <= 3 * row["shape"][1]


def test_the_run_settings_reach_a_method_through_its_run_context(registered):
    assert create_method("largest_rows", None).run == RunContext(bench_batch=1, threads=None)
    method = create_method("largest_rows", None, run=RunContext(bench_batch=8, threads=2), rows=4)
    assert (method.run.bench_batch, method.run.threads) == (8, 2)
    assert method.settings() == {"method": "largest_rows", "target": None, "pattern": "unstructured",
                                 "config": {"rows": 4}}
