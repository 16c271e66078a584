"""Channel pruning by filter L1 norm (Li et al. 2017), the structured baseline Torch-Pruning users know.

Every group of coupled channels (compressor.passes.analysis.groups: a convolution's filters with their BatchNorm,
readers and, across residual adds, every tensor joined by the add) is scored per channel by the L1 norm of the
filters that produce it, summed over the group's producing Conv/Linear layers. `scope="global"` ranks all
channels of all groups together on scores divided by their group's mean (so wide and narrow layers compete
fairly), and `scope="uniform"` removes the same fraction from every group. Channels are gated off, lowest score first,
until the predicted MACs removed reach `--target` (and the parameters removed reach `--target-params`, when
given); every group keeps at least one channel, and each group's width stays a multiple of `--round-to`
(8 unless told otherwise; 1 turns rounding off). With `--target-latency` the channels go instead by the least
importance lost per millisecond saved, as measured per layer on the deployment backend
(compressor.methods.latency_goal), until the predicted latency has fallen by the target. There a channel's importance is
its filters' L1 norm in every layer that writes it, each layer's normalised by its mean, not by the group's: a
millisecond bought from a residual stream narrows every convolution writing the stream, and the importance it
costs must say so, or the streams go first (measured on digits: it then kept less accuracy than the MACs ranking
at the same latency). The chosen plan is compiled and timed against the dense model, and the goal corrected by
what is measured, up to `--latency-checks` times.
The gated model is then fine-tuned and compiled by the structural passes, which remove the gated channels.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from compressor.counting import count_layer_macs, count_params
from compressor.data import DataBundle
from compressor.distributed import from_main, group as process_group
from compressor.errors import CompressorError
from compressor.methods.base import Method, MethodOutcome, StructureOutcome, register_method
from compressor.methods.latency_goal import (LatencyGoal, check_latency_settings, greedy_by_latency,
                                             latency_backend_field, latency_cache_field, latency_checks_field,
                                             latency_steps, target_latency_field)
from compressor.modules import copy_model
from compressor.options import method_flag, target_params_field
from compressor.passes.analysis.counts import CountPredictor
from compressor.passes.analysis.groups import ChannelGroup, analyse_channels, realizable
from compressor.passes.analysis.importance import group_l1
from compressor.passes.gates import gate_group
from compressor.passes.pipeline import compile_model

SCOPES = ("global", "uniform")
ROUNDINGS = (1, 8, 16, 32)


def _parse_round_to(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value not in ROUNDINGS:
        raise CompressorError(f"round_to (--round-to) takes one of {', '.join(map(str, ROUNDINGS))}, not {text!r}")
    return value


@dataclass
class ChannelConfig:
    """Hyper-parameters of L1-norm channel pruning."""

    scope: str = field(default="global", metadata=method_flag(
        "--channel-scope", "method channel: rank channels 'global'ly or remove a 'uniform' share per layer"))
    target_params: float | None = target_params_field()
    # Rounding is on by default: measured on onnxruntime's CPU kernels, channel counts that are not multiples of
    # 8 fall off the blocked fast path and a model with 25% fewer MACs can run slower than the dense one
    # (benchmarks/latency_vs_macs.py); GPU tensor cores want multiples of 8 as well.
    round_to: int = field(default=8, metadata=method_flag(
        "--round-to", "structured methods: keep channel counts at multiples of 8 (default), 16 or 32; 1 turns "
                      "rounding off", _parse_round_to))
    target_latency: float | None = target_latency_field()
    latency_backend: str | None = latency_backend_field()
    latency_cache: str | None = latency_cache_field()
    latency_checks: int = latency_checks_field()


def filter_l1(group: ChannelGroup) -> torch.Tensor:
    """Per root channel, the L1 norm of the filters producing it, summed over the group's Conv/Linear layers."""
    return group_l1(group, produces=True)


def _gate(chosen: list[tuple[ChannelGroup, list[int]]]) -> None:
    """Gate off the chosen channels of each group."""
    for group, channels in chosen:
        if channels:
            # Per root channel, bookkeeping on the CPU: gate_group puts each gate on its layer's device.
            scale = torch.ones(group.size, device="cpu")
            scale[list(channels)] = 0.0
            gate_group(group, scale)


def _removable(size: int, remove: int, multiple: int) -> int:
    """How many of `size` channels to remove when asked for `remove`: keep ≥1 and a multiple of `multiple`."""
    keep = max(1, size - remove)
    keep = min(size, math.ceil(keep / multiple) * multiple)
    return size - keep


