"""The compression report: one dataclass tree, serialised to report.json and rendered to report.md and PNG.

Every number here was measured in the run that wrote it: parameters and MACs by counting a forward pass,
sparsity by counting zeros (in torch and again in the ONNX file), accuracy on the test split, latency by timed
runs. A field that is a prediction says so in its name.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor.files import atomic_write, atomic_write_text
from compressor.tables import markdown_table, text_table


@dataclass
class DenseStats:
    """The model before compression."""

    params: int
    macs: int
    accuracy: float


@dataclass
class CompressedStats:
    """The model after compression; `sparsity` is zero weights ÷ weights over the prunable layers."""

    params: int
    params_nonzero: int
    macs: int
    macs_nonzero: int
    sparsity: float
    accuracy: float


@dataclass
class LayerStats:
    """One prunable layer's counted sparsity and the layout it ended in."""

    name: str
    kind: str
    shape: list[int]
    weights: int
    zeros: int
    sparsity: float
    pattern: str
    note: str = ""
    predicted_sparsity: float | None = None


@dataclass
class LayerShape:
    """A Conv/Linear layer's weight shape before and after structural compression (None: removed)."""

    name: str
    before: list[int]
    after: list[int] | None
    transposed: bool = False  # a transposed convolution: output channels are the weight's second axis

    @property
    def kept(self) -> float:
        """Fraction of the layer's output channels that remain."""
        axis = 1 if self.transposed else 0
        return 0.0 if self.after is None else self.after[axis] / self.before[axis]


@dataclass
class StructureStats:
    """What structural compression removed, counted on the compiled model."""

    macs_removed: float
    params_removed: float
    removed_units: list[str]
    layers: list[LayerShape]
    predicted_macs_removed: float | None = None
    left_whole: list[dict[str, str]] = field(default_factory=list)  # {"layer", "reason"}: channels kept whole


@dataclass
class OnnxStats:
    """The exported file: where it is, its opset, and its agreement with torch on real test data."""

    path: str
    opset: int
    max_abs_diff: float
    tolerance: float
    sparsity: float
    nodes: int


@dataclass
class LatencyStats:
    """Dense and compressed ONNX timed with the same backend, batch and threads in the same run."""

    backend: str
    batch: int
    threads: int | None
    dense_ms: float
    compressed_ms: float
    dense_p90_ms: float
    compressed_p90_ms: float
    runs: int


@dataclass
class PassStats:
    """One compiler pass as it ran."""

    name: str
    modified: bool
    seconds: float


@dataclass
class Report:
    """Everything a compression run did and measured."""

    tool_version: str
    model: str
    arch: str | None
    input_shape: list[int]
    data: str
    method: str
    target: float | None
    pattern: str
    epochs: int
    method_config: dict[str, Any]
    dense: DenseStats
    compressed: CompressedStats
    layers: list[LayerStats]
    onnx: OnnxStats
    latency: LatencyStats
    passes: list[PassStats] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    seconds_per_epoch: float | None = None
    structure: StructureStats | None = None
    # Where the method trained: the device (with the GPU's name) and how many data-parallel processes.
    device: str = "cpu"
    processes: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        nested = {"dense": DenseStats, "compressed": CompressedStats, "onnx": OnnxStats, "latency": LatencyStats}
        values = dict(data)
        for key, kind in nested.items():
            values[key] = kind(**data[key])
        values["layers"] = [LayerStats(**row) for row in data["layers"]]
        values["passes"] = [PassStats(**row) for row in data.get("passes", [])]
        if data.get("structure"):
            structure = dict(data["structure"])
            structure["layers"] = [LayerShape(**row) for row in structure["layers"]]
            values["structure"] = StructureStats(**structure)
        return cls(**values)

    def summary_rows(self) -> list[tuple[str, str, str]]:
        """(quantity, dense, compressed) rows for the summary table."""
        d, c, lat = self.dense, self.compressed, self.latency
        if self.structure is not None:
            shape_rows = [
                ("params", f"{d.params:,}", f"{c.params:,} (−{self.structure.params_removed:.2%})"),
                ("MACs", f"{d.macs:,}", f"{c.macs:,} (−{self.structure.macs_removed:.2%})"),
                ("skip-units removed", "-", str(len(self.structure.removed_units))),
            ]
        else:
            shape_rows = [
                ("params (compressed: non-zero)", f"{d.params:,}", f"{c.params_nonzero:,}"),
                ("MACs (non-zero weights)", f"{d.macs:,}", f"{c.macs_nonzero:,}"),
                ("sparsity", "0.00%", f"{c.sparsity:.2%}"),
            ]
        return [
            *shape_rows,
            ("accuracy", f"{d.accuracy:.2%}", f"{c.accuracy:.2%}"),
            (f"latency {lat.backend} b={lat.batch} (median)", f"{lat.dense_ms:.3f} ms", f"{lat.compressed_ms:.3f} ms"),
        ]


