"""Snapshot pruning (seed 000, "On the Efficiency of Deep Neural Networks"): prune a trained network in one shot
at per-group thresholds, then retrain only its non-weight parameters.

The Conv/Linear weights are split into groups (conv and linear; hidden and output Linear for a network without
convolutions). Group g's threshold is τ_g = θ_g·σ_g, σ_g the (population) standard deviation of all the group's
weights pooled across its layers (`sigma=layer`: each layer's own), and a weight is pruned when |w| < τ_g. The
θ_g default to the paper's for the model's family: the largest of its ten settings for the swept group, the
fixed value for the other. `--target` scales every θ_g by one common factor, so the counted sparsity equals the
target (exactly: the weights are ranked by |w|/(θ_g·σ_g) and the smallest fraction pruned), keeping the paper's
ratios between the groups. `--pattern 2:4` keeps the 2 largest of every 4 instead (not in the paper).

Then every Conv/Linear weight is frozen at snapshot ⊙ mask (left out of the optimizer, so momentum and weight
decay cannot move it) and only biases and normalisation parameters train, under the model's own task loss.
`sweep=N` also runs N of the paper's ten θ settings from the same trained model, each pruned and retrained the
same way, for the efficiency curve (parameters against test error). `SnapshotSection` is the method's part of the
report: its thresholds per group, its sweep and efficiency.png.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn as nn

from compressor.counting import count_params, counted_params, layer_sparsity, prunable_layers, storage_bits
from compressor.data import DataBundle
from compressor.errors import CompressorError
from compressor.files import atomic_write
from compressor.methods.base import Method, MethodOutcome, register_method
from compressor.methods.masks import attach_masks, magnitude_masks
from compressor.passes.analysis import two_four_eligibility, two_four_mask
from compressor.modules import copy_model
from compressor.report import Report, ReportSection
from compressor.tables import markdown_table
from compressor.training import TrainConfig, TrainResult, evaluate, train

SETTINGS = 10  # the paper's θ settings per curve, k = 0..9


@dataclass(frozen=True)
class Family:
    """The paper's thresholds for a model family: the swept group's θ_k = start + step·k, the others fixed."""

    name: str
    swept: str
    start: float
    step: float
    fixed: dict[str, float]

    def swept_theta(self, k: int) -> float:
        return round(self.start + self.step * k, 6)


FAMILIES = {
    "mlp": Family("LeNet-300-100", "hidden", 1.0, 0.05, {"output": 0.75}),
    "lenet5": Family("LeNet-5", "conv", 0.5, 0.1, {"linear": 1.25}),
    # The paper's CIFAR-10 ResNet and DenseNet settings, taken for every other network with convolutions.
    "cnn": Family("ResNet/DenseNet", "conv", 0.5, 0.05, {"linear": 0.75}),
}


@dataclass
class SnapshotConfig:
    """Hyper-parameters of snapshot pruning; a θ of 0 takes the paper's value for the model's family."""

    theta_conv: float = 0.0
    theta_linear: float = 0.0
    theta_hidden: float = 0.0
    theta_output: float = 0.0
    sigma: str = "pooled"  # "pooled": one σ per group, over all its layers (the paper); "layer": each layer's
    sweep: int = 0  # 0: no efficiency curve; N in 2..10: N of the paper's θ settings, spread over k = 0..9
    retrain_weight_decay: float = 0.0  # the paper gives no retrain settings; decaying BN scales would shrink them


def weight_groups(model: nn.Module) -> dict[str, list[str]]:
    """The paper's groups of prunable layers: conv and linear, or, without convolutions, the hidden Linear layers
    and the output one (the last in module order). Empty groups are left out."""
    layers = prunable_layers(model)
    linear = [name for name, layer in layers if isinstance(layer, nn.Linear)]
    conv = [name for name, layer in layers if not isinstance(layer, nn.Linear)]
    groups = {"conv": conv, "linear": linear} if conv else {"hidden": linear[:-1], "output": linear[-1:]}
    return {group: names for group, names in groups.items() if names}


def model_family(model: nn.Module, groups: dict[str, list[str]]) -> Family:
    """The family whose settings `model` takes: LeNet-300-100 without convolutions, LeNet-5 for the zoo's lenet5,
    the paper's ResNet/DenseNet settings for any other network with convolutions."""
    if "conv" not in groups:
        return FAMILIES["mlp"]
    return FAMILIES["lenet5"] if getattr(model, "arch", None) == "lenet5" else FAMILIES["cnn"]


