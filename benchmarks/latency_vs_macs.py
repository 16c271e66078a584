"""Does latency follow the MACs removed? Channel pruning compiled by the compressor against Torch-Pruning.

For each model and MACs-removed target, pruned variants are built from the same seeded dense weights:
`channel` pruning (filter L1, global) gated and compiled by `compile_model` with channel counts left as they
fall (`--round-to 1`), at the default multiples of 8, and at multiples of 16, and
Torch-Pruning 1.6's `MetaPruner` with L1 magnitude importance and global pruning (classifier left alone), its
`pruning_ratio` bisected (a fresh model per try) until its counted MACs removed come within half a point of
ours, or as close as its granularity allows. Every variant is exported with `export_onnx` and timed on
onnxruntime's CPU provider. Weights are random: latency does not depend on their values, only on the shapes
that pruning leaves.

resnet56 uses the parameter-free option-A shortcut (`PadShortcut`). Torch-Pruning is tried on it first: the
ratios at which it raises and the closest match it reaches are printed under the table, and it gets a row
only where it reaches ours within a point. Torch-Pruning's main resnet56 rows use an option-B resnet56 (each
`PadShortcut` replaced by a 1x1 strided convolution + BatchNorm projection), whose own dense model is their
baseline.

The table gives, per variant, the counted MACs and parameters against its dense model and the median latency
per batch size; the quotient (latency ratio ÷ MACs ratio) is 1 when latency falls exactly as the MACs do and
above 1 when it falls less. To be fair on a noisy shared machine all variants of a model are timed
interleaved in one loop (one run of each per round, same input), not one after the other, with onnxruntime's
worker threads not spinning between runs (OrtBackend's `spin_wait=False`). A second table times compiling a
gated resnet110: the pass pipeline, the ONNX export and the onnxruntime check.

Beside them, `ours by latency` removes the same share of *latency* (`--target-latency`, multiples of 8): its
channels go by L1 importance per millisecond saved, read from a latency table measured per layer on the
backend at `--latency-batch` (cached, so a second run measures nothing). `--backend torch-cuda` times every
variant with PyTorch on the GPU (FP16, channels-last, CUDA events and graphs) instead of onnxruntime's CPU
provider, and measures the latency table there too.

`--checkpoint ARCH=PATH` (a model trained with `compress train`) adds the comparison at the same *measured*
latency: for each target, `ours by MACs` (its MACs target) and Torch-Pruning (its pruning_ratio) are cut at
several settings and timed together with `ours by latency` and the dense model, twice narrowing the range, and
the setting closest to ours by latency in the same measurement is taken; all three, cut from the trained
weights, are then fine-tuned alike on digits (`--finetune-epochs`, SGD at 0.01, cosine, one run per `--seeds`)
and their test accuracy is given before and after (mean ± sd over the seeds).

    python benchmarks/latency_vs_macs.py --out bench-latency      # resnet56, mobilenet_v1; 25%, 50%; b=1, 32
    python benchmarks/latency_vs_macs.py --models resnet56 --targets 50% --batches 1 --runs 5
    # + accuracy at the same measured latency, from weights trained with `compress train resnet56`:
    python benchmarks/latency_vs_macs.py --models resnet56 --targets 50% --batches 32 --checkpoint resnet56=resnet56.pt
    python benchmarks/latency_vs_macs.py --backend torch-cuda --batches 32,256   # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import statistics
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch_pruning as tp

from compressor.api import VERIFY_BATCH, export_onnx
from compressor.data import load_data
from compressor.loading import load_model
from compressor.passes.pipeline import compile_model
from compressor.counting import count_macs, count_params
from compressor.errors import CompressorError
from compressor.methods import create_method
from compressor.methods.base import RunContext
from compressor.options import parse_fraction
from compressor.tables import text_table
from compressor.training import TrainConfig, evaluate, train
from compressor.verify import verify_onnx
from compressor.models import PadShortcut, ResidualUnit, create_model
from compressor.runtime.backends import Subject
from compressor.runtime.bench import benchmark, parse_batch_sizes
from compressor.runtime.latency_model import measure_models, runner
from compressor.runtime.ort_backend import CPU_PROVIDER, OrtBackend

SEED = 0
# Torch-Pruning's pruning_ratio is searched in [0, MAX_RATIO]: a ratio of 1 would empty layers.
MAX_RATIO = 0.95
SEARCH_STEPS = 20
MATCH_TOLERANCE = 0.005  # the search stops this close to ours
MATCH_ACCEPTED = 0.01  # and a result this close gets a table row
COMPILE_ARCH, COMPILE_TARGET, COMPILE_REPEATS = "resnet110", 0.5, 3
ROUNDINGS = (1, 8, 16)  # the first must be 1: Torch-Pruning is matched to its MACs, and it always succeeds
LATENCY_ROUND_TO = 8
# A matched variant is the closest of MATCH_CANDIDATES timed together with ours by latency, twice narrowed.
MATCH_CANDIDATES, MATCH_ROUNDS = 6, 2
FINETUNE_LR = 0.01


@dataclass
class Variant:
    """One exported model of the comparison; `dense` is the model its ratios are taken against."""

    target: str
    label: str
    model: nn.Module
    onnx: onnx.ModelProto
    dense: Variant | None = None
    macs: int = field(init=False)
    params: int = field(init=False)
    latency_ms: dict[int, float] = field(default_factory=dict)  # median per batch size

    def __post_init__(self) -> None:
        self.macs = count_macs(self.model, tuple(self.model.input_shape))
        self.params = count_params(self.model)


@dataclass
class Search:
    """Outcome of the pruning_ratio search: the closest model that ran, and the lowest ratio that raised."""

    model: nn.Module | None = None
    ratio: float = 0.0
    removed: float = 0.0
    failure: str | None = None
    failed_ratio: float = MAX_RATIO

    def matches(self, target: float) -> bool:
        return self.model is not None and abs(self.removed - target) <= MATCH_ACCEPTED

    def describe(self, target: float) -> str:
        parts = []
        if self.failure is not None:
            parts.append(f"crashes at pruning_ratio {self.failed_ratio:.4f} ({self.failure})")
        if self.model is not None:
            verdict = "" if self.matches(target) else f", not within {MATCH_ACCEPTED:.0%} of it: no row"
            parts.append(f"pruning_ratio {self.ratio:.4f} runs and removes {self.removed:.2%} of the MACs "
                         f"(ours {target:.2%}{verdict})")
        return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet56,mobilenet_v1")
    parser.add_argument("--targets", default="25%,50%", help="fractions of the MACs to remove")
    parser.add_argument("--batches", default="1,32", help="batch sizes for the latency columns")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per variant and batch size")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default="bench-latency")
    parser.add_argument("--backend", default="ort-cpu", choices=["ort-cpu", "torch-cuda"],
                        help="what times the variants and measures the latency table (torch-cuda: FP16, channels-last)")
    parser.add_argument("--latency-batch", type=int, help="batch of the latency table (default: the largest of --batches)")
    parser.add_argument("--cache", help="folder of the latency tables (default: compressor's own cache)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="ARCH=PATH",
                        help="trained weights of ARCH: adds the accuracy comparison at the same measured latency")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds per variant (accuracy: mean ± sd)")
    parser.add_argument("--skip-compile-table", action="store_true")
    args = parser.parse_args()
    if args.runs < 1 or args.warmup < 0 or args.threads < 1 or args.finetune_epochs < 0 or args.seeds < 1:
        parser.error("need --runs >= 1, --warmup >= 0, --threads >= 1, --finetune-epochs >= 0 and --seeds >= 1")
    # The passes' and the exporter's info logs would drown the tables.
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    targets = args.targets.split(",")
    batches = parse_batch_sizes(args.batches)
    settings = Settings(args.backend, args.threads, args.latency_batch or max(batches), args.cache, args.runs,
                        args.warmup)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)

    rows, notes = [], []
    for arch in args.models.split(","):
        variants = _variants(arch, targets, notes, settings)
        _time_variants(variants, batches, settings)
        rows += [_row(arch, variant, batches) for variant in variants]
    header = ["model", "target", "variant", "MACs (M)", "MACs ratio", "params ratio"]
    for batch in batches:
        header += [f"ms b={batch}", f"latency ratio b={batch}", f"quotient b={batch}"]
    timer = (f"onnxruntime CPU, {args.threads} threads, median of {args.runs} interleaved runs"
             if args.backend == "ort-cpu" else f"torch CUDA FP16 channels-last, median of {args.runs} runs")
    title = (f"latency vs MACs on {timer}; ratios against each variant's dense model; quotient = latency ratio ÷ "
             f"MACs ratio; ours by latency: table at batch {settings.latency_batch}")
    table = text_table(header, rows, title=title, left_columns=3)
    if notes:
        table += "\n\n" + "\n".join(notes)
    print(table)
    sections = [table]
    for arch, path in checkpoints.items():
        same = _same_latency_table(arch, path, targets, settings, args.finetune_epochs, args.seeds)
        print("\n" + same)
        sections.append(same)
    if not args.skip_compile_table:
        compile_table = _compile_table()
        print("\n" + compile_table)
        sections.append(compile_table)
    (root / "table.txt").write_text("\n\n".join(sections) + "\n")


@dataclass(frozen=True)
class Settings:
    """Where and how variants are timed, and the latency table ours by latency reads."""

    backend: str
    threads: int
    latency_batch: int
    cache: str | None
    runs: int
    warmup: int


def _fresh(arch: str) -> nn.Module:
    """The dense zoo model in eval mode, with the same weights every time it is built."""
    torch.manual_seed(SEED)
    return create_model(arch).eval()


def _option_b(arch: str) -> nn.Module:
    """`arch` with every option-A zero-padding shortcut replaced by a 1x1 strided conv + BatchNorm projection."""
    model = _fresh(arch)
    for unit in model.modules():
        if isinstance(unit, ResidualUnit) and isinstance(unit.shortcut, PadShortcut):
            pad = unit.shortcut
            unit.shortcut = nn.Sequential(
                nn.Conv2d(pad.in_channels, pad.out_channels, 1, stride=pad.stride, bias=False),
                nn.BatchNorm2d(pad.out_channels))
    return model.eval()


def _variants(arch: str, targets: list[str], notes: list[str], settings: Settings) -> list[Variant]:
    """Dense, ours at each rounding and Torch-Pruning at each target, for one model."""
    dense_model = _fresh(arch)
    shape = tuple(dense_model.input_shape)
    dense = Variant("-", "dense", dense_model, _export(dense_model, shape))
    has_option_a = any(isinstance(m, PadShortcut) for m in dense_model.modules())
    variants = [dense]
    build_for_tp, tp_dense, tp_label = partial(_fresh, arch), dense, "Torch-Pruning"
    if has_option_a:
        build_for_tp = partial(_option_b, arch)
        option_b = build_for_tp()
        tp_dense = Variant("-", "dense (option-B)", option_b, _export(option_b, shape))
        tp_label = "Torch-Pruning (option-B)"
        variants.append(tp_dense)

    for target in targets:
        fraction = parse_fraction(target)
        unrounded = None
        for round_to in ROUNDINGS:
            try:
                ours = _ours(arch, fraction, round_to, shape)
            except CompressorError as error:  # a coarse rounding can leave too little to remove
                notes.append(f"{arch} {target}: ours round-to {round_to}: {error}")
                continue
            if unrounded is None:
                unrounded = ours
            variants.append(Variant(target, f"ours round-to {round_to}", ours, _export(ours, shape), dense))
        try:
            by_latency, method = _ours_by_latency(_fresh(arch), fraction, settings)
        except CompressorError as error:
            notes.append(f"{arch} {target}: ours by latency: {error}")
        else:
            variants.append(Variant(target, "ours by latency", by_latency, _export(by_latency, shape), dense))
            notes.append(f"{arch} {target}: ours by latency: {_predicted(method)}")
        # Torch-Pruning aims at the MACs ours removed without rounding, so the rows compare like with like.
        ours_removed = 1 - count_macs(unrounded, shape) / dense.macs
        if has_option_a:
            search = _match_torch_pruning(partial(_fresh, arch), shape, ours_removed)
            notes.append(f"{arch} {target}: Torch-Pruning on option-A: {search.describe(ours_removed)}")
            if search.matches(ours_removed):
                variants.append(Variant(target, "Torch-Pruning (option-A)", search.model,
                                        _export(search.model, shape), dense))
        search = _match_torch_pruning(build_for_tp, shape, ours_removed)
        if search.model is None:
            raise RuntimeError(f"Torch-Pruning fails on {arch}: {search.failure}")
        notes.append(f"{arch} {target}: {tp_label}: {search.describe(ours_removed)}")
        variants.append(Variant(target, tp_label, search.model, _export(search.model, shape), tp_dense))
    return variants


def _ours(arch: str, fraction: float, round_to: int, shape: tuple[int, ...]) -> nn.Module:
    """Channel gates by filter L1 on a fresh model, compiled into a physically thinner one."""
    model = _fresh(arch)
    create_method("channel", fraction, round_to=round_to).prepare(model, None)
    return compile_model(model, shape, round_to=round_to).model.eval()


def _ours_by_latency(model: nn.Module, fraction: float, settings: Settings) -> tuple[nn.Module, object]:
    """`model` with `fraction` of its predicted latency removed by channel pruning's `--target-latency`."""
    shape = tuple(model.input_shape)
    method = create_method("channel", None, run=RunContext(settings.latency_batch, settings.threads),
                           target_latency=fraction, round_to=LATENCY_ROUND_TO, latency_backend=settings.backend,
                           latency_cache=settings.cache)
    method.prepare(model, None)
    return compile_model(model, shape, round_to=LATENCY_ROUND_TO).model.eval(), method


