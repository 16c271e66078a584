"""The compression report: one dataclass tree, serialised to report.json and rendered to report.md and PNG.

Every number here was measured in the run that wrote it: parameters and MACs by counting a forward pass,
sparsity by counting zeros (in torch and again in the ONNX file), accuracy on the test split, latency by timed
runs. A field that is a prediction says so in its name.

Methods that change the network while they train add what the network was at every epoch: the MACs each epoch
trained (`EpochCost`), so that the training's own cost can be set against training the dense model, and per
stage what was removed (`StageStats`) and how sure the method ended about what it kept (`ProbabilityCounts`).
A method that prunes in rounds of score → remove → retrain records each round (`PruningStage`). Snapshot
pruning records its thresholds per weight group and, with a sweep, one efficiency point per θ setting
(`SnapshotStats`, `efficiency.png`).
Reports written before these fields existed load with them empty, and render as they did.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
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
class StageStats:
    """One stage of a network that a method pruned while it trained: the module holding a run of skip-units (in a
    network without them, one gated layer), its units, those removed, and the width of each gated channel group
    (named by the layer producing it) before training and as the method left it (0: its unit was removed)."""

    name: str
    units: list[str]
    removed_units: list[str]
    channels: dict[str, list[int]]  # group root layer → [width before, width after]

    @property
    def units_kept(self) -> int:
        return len(self.units) - len(self.removed_units)


@dataclass
class ProbabilityCounts:
    """How the surviving structures' keep-probabilities (θ of skip-units, π of channels) are spread, read when
    the method fixed them at 1 (at the end, or with a target once the budget was met): a survivor is at or above
    ε, the method's pruning threshold."""

    variable: str  # "θ" or "π"
    structures: str  # what the variable keeps: "skip-units" or "channels"
    epsilon: float
    low: int  # in [ε, 0.5)
    middle: int  # in [0.5, 0.9)
    high: int  # in [0.9, 1]
    undecided: int  # strictly between ε and 0.9: neither held at the threshold nor settled near 1

    @classmethod
    def count(cls, variable: str, structures: str, values: list[float], epsilon: float) -> "ProbabilityCounts":
        # The probabilities were float32: one held at ε reads back as ε rounded to float32, which is at ε, not above.
        above_epsilon = [p for p in values if p > epsilon and not math.isclose(p, epsilon, rel_tol=1e-6)]
        return cls(variable, structures, epsilon, low=sum(p < 0.5 for p in values),
                   middle=sum(0.5 <= p < 0.9 for p in values), high=sum(p >= 0.9 for p in values),
                   undecided=sum(p < 0.9 for p in above_epsilon))

    @property
    def survivors(self) -> int:
        return self.low + self.middle + self.high


@dataclass
class PruningStage:
    """One round of a method that prunes in stages: every unit's score when the round began (the units left),
    the units it removed, the network it left (counted), and its test accuracy right after the removal and after
    the round's retraining (None when the round did not retrain)."""

    stage: int
    units_before: int
    removed: list[str]
    dependence: dict[str, float]
    params: int
    macs: int
    accuracy_after_removal: float
    accuracy_after_retraining: float | None


@dataclass
class StructureStats:
    """What structural compression removed, counted on the compiled model; and from a method that prunes while
    it trains, what it removed per stage, its survivors' final probabilities and its notes (else empty)."""

    macs_removed: float
    params_removed: float
    removed_units: list[str]
    layers: list[LayerShape]
    predicted_macs_removed: float | None = None
    left_whole: list[dict[str, str]] = field(default_factory=list)  # {"layer", "reason"}: channels kept whole
    stages: list[StageStats] = field(default_factory=list)
    probabilities: list[ProbabilityCounts] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pruning_stages: list[PruningStage] = field(default_factory=list)


