"""The report's PNG files: the shared plots first (sparsity or channels, training cost, dependence), then each
section's; `write_report` writes every one `plot_files` names."""

import json

import matplotlib.pyplot as plt

from compressor.report import (EpochCost, LayerShape, PruningStage, StructureStats, plot_files, render_markdown,
                               write_report)


def test_plot_files_names_the_shared_plots_then_the_sections(make_report, snapshot_section):
    assert plot_files(make_report()) == ["sparsity.png"]
    assert plot_files(make_report(sections={"snapshot": snapshot_section})) == ["sparsity.png", "efficiency.png"]
    snapshot_section.sweep = []
    assert plot_files(make_report(sections={"snapshot": snapshot_section})) == ["sparsity.png"]
    structure = StructureStats(
        macs_removed=0.5, params_removed=0.5, removed_units=["unit"],
        layers=[LayerShape("conv1", [6, 1, 5, 5], [3, 1, 5, 5])],
        pruning_stages=[PruningStage(1, 2, ["unit"], {"unit": 0.1, "other": 0.5}, 500, 2500, 0.8, None)])
    cost = [EpochCost(epoch=1, seconds=1.0, macs_trained=5000, predicted_macs_alive=2500.0, test_accuracy=0.8)]
    assert plot_files(make_report(structure=structure, training_cost=cost)) == ["channels.png", "training_cost.png",
                                                                                "dependence.png"]


def test_write_report_writes_the_efficiency_plot_of_a_sweep(make_report, snapshot_section, tmp_path):
    report = make_report(method="snapshot", sections={"snapshot": snapshot_section})
    write_report(report, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["efficiency.png", "report.json", "report.md",
                                                         "sparsity.png"]
    height, width, _ = plt.imread(tmp_path / "efficiency.png").shape
    assert height > 100 and width > 100
    assert (tmp_path / "report.md").read_text() == render_markdown(report)
    assert json.loads((tmp_path / "report.json").read_text()) == report.to_dict()