def sweep_settings(points: int) -> list[int]:
    """The k of `points` of the paper's ten settings, spread evenly from the smallest θ to the largest."""
    return sorted({int(k) for k in np.rint(np.linspace(0, SETTINGS - 1, points))})


def group_sigmas(weights: dict[str, torch.Tensor], groups: dict[str, list[str]], per_layer: bool) -> dict[str, torch.Tensor]:
    """σ for every layer: the population standard deviation of its group's pooled weights, or of its own."""
    sigmas = {}
    for names in groups.values():
        pooled = torch.cat([weights[name].detach().flatten() for name in names]).double()
        for name in names:
            own = weights[name].detach().double()
            sigmas[name] = (own if per_layer else pooled).std(correction=0)
    return sigmas


def threshold_masks(weights: dict[str, torch.Tensor], thresholds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep |w| ≥ τ: a weight strictly below its layer's threshold is pruned."""
    return {name: (w.detach().double().abs() >= thresholds[name]).to(w.dtype) for name, w in weights.items()}


def frozen_weight(layer: nn.Module) -> nn.Parameter:
    """The parameter that holds a prunable layer's weight (`weight_orig` under a mask)."""
    return getattr(layer, "weight_orig", layer.weight)


@register_method
class SnapshotMethod(Method):
    """One-shot pruning at θ_g·σ_g per weight group, then a retrain of the non-weight parameters only."""

    name = "snapshot"
    Config = SnapshotConfig
    default_epochs = 5
    default_lr = 0.01

    def __init__(self, target, pattern="unstructured", config=None, run=None):
        super().__init__(target, pattern, config, run)
        c = self.config
        if pattern == "2:4":
            if target is not None and abs(target - 0.5) > 1e-9:
                raise CompressorError(f"--pattern 2:4 fixes sparsity at 50% of eligible layers; drop --target or "
                                      f"give 50% (got {target:.1%})")
            if c.sweep:
                raise CompressorError("the sweep varies θ, which --pattern 2:4 does not use; drop one of them")
        if c.sigma not in ("pooled", "layer"):
            raise CompressorError(f"snapshot sigma must be 'pooled' or 'layer', not {c.sigma!r}")
        if c.sweep != 0 and not 2 <= c.sweep <= SETTINGS:
            raise CompressorError(f"snapshot sweep takes 2 to {SETTINGS} settings (0: none), got {c.sweep}")
        if min(c.theta_conv, c.theta_linear, c.theta_hidden, c.theta_output) < 0:
            raise CompressorError("snapshot θ values must be positive (0 takes the paper's)")
        if c.retrain_weight_decay < 0:
            raise CompressorError(f"snapshot retrain_weight_decay must not be negative, got {c.retrain_weight_decay}")
        self.details: dict[str, Any] = {}
        self.sweep: list[dict[str, Any]] = []
        self._dense: nn.Module | None = None

    def prepare(self, model: nn.Module, data: DataBundle) -> nn.Module:
        layers = dict(prunable_layers(model))
        if not layers:
            raise CompressorError("method snapshot found no Conv or Linear layer to prune")
        if self.config.sweep:
            self._dense = copy_model(model)
        weights = {name: layer.weight for name, layer in layers.items()}
        if self.pattern == "2:4":
            masks = {}
            for name, layer in layers.items():
                eligibility = two_four_eligibility(layer)
                if eligibility.eligible:
                    masks[name] = two_four_mask(layer.weight)
                else:
                    self.skipped[name] = eligibility.reason
            self.details = {"mode": "2:4", "groups": [], "scale": None}
        else:
            masks = self._threshold_masks(model, weights)
        attach_masks(model, masks)
        for layer in layers.values():
            frozen_weight(layer).requires_grad_(False)
        if not any(p.requires_grad for p in model.parameters()):
            raise CompressorError("method snapshot retrains biases and normalisation parameters, and the model has "
                                  "none: every parameter is a Conv/Linear weight")
        self.details["accuracy_after_pruning"] = evaluate(model, data.test)
        return model

    def _threshold_masks(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Masks at τ = θ_g·σ (with `--target`, at one common multiple of the θ_g), and the facts about them."""
        groups = weight_groups(model)
        family = model_family(model, groups)
        thetas = self.thetas(groups, family)
        sigmas = group_sigmas(weights, groups, self.config.sigma == "layer")
        group_of = {name: group for group, names in groups.items() for name in names}
        scale = 1.0
        if self.target is None:
            masks = threshold_masks(weights, {name: thetas[group_of[name]] * sigmas[name] for name in weights})
        else:
            # Ranking |w| / (θ_g σ) and pruning its smallest fraction is pruning at c·θ_g·σ for one common c.
            ratios = {name: w.detach().double() / (thetas[group_of[name]] * sigmas[name]) for name, w in weights.items()}
            masks = {name: mask.to(weights[name].dtype) for name, mask in magnitude_masks(ratios, self.target, "global").items()}
            kept = torch.cat([ratios[name].abs()[masks[name].bool()] for name in weights])
            scale = kept.min().item() if kept.numel() else float("inf")
        rows = []
        for group, names in groups.items():
            sigma = torch.cat([weights[name].detach().flatten() for name in names]).double().std(correction=0).item()
            size = sum(weights[name].numel() for name in names)
            pruned = sum(int((masks[name] == 0).sum()) for name in names)
            rows.append({"group": group, "layers": names, "theta": thetas[group] * scale, "paper_theta": thetas[group],
                         "sigma": sigma if self.config.sigma == "pooled" else None,
                         "threshold": thetas[group] * scale * sigma if self.config.sigma == "pooled" else None,
                         "weights": size, "pruned": pruned})
        self.details = {"mode": "θ" if self.target is None else "target", "family": family.name,
                        "swept_group": family.swept, "scale": None if self.target is None else scale, "groups": rows}
        return masks

    def thetas(self, groups: dict[str, list[str]], family: Family) -> dict[str, float]:
        """θ of every group: the option given, else the paper's (the swept group's largest setting)."""
        given = {"conv": self.config.theta_conv, "linear": self.config.theta_linear,
                 "hidden": self.config.theta_hidden, "output": self.config.theta_output}
        stray = [group for group, theta in given.items() if theta and group not in groups]
        if stray:
            raise CompressorError(f"this model's weight groups are {', '.join(groups)}; it has no {', '.join(stray)} "
                                  "group to set θ for")
        paper = {**family.fixed, family.swept: family.swept_theta(SETTINGS - 1)}
        return {group: given[group] or paper[group] for group in groups}

    def param_groups(self, model: nn.Module) -> list[dict] | None:
        return [{"params": [p for p in model.parameters() if p.requires_grad],
                 "weight_decay": self.config.retrain_weight_decay}]

    def fit(self, model: nn.Module, data: DataBundle, config: TrainConfig, **loop: Any) -> TrainResult:
        result = super().fit(model, data, config, **loop)
        if self._dense is not None:
            self.sweep = self._run_sweep(data, config, loop.get("progress", True))
        return result

    def _run_sweep(self, data: DataBundle, config: TrainConfig, progress: bool) -> list[dict[str, Any]]:
        """Prune copies of the trained model at the swept group's settings, retrain each the same way, and
        measure every point."""
        groups = weight_groups(self._dense)
        family = model_family(self._dense, groups)
        ks = sweep_settings(self.config.sweep)
        points = []
        for number, k in enumerate(ks, start=1):
            theta = family.swept_theta(k)
            options = {f"theta_{family.swept}": theta, "sweep": 0}
            point = SnapshotMethod(None, "unstructured", dataclasses.replace(self.config, **options))
            model = point.prepare(copy_model(self._dense), data)
            after_pruning = point.details["accuracy_after_pruning"]
            trained = train(model, data.train, data.test, config, hooks=point, progress=progress,
                            description=f"snapshot sweep {number}/{len(ks)} θ_{family.swept}={theta:g}")
            points.append({"k": k, "theta": theta, **efficiency(model), "accuracy_after_pruning": after_pruning,
                           "accuracy_after_retraining": trained.test_accuracy})
        return points

    def finalize(self, model: nn.Module) -> nn.Module:
        self.details.update(efficiency(model))
        self._dense = None
        return model

    def outcome(self) -> MethodOutcome:
        recorded = {**self.details, "sweep": self.sweep}
        # The section describes the shipped model: it exists once `finalize` has counted what that model stores.
        sections = [SnapshotSection.from_dict(recorded)] if "params" in self.details else []
        return dataclasses.replace(super().outcome(), details={"snapshot": recorded}, sections=sections)


def efficiency(model: nn.Module) -> dict[str, Any]:
    """What a pruned model stores: parameters as the paper counts them (non-zero weights and every non-weight
    parameter), the weights' counted sparsity, and our lower bound on its bits."""
    rows = layer_sparsity(model)
    weights = sum(row.weights for row in rows)
    return {"params": counted_params(model), "params_dense": count_params(model),
            "sparsity": sum(row.zeros for row in rows) / weights, "bits": storage_bits(model)}


# --- the report section -----------------------------------------------------------------------------------------------


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
class SnapshotSection(ReportSection):
    """Snapshot pruning of the shipped model (mode θ, target or 2:4) and the sweep's efficiency points: report.json's
    "snapshot", report.md's "Snapshot pruning", and efficiency.png when a sweep ran."""

    key: ClassVar[str] = "snapshot"

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
    def from_dict(cls, data: dict[str, Any]) -> SnapshotSection:
        values = dict(data)
        values["groups"] = [ThresholdGroup(**row) for row in data.get("groups", [])]
        values["sweep"] = [EfficiencyPoint(**row) for row in data.get("sweep", [])]
        return cls(**values)

    def markdown(self, report: Report) -> list[str]:
        """Thresholds per weight group, test error through pruning and the non-weight retrain, and the sweep."""
        snap, dense = self, report.dense
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
                f"Each θ setting of the {snap.swept_group} group (the others fixed at the paper's) pruned from the "
                "same trained model and retrained alone; bottom-left is more efficient. Storage bits: 32 per "
                "parameter counted plus each layer's mask entropy (our lower bound, not the paper's).",
                "",
                "![test error against parameters, one point per θ](efficiency.png)",
                "",
                markdown_table(["k", f"θ {snap.swept_group}", "parameters", "compression", "weight sparsity",
                                "error before pruning", "after pruning", "after retrain", "storage bits"], rows),
                "",
            ]
        return lines

    def plots(self, report: Report) -> dict[str, Callable[[Report, Path], Path]]:
        return {"efficiency.png": plot_efficiency} if self.sweep else {}


def plot_efficiency(report: Report, path: str | os.PathLike) -> Path:
    """efficiency.png: test error against parameters (non-zero weights plus non-weight parameters), one point per
    θ of the sweep, after the non-weight retrain and right after pruning; the dense model and the shipped one
    marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    snap = report.sections[SnapshotSection.key]
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


# The name it had in compressor.report, kept for one release.
SnapshotStats = SnapshotSection