@dataclass
class ThresholdGroup:
    """One weight group of snapshot pruning: its θ (after a target's common scale) and the paper's, the pooled σ
    and threshold τ = θσ (None when each layer took its own σ), and the weights it pruned."""

    group: str
    layers: list[str]
    theta: float
    paper_theta: float
    sigma: float | None
    threshold: float | None
    weights: int
    pruned: int


@dataclass
class EfficiencyPoint:
    """One θ setting of a snapshot sweep, pruned from the same trained model and retrained alone. Parameters are
    the paper's count: non-zero weights plus every non-weight parameter; bits are our lower bound (32 bits per
    parameter counted plus the entropy of each layer's mask)."""

    k: int
    theta: float
    params: int
    params_dense: int
    sparsity: float
    bits: float
    accuracy_after_pruning: float
    accuracy_after_retraining: float

    @property
    def compression(self) -> float:
        return self.params_dense / self.params


@dataclass
class SnapshotStats:
    """Snapshot pruning of the shipped model (mode θ, target or 2:4) and the sweep's efficiency points."""

    mode: str
    groups: list[ThresholdGroup]
    accuracy_after_pruning: float
    params: int
    params_dense: int
    sparsity: float
    bits: float
    scale: float | None = None  # the common factor a target put on every θ
    family: str | None = None
    swept_group: str | None = None
    sweep: list[EfficiencyPoint] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SnapshotStats":
        values = dict(data)
        values["groups"] = [ThresholdGroup(**row) for row in data.get("groups", [])]
        values["sweep"] = [EfficiencyPoint(**row) for row in data.get("sweep", [])]
        return cls(**values)


@dataclass
class SwitchedLayer:
    """One Linear layer gated by a switcher: its switches (counts of exactly 0, in (0, 1) and ≥ 1) at the start and
    at the end of training, and its zero weights at the start, at the end (emergent) and in the shipped model
    (after a target's top-up); in neuron mode, its input neurons and those switched off, and the producer channels
    removed with them (by the producer's name)."""

    name: str
    weights: int
    switches_start: dict[str, int]
    switches_end: dict[str, int]
    zeros_start: int
    zeros_end: int
    zeros_final: int
    neurons: int | None = None
    neurons_switched_off: int | None = None
    channels_removed: dict[str, int] = field(default_factory=dict)


@dataclass
class SwitcherStats:
    """Switcher networks: the mode, the gated layers' emergent sparsity (what the switchers zeroed) and the shipped
    one, the test accuracy at the end of the alternating training, and whether a target's top-up ran."""

    mode: str
    emergent_sparsity: float
    final_sparsity: float
    accuracy_emergent: float
    topped_up: bool
    layers: list[SwitchedLayer]
    cut_layers: list[str] = field(default_factory=list)  # gated layers left with every switch at 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SwitcherStats":
        return cls(**{**data, "layers": [SwitchedLayer(**row) for row in data["layers"]]})


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
class LatencyLayer:
    """One timed layer of a latency target: its shape before and after, and its table entries (ms, × calls)."""

    name: str
    dense: str
    compressed: str
    dense_ms: float
    compressed_ms: float


@dataclass
class LatencyCheck:
    """A plan timed whole against the dense model while a latency target chose it."""

    predicted_removed: float  # by the latency table
    measured_removed: float


@dataclass
class LatencyTargetStats:
    """A `--target-latency` run: the target, the latency table's prediction (the sum of the layers' entries)
    and the whole models timed on the same backend in the same run, and how the table was filled."""

    backend: str
    batch: int
    precision: str
    threads: int | None
    target: float  # the fraction of latency to remove
    dense_predicted_ms: float
    compressed_predicted_ms: float
    dense_measured_ms: float
    compressed_measured_ms: float
    entries_measured: int
    cache_hits: int
    seconds_measuring: float
    cache: str
    untimed: list[str] = field(default_factory=list)
    layers: list[LatencyLayer] = field(default_factory=list)
    checks: list[LatencyCheck] = field(default_factory=list)

    @property
    def requested_ms(self) -> float:
        return (1 - self.target) * self.dense_measured_ms

    @property
    def measured_removed(self) -> float:
        return 1 - self.compressed_measured_ms / self.dense_measured_ms

    @property
    def predicted_removed(self) -> float:
        return 1 - self.compressed_predicted_ms / self.dense_predicted_ms

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LatencyTargetStats":
        return cls(**{**data, "layers": [LatencyLayer(**row) for row in data.get("layers", [])],
                      "checks": [LatencyCheck(**row) for row in data.get("checks", [])]})