def _predicted(method) -> str:
    goal, table = method.latency_goal, method.latency_goal.table
    dense, ours = method.predicted["dense_latency_ms"], method.predicted["latency_ms"]
    timed = " → ".join(f"{check.measured_removed:.1%}" for check in goal.checks)
    return (f"table predicts {dense:.2f} → {ours:.2f} ms at batch {goal.batch} ({1 - ours / dense:.1%} removed); "
            f"plans timed while choosing: {timed or 'none'} removed; "
            f"{table.measured} layer shapes measured now, {table.hits} lookups from {table.path}")


def _export(model: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    return export_onnx(model, input_shape=shape).model


def _torch_prune(model: nn.Module, ratio: float, shape: tuple[int, ...]) -> nn.Module:
    """Torch-Pruning 1.6, L1 magnitude, global ranking, the final classifier Linear left whole."""
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, torch.zeros((1, *shape)), importance=tp.importance.MagnitudeImportance(p=1),
                                  global_pruning=True, pruning_ratio=ratio, ignored_layers=[classifier])
    pruner.step()
    if getattr(model, "input_shape", None) is None:
        model.input_shape = shape
    return model.eval()


def _match_torch_pruning(build: Callable[[], nn.Module], shape: tuple[int, ...], target: float) -> Search:
    """Bisect Torch-Pruning's pruning_ratio (a fresh model per try) until its MACs removed are near `target`.

    A try that raises (in Torch-Pruning or in the pruned model's forward) counts as a ratio too high: the
    search goes on below it, and the lowest ratio that raised is reported with its error.
    """
    dense_macs = count_macs(build(), shape)
    low, high = 0.0, MAX_RATIO
    search = Search()
    for _ in range(SEARCH_STEPS):
        ratio = (low + high) / 2
        try:
            model = _torch_prune(build(), ratio, shape)
            removed = 1 - count_macs(model, shape) / dense_macs
        except Exception as error:  # whatever Torch-Pruning or the pruned model raises is the measurement
            if ratio < search.failed_ratio:
                search.failed_ratio, search.failure = ratio, _describe_error(error)
            high = ratio
            continue
        if search.model is None or abs(removed - target) < abs(search.removed - target):
            search.model, search.ratio, search.removed = model, ratio, removed
        if abs(removed - target) <= MATCH_TOLERANCE:
            break
        low, high = (ratio, high) if removed < target else (low, ratio)
    return search