def summary_text(report: Report) -> str:
    """The terminal summary printed at the end of a run."""
    return text_table(["", "dense", "compressed"], report.summary_rows())


def render_markdown(report: Report) -> str:
    """report.md: summary, export check, latency, per-layer table and the passes that ran."""
    r = report
    parts = [
        f"# Compression report: {r.arch or r.model}",
        "",
        f"Method **{r.method}**, target {'none' if r.target is None else f'{r.target:.2%}'}, pattern {r.pattern}, "
        f"{r.epochs} training epochs "
        f"on `{r.data}` ({r.device}{f', {r.processes} data-parallel processes' if r.processes > 1 else ''}); "
        f"input {'x'.join(map(str, r.input_shape))}; compressor {r.tool_version}.",
        "",
        "## Summary",
        "",
        markdown_table(["", "dense", "compressed"], [list(row) for row in r.summary_rows()]),
        "",
        "## ONNX",
        "",
        f"`{r.onnx.path}` (opset {r.onnx.opset}, {r.onnx.nodes} nodes). Sparsity read back from the file: "
        f"{r.onnx.sparsity:.2%}. Max |onnxruntime − torch| on a real test batch: {r.onnx.max_abs_diff:.3g} "
        f"(allowed {r.onnx.tolerance:.3g}).",
        "",
        "## Latency",
        "",
        markdown_table(
            ["backend", "batch", "threads", "dense median ms", "compressed median ms", "dense p90 ms",
             "compressed p90 ms", "runs"],
            [[r.latency.backend, r.latency.batch, r.latency.threads or "default", f"{r.latency.dense_ms:.3f}",
              f"{r.latency.compressed_ms:.3f}", f"{r.latency.dense_p90_ms:.3f}", f"{r.latency.compressed_p90_ms:.3f}",
              r.latency.runs]]),
        "",
        *(_structure_section(r.structure) if r.structure is not None else [
            "## Layers",
            "",
            "![per-layer sparsity](sparsity.png)",
            "",
            _layer_table(r.layers),
            "",
        ]),
        "## Passes",
        "",
        markdown_table(["pass", "modified", "seconds"],
                        [[p.name, "yes" if p.modified else "no", f"{p.seconds:.2f}"] for p in r.passes]),
        "",
    ]
    return "\n".join(parts)


def _structure_section(structure: StructureStats) -> list[str]:
    """Removed units and each layer's shape before → after (structured methods)."""
    predicted = ("" if structure.predicted_macs_removed is None
                 else f" (the method predicted {structure.predicted_macs_removed:.2%})")
    rows = [[f"`{row.name}`", "x".join(map(str, row.before)),
             "removed" if row.after is None else "x".join(map(str, row.after)), f"{row.kept:.0%}"]
            for row in structure.layers]
    return [
        "## Structure",
        "",
        f"MACs removed (counted on the compiled model): {structure.macs_removed:.2%}{predicted}; "
        f"parameters removed: {structure.params_removed:.2%}.",
        "",
        f"Skip-units removed: {', '.join(f'`{u}`' for u in structure.removed_units) or 'none'}.",
        "",
        *([markdown_table(["channels left whole (produced by)", "why"],
                          [[f"`{item['layer']}`", item["reason"]] for item in structure.left_whole]), ""]
          if structure.left_whole else []),
        "![output channels kept per layer](channels.png)",
        "",
        markdown_table(["layer", "weight before", "weight after", "output channels kept"], rows),
        "",
    ]


