"""How much a skip-unit's output depends on the labels: energy distance and energy dependence (PED, seed 003).

The energy distance between samples X (n×d) and Y (m×d) is

    E(X, Y) = 2·mean‖x − y‖ − mean‖x − x'‖ − mean‖y − y'‖,

Euclidean, each mean over all pairs including the diagonal (the V-statistic, as `dcor.energy_distance`
computes by default) or, within a sample, over distinct pairs only (the U-statistic). It is 0 exactly when
the two distributions agree and needs no model of them. A unit's *energy dependence* on the labels compares
its outputs class against class: the largest E between two classes' samples (`pairs="all"`, the paper's
Definition 2) or between the most frequent class and each other one (`pairs="reference"`, the authors' code).

Every class-pair distance of a unit comes from one pairwise-distance matrix over all its samples, computed in
float64 (squared norms minus twice the Gram matrix cancel badly in float32) a block of rows at a time and
reduced to per-class-pair sums at once, so memory stays at a block of rows, not n². Outputs are captured with
forward hooks, in eval mode, for as many units per forward pass as fit a memory budget. Everything runs on the
model's device.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from compressor.models.units import DenseUnit, ResidualUnit
from compressor.modules import model_device

PAIRS = ("all", "reference")
STATISTICS = ("V", "U")
DENSE_OUTPUTS = ("new", "concat")
# Bytes of one block of the distance matrix (float64 rows × all samples), and of the outputs captured per pass.
_BLOCK_BYTES = 64 * 2 ** 20
CAPTURE_BYTES = 2 ** 30


def _class_pair_sums(features: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """S[a, b] = Σ over samples i of class a and j of class b of ‖x_i − x_j‖, in float64."""
    samples = features.shape[0]
    flat = features.reshape(samples, -1)
    one_hot = torch.nn.functional.one_hot(labels, classes).to(torch.float64)
    sums = torch.zeros(classes, classes, dtype=torch.float64, device=features.device)
    rows = max(1, _BLOCK_BYTES // (8 * samples))
    everything = flat.to(torch.float64)
    for start in range(0, samples, rows):
        block = everything[start:start + rows]
        distances = torch.cdist(block, everything, compute_mode="use_mm_for_euclid_dist")
        sums.index_add_(0, labels[start:start + rows], distances @ one_hot)
    return sums


def _distances_from_sums(sums: torch.Tensor, counts: torch.Tensor, statistic: str) -> torch.Tensor:
    """E between every two classes from their pair sums: a symmetric classes×classes matrix, zero diagonal."""
    counts = counts.to(torch.float64)
    between = sums / (counts[:, None] * counts[None, :])
    within_pairs = counts * (counts - 1) if statistic == "U" else counts ** 2
    within = torch.diagonal(sums) / within_pairs
    distances = 2 * between - within[:, None] - within[None, :]
    distances.fill_diagonal_(0.0)
    return distances


def energy_distance(x: torch.Tensor, y: torch.Tensor, statistic: str = "V") -> float:
    """E(X, Y) between two samples (rows are observations; extra dimensions are flattened)."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, not {statistic!r}")
    both = torch.cat([x.reshape(len(x), -1), y.reshape(len(y), -1)])
    labels = torch.cat([torch.zeros(len(x), dtype=torch.long, device=both.device),
                        torch.ones(len(y), dtype=torch.long, device=both.device)])
    counts = torch.tensor([len(x), len(y)], device=both.device)
    return float(_distances_from_sums(_class_pair_sums(both, labels, 2), counts, statistic)[0, 1])


def class_distances(features: torch.Tensor, labels: torch.Tensor, classes: int, statistic: str = "V"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(E between every two classes' samples, samples per class); classes without samples have zero rows."""
    counts = torch.bincount(labels, minlength=classes)
    sums = _class_pair_sums(features, labels, classes)
    present = counts > 0
    distances = torch.zeros(classes, classes, dtype=torch.float64, device=features.device)
    both = present[:, None] & present[None, :]
    distances[both] = _distances_from_sums(sums[present][:, present], counts[present], statistic).reshape(-1)
    return distances, counts


def dependence(distances: torch.Tensor, counts: torch.Tensor, pairs: str = "all") -> float:
    """D from the class-pair distances: the largest over all pairs of present classes, or over the pairs of the
    most frequent class (the lowest label among equals) with each other one; 0 with fewer than two classes."""
    if pairs not in PAIRS:
        raise ValueError(f"pairs must be one of {', '.join(PAIRS)}, not {pairs!r}")
    present = counts > 0
    if int(present.sum()) < 2:
        return 0.0
    if pairs == "all":
        return float(distances[present][:, present].max())
    reference = int(torch.argmax(counts))  # argmax returns the first of equal maxima
    return float(distances[reference][present].max())


def unit_output_module(unit: nn.Module, dense_output: str = "new") -> nn.Module:
    """The module whose forward output is the unit's T: a residual unit's branch (its output before the add),
    a dense unit's new features or, with `dense_output="concat"`, the unit's whole output (input and new)."""
    if isinstance(unit, ResidualUnit):
        if unit.branch is None:
            raise ValueError("a removed residual unit has no output of its own")
        return unit.branch
    if isinstance(unit, DenseUnit):
        return unit if dense_output == "concat" else unit.new_features
    raise TypeError(f"skip-units are ResidualUnit or DenseUnit modules, not {type(unit).__name__}")


def _capture(model: nn.Module, modules: dict[str, nn.Module], images: torch.Tensor, batch: int
             ) -> dict[str, torch.Tensor]:
    """Each module's output for every image, flattened per sample (float32, on the model's device)."""
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    handles = [module.register_forward_hook(lambda _m, _i, output, name=name: outputs[name].append(
        output.detach().flatten(1).float())) for name, module in modules.items()]
    device = model_device(model)
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch):
                model(images[start:start + batch].to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in outputs.items()}


def unit_dependences(model: nn.Module, units: Sequence[str], images: torch.Tensor, labels: torch.Tensor,
                     classes: int, pairs: str = "all", statistic: str = "V", standardize: bool = False,
                     dense_output: str = "new", batch: int = 256) -> dict[str, float]:
    """D of each named skip-unit of `model` on one sample of labelled images, in eval mode (the mode is
    restored). `standardize` divides D by √d, d the length of the unit's flattened output."""
    was_training = model.training
    model.eval()
    try:
        modules = {name: unit_output_module(model.get_submodule(name), dense_output) for name in units}
        sizes = {name: output.shape[1] for name, output in _capture(model, modules, images[:1], 1).items()}
        labels = labels.to(model_device(model))
        scores: dict[str, float] = {}
        for part in _passes(list(units), sizes, len(images)):
            captured = _capture(model, {name: modules[name] for name in part}, images, batch)
            for name in part:
                distances, counts = class_distances(captured.pop(name), labels, classes, statistic)
                score = dependence(distances, counts, pairs)
                scores[name] = score / math.sqrt(sizes[name]) if standardize else score
    finally:
        model.train(was_training)
    return scores


def _passes(units: list[str], sizes: dict[str, int], samples: int) -> list[list[str]]:
    """Units grouped in order so that each group's captured outputs fit `CAPTURE_BYTES` (one unit at least)."""
    groups: list[list[str]] = []
    used = 0
    for name in units:
        size = 4 * samples * sizes[name]
        if not groups or used + size > CAPTURE_BYTES:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    return groups
