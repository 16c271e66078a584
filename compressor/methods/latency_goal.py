"""`--target-latency`: remove the channels that cost the least importance per millisecond they save.

A structured method given a latency target asks a `LatencyModel` (compressor.runtime.latency_model) what each
prunable layer costs on the chosen backend at each width, and removes channels in blocks of the group's
multiple (`--round-to`), greedily, by the smallest importance lost per millisecond of predicted latency saved,
until the predicted latency has fallen by the target. Latency is not linear in width (onnxruntime's blocked
CPU kernels and GPU tensor cores reward some widths only), so a move may save nothing until the next block
goes too; each step therefore also weighs removing up to `LOOKAHEAD` blocks of a group at once. The table's sum
is not the whole network (the work between layers is left out, and a layer can cost more or less inside a
network than alone), so the plan is compiled and timed against the dense model, and the goal corrected by what
is measured (`greedy_by_latency`, `--latency-checks`). The model is then fine-tuned and compiled, and
`LatencyGoal.outcome` times it against the dense model on the same backend, in the same run, so the report gives
the target, the prediction and the measurement side by side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from compressor.errors import CompressorError
from compressor.modules import copy_model
from compressor.options import method_flag
from compressor.passes.analysis.counts import CountPredictor
from compressor.passes.pipeline import export_onnx
from compressor.report import LatencyCheck, LatencyLayer, LatencyTargetStats
from compressor.runtime.backends import Subject
from compressor.runtime.latency_model import (LatencyModel, LatencyTable, backend_precision_of,
                                              check_latency_backend, default_latency_backend,
                                              latency_backend_unavailable, measure_models)

logger = logging.getLogger(__name__)

LOOKAHEAD = 4
# Runs of each model, taken in turn, when the dense and the compressed model are timed at the end (more, to fill
# the seconds, where a run is short: at batch 1 a few milliseconds on a shared machine are noise).
MEASURE_RUNS, MEASURE_SECONDS = 50, 3.0
# Whole-model timings of a plan while choosing it (`greedy_by_latency`): at most this many by default, of this
# many runs each, and a plan measured within this fraction of the dense model's latency of the request stops them.
CHECK_ROUNDS = 5
CHECK_RUNS, CHECK_SECONDS = 30, 2.0
CHECK_TOLERANCE = 0.02
# Rounding to single channels would need a measurement for every pair of widths of every layer.
LATENCY_ROUNDINGS = (8, 16, 32)


def parse_latency_target(value: str | float) -> float:
    """The fraction of latency to remove: '50%' or '0.5' → 0.5 (the latency falls by half), '2x' → 0.5 (twice
    as fast), '4x' → 0.75; 0, 100% and more, and speedups of 1x or less are errors."""
    text = str(value).strip()
    try:
        if text.lower().endswith("x"):
            speedup = float(text[:-1])
            if not speedup > 1:
                raise CompressorError(f"--target-latency as a speedup must be above 1x, got {value!r}")
            return 1 - 1 / speedup
        fraction = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise CompressorError(f"--target-latency must look like 50% (latency removed), 0.5 or 2x (speedup), "
                              f"not {value!r}") from None
    if not 0 < fraction < 1:
        raise CompressorError(f"--target-latency must lie strictly between 0% and 100% (or be a speedup above 1x), "
                              f"got {value!r}")
    return fraction


def target_latency_field() -> Any:
    """The `--target-latency` option that structured methods share."""
    return field(default=None, metadata=method_flag(
        "--target-latency", "structured methods: remove structure until the latency predicted from per-layer "
                            "measurements on --latency-backend falls by this much, as 50%% or 2x", parse_latency_target))


def latency_backend_field() -> Any:
    return field(default=None, metadata=method_flag(
        "--latency-backend", "backend --target-latency measures on: ort-cpu, ort-cuda, ort-trt, trt, torch-cuda or "
                             "torch-cpu (default: torch-cuda with a GPU, else ort-cpu)"))


def _parse_checks(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise CompressorError(f"--latency-checks takes a whole number of timings, 0 or more, not {text!r}")
    return value


def latency_checks_field() -> Any:
    return field(default=CHECK_ROUNDS, metadata=method_flag(
        "--latency-checks", f"with --target-latency: compile and time the chosen plan against the dense model up to "
                            f"this many times, moving the goal by what is measured (default {CHECK_ROUNDS}; 0 trusts "
                            f"the per-layer table alone)", _parse_checks))


def latency_cache_field() -> Any:
    return field(default=None, metadata=method_flag(
        "--latency-cache", "folder of the per-layer latency tables (default $COMPRESSOR_CACHE or ~/.cache/compressor)"))


def check_latency_settings(target: float | None, backend: str | None, round_to: int | None = None,
                           checks: int | None = None) -> None:
    """Refuse a latency setting that cannot work, before any work starts; `round_to` None: the method removes
    whole structures or single channels by its own mechanism, at whatever widths that leaves; `checks` None:
    the method does not time its plans while choosing them."""
    if backend is not None:
        check_latency_backend(backend)
        reason = latency_backend_unavailable(backend) if target is not None else None
        if reason is not None:
            raise CompressorError(f"--latency-backend {backend} cannot run here: {reason}")
    if target is not None and round_to is not None and round_to not in LATENCY_ROUNDINGS:
        raise CompressorError(f"--target-latency needs --round-to {', '.join(map(str, LATENCY_ROUNDINGS))}: "
                              "at single channels the latency table would need every pair of widths of every layer")
    if checks is not None:
        _parse_checks(str(checks))


class LatencyGoal:
    """A latency target on one backend: the table, the dense model's prediction, and the measurement after."""

    def __init__(self, model: nn.Module, input_shape: Sequence[int], target: float, backend: str | None, batch: int,
                 threads: int | None, cache_dir: str | None = None,
                 measure: Callable | None = None) -> None:
        self.target = target
        self.backend = backend or default_latency_backend()
        self.batch = batch
        self.input_shape = tuple(input_shape)
        self.table = LatencyTable(self.backend, batch, threads=threads, cache_dir=cache_dir, measure=measure,
                                  progress=self._announce)
        self.model = LatencyModel(model, self.input_shape, self.table)
        # The dense model as it was, for timing it against the compressed one at the end; on the CPU, where
        # the ONNX check runs (a torch backend moves its own copy to its device).
        self.dense = copy_model(model).cpu().eval()
        self.dense_predicted_ms = self.model.predict()
        self.checks: list[LatencyCheck] = []
        self._dense_subject: Subject | None = None

    def _announce(self, spec) -> None:
        if self.table.measured and self.table.measured % 25 == 0:
            logger.info("latency table: %d layer shapes measured on %s so far", self.table.measured, self.backend)

    @property
    def goal_ms(self) -> float:
        return (1 - self.target) * self.dense_predicted_ms

    def predict(self, counts: CountPredictor) -> float:
        """Predicted milliseconds of the model at the widths of the plan `counts` last predicted."""
        return self.model.predict_at(counts.widths)

    def measured_fraction(self, compiled: nn.Module) -> float:
        """`compiled`'s measured latency as a fraction of the dense model's, both timed now on the goal's backend
        (their runs in turn): how a plan is checked while it is chosen.

        The pair is timed twice, and a third time when the two disagree by more than twice CHECK_TOLERANCE, and
        the median taken: on a shared machine a neighbour's burst can slow one model more than the other (the
        wider model moves more memory), and one such timing put a plan 20 points off its next two.
        """
        if self._dense_subject is None:
            self._dense_subject = Subject("dense", export_onnx(self.dense, input_shape=self.input_shape).model,
                                          self.dense, self.input_shape)
        candidate = Subject("planned", export_onnx(compiled, input_shape=self.input_shape).model, compiled,
                            self.input_shape)
        fractions: list[float] = []
        while len(fractions) < 2 or (len(fractions) == 2 and abs(fractions[0] - fractions[1]) > 2 * CHECK_TOLERANCE):
            dense_ms, planned_ms = measure_models(self.backend, [self._dense_subject, candidate], self.batch,
                                                  threads=self.table.threads, runs=CHECK_RUNS, seconds=CHECK_SECONDS)
            fractions.append(planned_ms / dense_ms)
            logger.info("latency check: planned model %.3f ms, dense %.3f ms (%.1f%% removed)", planned_ms, dense_ms,
                        100 * (1 - planned_ms / dense_ms))
        return float(np.median(fractions))

    def outcome(self, dense_onnx, compressed_onnx, compressed: nn.Module) -> LatencyTargetStats:
        """Time the dense and the compiled model on the goal's backend (their runs taken in turn, same input) and
        predict the compiled model from the table; the report's latency-target section."""
        compiled = LatencyModel(compressed, self.input_shape, self.table)
        predicted = dict((layer.name, ms) for layer, ms in compiled.per_layer())
        subjects = [Subject("dense", dense_onnx, self.dense, self.input_shape),
                    Subject("compressed", compressed_onnx, compressed, self.input_shape)]
        dense_ms, compressed_ms = measure_models(self.backend, subjects, self.batch, threads=self.table.threads,
                                                 runs=MEASURE_RUNS, seconds=MEASURE_SECONDS)
        self.table.save()
        widths = {layer.name: layer.spec for layer in compiled.layers}
        layers = [LatencyLayer(name=layer.name, dense=layer.spec.describe(),
                               compressed=widths[layer.name].describe() if layer.name in widths else "removed",
                               dense_ms=ms, compressed_ms=predicted.get(layer.name, 0.0))
                  for layer, ms in self.model.per_layer()]
        return LatencyTargetStats(
            backend=self.backend, batch=self.batch, precision=backend_precision_of(self.backend),
            threads=self.table.threads, target=self.target,
            dense_predicted_ms=self.dense_predicted_ms, compressed_predicted_ms=compiled.predict(),
            dense_measured_ms=dense_ms, compressed_measured_ms=compressed_ms,
            entries_measured=self.table.measured, cache_hits=self.table.hits,
            seconds_measuring=self.table.seconds, cache=str(self.table.path),
            untimed=sorted(set(self.model.untimed) | set(compiled.untimed)), layers=layers, checks=list(self.checks))