def _layer_table(layers: list[LayerStats]) -> str:
    """Per-layer rows; a predicted-sparsity column appears when the method made predictions."""
    predicted = any(row.predicted_sparsity is not None for row in layers)
    header = ["layer", "kind", "shape", "weights", "zeros", "sparsity", *(["predicted"] if predicted else []),
              "pattern", "note"]
    rows = []
    for row in layers:
        guess = "-" if row.predicted_sparsity is None else f"{row.predicted_sparsity:.2%}"
        rows.append([f"`{row.name}`", row.kind, "x".join(map(str, row.shape)), f"{row.weights:,}", f"{row.zeros:,}",
                     f"{row.sparsity:.2%}", *([guess] if predicted else []), row.pattern, row.note])
    return markdown_table(header, rows)


def _bar_chart(path: str | os.PathLike, names: list[str], values: list[float], colours: list[str],
               line: tuple[float, str], ylabel: str, title: str, marks: list[tuple[int, float]] = (),
               marks_label: str = "") -> Path:
    """One bar per layer (values in %), a horizontal reference line, optional point marks; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(6.0, 0.28 * len(names) + 2), 4.2))
    axes.bar(range(len(names)), values, color=colours)
    if marks:
        axes.scatter(*zip(*marks), color="black", marker="_", s=200, zorder=3, label=marks_label)
    axes.axhline(line[0], color="tab:red", linestyle="--", label=line[1])
    axes.set_xticks(range(len(names)), names, rotation=75, ha="right", fontsize=7 if len(names) < 40 else 5)
    axes.set_ylim(0, 105)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(loc="upper left")
    figure.tight_layout()
    written = atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)
    return written


def plot_sparsity(report: Report, path: str | os.PathLike) -> Path:
    """sparsity.png: one bar per prunable layer, the global sparsity as a line, predictions as marks."""
    colours = {"unstructured": "tab:blue", "2:4": "tab:green", "dense": "tab:gray"}
    return _bar_chart(
        path, [row.name for row in report.layers], [100 * row.sparsity for row in report.layers],
        [colours.get(row.pattern, "tab:blue") for row in report.layers],
        (100 * report.compressed.sparsity, f"global {report.compressed.sparsity:.1%}"), "sparsity (%)",
        f"{report.arch or report.model}: {report.method}, {report.pattern}",
        marks=[(i, 100 * row.predicted_sparsity) for i, row in enumerate(report.layers)
               if row.predicted_sparsity is not None],
        marks_label="predicted (erf)")


def plot_channels(report: Report, path: str | os.PathLike) -> Path:
    """channels.png: per Conv/Linear layer, the share of its output channels that structural compression kept."""
    layers = report.structure.layers
    kept_macs = 1 - report.structure.macs_removed
    return _bar_chart(
        path, [row.name for row in layers], [100 * row.kept for row in layers],
        ["tab:gray" if row.after is None else "tab:blue" for row in layers],
        (100 * kept_macs, f"MACs kept {kept_macs:.1%}"), "output channels kept (%)",
        f"{report.arch or report.model}: {report.method} (grey: removed)")


def write_report(report: Report, folder: str | os.PathLike) -> None:
    """report.json, report.md and a plot in `folder`: sparsity.png, or channels.png for structured methods."""
    folder = Path(folder)
    atomic_write_text(folder / "report.json", json.dumps(report.to_dict(), indent=2) + "\n")
    atomic_write_text(folder / "report.md", render_markdown(report))
    if report.structure is not None:
        plot_channels(report, folder / "channels.png")
    else:
        plot_sparsity(report, folder / "sparsity.png")
