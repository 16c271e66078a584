"""Pruning skip-units by their energy dependence on the labels, stage after stage (PED, seed 003).

A stage scores every skip-unit still in the network by D, the energy dependence of its output on the labels
(`compressor.methods.energy.dependence`), on class-stratified training samples in eval mode; clusters the scores
with optimal 1-D k-means (Ckmeans.1d.dp, from `ckwrap`) into K clusters; keeps one unit per cluster and removes the
rest through unit gates of 0, which the compiler turns into a shallower network (RemoveDeadSkipUnits: a residual
unit becomes its shortcut, a dense unit disappears with its channels in every reader); then retrains the smaller
network for `--epochs` with the paper's schedule (lr restarted at every stage and divided by 10 after each quarter
of the stage, fresh momentum). Stages repeat until `--target` (fraction of MACs removed), `--target-params` or
`--target-latency` (the latency the latency table predicts, compressor.methods.latency_goal) is reached, or for
`--option stages=N` stages.

Choices where the paper is silent or self-defeating, with their reasons:
- K: the paper takes the K whose pruned, not retrained network has the least training error, which always
  prefers removing the least. A stage removes r = max(1, round(fraction·|units|)) units (K = |units| − r), or the
  counts of `--option schedule=4,6,4,...` (the paper's resnet56 run); the stage that reaches a target removes the
  fewest units that reach it, so a run overshoots by at most one unit.
- The kept member of a cluster is its lowest-index unit (`keep=lowest`), as the authors' code; the paper says
  "centroid" (`keep=nearest_center`); `keep=largest` is the code's `--back`.
- D is the largest energy distance over all class pairs (`pairs=all`, Definition 2); the code compares the most
  frequent class with each other one (`pairs=reference`). V-statistic (`statistic=U` for the unbiased one).
- Scoring reads un-augmented training samples: all of them when there are at most `samples` (one round, the
  score is then deterministic), else `rounds` stratified draws of `samples`, averaged. The code used augmented
  batches.
- A removed dense unit is removed physically, with its channels in every reader; the paper's code kept zero
  channels in its place.
- `selection=random|rank` (remove r units drawn at random, or the r lowest scores) are the paper's baselines,
  run through exactly the same pipeline.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import ckwrap
import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from compressor.counting import count_macs, count_params
from compressor.data import DataBundle
from compressor.distributed import from_main, group as process_group
from compressor.errors import CompressorError
from compressor.methods.base import Method, MethodOutcome, StructureOutcome, register_method
from compressor.methods.energy.dependence import DENSE_OUTPUTS, PAIRS, STATISTICS, unit_dependences
from compressor.methods.latency_goal import (LatencyGoal, check_latency_settings, latency_backend_field,
                                             latency_cache_field, target_latency_field)
from compressor.models.units import DenseUnit
from compressor.modules import copy_model
from compressor.options import target_params_field
from compressor.passes.analysis.expected_counts import ExpectedCounts
from compressor.passes.analysis.groups import analyse_channels
from compressor.passes.gates import dense_unit_readers, gate_unit, units_of
from compressor.passes.pipeline import compile_model
from compressor.runtime.latency_model import LatencyModel
from compressor.structure import apply_structure, describe_structure, take_shape_of
from compressor.training import TrainConfig, TrainResult, evaluate, train

logger = logging.getLogger(__name__)

SELECTIONS = ("ped", "random", "rank")
KEEP = ("lowest", "largest", "nearest_center")
# The stage's learning rate is divided by 10 after each quarter of it, three times (the paper: 100 epochs,
# step 25, γ 0.1).
_LR_STEPS = 4
_LR_DECAY = 0.1


def _parse_schedule(text: str) -> str:
    counts = [part.strip() for part in text.split(",") if part.strip()]
    if not all(part.isdigit() and int(part) > 0 for part in counts):
        raise CompressorError(f"option schedule of method energy takes positive unit counts like 4,6,4, not {text!r}")
    return ",".join(counts)


@dataclass
class EnergyConfig:
    """Hyper-parameters: the paper's where it states them, the authors' code's where it decides, ours with the
    reason (in the module's docstring) where both are silent."""

    # Class pairs D is the largest over: "all" (Definition 2) or "reference" (the most frequent class; the code).
    pairs: str = "all"
    # "V" (the V-statistic the paper and dcor use) or "U" (distinct pairs within a sample).
    statistic: str = "V"
    # Divide D by √d (the code's --score_standardize, off by default there too).
    standardize: bool = False
    # A dense unit's T: its "new" features (eq. 3) or its whole "concat"enated output (the code).
    dense_output: str = "new"
    # Which units a stage removes: "ped" (Ckmeans clusters, one kept per cluster), or the baselines "random"
    # and "rank" (the lowest scores), at the same counts.
    selection: str = "ped"
    # The member a cluster keeps: "lowest" index (the code), "largest" index, or "nearest_center" (the paper).
    keep: str = "lowest"
    # Units a stage removes: max(1, round(fraction × units left)) ...
    fraction: float = 0.2
    # ... or these counts, stage by stage (the last repeats): "4,6,4,2,1" is the paper's resnet56 run.
    schedule: str = dataclasses.field(default="", metadata={"parse": _parse_schedule})
    # Without a target: how many stages to run.
    stages: int = 0
    # Samples per scoring round (the code's 81 batches of 64) and rounds averaged when the data has more.
    samples: int = 5184
    rounds: int = 20
    target_params: float | None = target_params_field()
    target_latency: float | None = target_latency_field()
    latency_backend: str | None = latency_backend_field()
    latency_cache: str | None = latency_cache_field()


def stratified_indices(labels: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """`size` indices drawn without replacement with every class in its share of `labels` (largest remainders
    round the shares); all indices, in order, when `size` covers them."""
    if size >= len(labels):
        return torch.arange(len(labels), device=labels.device)
    counts = torch.bincount(labels)
    shares = counts.double() * size / len(labels)
    quotas = shares.floor().long()
    remainder = size - int(quotas.sum())
    quotas[torch.argsort(shares - quotas, descending=True, stable=True)[:remainder]] += 1
    chosen = []
    for label, quota in enumerate(quotas.tolist()):
        members = torch.nonzero(labels == label).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator, device="cpu")[:quota].to(members.device)])
    return torch.sort(torch.cat(chosen)).values


