"""report.md: each method's section stands after the layers (or the structure) and before the training cost, and
the snapshot and switcher sections render their tables and text line for line."""

from compressor.report import EpochCost, render_markdown

SNAPSHOT_MARKDOWN = "\n".join([
    "## Snapshot pruning",
    "",
    "Pruned once, at the paper's θ ratios scaled by one common factor 1.28 to meet the target, then only biases and "
    "normalisation parameters retrained (every Conv/Linear weight frozen; retrain weight decay 0). Parameters are "
    "counted as the paper does: non-zero weights plus every non-weight parameter.",
    "",
    "| group | layers | θ | paper's θ | σ (pooled) | τ = θσ | weights | pruned | share pruned |",
    "|---|---|---|---|---|---|---|---|---|",
    "| conv | 1 | 1.8 | 1.4 | 0.2 | 0.36 | 150 | 120 | 80.00% |",
    "| linear | 1 | 1.6 | 1.25 | per layer | per layer | 850 | 680 | 80.00% |",
    "",
    "|  | test error | parameters | compression | storage bits (our lower bound) |",
    "|---|---|---|---|---|",
    "| dense | 10.00% | 1,016 | 1.0× | 32,512 |",
    "| pruned, before the retrain | 30.00% | 216 | 4.7× | 8,000 |",
    "| after the non-weight retrain | 12.00% | 216 | 4.7× | 8,000 |",
    "",
    "### Efficiency curve",
    "",
    "Each θ setting of the conv group (the others fixed at the paper's) pruned from the same trained model and "
    "retrained alone; bottom-left is more efficient. Storage bits: 32 per parameter counted plus each layer's mask "
    "entropy (our lower bound, not the paper's).",
    "",
    "![test error against parameters, one point per θ](efficiency.png)",
    "",
    "| k | θ conv | parameters | compression | weight sparsity | error before pruning | after pruning | "
    "after retrain | storage bits |",
    "|---|---|---|---|---|---|---|---|---|",
    "| 0 | 0.5 | 600 | 1.7× | 40.00% | 10.00% | 11.00% | 10.00% | 20,000 |",
    "| 9 | 1.4 | 300 | 3.4× | 70.00% | 10.00% | 20.00% | 13.00% | 10,000 |",
    "",
    "## Passes",
])

SWITCHER_MARKDOWN = "\n".join([
    "## Switcher",
    "",
    "Mode neuron (W·diag(z), one switch per input neuron); switchers and task network trained in alternating epochs "
    "on the task loss alone. Emergent sparsity of the gated layers (what the switchers zeroed): 50.00%, test accuracy "
    "85.00%. A target's top-up then switched off the smallest remaining weights and trained the task network one "
    "epoch with the switches frozen: 80.00%. **Every switch of `fc1` is 0: the network no longer reads its input.** "
    "Switches are counted as 0 / (0, 1) / ≥ 1.",
    "",
    "| layer | weights | switches at start | switches at end | zeros at start | emergent | shipped | "
    "neurons switched off |",
    "|---|---|---|---|---|---|---|---|",
    "| `fc1` | 850 | 10 / 40 / 35 | 40 / 20 / 25 | 11.76% | 50.00% | 80.00% | 40 of 85 |",
    "",
    "## Passes",
])

LAYERS_END = "| `fc1` | Linear | 10x85 | 850 | 680 | 80.00% | unstructured |  |\n\n"


def test_the_snapshot_section_follows_the_layers(make_report, snapshot_section):
    markdown = render_markdown(make_report(method="snapshot", sections={"snapshot": snapshot_section}))
    assert LAYERS_END + SNAPSHOT_MARKDOWN in markdown


def test_the_switcher_section_follows_the_layers(make_report, switcher_section):
    markdown = render_markdown(make_report(method="switcher", sections={"switcher": switcher_section}))
    assert LAYERS_END + SWITCHER_MARKDOWN in markdown


def test_a_section_comes_before_the_training_cost(make_report, snapshot_section):
    cost = [EpochCost(epoch=1, seconds=1.0, macs_trained=5000, predicted_macs_alive=1000.0, test_accuracy=0.88)]
    markdown = render_markdown(make_report(sections={"snapshot": snapshot_section}, training_cost=cost))
    headings = [line for line in markdown.splitlines() if line.startswith("#")]
    assert headings[4:] == ["## Layers", "## Snapshot pruning", "### Efficiency curve", "## Training cost",
                            "## Passes"]