@dataclass(frozen=True)
class Step:
    """A plan on the greedy's path: channels removed per group, and what it leaves."""

    plan: list[list[int]]
    params: int
    macs: int
    ms: float  # predicted by the latency table


def latency_steps(sizes: Sequence[int], multiples: Sequence[int], orders: Sequence[list[int]],
                  importance: Sequence[torch.Tensor], realize: Callable[[list[int]], list[list[int]]],
                  evaluate: Callable[[list[list[int]]], tuple[int, int, float]]) -> Iterator[Step]:
    """The greedy's path: the plan that removes nothing, then the plan after each move, until no group can narrow.

    `orders[g]` is group g's channels, least important first, and `importance[g]` each channel's importance;
    `realize(removed)` turns a count of channels removed per group into the plan slicing can realise (rounded to
    the group's multiple); `evaluate(plan)` gives its (parameters, MACs, predicted ms). Each step weighs, for
    every group, removing its next 1 to LOOKAHEAD blocks, and takes the move with the least importance lost per
    millisecond saved; when no move saves time (the table is flat there), the least important move.
    """
    removed = [0] * len(sizes)
    plan = realize(removed)
    current = Step(plan, *evaluate(plan))
    yield current

    def lost(candidate: list[list[int]]) -> float:
        newly_removed = (sorted(set(candidate[g]) - set(current.plan[g])) for g in range(len(sizes)))
        return sum(float(importance[g][channels].sum()) for g, channels in enumerate(newly_removed) if channels)

    while True:
        best, fallback = None, None
        for group, (size, multiple) in enumerate(zip(sizes, multiples)):
            kept = size - removed[group]
            step = kept % multiple or multiple  # the first step lands the width on a multiple
            for extra in range(LOOKAHEAD):
                new_kept = kept - step - extra * multiple
                if new_kept < multiple:
                    break
                trial = list(removed)
                trial[group] = size - new_kept
                candidate = realize(trial)
                if candidate == current.plan:
                    continue
                cost = lost(candidate)
                moved = Step(candidate, *evaluate(candidate))
                saved = current.ms - moved.ms
                if saved > 0 and (best is None or cost / saved < best[0]):
                    best = (cost / saved, trial, moved)
                if fallback is None or cost < fallback[0]:
                    fallback = (cost, trial, moved)
        chosen = best or fallback
        if chosen is None:
            return
        removed, current = chosen[1], chosen[2]
        yield current