def _describe_error(error: Exception) -> str:
    """'<who> raises <type>: <message>', where who is Torch-Pruning itself or the model it pruned."""
    frames = traceback.extract_tb(error.__traceback__)
    who = "Torch-Pruning" if any("torch_pruning" in frame.filename for frame in frames) else "the pruned model"
    message = " ".join(str(error).split())
    return f"{who} raises {type(error).__name__}: {message[:120]}"


def _time_variants(variants: list[Variant], batches: tuple[int, ...], settings: Settings) -> None:
    """Fill each variant's median latency per batch size on the settings' backend."""
    if settings.backend == "ort-cpu":
        _time_interleaved(variants, batches, settings.threads, settings.runs, settings.warmup)
        return
    shape = tuple(variants[0].model.input_shape)
    for variant in variants:
        timed = runner(settings.backend, Subject(variant.label, variant.onnx, variant.model, shape), "fp16", None,
                       max(batches))
        for result in benchmark(timed, shape, batches, warmup=settings.warmup, runs=settings.runs):
            variant.latency_ms[result.batch] = result.median_ms


def _time_interleaved(variants: list[Variant], batches: tuple[int, ...], threads: int, runs: int,
                      warmup: int) -> None:
    """Fill each variant's median latency per batch size; each round runs every variant once on the same input."""
    # Idle sessions must not spin while another is timed (see OrtBackend's spin_wait).
    sessions = [OrtBackend(v.onnx, providers=[CPU_PROVIDER], threads=threads, spin_wait=False).session
                for v in variants]
    shape = tuple(variants[0].model.input_shape)
    for batch in batches:
        x = np.random.default_rng(SEED).standard_normal((batch, *shape), dtype=np.float32)
        feeds = [{session.get_inputs()[0].name: x} for session in sessions]
        for _ in range(warmup):
            for session, feed in zip(sessions, feeds):
                session.run(None, feed)
        elapsed: list[list[float]] = [[] for _ in sessions]
        for r in range(runs):
            # Rotating the order keeps any variant from always running first, or always after the same one.
            for i in (np.arange(len(sessions)) + r) % len(sessions):
                start = time.perf_counter()
                sessions[i].run(None, feeds[i])
                elapsed[i].append(time.perf_counter() - start)
        for variant, times in zip(variants, elapsed):
            variant.latency_ms[batch] = statistics.median(times) * 1e3


