"""The compression report: one dataclass tree, serialised to report.json and rendered to report.md and PNG files.

`schema` holds `Report`, the stats dataclasses it is made of and their round trip through report.json;
`markdown` renders report.md (`render_markdown`) and the terminal summary (`summary_text`); `plots` draws the
plots several methods share and says which PNG files a report gets (`plot_files`); `section` holds `ReportSection`,
the part of the report a method owns: its stats, its report.md lines and its plots, defined with the method in
compressor.methods. `write_report` writes the three kinds of file into an output folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from compressor.files import atomic_write_text
from compressor.report.markdown import render_markdown, summary_text
from compressor.report.plots import (plot_channels, plot_dependence, plot_files, plot_sparsity, plot_training_cost,
                                     plot_writers)
from compressor.report.schema import (CompressedStats, DenseStats, EpochCost, LatencyCheck, LatencyLayer,
                                      LatencyStats, LatencyTargetStats, LayerShape, LayerStats, OnnxStats, PassStats,
                                      ProbabilityCounts, PruningStage, Report, StageStats, StructureStats)
from compressor.report.section import ReportSection, read_sections

__all__ = [
    "CompressedStats", "DenseStats", "EpochCost", "LatencyCheck", "LatencyLayer", "LatencyStats", "LatencyTargetStats",
    "LayerShape", "LayerStats", "OnnxStats", "PassStats", "ProbabilityCounts", "PruningStage", "Report",
    "ReportSection", "StageStats", "StructureStats", "plot_channels", "plot_dependence", "plot_files",
    "plot_sparsity", "plot_training_cost", "plot_writers", "read_sections", "render_markdown", "summary_text",
    "write_report",
]


def write_report(report: Report, folder: str | os.PathLike) -> None:
    """report.json, report.md and the plots of `plot_files`: sparsity.png, or channels.png for structured methods;
    training_cost.png when the method recorded what each epoch trained; dependence.png when it pruned in stages;
    and the plots of the report's sections (efficiency.png when a snapshot sweep ran)."""
    folder = Path(folder)
    atomic_write_text(folder / "report.json", json.dumps(report.to_dict(), indent=2) + "\n")
    atomic_write_text(folder / "report.md", render_markdown(report))
    for name, plot in plot_writers(report).items():
        plot(report, folder / name)
