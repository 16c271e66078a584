"""Switcher networks on the real digits data: the claims of seed 001, checked.

Per model and seed a dense model is trained (SGD, `--dense-epochs`). From it, for each mode (connection, neuron):

- `switcher` for `--epochs` alternating epochs (half train the switchers, half the task network), no target: the
  sparsity is what the switchers zero (emergent); with `--from-scratch` the task network is re-initialised first,
  as the paper trains;
- `magnitude` pruning to the same number of zero weights, fine-tuned with the masks fixed for as many epochs as the
  task network trained (the baseline the paper lacks);
- the switches at the start (the random Kaiming-normal switcher, rescaled to a mean of 1) and at the end: the share
  exactly 0, in (0, 1) and ≥ 1, so the table shows whether the switchers learned sparsity beyond their random zeros;
- neuron mode: the neurons switched off and the parameters of the compiled (physically smaller) model.

Tables give mean ± standard deviation over the seeds; a difference smaller than the larger spread is a tie. The
claims: (1) accuracy at least the dense model's, without fine-tuning; (2) connection switching compresses more than
neuron switching (LeNet-300-100: 6.3× against 5.6×); (3) the sparsity is learned, not the start's random zeros.
`--json PATH` keeps every raw number (written after every run).

    python benchmarks/switcher_digits.py --json switcher.json                       # both lenets, 3 seeds
    python benchmarks/switcher_digits.py --models lenet300_100 --seeds 1 --dense-epochs 2 --epochs 2 \\
        --encoder-channels 2 --bottleneck-channels 2                                # a smoke test, a minute
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
from compressor.counting import count_params, layer_sparsity
from compressor.data import load_data
from compressor.loading import load_model
from compressor.methods import create_method
from compressor.modules import copy_model
from compressor.passes.pipeline import compile_model
from compressor.tables import mean_sd, text_table, verdict
from compressor.training import TrainConfig, evaluate

MODES = ("connection", "neuron")
FINE_TUNE_LR = 0.01  # the switcher's task-network rate and magnitude's fine-tune rate


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def dense_model(arch: str, seed: int, args) -> torch.nn.Module:
    """The dense model, read from `--dense-cache` when an earlier run left it there."""
    name = f"{arch}-seed{seed}-epochs{args.dense_epochs}.pt"
    cached = args.dense_cache / name if args.dense_cache else None
    if cached is not None and cached.exists():
        return load_model(cached)
    return train_model(arch, cached, epochs=args.dense_epochs, seed=seed, progress=False, device="cpu").model


def shares(counts: list[dict[str, int]]) -> dict[str, float]:
    """Switch counts summed over the layers, as shares of all switches."""
    total = sum(sum(c.values()) for c in counts)
    return {key: sum(c[key] for c in counts) / total for key in ("zero", "weak", "strong")}


def run_mode(arch: str, seed: int, mode: str, dense: torch.nn.Module, data, args) -> dict[str, Any]:
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = copy_model(dense)
    method = create_method("switcher", None, mode=mode, encoder_channels=args.encoder_channels,
                           bottleneck_channels=args.bottleneck_channels, from_scratch=args.from_scratch)
    method.prepare(model, data)
    method.fit(model, data, TrainConfig(epochs=args.epochs, lr=FINE_TUNE_LR, seed=seed), progress=False)
    facts = method.outcome().details["switcher"]
    model = method.finalize(model)
    layers = facts["layers"]
    gated = sum(layer["weights"] for layer in layers)
    row: dict[str, Any] = {
        "accuracy": evaluate(model, data.test), "emergent_sparsity": facts["emergent_sparsity"],
        "start_sparsity": sum(layer["zeros_start"] for layer in layers) / gated,
        "switches_start": shares([layer["switches_start"] for layer in layers]),
        "switches_end": shares([layer["switches_end"] for layer in layers]),
        "zeros": sum(row.zeros for row in layer_sparsity(model)),
        "weights": sum(row.weights for row in layer_sparsity(model)),
        "params_dense": count_params(dense),
    }
    if mode == "neuron":
        compiled = compile_model(model, tuple(model.input_shape)).model
        row["neurons"] = sum(layer["neurons"] for layer in layers)
        row["neurons_off"] = sum(layer["neurons_switched_off"] for layer in layers)
        row["params"] = count_params(compiled)
    else:
        row["params"] = count_params(dense) - row["zeros"]
    row["seconds"] = time.perf_counter() - started

    # Magnitude pruning to as many zero weights (over every layer), fine-tuned as long as the task network trained.
    started = time.perf_counter()
    baseline_model = copy_model(dense)
    baseline = create_method("magnitude", row["zeros"] / row["weights"])
    baseline.prepare(baseline_model, data)
    baseline.fit(baseline_model, data, TrainConfig(epochs=args.epochs // 2, lr=FINE_TUNE_LR, seed=seed),
                 progress=False)
    row["magnitude"] = {"accuracy": evaluate(baseline_model, data.test), "seconds": time.perf_counter() - started}
    return row


def run_seed(arch: str, seed: int, args) -> list[dict[str, Any]]:
    started = time.perf_counter()
    dense = dense_model(arch, seed, args)
    data = load_data("digits", tuple(dense.input_shape), seed=seed)
    base = {"model": arch, "seed": seed, "dense_accuracy": evaluate(dense, data.test),
            "dense_seconds": time.perf_counter() - started}
    return [{**base, "mode": mode, **run_mode(arch, seed, mode, dense, data, args)} for mode in args.modes]


def compression(row: dict[str, Any]) -> float:
    return row["params_dense"] / row["params"]


def report(rows: list[dict[str, Any]], models: list[str], modes: list[str], from_scratch: bool) -> str:
    start = "from scratch (the task network re-initialised)" if from_scratch else "from the trained model"
    parts = []
    for model in models:
        table = []
        for mode in modes:
            runs = [row for row in rows if row["model"] == model and row["mode"] == mode]
            if not runs:
                continue

            def of(read):
                return [read(row) for row in runs]

            neurons = (mean_sd(of(lambda r: r["neurons_off"]), 1.0, 0) + f" of {runs[0]['neurons']}"
                       if mode == "neuron" else "-")
            table.append([
                mode, len(runs), mean_sd(of(lambda r: r["dense_accuracy"])), mean_sd(of(lambda r: r["accuracy"])),
                mean_sd(of(lambda r: r["magnitude"]["accuracy"])), mean_sd(of(lambda r: r["start_sparsity"])),
                mean_sd(of(lambda r: r["emergent_sparsity"])),
                mean_sd(of(lambda r: r["switches_start"]["strong"])), mean_sd(of(lambda r: r["switches_end"]["strong"])),
                neurons, mean_sd(of(lambda r: r["params"]), 1e-3), mean_sd(of(compression), 1.0),
                f"{statistics.fmean(of(lambda r: r['seconds'])):.0f}"])
        parts.append(text_table(
            ["mode", "seeds", "dense acc %", "switcher acc %", "magnitude acc %", "zeros at start %",
             "emergent %", "switches ≥1 start %", "≥1 end %", "neurons off", "params (K)", "compression ×", "s/run"],
            table, title=f"{model}: switchers {start}, no target (magnitude: as many zeros, fine-tuned as long)",
            left_columns=1))
        parts.append("\n".join(claims(rows, model, modes)))
    return "\n\n".join(parts)


def claims(rows: list[dict[str, Any]], model: str, modes: list[str]) -> list[str]:
    def series(mode, read):
        return [read(row) for row in rows if row["model"] == model and row["mode"] == mode]

    lines = [f"claims on {model}:"]
    for mode in modes:
        accuracy = series(mode, lambda r: r["accuracy"])
        lines.append(f"  (1) {mode}: accuracy against the dense model: "
                     f"{verdict(accuracy, series(mode, lambda r: r['dense_accuracy']), ('switcher', 'dense'))}; "
                     f"against magnitude at as many zeros: "
                     f"{verdict(accuracy, series(mode, lambda r: r['magnitude']['accuracy']), ('switcher', 'magnitude'))}")
        lines.append(f"  (3) {mode}: sparsity at the end against the start's random zeros: "
                     f"{verdict(series(mode, lambda r: r['emergent_sparsity']), series(mode, lambda r: r['start_sparsity']), ('end', 'start'))}")
    if set(MODES) <= set(modes):
        lines.append(f"  (2) compression, connection against neuron: "
                     f"{verdict(series('connection', compression), series('neuron', compression), ('connection', 'neuron'))}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="lenet300_100,lenet5")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 … N−1")
    parser.add_argument("--dense-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10, help="alternating epochs (half of them train the switchers)")
    parser.add_argument("--encoder-channels", default="8,16")
    parser.add_argument("--bottleneck-channels", type=int, default=32)
    parser.add_argument("--from-scratch", action="store_true",
                        help="re-initialise the task network first, as the paper trains (the baselines keep the dense model)")
    parser.add_argument("--dense-cache", type=Path, help="keep dense models here and reuse them")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    args.modes = [m for m in args.modes.split(",") if m]
    if not set(args.modes) <= set(MODES):
        parser.error(f"modes are {', '.join(MODES)}")
    logging.basicConfig(level=logging.WARNING)
    rows: list[dict[str, Any]] = []
    for model in models:
        for seed in range(args.seeds):
            for row in run_seed(model, seed, args):
                rows.append(row)
                _progress(f"{model} seed {seed} {row['mode']}: dense {row['dense_accuracy']:.2%}, switcher "
                          f"{row['accuracy']:.2%} at {row['emergent_sparsity']:.1%} emergent sparsity (start "
                          f"{row['start_sparsity']:.1%}), magnitude {row['magnitude']['accuracy']:.2%}, "
                          f"{row['seconds'] + row['magnitude']['seconds']:.0f} s")
                if args.json:
                    args.json.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                     "results": rows}, indent=1) + "\n")
    print(report(rows, models, args.modes, args.from_scratch))


if __name__ == "__main__":
    main()