def _row(arch: str, variant: Variant, batches: tuple[int, ...]) -> list[str]:
    dense = variant.dense or variant
    macs_ratio = variant.macs / dense.macs
    row = [arch, variant.target, variant.label, f"{variant.macs / 1e6:.1f}", f"{macs_ratio:.3f}",
           f"{variant.params / dense.params:.3f}"]
    for batch in batches:
        ms = variant.latency_ms[batch]
        latency_ratio = ms / dense.latency_ms[batch]
        row += [f"{ms:.2f}", f"{latency_ratio:.3f}", f"{latency_ratio / macs_ratio:.2f}"]
    return row


def _subject(label: str, model: nn.Module, shape: tuple[int, ...]) -> Subject:
    """`model` exported once for timing; a model that runs but cannot be exported raises here."""
    return Subject(label, _export(model, shape), model, shape)


def _latency_ratios(subjects: list[Subject], dense: Subject, settings: Settings) -> list[float]:
    """Each subject's measured latency ÷ the dense model's, timed in turn at the latency batch."""
    times = measure_models(settings.backend, [dense, *subjects], settings.latency_batch, threads=settings.threads,
                           runs=settings.runs, warmup=settings.warmup)
    return [ms / times[0] for ms in times[1:]]


def _match_latency(build: Callable[[float], nn.Module], reference: Subject, dense: Subject, low: float,
                   high: float, settings: Settings) -> tuple[Subject | None, float, float, float, str]:
    """The model `build(p)` whose measured latency is closest to `reference`'s, for p in [low, high].

    On a shared machine two measurements minutes apart can differ by more than the differences sought, so
    candidates are never compared with a number measured earlier: MATCH_CANDIDATES values of p, the reference and
    the dense model are timed together (runs in turn), and a second round does the same around the closest.
    Returns (closest model, its p, its latency ratio, the reference's ratio in the same measurement, what failed).
    """
    failure = ""
    best: tuple[Subject | None, float, float, float] = (None, 0.0, math.inf, 0.0)
    for _ in range(MATCH_ROUNDS):
        built = []
        for parameter in np.linspace(low, high, MATCH_CANDIDATES):
            try:
                built.append((float(parameter), _subject(f"{parameter:.3f}", build(float(parameter)),
                                                         dense.input_shape)))
            except Exception as error:  # a parameter too high for the method (or Torch-Pruning) is a measurement
                failure = failure or f"fails at {parameter:.3f} ({_describe_error(error)})"
        if not built:
            break
        ratios = _latency_ratios([reference, *(subject for _, subject in built)], dense, settings)
        goal = ratios[0]
        for (parameter, subject), ratio in zip(built, ratios[1:]):
            if abs(ratio - goal) < abs(best[2] - best[3]):
                best = (subject, parameter, ratio, goal)
        step = (high - low) / (MATCH_CANDIDATES - 1)
        low, high = max(low, best[1] - step), min(high, best[1] + step)
    return (*best, failure)


