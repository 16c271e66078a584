"""Budget-aware pruning against global magnitude pruning on the real digits data, at the same settings.

Trains (or reuses) a dense checkpoint per architecture, then compresses it at each target, all with the same
epochs: global `magnitude` at its default learning rate (0.01) and at budget's (0.05), and `budget` at its
defaults (thresholds at 1/10 of the weights' learning rate) and at the paper's threshold rate (1/100). One table
row per run: counted sparsity, accuracy dense → compressed, Δ accuracy against magnitude at the same target,
how far the budget method's predicted per-layer sparsity lands from the counted one, and the training cost
per epoch against dense training (timed here with a short 2-epoch dense run). A second table measures the
methods' training-step overhead the robust way: dense and prepared models stepped alternately. Also writes
accuracy_vs_sparsity.png (accuracy against counted sparsity per method) and allocation.png (per-layer
sparsity of magnitude and budget at the first target) to the output folder, and the table to
table.txt.

    python benchmarks/budget_vs_magnitude.py --out bench-budget       # lenet5 and resnet20, 85%, 90%, 95%
    python benchmarks/budget_vs_magnitude.py --models lenet5 --targets 85% --epochs 2 --train-epochs 2
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from compressor.api import compress, train_model
from compressor.data import load_data
from compressor.methods import create_method
from compressor.models import create_model
from compressor.options import parse_fraction
from compressor.training import TrainConfig, TrainingHooks
from compressor.report import Report
from compressor.tables import text_table

# (label, method, method_options, output-folder suffix, learning rate or None for the method's default);
# magnitude first: it is the reference for Δ accuracy. Magnitude also runs at budget's learning rate, and
# budget also at the paper's threshold rate (1/100 of the weights'), so neither choice hides in the defaults.
METHODS = (
    ("magnitude", "magnitude", None, "magnitude", None),
    ("magnitude (lr 0.05)", "magnitude", None, "magnitude-lr05", 0.05),
    ("budget", "budget", None, "budget", None),
    ("budget (r lr/100)", "budget", {"threshold_lr_scale": 0.01}, "budget-lr100", None),
)
ALLOCATION_METHODS = ("magnitude", "budget")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="lenet5,resnet20")
    parser.add_argument("--targets", default="85%,90%,95%")
    parser.add_argument("--epochs", type=int, default=10, help="compression epochs, the same for every method")
    parser.add_argument("--train-epochs", type=int, default=15)
    parser.add_argument("--out", default="bench-budget")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error("--epochs must be at least 1: the overhead column compares seconds per training epoch")
    logging.basicConfig(level=logging.WARNING)
    matplotlib.use("Agg")
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    models, targets = args.models.split(","), args.targets.split(",")

    rows = []
    reports: dict[tuple[str, str, str], Report] = {}
    for arch in models:
        checkpoint = _dense_checkpoint(arch, root, args.train_epochs)
        dense_seconds = train_model(arch, None, epochs=2, progress=False).result.seconds_per_epoch
        for target in targets:
            for label, method, options, suffix, lr in METHODS:
                out = root / f"{arch}-{target.rstrip('%')}-{suffix}"
                report = compress(checkpoint, method, target, epochs=args.epochs, lr=lr, out=out, force=True,
                                  progress=False, method_options=options)
                reports[arch, target, label] = report
                rows.append(_row(arch, target, label, report, reports[arch, target, "magnitude"], dense_seconds))
    header = ["model", "target", "method", "sparsity (counted)", "accuracy dense → compressed",
              "Δ acc vs magnitude (pt)", "mean |pred − counted| per layer", "s/epoch", "overhead vs dense"]
    table = text_table(header, rows, left_columns=3)
    print(table)
    _plot_accuracy(reports, models, targets, root / "accuracy_vs_sparsity.png")
    _plot_allocation(reports, models, targets[0], root / "allocation.png")
    overhead = _overhead_table(models, parse_fraction(targets[0]))
    print("\n" + overhead)
    (root / "table.txt").write_text(table + "\n\n" + overhead + "\n")


def _overhead_table(models: list[str], target: float, steps: int = 50) -> str:
    """Training-step time of each method's prepared model against the dense one, paired step by step.

    Separate epoch timings on a shared machine drift by tens of percent between runs; alternating one dense
    and one compressed step on the same digits batch exposes both to the same machine state, and the median
    of the paired ratios is the overhead the method itself adds.
    """
    rows = []
    for arch in models:
        data = load_data("digits", create_model(arch).input_shape)
        for method in ("magnitude", "budget"):
            torch.manual_seed(0)
            dense, pruned = create_model(arch).train(), create_model(arch).train()
            hooks = create_method(method, target)
            hooks.prepare(pruned, data)
            hooks.on_train_begin(pruned, TrainConfig(epochs=10, lr=hooks.default_lr))
            images, labels = next(iter(data.train))
            dense_step = _training_step(dense, TrainingHooks(), images, labels)
            pruned_step = _training_step(pruned, hooks, images, labels)
            pairs = [(dense_step(), pruned_step()) for _ in range(steps)][5:]
            ratio = statistics.median(p / d for d, p in pairs)
            rows.append([arch, method, f"{statistics.median(d for d, _ in pairs) * 1e3:.1f}",
                         f"{statistics.median(p for _, p in pairs) * 1e3:.1f}", f"{ratio - 1:+.1%}"])
    header = ["model", "method", "dense step ms", "method step ms", "overhead (median of paired steps)"]
    return text_table(header, rows, title=f"training-step overhead at {target:.0%}, batch 64, {steps} paired steps",
                      left_columns=2)


def _training_step(model, hooks: TrainingHooks, images, labels):
    """One SGD step of the training loop's work (task loss, the method's extra loss and after-step), timed."""
    optimizer = torch.optim.SGD(hooks.param_groups(model) or model.parameters(), lr=0.01, momentum=0.9)

    def step() -> float:
        start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        extra = hooks.extra_loss(model)
        if extra is not None:
            loss = loss + extra
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        hooks.after_step(model, 0)
        return time.perf_counter() - start

    return step


def _dense_checkpoint(arch: str, root: Path, epochs: int) -> Path:
    checkpoint = root / f"{arch}.pt"
    if not checkpoint.exists():
        train_model(arch, checkpoint, epochs=epochs, progress=False)
    return checkpoint


def _row(arch: str, target: str, label: str, report: Report, magnitude: Report, dense_seconds: float) -> list[str]:
    delta = "-" if report is magnitude else f"{(report.compressed.accuracy - magnitude.compressed.accuracy) * 100:+.2f}"
    gap = _prediction_gap(report)
    return [
        arch, target, label, f"{report.compressed.sparsity:.2%}",
        f"{report.dense.accuracy:.2%} → {report.compressed.accuracy:.2%}", delta,
        "-" if gap is None else f"{gap:.2%}",
        f"{report.seconds_per_epoch:.2f}", f"{report.seconds_per_epoch / dense_seconds - 1:+.0%}",
    ]


def _prediction_gap(report: Report) -> float | None:
    """Mean |predicted − counted| sparsity over the layers the method predicted; None when it predicts none."""
    gaps = [abs(layer.predicted_sparsity - layer.sparsity) for layer in report.layers
            if layer.predicted_sparsity is not None]
    return sum(gaps) / len(gaps) if gaps else None


def _plot_accuracy(reports: dict[tuple[str, str, str], Report], models: list[str], targets: list[str],
                   path: Path) -> None:
    figure, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for axis, arch in zip(axes[0], models):
        for label, *_ in METHODS:
            runs = [reports[arch, target, label] for target in targets]
            axis.plot([r.compressed.sparsity * 100 for r in runs], [r.compressed.accuracy * 100 for r in runs],
                      marker="o", label=label)
        dense = reports[arch, targets[0], "magnitude"].dense.accuracy * 100
        axis.axhline(dense, color="gray", linestyle="--", label=f"dense ({dense:.2f}%)")
        axis.set_title(f"{arch}: accuracy vs counted sparsity")
        axis.set_xlabel("counted sparsity (%)")
        axis.set_ylabel("test accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _plot_allocation(reports: dict[tuple[str, str, str], Report], models: list[str], target: str,
                     path: Path) -> None:
    most_layers = max(len(reports[arch, target, ALLOCATION_METHODS[0]].layers) for arch in models)
    figure, axes = plt.subplots(len(models), 1, figsize=(max(10, 0.5 * most_layers), 4.5 * len(models)),
                                squeeze=False)
    width = 0.8 / len(ALLOCATION_METHODS)
    for axis, arch in zip(axes[:, 0], models):
        for i, label in enumerate(ALLOCATION_METHODS):
            layers = reports[arch, target, label].layers
            positions = [x + (i - (len(ALLOCATION_METHODS) - 1) / 2) * width for x in range(len(layers))]
            axis.bar(positions, [layer.sparsity * 100 for layer in layers], width, label=label)
        layers = reports[arch, target, ALLOCATION_METHODS[0]].layers
        axis.set_xticks(range(len(layers)))
        axis.set_xticklabels([f"{layer.name}\n({layer.weights:,})" for layer in layers], rotation=45, ha="right",
                             fontsize=8)
        axis.set_title(f"{arch} at {target}: per-layer counted sparsity (layer, weights)")
        axis.set_ylabel("counted sparsity (%)")
        axis.set_ylim(0, 100)
        axis.grid(axis="y", alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
