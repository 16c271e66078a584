"""The report's PNG plots that several methods share (per-layer sparsity, output channels kept, training cost per
epoch, energy dependence per stage), and `plot_writers`: which PNG files a report gets, each with the function that
writes it, a method's `ReportSection` adding its own.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Callable

from compressor.files import atomic_write
from compressor.report.schema import Report


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


def plot_training_cost(report: Report, path: str | os.PathLike) -> Path:
    """training_cost.png: per epoch, the MACs trained as a share of the dense model's (bars), and the training
    so far against training the dense model for as many epochs (a line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    dense = report.dense.macs
    epochs = [epoch.epoch for epoch in report.training_cost]
    trained = [100 * epoch.macs_trained / dense for epoch in report.training_cost]
    cumulative = [total / count for count, total in enumerate(itertools.accumulate(trained), start=1)]
    figure, axes = plt.subplots(figsize=(max(6.0, 0.25 * len(epochs) + 2), 4.2))
    axes.bar(epochs, trained, color="tab:blue", alpha=0.6, label="MACs trained in the epoch")
    axes.plot(epochs, cumulative, color="tab:red", marker="o", markersize=3,
              label=f"cumulative: {cumulative[-1]:.1f}% of the dense run")
    axes.axhline(100, color="tab:gray", linestyle="--", label="dense model")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylim(0, 105)
    axes.set_xlabel("epoch")
    axes.set_ylabel("MACs per sample, % of the dense model")
    axes.set_title(f"{report.arch or report.model}: {report.method}, training cost")
    # Below the axes: the bars of an epoch that trained the whole network reach the top.
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, fontsize=8)
    figure.tight_layout()
    written = atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(figure)
    return written


def plot_dependence(report: Report, path: str | os.PathLike) -> Path:
    """dependence.png: each stage's D of every skip-unit it scored, along the depth (one line per stage), the
    units each stage removed marked with a cross."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = report.structure.pruning_stages
    units = list(stages[0].dependence)
    position = {unit: index for index, unit in enumerate(units)}
    figure, axes = plt.subplots(figsize=(max(6.0, 0.3 * len(units) + 2), 4.5))
    colours = plt.get_cmap("viridis")
    for number, stage in enumerate(stages):
        colour = colours(number / max(1, len(stages) - 1))
        scored = [unit for unit in units if unit in stage.dependence]
        axes.plot([position[u] for u in scored], [stage.dependence[u] for u in scored], marker="o", markersize=3,
                  color=colour, label=f"stage {stage.stage}")
        axes.scatter([position[u] for u in stage.removed], [stage.dependence[u] for u in stage.removed], marker="x",
                     s=60, color=colour, zorder=3)
    axes.set_xticks(range(len(units)), units, rotation=75, ha="right", fontsize=7 if len(units) < 40 else 5)
    axes.set_ylabel("energy dependence D")
    axes.set_title(f"{report.arch or report.model}: D per skip-unit and stage (x: removed in that stage)")
    axes.legend(loc="upper left", fontsize=8, ncol=2)
    figure.tight_layout()
    written = atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)
    return written


def plot_writers(report: Report) -> dict[str, Callable[[Report, Path], Path]]:
    """The PNG files `write_report` writes for `report`, each with the function that writes it: sparsity.png, or
    channels.png for structured methods; training_cost.png when the method recorded what each epoch trained;
    dependence.png when it pruned in stages; then each section's plots."""
    files = ["channels.png" if report.structure is not None else "sparsity.png"]
    if report.training_cost:
        files.append("training_cost.png")
    if report.structure is not None and report.structure.pruning_stages:
        files.append("dependence.png")
    plots = {"channels.png": plot_channels, "sparsity.png": plot_sparsity, "training_cost.png": plot_training_cost,
             "dependence.png": plot_dependence}
    writers = {name: plots[name] for name in files}
    for section in report.sections.values():
        writers.update(section.plots(report))
    return writers


def plot_files(report: Report) -> list[str]:
    """The PNG files `write_report` writes for `report`."""
    return list(plot_writers(report))