def _same_latency_table(arch: str, checkpoint: str, targets: list[str], settings: Settings, epochs: int,
                        seeds: int) -> str:
    """Ours by latency, ours by MACs and Torch-Pruning at the same measured latency, cut from trained weights and
    fine-tuned alike on digits: MACs and latency ratios, accuracy before and after the fine-tune."""
    trained = load_model(checkpoint).eval()
    shape = tuple(trained.input_shape)
    bundle = load_data("digits", shape, batch_size=64, seed=SEED, num_classes=trained.num_classes)
    dense_macs = count_macs(trained, shape)
    dense_accuracy = evaluate(trained, bundle.test)
    dense = _subject("dense", trained, shape)
    rows = [[arch, "-", "dense", "1.000", "1.000", "-", f"{dense_accuracy:.2%}", "-"]]
    notes = []

    def by_macs(fraction: float) -> nn.Module:
        model = copy.deepcopy(trained)
        create_method("channel", fraction, round_to=LATENCY_ROUND_TO).prepare(model, None)
        return compile_model(model, shape, round_to=LATENCY_ROUND_TO).model.eval()

    def by_torch_pruning(ratio: float) -> nn.Module:
        return _torch_prune(copy.deepcopy(trained), ratio, shape)

    for target in targets:
        fraction = parse_fraction(target)
        by_latency, _ = _ours_by_latency(copy.deepcopy(trained), fraction, settings)
        variants = {"ours by latency": _subject("ours by latency", by_latency, shape)}
        for label, build, low in (("ours by MACs", by_macs, 0.05), ("Torch-Pruning", by_torch_pruning, 0.0)):
            matched, parameter, ratio, goal, failure = _match_latency(build, variants["ours by latency"], dense,
                                                                      low, MAX_RATIO, settings)
            notes.append(f"{arch} {target}: {label} matched at {parameter:.3f} (latency ratio {ratio:.3f}, ours by "
                         f"latency {goal:.3f} in the same measurement){'; ' + failure if failure else ''}")
            if matched is not None:
                variants[label] = matched
        # The matched models are timed once more together, so their ratios come from one measurement.
        ratios = _latency_ratios(list(variants.values()), dense, settings)
        for (label, subject), ratio in zip(variants.items(), ratios):
            model = subject.module
            macs_ratio = count_macs(model, shape) / dense_macs
            before = evaluate(model, bundle.test)
            after = []
            for seed in range(seeds):
                tuned = copy.deepcopy(model)
                train(tuned, bundle.train, bundle.test, TrainConfig(epochs=epochs, lr=FINETUNE_LR, seed=seed),
                      progress=False)
                after.append(evaluate(tuned, bundle.test))
            spread = f" ± {statistics.stdev(after):.2%}" if seeds > 1 else ""
            rows.append([arch, target, label, f"{macs_ratio:.3f}", f"{ratio:.3f}", f"{ratio / macs_ratio:.2f}",
                         f"{before:.2%}", f"{statistics.mean(after):.2%}{spread}"])
    header = ["model", "target", "variant", "MACs ratio", f"latency ratio b={settings.latency_batch}", "quotient",
              "accuracy cut", f"accuracy after {epochs} epochs"]
    title = (f"at the same measured latency on {settings.backend} ({arch}, trained weights {checkpoint}), each fine-tuned "
             f"{epochs} epochs on digits (SGD {FINETUNE_LR}, cosine), mean ± sd over {seeds} fine-tuning seed(s)")
    return text_table(header, rows, title=title, left_columns=3) + "\n\n" + "\n".join(notes)