def ped_kept(scores: list[float], kept: int, keep: str = "lowest") -> list[int]:
    """Positions (in `scores`, ordered by depth) that PED keeps: Ckmeans.1d.dp into `kept` clusters (at most as
    many as there are distinct scores), one member per cluster."""
    values = np.asarray(scores, dtype=np.float64)
    clusters = min(kept, len(np.unique(values)))
    if clusters <= 1:
        return [_member(list(range(len(values))), values, float(values.mean()), keep)]
    result = ckwrap.ckmeans(values, clusters)
    return sorted(_member([int(i) for i in np.flatnonzero(result.labels == cluster)], values,
                          float(result.centers[cluster]), keep) for cluster in range(clusters))


def _member(members: list[int], values: np.ndarray, center: float, keep: str) -> int:
    if keep == "lowest":
        return members[0]
    if keep == "largest":
        return members[-1]
    return min(members, key=lambda i: (abs(values[i] - center), i))


def removal(selection: str, scores: list[float], count: int, keep: str, generator: torch.Generator) -> list[int]:
    """Positions of the `count` units a stage removes, by `selection`."""
    if selection == "ped":
        kept = set(ped_kept(scores, len(scores) - count, keep))
        return [i for i in range(len(scores)) if i not in kept]
    if selection == "rank":
        return sorted(sorted(range(len(scores)), key=lambda i: (scores[i], i))[:count])
    return sorted(torch.randperm(len(scores), generator=generator, device="cpu")[:count].tolist())