@register_method
class ChannelMethod(Method):
    """Gate off the lowest-L1 channels until the MACs (and parameter) target is met, then fine-tune."""

    name = "channel"
    Config = ChannelConfig
    patterns = ("structured",)
    structured = True

    def __init__(self, target, pattern="structured", config=None, run=None):
        super().__init__(target, pattern, config, run)
        if self.config.scope not in SCOPES:
            raise CompressorError(f"channel scope must be one of {', '.join(SCOPES)}, not {self.config.scope!r}")
        if target is None and self.config.target_params is None and self.config.target_latency is None:
            raise CompressorError("method channel needs --target (fraction of MACs to remove), --target-params or "
                                  "--target-latency")
        if self.config.round_to not in ROUNDINGS:
            raise CompressorError(f"round_to must be one of {', '.join(map(str, ROUNDINGS))}, not {self.config.round_to}")
        if self.config.target_latency is not None and self.config.scope != "global":
            raise CompressorError("--target-latency ranks channels globally by importance per millisecond; it does not "
                                  "combine with --channel-scope uniform")
        check_latency_settings(self.config.target_latency, self.config.latency_backend, self.config.round_to,
                               self.config.latency_checks)
        self.predicted: dict[str, float] = {}
        self.left_whole: list[dict[str, str]] = []

    @property
    def round_to(self) -> int:
        return self.config.round_to

    def prepare(self, model: nn.Module, data: DataBundle) -> nn.Module:
        shape = tuple(model.input_shape)
        _gate(self.select(model, shape))
        # Compiling a copy now costs about a second and turns a plan the passes cannot realise into an error
        # before the fine-tune rather than after it.
        try:
            compile_model(copy_model(model), shape, self.round_to)
        except CompressorError as error:
            raise CompressorError(f"method channel's choice of channels cannot be compiled: {error}") from error
        return model

    def select(self, model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[ChannelGroup, list[int]]]:
        """The channels to remove from each group, lowest-scored first, until the targets are met.

        Global scope without rounding bisects one normalised-score threshold; with rounding it takes the
        cheapest block of `round_to` channels at a time. Uniform scope bisects one fraction for every group,
        so with rounding each group moves by whole blocks and the MACs removed can exceed the target.
        """
        analysis = analyse_channels(model, input_shape)
        groups = analysis.groups
        self.left_whole = [{"layer": item.layer, "reason": item.reason} for item in analysis.left_whole]
        if not groups:
            why = f": {analysis.explain()}" if analysis.left_whole else ""
            raise CompressorError(f"the model has no channels that can be removed without changing its output width{why}")
        scores = [filter_l1(group) for group in groups]
        orders = [group.unit_order(score) for group, score in zip(groups, scores)]
        self._multiples = [math.lcm(self.round_to, group.unit_size) for group in groups]
        # The groups' trace ran the forward that counting needs; on a plain copy of a gated model it has the
        # same layer names and weight values, so its count is the model's.
        layer_macs = getattr(groups[0].dependency_graph, "layer_macs", None)
        if layer_macs is None:
            layer_macs = count_layer_macs(model, input_shape)
        dense_params = count_params(model)
        dense_macs = sum(layer.macs for layer in layer_macs.values())
        predict = CountPredictor(model, input_shape, groups, layer_macs=layer_macs)

        def plan_for(level: float) -> list[list[int]]:
            # `level` is a fraction per group (uniform) or a normalised-score threshold (global).
            plan = []
            for group, score, order, multiple in zip(groups, scores, orders, self._multiples):
                if self.config.scope == "uniform":
                    wanted = int(level * group.size)
                else:
                    normalised = score / score.mean().clamp_min(1e-12)
                    wanted = int((normalised < level).sum())
                plan.append(order[:_removable(group.size, wanted, multiple)])
            return self._rounded(groups, orders, realizable(groups, plan))

        def counts_met(params: int, macs: int) -> bool:
            met_macs = self.target is None or 1 - macs / dense_macs >= self.target
            met_params = self.config.target_params is None or 1 - params / dense_params >= self.config.target_params
            return met_macs and met_params

        def meets(plan: list[list[int]]) -> bool:
            return counts_met(*predict(plan))

        high = 1.0 if self.config.scope == "uniform" else float(max(
            (s / s.mean().clamp_min(1e-12)).max() for s in scores)) + 1.0
        if not meets(plan_for(high)):
            floor = "one channel" if self.round_to == 1 else f"{self.round_to} channels (--round-to)"
            whole = f"; channels left whole: {analysis.explain()}" if analysis.left_whole else ""
            raise CompressorError(f"method channel cannot reach the target on this model: even with {floor} left "
                                  f"per group the MACs/parameters removed fall short{whole}")
        if self.config.target_latency is not None:
            plan = self._latency_greedy(model, input_shape, groups, scores, orders, predict, counts_met)
        elif self.config.scope == "global" and self.round_to > 1:
            plan = self._block_greedy(groups, scores, orders, meets)
        else:
            low = 0.0
            for _ in range(40):  # bisection on a monotone criterion: more level removes more
                middle = (low + high) / 2
                if meets(plan_for(middle)):
                    high = middle
                else:
                    low = middle
            plan = plan_for(high)
        params, macs = predict(plan)
        self.predicted = {"macs_removed": 1 - macs / dense_macs, "params_removed": 1 - params / dense_params,
                          "channels_removed": sum(map(len, plan)), "channels": sum(g.size for g in groups)}
        if self.latency_goal is not None:
            goal = self.latency_goal
            self.predicted.update(latency_ms=goal.predict(predict), dense_latency_ms=goal.dense_predicted_ms)
        return list(zip(groups, plan))

    def _latency_greedy(self, model: nn.Module, input_shape: tuple[int, ...], groups: list[ChannelGroup],
                        scores: list[torch.Tensor], orders: list[list[int]], predict: CountPredictor,
                        counts_met) -> list[list[int]]:
        """`greedy_by_latency` on this model's latency table; measured and chosen by the main process only,
        so that the processes of a data-parallel run cannot pick different channels from different timings."""
        plan = None
        if process_group().main:
            goal = LatencyGoal(model, input_shape, self.config.target_latency, self.config.latency_backend,
                               self.run.bench_batch, self.run.threads, self.config.latency_cache, self.latency_measure)

            def realize(removed: list[int]) -> list[list[int]]:
                return self._rounded(groups, orders, realizable(groups, [o[:r] for o, r in zip(orders, removed)]))

            def evaluate(candidate: list[list[int]]) -> tuple[int, int, float]:
                params, macs = predict(candidate)
                return params, macs, goal.predict(predict)

            importance = [group_l1(group, produces=True, per_layer=True) for group in groups]

            def check(candidate: list[list[int]]) -> float:
                trial = copy_model(model)
                trial_groups = analyse_channels(trial, input_shape).groups
                # The analysis is deterministic, so a copy's groups come in the same order as the model's.
                if [g.root for g in trial_groups] != [g.root for g in groups]:
                    raise CompressorError("the channel analysis of a copy of the model found other groups than the "
                                          "model's; its plans cannot be timed")
                _gate(list(zip(trial_groups, candidate)))
                return goal.measured_fraction(compile_model(trial, input_shape, self.round_to).model)

            steps = latency_steps([g.size for g in groups], self._multiples, orders, importance, realize, evaluate)
            chosen, goal.checks = greedy_by_latency(steps, goal.dense_predicted_ms, 1 - goal.target, counts_met,
                                                    check, self.config.latency_checks)
            plan = chosen.plan
            goal.table.save()
            self.latency_goal = goal
        return from_main(plan)

    def _block_greedy(self, groups: list[ChannelGroup], scores: list[torch.Tensor], orders: list[list[int]],
                      meets) -> list[list[int]]:
        """Global ranking at a rounding: remove one block of `round_to` channels at a time, lowest mean score first.

        Bisecting one score threshold moves every group's width at once, which at multiples of 8 overshoots
        the target badly on narrow models (a 16-channel layer can only drop to 8); taking the cheapest block
        each step stops at the first block that meets the target.
        """
        normalised = [score / score.mean().clamp_min(1e-12) for score in scores]
        removed = [0] * len(groups)
        candidates: list[tuple[float, int, int]] = []

        def offer(index: int) -> None:
            multiple = self._multiples[index]
            kept = groups[index].size - removed[index]
            step = kept % multiple or multiple  # the first step lands the width on a multiple
            if kept - step >= multiple:
                block = orders[index][removed[index]:removed[index] + step]
                heapq.heappush(candidates, (float(normalised[index][block].mean()), index, step))

        for index in range(len(groups)):
            offer(index)
        while candidates:
            _, index, step = heapq.heappop(candidates)
            removed[index] += step
            plan = self._rounded(groups, orders, realizable(groups, [o[:r] for o, r in zip(orders, removed)]))
            if meets(plan):
                return plan
            offer(index)
        raise CompressorError(f"method channel cannot reach the target at multiples of {self.round_to} channels")

    def _rounded(self, groups: list[ChannelGroup], orders: list[list[int]], plan: list[list[int]]) -> list[list[int]]:
        """`plan` with every group's remaining width a multiple of `round_to`, after `realizable` trimmed it.

        Rounding keeps the highest-scored channels the plan removed; keeping a channel can make another
        group's shortcut copy a live channel, so rounding and `realizable` alternate until both hold.
        """
        while True:
            changed = False
            for index, (group, order) in enumerate(zip(groups, orders)):
                removed = set(group.whole_units(plan[index]))
                keep = _removable(group.size, len(removed), self._multiples[index])
                if keep < len(removed) or len(removed) < len(plan[index]):
                    ranked = [channel for channel in order if channel in removed]
                    plan[index] = sorted(ranked[:keep])
                    changed = True
            if not changed:
                return plan
            plan = realizable(groups, plan)

    def outcome(self) -> MethodOutcome:
        structure = StructureOutcome(predicted=dict(self.predicted), left_whole=list(self.left_whole))
        return dataclasses.replace(super().outcome(), structure=structure)