def greedy_by_latency(steps: Iterator[Step], dense_ms: float, keep: float,
                      other_targets_met: Callable[[int, int], bool],
                      check: Callable[[list[list[int]]], float] | None = None,
                      rounds: int = CHECK_ROUNDS) -> tuple[Step, list[LatencyCheck]]:
    """The first step of the path `steps` (see `latency_steps`) whose predicted latency is at most `keep` of
    `dense_ms` (the dense model's prediction) and that meets `other_targets_met(params, MACs)`.

    With `check` (a plan → the compiled plan's measured latency as a fraction of the dense model's), the plan
    is then timed whole, up to `rounds` times: the table leaves out the work between the layers (additions,
    layout changes) and a layer can cost a little more or less inside a network than alone, so a plan can land
    off the request. After each timing the goal moves (`_corrected_goal`) and the path is followed forward, or
    back, to it; the step measured closest to `keep` is returned, with the timings.
    """
    path: list[Step] = []

    def first_within(goal_ms: float) -> int:
        """The index on the path of the first step within `goal_ms` that meets the other targets."""
        def fits(step: Step) -> bool:
            return step.ms <= goal_ms and other_targets_met(step.params, step.macs)

        for index, step in enumerate(path):
            if fits(step):
                return index
        for step in steps:
            path.append(step)
            if fits(step):
                return len(path) - 1
        raise CompressorError(f"the latency target cannot be reached: with every group at its narrowest the "
                              f"predicted latency is {path[-1].ms:.3f} ms, the goal {goal_ms:.3f} ms")

    index = first_within(keep * dense_ms)
    checks: list[LatencyCheck] = []
    if check is None or rounds < 1:
        return path[index], checks
    timed: dict[int, float] = {}  # path index → measured fraction of the dense latency
    for round_index in range(rounds):
        step = path[index]
        timed[index] = check(step.plan)
        checks.append(LatencyCheck(predicted_removed=1 - step.ms / dense_ms, measured_removed=1 - timed[index]))
        if abs(timed[index] - keep) <= CHECK_TOLERANCE or round_index == rounds - 1:
            break
        try:
            index = first_within(_corrected_goal([(path[i].ms, fraction) for i, fraction in timed.items()],
                                                 (path[index].ms, timed[index]), keep))
        except CompressorError:
            break  # the measurement asks for more than the narrowest plan: keep the closest one timed
        if index in timed:
            break
    return path[min(timed, key=lambda i: abs(timed[i] - keep))], checks


def _corrected_goal(timed: Sequence[tuple[float, float]], last: tuple[float, float], keep: float) -> float:
    """The predicted milliseconds to aim for next, from plans timed so far as (predicted ms, measured fraction):
    between the closest timed plans on either side of `keep`, the straight line through them; with all on one
    side, the `last` one's prediction scaled by requested ÷ measured."""
    over = [plan for plan in timed if plan[1] > keep]
    under = [plan for plan in timed if plan[1] < keep]
    if over and under:
        (ms_over, fraction_over), (ms_under, fraction_under) = min(over, key=lambda p: p[1]), max(under, key=lambda p: p[1])
        return ms_under + (keep - fraction_under) * (ms_over - ms_under) / (fraction_over - fraction_under)
    return last[0] * keep / last[1]