@dataclass
class EpochCost:
    """One training epoch of a method that changes the network while it trains.

    `macs_trained` is counted: MACs per sample of one forward pass of the network as it trained in this epoch.
    `predicted_macs_alive` is the network that would ship after the epoch (every surviving structure kept), read
    off the method's per-layer counts: a prediction, where the compiled network's MACs are counted. `seconds` is
    the epoch's training pass (evaluation excluded) and `test_accuracy` the network's after the epoch.
    """

    epoch: int
    seconds: float
    macs_trained: int
    predicted_macs_alive: float
    test_accuracy: float


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
    training_cost: list[EpochCost] = field(default_factory=list)  # empty: the method trained a fixed network
    training: dict[str, Any] = field(default_factory=dict)  # the method's loss, optimizer, rate and weight decay
    snapshot: SnapshotStats | None = None
    switcher: SwitcherStats | None = None
    latency_target: LatencyTargetStats | None = None

    @property
    def relative_training_cost(self) -> float | None:
        """Σ MACs trained per epoch ÷ (epochs × dense MACs): what the training cost against training the dense
        model for as many epochs; None when the method recorded no per-epoch costs."""
        if not self.training_cost:
            return None
        return sum(epoch.macs_trained for epoch in self.training_cost) / (len(self.training_cost) * self.dense.macs)

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
        values["training_cost"] = [EpochCost(**row) for row in data.get("training_cost", [])]
        if data.get("structure"):
            structure = dict(data["structure"])
            structure["layers"] = [LayerShape(**row) for row in structure["layers"]]
            structure["stages"] = [StageStats(**row) for row in structure.get("stages", [])]
            structure["probabilities"] = [ProbabilityCounts(**row) for row in structure.get("probabilities", [])]
            structure["pruning_stages"] = [PruningStage(**row) for row in structure.get("pruning_stages", [])]
            values["structure"] = StructureStats(**structure)
        if data.get("snapshot"):
            values["snapshot"] = SnapshotStats.from_dict(data["snapshot"])
        if data.get("switcher"):
            values["switcher"] = SwitcherStats.from_dict(data["switcher"])
        if data.get("latency_target"):
            values["latency_target"] = LatencyTargetStats.from_dict(data["latency_target"])
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
        rows = [
            *shape_rows,
            ("accuracy", f"{d.accuracy:.2%}", f"{c.accuracy:.2%}"),
            (f"latency {lat.backend} b={lat.batch} (median)", f"{lat.dense_ms:.3f} ms", f"{lat.compressed_ms:.3f} ms"),
        ]
        lt = self.latency_target
        if lt is not None:
            rows.append((f"latency target −{lt.target:.0%} on {lt.backend} b={lt.batch}", f"{lt.dense_measured_ms:.3f} ms",
                         f"{lt.compressed_measured_ms:.3f} ms (−{lt.measured_removed:.1%})"))
        return rows


def summary_text(report: Report) -> str:
    """The terminal summary printed at the end of a run."""
    return text_table(["", "dense", "compressed"], report.summary_rows())


def render_markdown(report: Report) -> str:
    """report.md: summary, export check, latency, per-layer table, the training cost per epoch (methods that
    change the network while they train) and the passes that ran."""
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
        *(_snapshot_section(r) if r.snapshot is not None else []),
        *(_switcher_section(r) if r.switcher is not None else []),
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


