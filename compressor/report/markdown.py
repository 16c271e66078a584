"""report.md and the terminal summary: `render_markdown` lays out the sections every report has (summary, ONNX,
latency, latency target, structure or layers, training cost, passes) and puts each method's `ReportSection`
lines after the layers; the renderers here cover the parts that several methods share.
"""

from __future__ import annotations

from typing import Any

from compressor.report.schema import (LatencyCheck, LatencyTargetStats, LayerStats, ProbabilityCounts, PruningStage,
                                      Report, StageStats, StructureStats)
from compressor.tables import markdown_table, text_table


def summary_text(report: Report) -> str:
    """The terminal summary printed at the end of a run."""
    return text_table(["", "dense", "compressed"], report.summary_rows())


def render_markdown(report: Report) -> str:
    """report.md: summary, export check, latency, per-layer table, the methods' own sections, the training cost per
    epoch (methods that change the network while they train) and the passes that ran."""
    r = report
    parts = [
        f"# Compression report: {r.arch or r.model}",
        "",
        f"Method **{r.method}**, target {'none' if r.target is None else f'{r.target:.2%}'}, pattern {r.pattern}, "
        f"{r.epochs} training epochs "
        f"on `{r.data}` ({r.device}{f', {r.processes} data-parallel processes' if r.processes > 1 else ''}); "
        f"input {'x'.join(map(str, r.input_shape))}; compressor {r.tool_version}.",
        *([f"Training: {_training_text(r.training)}."] if r.training else []),
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
        *(_latency_target_section(r.latency_target) if r.latency_target is not None else []),
        *(_structure_section(r.structure) if r.structure is not None else [
            "## Layers",
            "",
            "![per-layer sparsity](sparsity.png)",
            "",
            _layer_table(r.layers),
            "",
        ]),
        *(line for section in r.sections.values() for line in section.markdown(r)),
        *_training_cost_section(r),
        "## Passes",
        "",
        markdown_table(["pass", "modified", "seconds"],
                        [[p.name, "yes" if p.modified else "no", f"{p.seconds:.2f}"] for p in r.passes]),
        "",
    ]
    return "\n".join(parts)


def _latency_target_section(lt: LatencyTargetStats) -> list[str]:
    """Target, prediction and measurement of a latency target, how close the table's sum came to the measured
    models, and each timed layer's entries."""
    threads = "" if lt.threads is None else f", {lt.threads} threads"
    rows = [["dense", f"{lt.dense_predicted_ms:.3f}", f"{lt.dense_measured_ms:.3f}",
             f"{lt.dense_predicted_ms / lt.dense_measured_ms:.2f}", "-"],
            ["compressed", f"{lt.compressed_predicted_ms:.3f}", f"{lt.compressed_measured_ms:.3f}",
             f"{lt.compressed_predicted_ms / lt.compressed_measured_ms:.2f}", f"{lt.measured_removed:.1%}"]]
    layers = [[f"`{l.name}`", l.dense, l.compressed, f"{l.dense_ms:.3f}", f"{l.compressed_ms:.3f}"] for l in lt.layers]
    untimed = (f" Layers left out of the sum (not timed): {', '.join(f'`{n}`' for n in lt.untimed)}."
               if lt.untimed else "")
    return [
        "## Latency target",
        "",
        f"Target: remove {lt.target:.1%} of the latency on {lt.backend} ({lt.precision}{threads}), batch {lt.batch}: "
        f"{lt.requested_ms:.3f} ms requested; the compressed model measured {lt.compressed_measured_ms:.3f} ms "
        f"({lt.compressed_measured_ms / lt.requested_ms - 1:+.1%} from the request), {lt.measured_removed:.1%} "
        f"removed against {lt.predicted_removed:.1%} predicted. The prediction is the sum of the timed layers' "
        f"entries in the latency table; the two models were timed in turn, run by run, in this run.{untimed}",
        "",
        markdown_table(["model", "predicted ms", "measured ms", "predicted ÷ measured", "latency removed"], rows),
        "",
        *_latency_checks(lt.checks),
        f"Latency table `{lt.cache}`: {lt.entries_measured} layer shapes measured in this run "
        f"({lt.seconds_measuring:.1f} s), {lt.cache_hits} lookups answered from the table.",
        "",
        markdown_table(["layer", "dense", "compressed", "dense ms", "compressed ms (predicted)"], layers),
        "",
    ]


