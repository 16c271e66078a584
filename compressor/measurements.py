"""What a compression run counts on its models, as the report's rows: per-layer sparsity with the reason each
dense layer stayed dense, the structure before and after a structured method, and the training cost per epoch.

Every number here is counted on the models (or recorded by the training loop); what a method predicted comes in
through its typed outcome (`compressor.methods.base.MethodOutcome`) and keeps a `predicted` name in the report.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from compressor.counting import CONV_TRANSPOSE_TYPES, count_macs, count_params, layer_sparsity, prunable_layers
from compressor.methods.base import Method, MethodOutcome, StructureOutcome
from compressor.passes.analysis import two_four_eligibility
from compressor.passes.base import PipelineResult
from compressor.report import (DenseStats, EpochCost, LayerShape, LayerStats, ProbabilityCounts, PruningStage,
                               StageStats, StructureStats)
from compressor.training import EpochRecord


def layer_stats(model: nn.Module, masked: set[str], method: Method) -> list[LayerStats]:
    """A row per prunable layer of the compressed `model`: counted zeros, the layout, and for a layer the method
    left dense (not in `masked`) the reason why."""
    rows = []
    layers = dict(prunable_layers(model))
    predicted = method.predicted_sparsity()
    for counted in layer_sparsity(model):
        layout, note = method.pattern, ""
        if counted.name not in masked and method.pattern != "structured":
            layout = "dense"
            if counted.name in method.skipped:
                note = method.skipped[counted.name]
            elif method.pattern == "2:4":
                note = two_four_eligibility(layers[counted.name]).reason
            else:
                note = "not pruned by the method"
        rows.append(LayerStats(name=counted.name, kind=counted.kind, shape=list(counted.shape), weights=counted.weights,
                               zeros=counted.zeros, sparsity=counted.sparsity, pattern=layout, note=note,
                               predicted_sparsity=predicted.get(counted.name)))
    return rows


def training_cost(structure: StructureOutcome | None, history: list[EpochRecord]) -> list[EpochCost]:
    """The MACs a method recorded per epoch, joined by epoch number with the training loop's seconds and test
    accuracy for that epoch (a resumed run has both for the epochs before it resumed, from its saved state)."""
    records = (structure.training_cost if structure is not None else None) or []
    epochs = {record.epoch: record for record in history}
    return [EpochCost(epoch=record["epoch"], seconds=epochs[record["epoch"]].seconds,
                      macs_trained=int(record["macs_trained"]), predicted_macs_alive=float(record["macs_alive"]),
                      test_accuracy=epochs[record["epoch"]].test_accuracy) for record in records]


def structure_stats(model: nn.Module, shape: tuple[int, ...], dense: DenseStats, shapes_before: dict[str, list[int]],
                    compiled: PipelineResult, outcome: MethodOutcome) -> StructureStats:
    """The compiled `model` against the dense one: MACs and parameters removed, each layer's shape before and
    after, the units removed (by the method while it trained, and by the compiler), and what the method recorded
    of its stages, probabilities (binned at its `epsilon`, the probability it counts as dead), pruning rounds and
    notes."""
    structure = outcome.structure or StructureOutcome()
    epsilon = outcome.config.get("epsilon", 0.1)
    layers = prunable_layers(model)
    after = {name: list(layer.weight.shape) for name, layer in layers}
    transposed = {name for name, layer in layers if isinstance(layer, CONV_TRANSPOSE_TYPES)}
    macs = count_macs(model, shape)
    return StructureStats(
        macs_removed=1 - macs / dense.macs,
        params_removed=1 - count_params(model) / dense.params,
        # Units a method removed while it trained, and those the compiler removed.
        removed_units=(structure.removed_units or []) + compiled.notes("RemoveDeadSkipUnits")["removed_units"],
        layers=[LayerShape(name, before, after.get(name), name in transposed)
                for name, before in shapes_before.items()],
        predicted_macs_removed=(structure.predicted or {}).get("macs_removed"),
        left_whole=structure.left_whole or [],
        stages=_stage_stats(structure.stages or {}, list(shapes_before)),
        probabilities=_probability_counts(structure.probabilities or {}, epsilon),
        notes=structure.notes or [],
        pruning_stages=[PruningStage(**record) for record in structure.pruning_stages or []],
    )


def _stage_stats(stages: dict[str, dict[str, Any]], layer_order: list[str]) -> list[StageStats]:
    """A method's stages in the order of the model's layers (the first layer each holds), whatever order the
    method found them in."""
    def first_layer(stage: str) -> int:
        held = (index for index, layer in enumerate(layer_order) if layer == stage or layer.startswith(stage + "."))
        return next(held, len(layer_order))

    return [StageStats(name, stages[name]["units"], stages[name].get("removed_units", []),
                       {root: list(widths) for root, widths in stages[name]["channels"].items()})
            for name in sorted(stages, key=first_layer)]


def _probability_counts(final: dict[str, list[float]], epsilon: float) -> list[ProbabilityCounts]:
    """The survivors' final θ (skip-units) and π (channels), binned, for each a method recorded."""
    variables = {"theta": ("θ", "skip-units"), "pi": ("π", "channels")}
    return [ProbabilityCounts.count(*variables[key], final[key], epsilon) for key in variables if final.get(key)]