def _switcher_section(report: Report) -> list[str]:
    """Emergent and shipped sparsity of the gated layers, and each layer's switches at the start and the end."""
    sw = report.switcher

    def counts(c: dict[str, int]) -> str:
        return f"{c['zero']:,} / {c['weak']:,} / {c['strong']:,}"

    rows = [[f"`{l.name}`", f"{l.weights:,}", counts(l.switches_start), counts(l.switches_end),
             f"{l.zeros_start / l.weights:.2%}", f"{l.zeros_end / l.weights:.2%}", f"{l.zeros_final / l.weights:.2%}",
             "-" if l.neurons is None else f"{l.neurons_switched_off:,} of {l.neurons:,}"] for l in sw.layers]
    what = "connection (W ⊙ Z)" if sw.mode == "connection" else "neuron (W·diag(z), one switch per input neuron)"
    cut = (f" **Every switch of {', '.join(f'`{name}`' for name in sw.cut_layers)} is 0: the network no longer reads "
           f"its input.**" if sw.cut_layers else "")
    topped = (f" A target's top-up then switched off the smallest remaining weights and trained the task network "
              f"one epoch with the switches frozen: {sw.final_sparsity:.2%}." if sw.topped_up else "")
    return [
        "## Switcher",
        "",
        f"Mode {what}; switchers and task network trained in alternating epochs on the task loss alone. Emergent "
        f"sparsity of the gated layers (what the switchers zeroed): {sw.emergent_sparsity:.2%}, test accuracy "
        f"{sw.accuracy_emergent:.2%}.{topped}{cut} Switches are counted as 0 / (0, 1) / ≥ 1.",
        "",
        markdown_table(["layer", "weights", "switches at start", "switches at end", "zeros at start", "emergent",
                        "shipped", "neurons switched off"], rows),
        "",
    ]


def _snapshot_section(report: Report) -> list[str]:
    """Thresholds per weight group, test error through pruning and the non-weight retrain, and the sweep."""
    snap, dense = report.snapshot, report.dense
    groups = [[g.group, len(g.layers), f"{g.theta:.4g}", f"{g.paper_theta:g}",
               "per layer" if g.sigma is None else f"{g.sigma:.4g}",
               "per layer" if g.threshold is None else f"{g.threshold:.4g}", f"{g.weights:,}", f"{g.pruned:,}",
               f"{g.pruned / g.weights:.2%}"] for g in snap.groups]
    how = {"θ": f"at the paper's θ for the {snap.family} family",
           "target": f"at the paper's θ ratios scaled by one common factor {snap.scale:.4g} to meet the target"
           if snap.scale is not None else "",
           "2:4": "keeping the 2 largest of every 4 weights (2:4)"}[snap.mode]
    lines = [
        "## Snapshot pruning",
        "",
        f"Pruned once, {how}, then only biases and normalisation parameters retrained (every Conv/Linear weight "
        f"frozen; retrain weight decay {report.method_config.get('retrain_weight_decay', 0):g}). Parameters are "
        "counted as the paper does: non-zero weights plus every non-weight parameter.",
        "",
    ]
    if groups:
        lines += [markdown_table(["group", "layers", "θ", "paper's θ", "σ (pooled)", "τ = θσ", "weights", "pruned",
                                  "share pruned"], groups), ""]
    lines += [markdown_table(
        ["", "test error", "parameters", "compression", "storage bits (our lower bound)"],
        [["dense", f"{1 - dense.accuracy:.2%}", f"{snap.params_dense:,}", "1.0×", f"{32 * snap.params_dense:,}"],
         ["pruned, before the retrain", f"{1 - snap.accuracy_after_pruning:.2%}", f"{snap.params:,}",
          f"{snap.params_dense / snap.params:.1f}×", f"{snap.bits:,.0f}"],
         ["after the non-weight retrain", f"{1 - report.compressed.accuracy:.2%}", f"{snap.params:,}",
          f"{snap.params_dense / snap.params:.1f}×", f"{snap.bits:,.0f}"]]), ""]
    if snap.sweep:
        rows = [[p.k, f"{p.theta:g}", f"{p.params:,}", f"{p.compression:.1f}×", f"{p.sparsity:.2%}",
                 f"{1 - dense.accuracy:.2%}", f"{1 - p.accuracy_after_pruning:.2%}",
                 f"{1 - p.accuracy_after_retraining:.2%}", f"{p.bits:,.0f}"] for p in snap.sweep]
        lines += [
            "### Efficiency curve",
            "",
            f"Each θ setting of the {snap.swept_group} group (the others fixed at the paper's) pruned from the same "
            "trained model and retrained alone; bottom-left is more efficient. Storage bits: 32 per parameter "
            "counted plus each layer's mask entropy (our lower bound, not the paper's).",
            "",
            "![test error against parameters, one point per θ](efficiency.png)",
            "",
            markdown_table(["k", f"θ {snap.swept_group}", "parameters", "compression", "weight sparsity",
                            "error before pruning", "after pruning", "after retrain", "storage bits"], rows),
            "",
        ]
    return lines


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


