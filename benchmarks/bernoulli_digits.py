"""Method bernoulli on the real digits data: the paper's small-scale claims C1–C5, and against `channel` at a target.

Per model and seed a dense model is trained once (`train_model`, `--dense-epochs`); every run below starts from
it, with the same `--epochs` and the seed, through `compress` (each into its own folder of a temporary
directory). A run shared by several claims (ρ in the middle of `--rhos`, κ = 1, ν = 0 serves C1, C2 and C3)
runs once.

- C1: fixed ρ (no target) at each of `--rhos`: MACs removed (fPR), parameters removed (pPR), accuracy.
  Claim: raising ρ raises fPR and pPR and lowers accuracy, monotonically in expectation.
- C2: ν ∈ {0, `--nu-large`} at the middle ρ: skip-units left and removed, fPR.
  Claim: larger ν leaves fewer blocks at a similar fPR.
- C3: κ ∈ {1, 0} at the middle ρ: MACs removed per stage (counted per layer on the compiled model against the
  dense one, layers grouped by the stages the method reports; the stem and classifier are never pruned) and
  pPR/fPR. Claim: lower κ raises pPR/fPR and puts more of the pruning in the last stage.
- C4, over every bernoulli run made: training cost = Σ over epochs of the MACs of the network that trained in
  that epoch ÷ (epochs × dense MACs) (1 = dense training; the sampled gates do not skip work, so only structure
  removed at an epoch's end makes later epochs cheaper), and the first epoch by which the network that would
  ship had lost half of its final MACs removed. Claim: cost below dense, most pruning early.
- C5, over every bernoulli run made: the fraction of the surviving θ (skip-units) and π (channels), read before
  the method sets them to 1, strictly between ε and 0.9 (a value held at ε counts as at ε).
  Claim: every survivor ends above 0.9.
- target: bernoulli with `--target` (MACs removed; ρ is then a controller) against `channel` (filter L1 gates,
  then fine-tuning for the same epochs, its default rounding to multiples of 8), both at `--target`: accuracy,
  MACs and parameters removed, and onnxruntime CPU latency as `compress` measures it (dense and compressed
  ONNX of the same run, the same `--bench-batch`, `--threads` and `--bench-runs` for both methods).

Every table gives mean ± standard deviation over the seeds. Each claim gets a one-line verdict per model, which
counts a difference as real only when it exceeds the spread (the larger of the two standard deviations): a
difference smaller than the spread is a tie. With one seed there is no spread, so every difference counts.
`--json PATH` writes every raw number (rewritten after each run, so a long run that stops keeps what it did).
Progress, one line per run with its wall time, goes to stderr; the last table gives the wall time per run.

    python benchmarks/bernoulli_digits.py --json bench-bernoulli.json          # resnet20, resnet56; 3 seeds
    python benchmarks/bernoulli_digits.py --models resnet20 --seeds 1 --epochs 2 --dense-epochs 1 \
        --experiments c1,target                                                 # a smoke test, minutes
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime
import torch

from compressor.api import compress, train_model
from compressor.counting import count_layer_macs, count_params
from compressor.loading import load_model
from compressor.tables import mean_sd, text_table

EXPERIMENTS = ("c1", "c2", "c3", "target")
HIGH = 0.9  # C5: a survivor at or above this has settled


@dataclass(frozen=True)
class Spec:
    """One compress run from the dense model: method, target (or None) and method options."""

    method: str
    target: str | None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        if self.target is not None:
            return f"{self.method} --target {self.target}"
        names = {"rho": "ρ", "kappa": "κ", "nu": "ν"}
        return self.method + " " + " ".join(f"{names.get(k, k)}={v:g}" for k, v in self.options)


@dataclass
class Run:
    """What one run measured; `error` is set (and the numbers are empty) when it failed."""

    model: str
    seed: int
    spec: Spec
    seconds: float
    error: str | None = None
    numbers: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.numbers[key]


def fixed(rho: float, kappa: float = 1.0, nu: float = 0.0) -> Spec:
    return Spec("bernoulli", None, (("rho", rho), ("kappa", kappa), ("nu", nu)))


def plan(experiments: list[str], rhos: list[float], nu_large: float, target: str) -> dict[str, list[Spec]]:
    """The specs each experiment reads, in table order."""
    middle = rhos[len(rhos) // 2]
    specs = {
        "c1": [fixed(rho) for rho in rhos],
        "c2": [fixed(middle), fixed(middle, nu=nu_large)],
        "c3": [fixed(middle), fixed(middle, kappa=0.0)],
        "target": [Spec("bernoulli", target), Spec("channel", target)],
    }
    return {name: specs[name] for name in experiments}


# --- statistics and verdicts --------------------------------------------------------------------------------------


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def compare(a: list[float], b: list[float]) -> int:
    """+1 when b's mean is above a's by more than the spread, -1 when below, 0 for a tie."""
    if not a or not b:
        return 0
    difference = _mean(b) - _mean(a)
    return 0 if abs(difference) <= max(_sd(a), _sd(b)) else (1 if difference > 0 else -1)


WORDS = {1: "rises", 0: "tie", -1: "falls"}


def trend(series: list[list[float]], claimed: int) -> tuple[str, str]:
    """(verdict, steps) for a claimed direction (+1 rising, -1 falling) over consecutive groups: holds when the
    first → last change goes the claimed way beyond the spread and no step goes against it beyond its spread."""
    steps = [compare(a, b) for a, b in zip(series, series[1:])]
    overall = compare(series[0], series[-1]) if len(series) > 1 else 0
    if overall == claimed and -claimed not in steps:
        verdict = "holds"
    elif overall == -claimed:
        verdict = "fails"
    elif overall == 0:
        verdict = "tie"
    else:
        verdict = "not monotone"
    return verdict, ", ".join(WORDS[s] for s in steps)


# --- one run ----------------------------------------------------------------------------------------------------------


def stage_of(layer: str, stages: list[str]) -> str:
    return next((s for s in stages if layer == s or layer.startswith(s + ".")), "other")


def measure(report, folder: Path, dense_layer_macs: dict[str, int]) -> dict[str, Any]:
    """The numbers of one finished compress run, from its report and the facts in its model.pt."""
    facts = torch.load(folder / "model.pt", weights_only=True)["extra"]["compression"]
    structure = report.structure
    numbers: dict[str, Any] = {
        "dense_accuracy": report.dense.accuracy, "accuracy": report.compressed.accuracy,
        "dense_macs": report.dense.macs, "macs": report.compressed.macs,
        "dense_params": report.dense.params, "params": report.compressed.params,
        "macs_removed": structure.macs_removed, "params_removed": structure.params_removed,
        "removed_units": list(structure.removed_units),
        "latency": {"backend": report.latency.backend, "batch": report.latency.batch, "threads": report.latency.threads,
                    "runs": report.latency.runs, "dense_ms": report.latency.dense_ms,
                    "compressed_ms": report.latency.compressed_ms},
        "seconds_per_epoch": report.seconds_per_epoch, "method_config": report.method_config,
    }
    numbers["pr_ratio"] = (structure.params_removed / structure.macs_removed) if structure.macs_removed > 0 else None
    stages = facts.get("stages") or {}
    numbers["units_total"] = sum(len(stage["units"]) for stage in stages.values()) if stages else None
    if stages:
        compiled = load_model(folder / "model.pt")
        after = count_layer_macs(compiled, tuple(compiled.input_shape))
        per_stage: dict[str, dict[str, int]] = {}
        for name, layer in dense_layer_macs.items():
            row = per_stage.setdefault(stage_of(name, list(stages)), {"dense_macs": 0, "macs": 0})
            row["dense_macs"] += layer
            row["macs"] += after[name].macs if name in after else 0
        numbers["stages"] = per_stage
    cost = facts.get("training_cost")
    if cost:
        dense_macs = report.dense.macs
        numbers["training_cost"] = cost
        numbers["cost"] = sum(record["macs_trained"] for record in cost) / (len(cost) * dense_macs)
        removed = [1 - record["macs_alive"] / dense_macs for record in cost]
        final = removed[-1]
        numbers["half_removal_epoch"] = (next(record["epoch"] for record, r in zip(cost, removed) if r >= final / 2)
                                         if final > 0 else None)
    probabilities = facts.get("probabilities") or {}
    if probabilities:
        epsilon = report.method_config.get("epsilon", 0.1)
        numbers["epsilon"] = epsilon
        numbers["probabilities"] = probabilities

        def undecided(values: list[float]) -> float | None:
            # float32 read back: a value held at ε is at ε, not above it.
            inside = [p for p in values if p > epsilon and not math.isclose(p, epsilon, rel_tol=1e-6) and p < HIGH]
            return len(inside) / len(values) if values else None

        theta, pi = probabilities.get("theta", []), probabilities.get("pi", [])
        numbers["undecided"] = {"theta": undecided(theta), "pi": undecided(pi), "all": undecided(theta + pi)}
    if "target_reached_epoch" in facts:
        numbers["target_reached_epoch"] = facts["target_reached_epoch"]
    return numbers


# --- tables -------------------------------------------------------------------------------------------------------


class Results:
    def __init__(self, runs: list[Run]):
        self.runs = runs

    def of(self, model: str, spec: Spec) -> list[Run]:
        return [run for run in self.runs if run.model == model and run.spec == spec and run.error is None]

    def values(self, model: str, spec: Spec, key: str) -> list[float]:
        return [run.numbers[key] for run in self.of(model, spec) if run.numbers.get(key) is not None]

    def failed(self, model: str, spec: Spec) -> int:
        return sum(1 for run in self.runs if run.model == model and run.spec == spec and run.error is not None)

    def n(self, model: str, spec: Spec) -> str:
        failed = self.failed(model, spec)
        return f"{len(self.of(model, spec))}" + (f" ({failed} failed)" if failed else "")


def c1_table(results: Results, models: list[str], specs: list[Spec]) -> str:
    rows, verdicts = [], []
    for model in models:
        for spec in specs:
            units = [len(run["removed_units"]) for run in results.of(model, spec)]
            rows.append([model, spec.label, results.n(model, spec), mean_sd(results.values(model, spec, "macs_removed")),
                         mean_sd(results.values(model, spec, "params_removed")),
                         mean_sd(results.values(model, spec, "accuracy")), mean_sd(units, 1.0)])
        parts = []
        for key, name, claimed in (("macs_removed", "fPR", 1), ("params_removed", "pPR", 1),
                                   ("accuracy", "accuracy", -1)):
            verdict, steps = trend([results.values(model, spec, key) for spec in specs], claimed)
            parts.append(f"{name} {'rises' if claimed > 0 else 'falls'}: {verdict} (steps: {steps})")
        verdicts.append(f"C1 {model}: " + "; ".join(parts))
    header = ["model", "run", "seeds", "fPR (MACs removed) %", "pPR (params removed) %", "accuracy %",
              "skip-units removed"]
    return _with_verdicts(text_table(header, rows, title="C1: fixed ρ (no target)", left_columns=2), verdicts)


def c2_table(results: Results, models: list[str], specs: list[Spec]) -> str:
    rows, verdicts = [], []
    for model in models:
        for spec in specs:
            runs = results.of(model, spec)
            removed = [len(run["removed_units"]) for run in runs]
            left = [run["units_total"] - len(run["removed_units"]) for run in runs if run["units_total"] is not None]
            rows.append([model, spec.label, results.n(model, spec), mean_sd(left, 1.0), mean_sd(removed, 1.0),
                         mean_sd(results.values(model, spec, "macs_removed")),
                         mean_sd(results.values(model, spec, "accuracy"))])
        base, large = specs
        units = compare([len(r["removed_units"]) for r in results.of(model, base)],
                        [len(r["removed_units"]) for r in results.of(model, large)])
        macs = compare(results.values(model, base, "macs_removed"), results.values(model, large, "macs_removed"))
        verdict = ("holds" if units > 0 and macs == 0 else "partly (fewer blocks, but fPR differs)" if units > 0
                   else "fails" if units < 0 else "tie (no difference in blocks beyond the spread)")
        verdicts.append(f"C2 {model}: larger ν leaves fewer blocks at a similar fPR: {verdict} "
                        f"(skip-units removed {WORDS[units]}, fPR {WORDS[macs]})")
    header = ["model", "run", "seeds", "skip-units left", "skip-units removed", "fPR (MACs removed) %", "accuracy %"]
    return _with_verdicts(text_table(header, rows, title="C2: ν at the middle ρ", left_columns=2), verdicts)


def _stage_names(results: Results, model: str, specs: list[Spec]) -> list[str]:
    names: list[str] = []
    for spec in specs:
        for run in results.of(model, spec):
            names += [s for s in run.numbers.get("stages", {}) if s != "other" and s not in names]
    return names


def _stage_removed(run: Run, stage: str) -> float | None:
    row = run.numbers.get("stages", {}).get(stage)
    return None if row is None or not row["dense_macs"] else 1 - row["macs"] / row["dense_macs"]


def _stage_share(run: Run, stage: str) -> float | None:
    """Share of all MACs removed that came from `stage`."""
    stages = run.numbers.get("stages", {})
    total = sum(row["dense_macs"] - row["macs"] for row in stages.values())
    return None if stage not in stages or total <= 0 else (stages[stage]["dense_macs"] - stages[stage]["macs"]) / total


def c3_table(results: Results, models: list[str], specs: list[Spec]) -> str:
    stages = {model: _stage_names(results, model, specs) for model in models}
    most = max((len(s) for s in stages.values()), default=0)
    rows, verdicts = [], []
    for model in models:
        names = stages[model]
        for spec in specs:
            runs = results.of(model, spec)
            per_stage = [mean_sd([_stage_removed(run, s) for run in runs]) for s in names]
            share = mean_sd([_stage_share(run, names[-1]) for run in runs]) if names else "-"
            rows.append([model, spec.label, results.n(model, spec), mean_sd(results.values(model, spec, "macs_removed")),
                         mean_sd(results.values(model, spec, "params_removed")),
                         mean_sd(results.values(model, spec, "pr_ratio"), 1.0, 2), *per_stage,
                         *["-"] * (most - len(names)), share, mean_sd(results.values(model, spec, "accuracy"))])
        high, low = specs  # κ = 1, κ = 0
        ratio = compare(results.values(model, high, "pr_ratio"), results.values(model, low, "pr_ratio"))
        last = compare([v for r in results.of(model, high) if (v := _stage_share(r, names[-1])) is not None],
                       [v for r in results.of(model, low) if (v := _stage_share(r, names[-1])) is not None]) \
            if names else 0
        verdict = ("holds" if ratio > 0 and last > 0 else "partly" if ratio > 0 or last > 0
                   else "fails" if ratio < 0 or last < 0 else "tie")
        verdicts.append(f"C3 {model}: κ 1 → 0 raises pPR/fPR and the last stage's share of the pruning: {verdict} "
                        f"(pPR/fPR {WORDS[ratio]}, last-stage share {WORDS[last]})")
    stage_columns = [f"stage {i + 1} MACs removed %" for i in range(most)]
    header = ["model", "run", "seeds", "fPR %", "pPR %", "pPR/fPR", *stage_columns,
              "last stage's share of removed MACs %", "accuracy %"]
    return _with_verdicts(text_table(header, rows, title="C3: κ at the middle ρ (stages in model order)",
                                     left_columns=2), verdicts)


def c4_c5_tables(results: Results, models: list[str], specs: list[Spec], epochs: int) -> str:
    rows4, rows5, verdicts4, verdicts5 = [], [], [], []
    for model in models:
        cheaper = early = undecided_zero = counted = 0
        worst = []
        for spec in specs:
            runs = results.of(model, spec)
            if not runs:
                continue
            counted += 1
            cost = results.values(model, spec, "cost")
            half = results.values(model, spec, "half_removal_epoch")
            no_pruning = sum(1 for run in runs if run.numbers.get("half_removal_epoch") is None)
            rows4.append([model, spec.label, results.n(model, spec), mean_sd(cost, 1.0, 3), mean_sd(half, 1.0, 1),
                          str(no_pruning), mean_sd(results.values(model, spec, "macs_removed")),
                          mean_sd(results.values(model, spec, "seconds_per_epoch"), 1.0, 1)])
            cheaper += bool(cost) and 1 - _mean(cost) > _sd(cost)
            early += bool(half) and _mean(half) - epochs / 2 <= _sd(half)
            theta = [r["undecided"]["theta"] for r in runs if "undecided" in r.numbers]
            pi = [r["undecided"]["pi"] for r in runs if "undecided" in r.numbers]
            both = [r["undecided"]["all"] for r in runs if "undecided" in r.numbers]
            survivors = [len(r["probabilities"].get("theta", [])) + len(r["probabilities"].get("pi", []))
                         for r in runs if "probabilities" in r.numbers]
            rows5.append([model, spec.label, results.n(model, spec), mean_sd(theta), mean_sd(pi), mean_sd(both),
                          mean_sd(survivors, 1.0, 0)])
            both = [v for v in both if v is not None]
            undecided_zero += bool(both) and max(both) == 0
            if both:
                worst.append((_mean(both), spec.label))
        if not counted:
            continue
        verdicts4.append(f"C4 {model}: training cost below dense (by more than the spread) in {cheaper} of {counted} "
                         f"configurations; half of the final removal by epoch {epochs / 2:g} of {epochs} (within the "
                         f"spread) in {early} of {counted}")
        top = max(worst) if worst else None
        most = f"; the most undecided: {top[1]} with {top[0]:.1%} strictly between ε and 0.9" if top else ""
        verdicts5.append(f"C5 {model}: every survivor above 0.9 in {undecided_zero} of {counted} configurations{most}")
    header4 = ["model", "run", "seeds", "training cost ÷ dense", "epoch of half the removal", "runs removing nothing",
               "fPR %", "s/epoch"]
    header5 = ["model", "run", "seeds", "θ in (ε, 0.9) %", "π in (ε, 0.9) %", "θ and π in (ε, 0.9) %",
               "survivors"]
    title4 = f"C4: training cost over {epochs} epochs (every bernoulli run)"
    c4 = _with_verdicts(text_table(header4, rows4, title=title4, left_columns=2), verdicts4)
    c5 = _with_verdicts(text_table(header5, rows5, title="C5: final keep-probabilities of the survivors "
                                                         "(every bernoulli run)", left_columns=2), verdicts5)
    return c4 + "\n\n" + c5


def target_table(results: Results, models: list[str], specs: list[Spec]) -> str:
    rows, verdicts = [], []
    for model in models:
        for spec in specs:
            runs = results.of(model, spec)
            dense_ms = [r["latency"]["dense_ms"] for r in runs]
            compressed_ms = [r["latency"]["compressed_ms"] for r in runs]
            ratio = [_latency_ratio(r) for r in runs]
            reached = ", ".join("-" if r.numbers.get("target_reached_epoch") is None
                                else str(r.numbers["target_reached_epoch"]) for r in runs)
            rows.append([model, spec.method, results.n(model, spec), mean_sd(results.values(model, spec, "dense_accuracy")),
                         mean_sd(results.values(model, spec, "accuracy")), mean_sd(results.values(model, spec, "macs_removed")),
                         mean_sd(results.values(model, spec, "params_removed")), mean_sd(dense_ms, 1.0, 3),
                         mean_sd(compressed_ms, 1.0, 3), mean_sd(ratio, 1.0, 3),
                         reached if spec.method == "bernoulli" else ""])
        bernoulli, channel = specs
        accuracy = compare(results.values(model, channel, "accuracy"), results.values(model, bernoulli, "accuracy"))
        macs = compare(results.values(model, channel, "macs_removed"), results.values(model, bernoulli, "macs_removed"))
        latency = compare([_latency_ratio(r) for r in results.of(model, channel)],
                          [_latency_ratio(r) for r in results.of(model, bernoulli)])
        said = {1: "higher", 0: "tie", -1: "lower"}
        verdicts.append(f"target {model}: bernoulli against channel: accuracy {said[accuracy]}, MACs removed "
                        f"{said[macs]}, latency ratio {said[latency]}")
    first = specs[0]
    header = ["model", "method", "seeds", "dense accuracy %", "accuracy %", "MACs removed %", "params removed %",
              "dense ms", "compressed ms", "compressed ÷ dense", "target reached at epoch"]
    title = f"bernoulli against channel at --target {first.target} (latency: onnxruntime CPU, median per run)"
    return _with_verdicts(text_table(header, rows, title=title, left_columns=2), verdicts)


def _latency_ratio(run: Run) -> float:
    return run["latency"]["compressed_ms"] / run["latency"]["dense_ms"]


def time_table(results: Results, dense: list[dict[str, Any]], models: list[str], specs: list[Spec]) -> str:
    rows = []
    for model in models:
        seconds = [d["seconds"] for d in dense if d["model"] == model]
        rows.append([model, "dense training", str(len(seconds)), mean_sd(seconds, 1.0, 0)])
        for spec in specs:
            seconds = [run.seconds for run in results.runs if run.model == model and run.spec == spec]
            if seconds:
                rows.append([model, spec.label, str(len(seconds)), mean_sd(seconds, 1.0, 0)])
    return text_table(["model", "run", "runs", "wall s per run"], rows, title="wall time", left_columns=2)


def _with_verdicts(table: str, verdicts: list[str]) -> str:
    return table + ("\n" + "\n".join(verdicts) if verdicts else "")


# --- main ---------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet20,resnet56")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 … N−1")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of every bernoulli and channel run")
    parser.add_argument("--dense-epochs", type=int, default=15)
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS),
                        help=f"any of {', '.join(EXPERIMENTS)} (C4 and C5 read every bernoulli run made)")
    parser.add_argument("--rhos", default="0.05,0.2,0.8", help="C1's fixed ρ values; C2 and C3 use the middle one")
    parser.add_argument("--nu-large", type=float, default=1.0)
    parser.add_argument("--target", default="50%", help="MACs removed, for bernoulli and channel alike")
    parser.add_argument("--bench-batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads of the latency runs")
    parser.add_argument("--bench-runs", type=int, default=100)
    parser.add_argument("--device", default="auto", help="where training runs (latency is onnxruntime on the CPU)")
    parser.add_argument("--json", type=Path, help="write every raw number here")
    args = parser.parse_args()
    experiments = [e.strip().lower() for e in args.experiments.split(",") if e.strip()]
    unknown = sorted(set(experiments) - set(EXPERIMENTS))
    if unknown or not experiments:
        parser.error(f"--experiments takes any of {', '.join(EXPERIMENTS)}, not {', '.join(unknown) or 'nothing'}")
    rhos = [float(r) for r in args.rhos.split(",")]
    if not rhos or min(rhos) < 0 or rhos != sorted(rhos):
        parser.error("--rhos must be non-negative and ascending")
    if args.seeds < 1 or args.epochs < 1 or args.dense_epochs < 1:
        parser.error("--seeds, --epochs and --dense-epochs must be at least 1")
    models = [m for m in args.models.split(",") if m]
    logging.basicConfig(level=logging.WARNING)
    onnxruntime.set_default_logger_severity(3)  # its warnings narrate graph optimizations, not problems

    experiment_specs = plan(experiments, rhos, args.nu_large, args.target)
    specs = list(dict.fromkeys(spec for group in experiment_specs.values() for spec in group))
    runs: list[Run] = []
    dense: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for model in models:
            for seed in range(args.seeds):
                started = time.perf_counter()
                outcome = train_model(model, None, epochs=args.dense_epochs, seed=seed, progress=False,
                                      device=args.device)
                dense_model = outcome.model.cpu()
                shape = tuple(dense_model.input_shape)
                layer_macs = {name: layer.macs for name, layer in count_layer_macs(dense_model, shape).items()}
                dense.append({"model": model, "seed": seed, "seconds": time.perf_counter() - started,
                              "accuracy": outcome.result.test_accuracy, "macs": sum(layer_macs.values()),
                              "params": count_params(dense_model)})
                _progress(f"{model} seed {seed}: dense training {dense[-1]['seconds']:.0f} s, "
                          f"accuracy {outcome.result.test_accuracy:.2%}")
                for index, spec in enumerate(specs):
                    folder = Path(scratch) / f"{model}-{seed}-{index}"
                    runs.append(_run(dense_model, model, seed, spec, folder, layer_macs, args))
                    _progress(f"{model} seed {seed}: {spec.label}: {runs[-1].seconds:.0f} s"
                              + (f", FAILED: {runs[-1].error}" if runs[-1].error else
                                 f", MACs removed {runs[-1]['macs_removed']:.1%}, "
                                 f"accuracy {runs[-1]['accuracy']:.2%}"))
                    if args.json:
                        _write_json(args, experiments, dense, runs)

    results = Results(runs)
    tables = []
    if "c1" in experiment_specs:
        tables.append(c1_table(results, models, experiment_specs["c1"]))
    if "c2" in experiment_specs:
        tables.append(c2_table(results, models, experiment_specs["c2"]))
    if "c3" in experiment_specs:
        tables.append(c3_table(results, models, experiment_specs["c3"]))
    bernoulli = [spec for spec in specs if spec.method == "bernoulli"]
    if bernoulli:
        tables.append(c4_c5_tables(results, models, bernoulli, args.epochs))
    if "target" in experiment_specs:
        tables.append(target_table(results, models, experiment_specs["target"]))
    tables.append(time_table(results, dense, models, specs))
    failures = [f"{run.model} seed {run.seed} {run.spec.label}: {run.error}" for run in runs if run.error]
    if failures:
        tables.append("failed runs (left out of every table):\n" + "\n".join(failures))
    print(f"digits, {args.seeds} seed(s), dense {args.dense_epochs} epochs, every run {args.epochs} epochs; "
          "mean ± std over seeds; a difference smaller than the spread is a tie\n")
    print("\n\n".join(tables))
    if args.json:
        _write_json(args, experiments, dense, runs)


def _run(dense_model, model: str, seed: int, spec: Spec, folder: Path, layer_macs: dict[str, int], args) -> Run:
    started = time.perf_counter()
    try:
        report = compress(dense_model, method=spec.method, target=spec.target, epochs=args.epochs, seed=seed,
                          out=folder, method_options=dict(spec.options), progress=False, bench_batch=args.bench_batch,
                          threads=args.threads, bench_runs=args.bench_runs, device=args.device)
        numbers = measure(report, folder, layer_macs)
    except Exception as error:  # a failed run is a result of the benchmark: recorded, shown, and the rest goes on
        traceback.print_exc(file=sys.stderr)
        return Run(model, seed, spec, time.perf_counter() - started, error=f"{type(error).__name__}: {error}"[:300])
    return Run(model, seed, spec, time.perf_counter() - started, numbers=numbers)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _write_json(args, experiments: list[str], dense: list[dict[str, Any]], runs: list[Run]) -> None:
    payload = {
        "settings": {"models": args.models, "seeds": args.seeds, "epochs": args.epochs,
                     "dense_epochs": args.dense_epochs, "experiments": experiments, "rhos": args.rhos,
                     "nu_large": args.nu_large, "target": args.target, "bench_batch": args.bench_batch,
                     "threads": args.threads, "bench_runs": args.bench_runs, "device": args.device,
                     "torch_threads": torch.get_num_threads()},
        "dense": dense,
        "runs": [{"model": run.model, "seed": run.seed, "run": run.spec.label, "method": run.spec.method,
                  "target": run.spec.target, "options": dict(run.spec.options), "seconds": run.seconds,
                  "error": run.error, **run.numbers} for run in runs],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.json.with_name(args.json.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=1) + "\n")
    temporary.replace(args.json)


if __name__ == "__main__":
    main()
