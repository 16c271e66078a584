"""What a compression run did and measured, as one dataclass tree: `Report` and the stats it holds, and their
round trip through report.json. Every number was measured in the run that wrote it: parameters and MACs by
counting a forward pass, sparsity by counting zeros (in torch and again in the ONNX file), accuracy on the test
split, latency by timed runs; a field that is a prediction says so in its name. Methods that change the network
while they train add what the network was at every epoch (`EpochCost`), per stage what was removed (`StageStats`)
and how sure the method ended about what it kept (`ProbabilityCounts`); a method that prunes in rounds of score →
remove → retrain records each round (`PruningStage`). What only one method records is its own `ReportSection`,
kept in `Report.sections`. Reports written before a field existed load with it empty, and render as they did.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from compressor.report.section import SECTIONS, ReportSection, read_sections


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
    # What a method alone records, by its section's key: each written at report.json's top level under the key.
    sections: dict[str, ReportSection] = field(default_factory=dict)
    latency_target: LatencyTargetStats | None = None

    @property
    def relative_training_cost(self) -> float | None:
        """Σ MACs trained per epoch ÷ (epochs × dense MACs): what the training cost against training the dense
        model for as many epochs; None when the method recorded no per-epoch costs."""
        if not self.training_cost:
            return None
        return sum(epoch.macs_trained for epoch in self.training_cost) / (len(self.training_cost) * self.dense.macs)

    def __getattr__(self, name: str) -> Any:
        # A registered section reads as the attribute its key names (`report.snapshot`): None when the run did not
        # record it.
        if name in SECTIONS:
            return self.__dict__.get("sections", {}).get(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_dict(self) -> dict[str, Any]:
        data = {}
        for key, value in dataclasses.asdict(dataclasses.replace(self, sections={})).items():
            if key != "sections":
                data[key] = value
                continue
            # The sections stand at the top level in place of the field, every registered one, null when the run
            # did not record it: report.json has the same keys whatever the method.
            data.update(dict.fromkeys(SECTIONS))
            data.update({name: section.to_dict() for name, section in self.sections.items()})
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        nested = {"dense": DenseStats, "compressed": CompressedStats, "onnx": OnnxStats, "latency": LatencyStats}
        # Every other top-level key is a section's: rebuilt by its registered class, ignored when none is.
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in fields}
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
        if data.get("latency_target"):
            values["latency_target"] = LatencyTargetStats.from_dict(data["latency_target"])
        values["sections"] = read_sections(data)
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
            rows.append((f"latency target −{lt.target:.0%} on {lt.backend} b={lt.batch}",
                         f"{lt.dense_measured_ms:.3f} ms",
                         f"{lt.compressed_measured_ms:.3f} ms (−{lt.measured_removed:.1%})"))
        return rows