def plot_efficiency(report: Report, path: str | os.PathLike) -> Path:
    """efficiency.png: test error against parameters (non-zero weights plus non-weight parameters), one point per
    θ of the sweep, after the non-weight retrain and right after pruning; the dense model and the shipped one
    marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    snap = report.snapshot
    points = snap.sweep
    params = [p.params for p in points]
    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    axes.plot(params, [100 * (1 - p.accuracy_after_retraining) for p in points], marker="o", color="tab:blue",
              label="after the non-weight retrain")
    axes.plot(params, [100 * (1 - p.accuracy_after_pruning) for p in points], marker="o", fillstyle="none",
              linestyle=":", color="tab:orange", label="right after pruning")
    # Labelled at both ends and the middle: neighbouring points sit too close for every label.
    for p in (points[i] for i in sorted({0, len(points) // 2, len(points) - 1})):
        axes.annotate(f"{p.theta:g}", (p.params, 100 * (1 - p.accuracy_after_retraining)), fontsize=7,
                      textcoords="offset points", xytext=(3, 4))
    axes.scatter([snap.params_dense], [100 * (1 - report.dense.accuracy)], marker="*", s=120, color="black",
                 label="dense", zorder=3)
    axes.scatter([snap.params], [100 * (1 - report.compressed.accuracy)], marker="D", s=50, color="tab:red",
                 label="shipped model", zorder=3)
    axes.set_xscale("log")
    axes.set_xlabel("parameters (non-zero weights + non-weight parameters)")
    axes.set_ylabel("test error, %")
    axes.set_title(f"{report.arch or report.model}: snapshot efficiency (labels: θ {snap.swept_group})")
    axes.legend(fontsize=8)
    figure.tight_layout()
    written = atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)
    return written


def plot_files(report: Report) -> list[str]:
    """The PNG files `write_report` writes for `report`."""
    files = ["channels.png" if report.structure is not None else "sparsity.png"]
    if report.training_cost:
        files.append("training_cost.png")
    if report.structure is not None and report.structure.pruning_stages:
        files.append("dependence.png")
    if report.snapshot is not None and report.snapshot.sweep:
        files.append("efficiency.png")
    return files


def write_report(report: Report, folder: str | os.PathLike) -> None:
    """report.json, report.md and the plots of `plot_files`: sparsity.png, or channels.png for structured methods;
    training_cost.png when the method recorded what each epoch trained; dependence.png when it pruned in stages;
    efficiency.png when a snapshot sweep ran."""
    folder = Path(folder)
    atomic_write_text(folder / "report.json", json.dumps(report.to_dict(), indent=2) + "\n")
    atomic_write_text(folder / "report.md", render_markdown(report))
    plots = {"channels.png": plot_channels, "sparsity.png": plot_sparsity, "training_cost.png": plot_training_cost,
             "dependence.png": plot_dependence, "efficiency.png": plot_efficiency}
    for name in plot_files(report):
        plots[name](report, folder / name)