def _latency_checks(checks: list[LatencyCheck]) -> list[str]:
    """The plans timed whole while the target chose one, in the order they were timed."""
    if not checks:
        return []
    rows = [[str(i), f"{check.predicted_removed:.1%}", f"{check.measured_removed:.1%}"]
            for i, check in enumerate(checks, start=1)]
    return ["While choosing, each plan was compiled and timed against the dense model, and the goal moved by what "
            "was measured; the plan measured closest to the target was kept:", "",
            markdown_table(["timing", "latency removed (predicted)", "latency removed (measured)"], rows), ""]


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
        *([_stage_table(structure.stages), ""] if structure.stages else []),
        *([_probability_table(structure.probabilities), ""] if structure.probabilities else []),
        *(_pruning_stages_section(structure.pruning_stages) if structure.pruning_stages else []),
        *([*(f"- {note}" for note in structure.notes), ""] if structure.notes else []),
        *([markdown_table(["channels left whole (produced by)", "why"],
                          [[f"`{item['layer']}`", item["reason"]] for item in structure.left_whole]), ""]
          if structure.left_whole else []),
        "![output channels kept per layer](channels.png)",
        "",
        markdown_table(["layer", "weight before", "weight after", "output channels kept"], rows),
        "",
    ]


def _stage_table(stages: list[StageStats]) -> str:
    """Per stage: skip-units kept of those it had, which were removed, and its gated hidden channels summed."""
    rows = []
    for stage in stages:
        widths = list(stage.channels.values())
        channels = (f"{sum(before for before, _ in widths):,} → {sum(after for _, after in widths):,} "
                    f"({len(widths)} {'layer' if len(widths) == 1 else 'layers'})" if widths else "-")
        rows.append([f"`{stage.name}`", f"{stage.units_kept}/{len(stage.units)}" if stage.units else "-",
                     ", ".join(f"`{unit}`" for unit in stage.removed_units) or "-", channels])
    return markdown_table(["stage", "skip-units kept", "skip-units removed", "hidden channels before → after"], rows)


def _pruning_stages_section(stages: list[PruningStage]) -> list[str]:
    """Per round: units scored and removed, the network left, and accuracy before and after retraining."""
    rows = [[stage.stage, stage.units_before, len(stage.removed), ", ".join(f"`{u}`" for u in stage.removed) or "-",
             f"{stage.params:,}", f"{stage.macs:,}", f"{stage.accuracy_after_removal:.2%}",
             "-" if stage.accuracy_after_retraining is None else f"{stage.accuracy_after_retraining:.2%}"]
            for stage in stages]
    return [
        "### Pruning stages",
        "",
        "Each stage scores the skip-units left by their energy dependence on the labels (D), removes some, and "
        "retrains; params and MACs are counted on the network each stage left.",
        "",
        "![energy dependence D of each skip-unit along the depth, one line per stage](dependence.png)",
        "",
        markdown_table(["stage", "units scored", "removed", "units removed", "params", "MACs",
                        "accuracy after removal", "after retraining"], rows),
        "",
    ]


def _training_text(training: dict[str, Any]) -> str:
    optimizer = training["optimizer"]
    if optimizer == "adam":
        optimizer = "AdamW (decoupled weight decay)" if training["wd_mode"] == "decoupled" else "Adam (L2 weight decay)"
    loss = {"ce": "softmax cross-entropy", "bsp": "bipolar softplus on log-likelihood-ratio outputs"}[training["loss"]]
    return f"{loss}; {optimizer}, learning rate {training['lr']:g}, weight decay {training['weight_decay']:g}"


def _probability_table(counts: list[ProbabilityCounts]) -> str:
    """The survivors' keep-probabilities before they were fixed at 1, binned; one row per variable."""
    epsilon = counts[0].epsilon
    return markdown_table(
        ["probability of the survivors when fixed at 1", f"[ε={epsilon:g}, 0.5)", "[0.5, 0.9)", "[0.9, 1]",
         f"strictly between ε={epsilon:g} and 0.9", "survivors"],
        [[f"{row.variable} ({row.structures})", row.low, row.middle, row.high, row.undecided, row.survivors]
         for row in counts])


def _training_cost_section(report: Report) -> list[str]:
    """Per epoch what the method trained and would ship, and the whole training against the dense model's;
    nothing for a method that trained a fixed network."""
    if not report.training_cost:
        return []
    dense = report.dense.macs
    rows = [[epoch.epoch, f"{epoch.seconds:.2f}", f"{epoch.macs_trained:,}", f"{epoch.macs_trained / dense:.2%}",
             f"{epoch.predicted_macs_alive:,.0f}", f"{epoch.test_accuracy:.2%}"] for epoch in report.training_cost]
    epochs = len(report.training_cost)
    return [
        "## Training cost",
        "",
        "MACs per sample of one forward pass. MACs trained are counted on the network as it trained in the epoch; "
        "the network that would ship after it keeps every surviving structure, and its MACs are predicted from "
        "the method's per-layer counts. Seconds are the epoch's training pass, evaluation excluded.",
        "",
        "![MACs trained per epoch and cumulative cost against the dense model](training_cost.png)",
        "",
        markdown_table(["epoch", "seconds", "MACs trained", "of dense", "MACs that would ship (predicted)",
                        "test accuracy"], rows),
        "",
        f"Cumulative training cost: {sum(epoch.macs_trained for epoch in report.training_cost):,} MACs trained over "
        f"{epochs} {'epoch' if epochs == 1 else 'epochs'}, {report.relative_training_cost:.2%} of training the dense "
        f"model ({dense:,} MACs) for as many epochs.",
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