def _compile_table() -> str:
    """Seconds to compile a channel-gated resnet110: passes, ONNX export and onnxruntime check (median of 3).

    Timed with torch on one thread and on its default count: every torch op of the pipeline's many small
    forward passes (tracing, equivalence checks) waits for all its threads, so on a shared machine whose
    cores are busy the default can be many times slower than one thread, and both rows show how much.
    """
    model = _fresh(COMPILE_ARCH)
    shape = tuple(model.input_shape)
    method = create_method("channel", COMPILE_TARGET)
    method.prepare(model, None)
    batch = torch.randn(VERIFY_BATCH, *shape)
    default_threads = torch.get_num_threads()
    rows = []
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        stages: dict[str, list[float]] = {"compile_model": [], "export_onnx": [], "verify_onnx": [], "total": []}
        for _ in range(COMPILE_REPEATS):
            start = time.perf_counter()
            compiled = compile_model(model, shape, method.round_to).model
            compiled_at = time.perf_counter()
            proto = export_onnx(compiled, input_shape=shape).model
            exported_at = time.perf_counter()
            verify_onnx(compiled, proto, batch)
            verified_at = time.perf_counter()
            seconds = (compiled_at - start, exported_at - compiled_at, verified_at - exported_at, verified_at - start)
            for stage, value in zip(stages, seconds):
                stages[stage].append(value)
        rows.append([COMPILE_ARCH, f"{COMPILE_TARGET:.0%}", str(threads),
                     *(f"{statistics.median(values):.2f}" for values in stages.values())])
    torch.set_num_threads(default_threads)
    header = ["model", "target", "torch threads", "compile_model s", "export_onnx s",
              f"verify_onnx (batch {VERIFY_BATCH}) s", "total s"]
    return text_table(header, rows, title=f"compile time of channel gates, median of {COMPILE_REPEATS} repetitions",
                      left_columns=2)


if __name__ == "__main__":
    main()
