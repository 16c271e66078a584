"""Method energy (PED) on the real digits data: PED against its baselines, D against shuffled labels, and how far
its stages go at ≤ 1 point of accuracy lost.

Per model and seed a dense model is trained once (`train_model`, `--dense-epochs`); every run starts from it.

- ablation: from the dense model, one stage that removes r units (each of `--removed`) chosen by PED, `random` or
  `rank` (the lowest scores), then `--epochs` of retraining with the method's stage schedule (lr 0.1, ÷10 each
  quarter). Test accuracy right after the removal and after the retraining, and the parameters left. The paper's
  ablation (resnet56 on CIFAR-10, 22 of 27 units removed over 10 stages): PED 91.00%, random 87.32%, rank
  89.94%, random leaving fewer parameters. Here one stage removes the r units at once, so the three selections
  differ only in which units go.
- shuffled: D of every unit of the dense model with the true labels and with the labels permuted (the paper's
  claim: D is about 0 for labels independent of the features). Mean over the units.
- stages: PED with the default schedule (a fifth of the units left per stage), `--epochs` per stage, for
  `--stages` stages on the first `--staged-seeds` seeds: per stage the units left, parameters and MACs removed,
  accuracy after retraining and the mean D of the units scored (the paper's Fig. 1: D rises over stages); and
  the deepest stage whose accuracy is within 1 point of the dense model's (the paper: −63% parameters on
  resnet56 at no loss on CIFAR-10).

The scores of one dense model are computed once and shared by the ablation runs that start from it (scoring is
deterministic: every training sample, eval mode). Tables give mean ± standard deviation over the seeds; a
difference smaller than the larger spread is a tie. `--json PATH` writes every raw number, after every run.

    python benchmarks/energy_digits.py --json bench-energy.json --dense-cache dense/   # resnet56, 5 seeds
    python benchmarks/energy_digits.py --models resnet20 --seeds 2 --dense-epochs 2 --epochs 1 --removed 2,4 \
        --stages 2                                                                # a smoke test, minutes
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from compressor.api import train_model
from compressor.counting import count_macs, count_params
from compressor.data import load_data
from compressor.loading import load_model
from compressor.methods import create_method
from compressor.methods.energy import EnergyMethod, labels_of, samples_at
from compressor.methods.energy.dependence import unit_dependences
from compressor.modules import copy_model
from compressor.passes.gates import units_of
from compressor.tables import mean_sd, text_table, verdict
from compressor.training import TrainConfig, evaluate

SELECTIONS = ("ped", "random", "rank")


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class SharedScores:
    """Wraps EnergyMethod._scores so that a model scored once is not scored again by the next run from it."""

    def __init__(self) -> None:
        self.cache: dict[tuple, dict[str, float]] = {}
        self.original = EnergyMethod._scores
        shared = self

        def scores(method, model, units, stage):
            key = (id(shared.current), stage, tuple(units)) if stage == 1 else None
            if key is not None and key in shared.cache:
                return dict(shared.cache[key])
            result = shared.original(method, model, units, stage)
            if key is not None:
                shared.cache[key] = dict(result)
            return result

        self.current: Any = None
        EnergyMethod._scores = scores


def stage_runs(dense, data, seed: int, args, options: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """One energy run from a copy of the dense model: its pruning stages, and the seconds it took."""
    started = time.perf_counter()
    model = copy_model(dense)
    method = create_method("energy", None, "structured", **options)
    method.prepare(model, data)
    method.fit(model, data, TrainConfig(epochs=args.epochs, lr=0.1, seed=seed), progress=False)
    return {"stages": [dict(record) for record in method.pruning_stages], "params": count_params(model),
            "macs": count_macs(model, tuple(model.input_shape))}, time.perf_counter() - started


def dense_model(arch: str, seed: int, args) -> torch.nn.Module:
    """The dense model of `arch` trained with `seed` for `--dense-epochs`, read from `--dense-cache` when an
    earlier run left it there (training is deterministic for a seed on one machine), else trained (and left)."""
    cached = args.dense_cache / f"{arch}-seed{seed}-epochs{args.dense_epochs}.pt" if args.dense_cache else None
    if cached is not None and cached.exists():
        return load_model(cached)
    return train_model(arch, cached, epochs=args.dense_epochs, seed=seed, progress=False, device="cpu").model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet56")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 … N−1")
    parser.add_argument("--dense-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=3, help="retraining epochs per stage")
    parser.add_argument("--removed", default="16,22", help="the ablation's units removed")
    parser.add_argument("--stages", type=int, default=6, help="stages of the staged PED run")
    parser.add_argument("--staged-seeds", type=int, default=1)
    parser.add_argument("--dense-cache", type=Path, help="keep dense models here and reuse them")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    removed_counts = [int(r) for r in args.removed.split(",") if r]
    logging.basicConfig(level=logging.WARNING)
    shared = SharedScores()
    results: list[dict[str, Any]] = []

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
            args.json.write_text(json.dumps({"settings": settings, "results": results},
                                            indent=1) + "\n")

    for arch in [m for m in args.models.split(",") if m]:
        for seed in range(args.seeds):
            started = time.perf_counter()
            dense = dense_model(arch, seed, args)
            shape = tuple(dense.input_shape)
            data = load_data("digits", shape, batch_size=64, seed=seed)
            row: dict[str, Any] = {"model": arch, "seed": seed, "dense_accuracy": evaluate(dense, data.test),
                                   "dense_params": count_params(dense), "dense_macs": count_macs(dense, shape),
                                   "dense_seconds": time.perf_counter() - started, "ablation": {}}
            _progress(f"{arch} seed {seed}: dense {row['dense_accuracy']:.2%} in {row['dense_seconds']:.0f} s")
            shared.current = dense
            labels = labels_of(data.train.dataset)
            images = samples_at(data.train.dataset, torch.arange(len(labels)))
            units = [name for name, _ in units_of(dense)]
            started = time.perf_counter()
            true = unit_dependences(dense, units, images, labels, data.num_classes)
            permuted = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
            shuffled = unit_dependences(dense, units, images, permuted, data.num_classes)
            row["dependence"] = {"true": true, "shuffled": shuffled, "seconds": (time.perf_counter() - started) / 2}
            for count in removed_counts:
                for selection in SELECTIONS:
                    run, seconds = stage_runs(dense, data, seed, args, {"stages": 1, "schedule": str(count),
                                                                        "selection": selection})
                    stage = run["stages"][0]
                    row["ablation"][f"{selection}-{count}"] = {
                        "after_removal": stage["accuracy_after_removal"],
                        "after_retraining": stage["accuracy_after_retraining"], "params": run["params"],
                        "macs": run["macs"], "removed": stage["removed"], "seconds": seconds}
                    _progress(f"{arch} seed {seed}: {selection} −{count} units: "
                              f"{stage['accuracy_after_removal']:.2%} → {stage['accuracy_after_retraining']:.2%}, "
                              f"{run['params']:,} params, {seconds:.0f} s")
            if seed < args.staged_seeds:
                run, seconds = stage_runs(dense, data, seed, args, {"stages": args.stages})
                row["staged"] = run | {"seconds": seconds}
                _progress(f"{arch} seed {seed}: {args.stages} PED stages in {seconds:.0f} s")
            results.append(row)
            save()
    print(report(results, removed_counts, args))


def report(results: list[dict[str, Any]], removed_counts: list[int], args) -> str:
    tables = [f"digits, {args.seeds} seed(s), dense {args.dense_epochs} epochs, {args.epochs} retraining epochs per "
              "stage; mean ± std over seeds (accuracy and parameters in %); a difference within the spread is a tie"]
    for arch in dict.fromkeys(row["model"] for row in results):
        rows = [row for row in results if row["model"] == arch]
        dense_accuracy = [row["dense_accuracy"] for row in rows]
        table, verdicts = [], []
        for count in removed_counts:
            runs = {s: [row["ablation"][f"{s}-{count}"] for row in rows] for s in SELECTIONS}
            for selection in SELECTIONS:
                values = runs[selection]
                table.append([f"{count}", selection, mean_sd([v["after_removal"] for v in values]),
                              mean_sd([v["after_retraining"] for v in values]),
                              mean_sd([v["params"] / row["dense_params"] for v, row in zip(values, rows)]),
                              mean_sd([v["seconds"] for v in values], scale=1, digits=0)])
            retrained = {s: [v["after_retraining"] for v in runs[s]] for s in SELECTIONS}
            verdicts.append(f"−{count} units, after retraining: "
                            f"{verdict(retrained['ped'], retrained['random'], ('ped', 'random'))}; "
                            f"{verdict(retrained['ped'], retrained['rank'], ('ped', 'rank'))}")
        tables.append(text_table(["units removed", "selection", "accuracy after removal", "after retraining",
                                  "params left", "seconds"], table,
                                 title=f"{arch}: PED against random and rank (dense {mean_sd(dense_accuracy)}%)",
                                 left_columns=2) + "\n" + "\n".join(verdicts))
        true = [statistics.fmean(row["dependence"]["true"].values()) for row in rows]
        shuffled = [statistics.fmean(row["dependence"]["shuffled"].values()) for row in rows]
        ratio = [s / t for s, t in zip(shuffled, true)]
        tables.append(text_table(["labels", "mean D over the units", "shuffled ÷ true"],
                                 [["true", mean_sd(true, scale=1, digits=2), "-"],
                                  ["shuffled", mean_sd(shuffled, scale=1, digits=2), mean_sd(ratio, digits=1)]],
                                 title=f"{arch}: D with true and shuffled labels (scoring "
                                       f"{statistics.fmean(row['dependence']['seconds'] for row in rows):.0f} s "
                                       "per pass over every unit)", left_columns=1))
        for row in rows:
            if "staged" not in row:
                continue
            limit = row["dense_accuracy"] - 0.01
            lines, deepest = [], None
            for stage in row["staged"]["stages"]:
                mean_d = statistics.fmean(stage["dependence"].values())
                kept = stage["accuracy_after_retraining"] >= limit
                deepest = stage if kept else deepest
                lines.append([stage["stage"], stage["units_before"] - len(stage["removed"]),
                              f"{1 - stage['params'] / row['dense_params']:.1%}",
                              f"{1 - stage['macs'] / row['dense_macs']:.1%}",
                              f"{stage['accuracy_after_removal']:.2%}", f"{stage['accuracy_after_retraining']:.2%}",
                              f"{mean_d:.2f}", "yes" if kept else "no"])
            tables.append(text_table(["stage", "units left", "params removed", "MACs removed", "accuracy after removal",
                                      "after retraining", "mean D scored", "within 1 pt"], lines,
                                     title=f"{arch} seed {row['seed']}: PED stages (dense {row['dense_accuracy']:.2%})")
                          + "\n" + (f"deepest stage within 1 pt: {deepest['stage']}, "
                                    f"{1 - deepest['params'] / row['dense_params']:.1%} of the parameters removed"
                                    if deepest else "no stage stayed within 1 pt"))
    return "\n\n".join(tables)


if __name__ == "__main__":
    main()