@register_method
class EnergyMethod(Method):
    """Remove whole skip-units, stage after stage, keeping one unit per cluster of energy dependence."""

    name = "energy"
    Config = EnergyConfig
    patterns = ("structured",)
    structured = True
    # Per stage. The paper retrains 100 epochs per stage on CIFAR at lr 0.1; digits converges in far fewer.
    default_epochs = 10
    default_lr = 0.1

    def __init__(self, target, pattern="structured", config=None, run=None):
        super().__init__(target, pattern, config, run)
        c = self.config
        for option, value, choices in (("pairs", c.pairs, PAIRS), ("statistic", c.statistic, STATISTICS),
                                       ("dense_output", c.dense_output, DENSE_OUTPUTS),
                                       ("selection", c.selection, SELECTIONS), ("keep", c.keep, KEEP)):
            if value not in choices:
                raise CompressorError(f"option {option} of method energy takes one of {', '.join(choices)}, "
                                      f"not {value!r}")
        if not 0 < c.fraction < 1:
            raise CompressorError(f"option fraction of method energy must lie in (0, 1), got {c.fraction}")
        for option, value, least in (("stages", c.stages, 0), ("samples", c.samples, 2), ("rounds", c.rounds, 1)):
            if value < least:
                raise CompressorError(f"option {option} of method energy must be at least {least}, got {value}")
        if c.schedule:
            _parse_schedule(c.schedule)
        self.budgeted = target is not None or c.target_params is not None or c.target_latency is not None
        if not self.budgeted and not c.stages:
            raise CompressorError("method energy needs --target (fraction of MACs to remove), --target-params, "
                                  "--target-latency, or a number of stages --option stages=N")
        check_latency_settings(c.target_latency, c.latency_backend)
        self.pruning_stages: list[dict[str, Any]] = []
        self.removed_units: list[str] = []
        self.epochs: list[dict[str, float]] = []
        self.notes: list[str] = []
        self.predicted: dict[str, float] = {}
        self.last_stage = False  # the newest stage reached the target (or the last stage asked for)
        self.complete = False  # the newest stage has retrained, and it was the last
        self.stage_epochs = 0
        self.seed = 0

    # --- setting up -----------------------------------------------------------------------------------------

    def prepare(self, model: nn.Module, data: DataBundle) -> nn.Module:
        self.shape = tuple(model.input_shape)
        self.data = data
        self.dense_macs = count_macs(model, self.shape)
        self.dense_params = count_params(model)
        groups = analyse_channels(model, self.shape).groups
        self.units = []
        for name, unit in units_of(model):
            if isinstance(unit, DenseUnit):
                try:
                    dense_unit_readers(unit, groups)
                except ValueError as error:
                    self.notes.append(f"{name}: kept: {error}")
                    continue
            self.units.append(name)
        if not self.units:
            raise CompressorError("method energy removes skip-units (residual or dense units), and this model has "
                                  "none it can remove")
        if self.config.target_latency is not None and process_group().main:
            self.latency_goal = LatencyGoal(model, self.shape, self.config.target_latency, self.config.latency_backend,
                                            self.run.bench_batch, self.run.threads, self.config.latency_cache,
                                            self.latency_measure)
        self._check_reachable(model, groups)
        self.network_stages: dict[str, dict[str, Any]] = {}
        for name in self.units:
            stage = self.network_stages.setdefault(name.rpartition(".")[0] or name, {"units": [], "channels": {}})
            stage["units"].append(name)
        self.labels = labels_of(data.train.dataset)
        return model

    def _check_reachable(self, model: nn.Module, groups) -> None:
        """Refuse a target that removing every unit but the cheapest one (in MACs, or in parameters) would not
        reach."""
        if not self.budgeted:
            return
        counts = ExpectedCounts(model, self.shape, [model.get_submodule(u) for u in self.units], [], groups)
        costs = []
        for index in range(len(self.units)):
            alone = torch.zeros(len(self.units), dtype=torch.float64, device=counts.out_total.device)
            alone[index] = 1
            costs.append(tuple(float(v) for v in counts(alone, [])))
        params, macs = min(cost[0] for cost in costs), min(cost[1] for cost in costs)
        for what, asked, best in (("--target", self.target, 1 - macs / self.dense_macs),
                                  ("--target-params", self.config.target_params, 1 - params / self.dense_params)):
            if asked is not None and asked > best:
                raise CompressorError(f"method energy cannot reach {what} {asked:.0%}: removing every skip-unit "
                                      f"but one removes at most {best:.1%}")
        goal = self.latency_goal
        if goal is not None:
            # The latency model's own prediction with every unit gone but the one that costs least.
            fastest = min(goal.model.predict(without=[u for u in self.units if u != kept]) for kept in self.units)
            if fastest > goal.goal_ms:
                raise CompressorError(f"method energy cannot reach --target-latency {goal.target:.0%}: removing every "
                                      f"skip-unit but one removes at most {1 - fastest / goal.dense_predicted_ms:.1%} "
                                      f"of the predicted latency on {goal.backend}")

    def _planned(self, stage: int, left: int) -> int:
        """Units stage `stage` removes by the schedule, leaving at least one."""
        if self.config.schedule:
            counts = [int(part) for part in self.config.schedule.split(",")]
            planned = counts[min(stage, len(counts)) - 1]
        else:
            planned = max(1, round(self.config.fraction * left))
        return max(0, min(planned, left - 1))

    def _most_stages(self) -> int:
        """Stages the schedule can run before one unit is left (or the stages asked for)."""
        left, stages = len(self.units), 0
        while left > 1 and (not self.config.stages or stages < self.config.stages):
            stages += 1
            left -= self._planned(stages, left)
        return max(1, stages)

    # --- training: stages in the shared loop ----------------------------------------------------------------

    def fit(self, model: nn.Module, data: DataBundle, config: TrainConfig, **loop: Any) -> TrainResult:
        """Run the stages: each retrains `config.epochs` in one run of the shared loop, which stops after the last
        stage. With 0 epochs the stages follow each other without retraining."""
        self.stage_epochs, self.seed = config.epochs, config.seed
        if config.epochs == 0:
            while not self.last_stage:
                self._prune(model)
            self.complete = True
            return train(model, data.train, data.test, config, hooks=self, **loop)
        return train(model, data.train, data.test, dataclasses.replace(config, epochs=config.epochs * self._most_stages()),
                     hooks=self, **loop)

    def on_train_begin(self, model: nn.Module, config: TrainConfig) -> None:
        # A resumed run prunes its first stage again (the same, from the same scores), then takes the structure
        # it saved: the fingerprint of a run is taken on the model its first stage left.
        if not self.pruning_stages:
            self._prune(model)

    def lr_schedule(self, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int):
        stage_steps = self.stage_epochs * steps_per_epoch
        step = max(1, round(stage_steps / _LR_STEPS))
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda done: _LR_DECAY ** min(_LR_STEPS - 1, (done % stage_steps) // step))

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        # The network changes only between stages: this epoch trained the one the newest stage left.
        macs = self.pruning_stages[-1]["macs"]
        self.epochs.append({"epoch": epoch, "macs_trained": macs, "macs_alive": macs})
        if epoch % self.stage_epochs == 0:
            self.pruning_stages[-1]["accuracy_after_retraining"] = evaluate(model, self.data.test)
            self.complete = self.last_stage

    def stop_training(self) -> bool:
        return self.complete

    def restructure(self, model: nn.Module, optimizer_state: dict[str, dict]) -> bool:
        if self.epochs[-1]["epoch"] % self.stage_epochs or self.complete:
            return False
        self._prune(model)
        optimizer_state.clear()  # every stage retrains from the inherited weights with fresh momentum
        return True

    # --- one stage ----------------------------------------------------------------------------------------------

    def _prune(self, model: nn.Module) -> None:
        """Score the units left, remove this stage's, compile the network smaller in place and record it."""
        stage = len(self.pruning_stages) + 1
        left = [name for name in self.units if name not in self.removed_units]
        scores = from_main(self._scores(model, left, stage))
        groups = analyse_channels(model, self.shape).groups
        counts = ExpectedCounts(model, self.shape, [model.get_submodule(u) for u in left], [], groups)
        planned = self._planned(stage, len(left))
        values = [scores[name] for name in left]

        def pick(count: int) -> list[int]:
            # The same draw for every count, so that `random` removing fewer units removes a subset.
            generator = torch.Generator(device="cpu").manual_seed(self.seed * 7919 + stage)
            return removal(self.config.selection, values, count, self.config.keep, generator)

        goal = self.latency_goal
        # The layers of the network as this stage finds it, timed on the goal's table (the main process's).
        stage_latency = LatencyModel(model, self.shape, goal.table) if goal is not None else None

        def reaches(chosen: list[int]) -> bool:
            latency_met = stage_latency is None or stage_latency.predict([left[i] for i in chosen]) <= goal.goal_ms
            return latency_met and self._reaches(counts, len(left), chosen)

        chosen, reached = pick(planned), False
        if self.budgeted:
            fewest = next((count for count in range(1, planned + 1) if reaches(pick(count))), None)
            # Only the main process has the latency table: its count is every process's.
            fewest = from_main(fewest)
            if fewest is not None:
                chosen, reached = pick(fewest), True
        out_of_units = len(left) - len(chosen) <= 1
        out_of_stages = bool(self.config.stages) and stage >= self.config.stages
        self.last_stage = reached or out_of_units or out_of_stages
        if self.budgeted and self.last_stage and not reached:
            why = [text for ended, text in ((out_of_stages, f"the {self.config.stages} stages asked for ended"),
                                            (out_of_units, f"stage {stage} left one skip-unit")) if ended]
            self.notes.append("the target was not reached: " + " and ".join(why))
        removed = [left[i] for i in chosen]
        params, macs = (float(v) for v in counts(_presence(len(left), chosen, counts), []))
        self.predicted = {"macs_removed": 1 - macs / self.dense_macs, "params_removed": 1 - params / self.dense_params}
        if stage_latency is not None:
            self.predicted.update(latency_ms=stage_latency.predict(removed), dense_latency_ms=goal.dense_predicted_ms)
        remove_units(model, removed, self.shape)
        self.removed_units += removed
        self._layers = describe_structure(model)
        record = {"stage": stage, "units_before": len(left), "removed": removed, "dependence": scores,
                  "params": count_params(model), "macs": count_macs(model, self.shape),
                  "accuracy_after_removal": evaluate(model, self.data.test), "accuracy_after_retraining": None}
        self.pruning_stages.append(record)
        logger.info("energy stage %d: removed %d of %d skip-units (%s); %s MACs, %s params left; accuracy %.2f%% "
                    "before retraining", stage, len(removed), len(left), ", ".join(removed) or "none",
                    f"{record['macs']:,}", f"{record['params']:,}", 100 * record["accuracy_after_removal"])

    def _reaches(self, counts: ExpectedCounts, left: int, chosen: list[int]) -> bool:
        params, macs = (float(v) for v in counts(_presence(left, chosen, counts), []))
        reached = self.target is None or 1 - macs / self.dense_macs >= self.target
        return reached and (self.config.target_params is None or 1 - params / self.dense_params >= self.config.target_params)

    def _scores(self, model: nn.Module, units: list[str], stage: int) -> dict[str, float]:
        """D of every unit left: over all training samples, or averaged over stratified rounds."""
        c = self.config
        rounds = 1 if c.samples >= len(self.labels) else c.rounds
        totals = dict.fromkeys(units, 0.0)
        for round_ in range(rounds):
            generator = torch.Generator(device="cpu").manual_seed((self.seed * 7919 + stage) * 1009 + round_)
            indices = stratified_indices(self.labels, c.samples, generator)
            images = samples_at(self.data.train.dataset, indices)
            scores = unit_dependences(model, units, images, self.labels[indices], self.data.num_classes, c.pairs,
                                      c.statistic, c.standardize, c.dense_output)
            for name in units:
                totals[name] += scores[name] / rounds
        return totals

    # --- the end and the report -------------------------------------------------------------------------------

    def structure(self) -> dict | None:
        return {"layers": self._layers} if self.pruning_stages else None

    def restore_structure(self, model: nn.Module, structure: dict) -> None:
        apply_structure(model, structure["layers"])
        self._layers = structure["layers"]

    def finalize(self, model: nn.Module) -> nn.Module:
        for stage in self.network_stages.values():
            stage["removed_units"] = [name for name in stage["units"] if name in self.removed_units]
        return model

    def fingerprint(self) -> dict[str, Any]:
        return self.settings()

    def state_dict(self) -> dict:
        return {"pruning_stages": [dict(record) for record in self.pruning_stages],
                "removed_units": list(self.removed_units), "epochs": [dict(record) for record in self.epochs],
                "last_stage": self.last_stage, "complete": self.complete, "predicted": dict(self.predicted),
                "notes": list(self.notes)}

    def load_state_dict(self, state: dict) -> None:
        self.pruning_stages = [dict(record) for record in state["pruning_stages"]]
        self.removed_units = list(state["removed_units"])
        self.epochs = [dict(record) for record in state["epochs"]]
        self.last_stage, self.complete = bool(state["last_stage"]), bool(state["complete"])
        self.predicted, self.notes = dict(state["predicted"]), list(state["notes"])

    def outcome(self) -> MethodOutcome:
        structure = StructureOutcome(
            predicted=dict(self.predicted), removed_units=list(self.removed_units),
            training_cost=[dict(record) for record in self.epochs] if self.stage_epochs else [],
            stages=getattr(self, "network_stages", {}), pruning_stages=[dict(r) for r in self.pruning_stages],
            notes=list(self.notes))
        return dataclasses.replace(super().outcome(), structure=structure)


def _presence(units: int, removed: list[int], counts: ExpectedCounts) -> torch.Tensor:
    presence = torch.ones(units, dtype=torch.float64, device=counts.out_total.device)
    presence[removed] = 0
    return presence


def remove_units(model: nn.Module, names: list[str], shape: tuple[int, ...]) -> None:
    """Gate the named units to 0 and compile `model`, in place, to the network without them."""
    if not names:
        return
    gated = copy_model(model)
    copied_groups = analyse_channels(gated, shape).groups
    for name in names:
        gate_unit(gated, gated.get_submodule(name), 0.0, shape, groups=copied_groups)
    take_shape_of(model, compile_model(gated, shape).model)


# Samples are read on the CPU, as the training loaders read them, whatever torch's default device is (a
# DataLoader draws its seed with a tensor made on that device).


def labels_of(dataset: Dataset) -> torch.Tensor:
    """Every training label, in the dataset's order (read from the dataset's `labels` when it has them)."""
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor) and labels.dim() == 1 and len(labels) == len(dataset):
        return labels.long().cpu()
    with torch.device("cpu"):
        return torch.cat([torch.as_tensor(batch[1]).reshape(-1) for batch in DataLoader(dataset, batch_size=512)]).long()


def samples_at(dataset: Dataset, indices: torch.Tensor) -> torch.Tensor:
    """The samples at `indices`, on the CPU."""
    with torch.device("cpu"):
        return torch.cat([batch[0] for batch in DataLoader(Subset(dataset, indices.tolist()), batch_size=512)])
