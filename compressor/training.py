"""The one training loop, shared by dense training and by compression methods that fine-tune.

`train` runs SGD with Nesterov momentum (or Adam, with L2 weight decay inside it or decoupled as AdamW) and a
cosine learning-rate schedule on a classification model under its task loss (cross-entropy, or the bipolar
softplus of `compressor.losses`), and evaluates test accuracy after every epoch. Compression methods do not get their own loops: they plug into
this one through `TrainingHooks` (extra optimizer groups, an extra loss term, work after each step or
epoch, state to keep across a resume). Given a `state_path`, the loop saves everything it needs after every
epoch, so an interrupted run resumed with `resume=True` ends with exactly the weights an uninterrupted run
with the same seed would have produced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from compressor.distributed import (check_every_parameter_trains, check_replicas_agree, group, replicate, shard,
                                    share_running_statistics, together, total)
from compressor.errors import CompressorError, ResumeRefused, first_line, printable, quoted
from compressor.files import atomic_torch_save
from compressor.losses import LOSSES, task_criterion
# model_device lived here before the ground floor (compressor.modules); the old import path keeps working.
from compressor.modules import model_device  # noqa: F401
from compressor.paths import cannot_read

logger = logging.getLogger(__name__)

# Bumped when the layout of the resume state changes, so an old file is refused instead of misread.
_STATE_FORMAT = 2


DEFAULT_WEIGHT_DECAY = 5e-4
# Adam's rate when none is given: torch's default, and the rate seed 000 trained its MNIST models with.
ADAM_LR = 1e-3


def default_lr(optimizer: str, sgd_lr: float) -> float:
    """The learning rate to use when none is given: `sgd_lr` under SGD, Adam's own default under Adam."""
    return ADAM_LR if optimizer == "adam" else sgd_lr


@dataclass
class TrainConfig:
    """Optimisation settings; every field is part of the fingerprint that a resumed run must match."""

    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    nesterov: bool = True
    seed: int = 0
    label_smoothing: float = 0.0
    # The task loss (`compressor.losses.LOSSES`), the optimizer of the weights, and how Adam applies the weight
    # decay: "l2" adds it to the gradient (torch's Adam), "decoupled" shrinks the weights apart (AdamW).
    loss: str = "ce"
    optimizer: str = "sgd"
    wd_mode: str = "l2"


OPTIMIZERS = ("sgd", "adam")
WD_MODES = ("l2", "decoupled")


class TrainingHooks:
    """What a compression method may plug into training; every default does nothing.

    `step` and `epoch` count from 1 over the whole run (a resumed run continues the count), so
    `after_step(model, step)` runs after the step-th optimizer step and `after_epoch(model, epoch)` after the
    epoch-th epoch has been trained and evaluated, before the resume state is saved.

    A method that removes structure while it trains does so in `restructure`, at the end of an epoch; the loop
    then builds its optimizers anew for the new parameters, carrying the state of those that survive. The
    structure it leaves is saved with the resume state (`structure`) and rebuilt before anything else is
    restored (`restore_structure`).
    """

    def on_train_begin(self, model: nn.Module, config: TrainConfig) -> None:
        """Called once before the optimizer is built, with the run's settings (epochs, learning rate); a run
        of zero epochs trains nothing and does not call it."""

    def param_groups(self, model: nn.Module) -> list[dict] | None:
        """Optimizer parameter groups (e.g. thresholds at a smaller lr, no weight decay).

        Options a group leaves out take the `TrainConfig` values. None puts every trainable parameter in
        one group.
        """
        return None

    def method_optimizer(self, model: nn.Module) -> torch.optim.Optimizer | None:
        """An optimizer of the method's own, for parameters it trains by its own rule (e.g. probabilities under
        Adam at a constant rate, without weight decay); None when it has none.

        The loop zeroes and steps it with the weights' optimizer (after it, before `after_step`), keeps its
        parameters out of the weights' groups, and saves its state. It is asked again after each
        `restructure` that changed the model; the method carries the state of its survivors itself.
        """
        return None

    def lr_schedule(self, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int
                    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The weights' learning-rate schedule, stepped after every optimizer step (e.g. restarted at every stage
        of a method that prunes in stages); None anneals the rate over `total_steps` on a cosine."""
        return None

    def before_epoch(self, model: nn.Module, epoch: int) -> None:
        """Called before each epoch's batches, with the model in training mode: a method that trains its parameter
        sets in turn freezes the others here (`requires_grad_(False)`: no gradient, so neither momentum nor weight
        decay moves them) and puts modules whose running statistics must not move in eval mode."""

    def stop_training(self) -> bool:
        """Checked before every epoch: True ends the run there, before `config.epochs` (a method that prunes in
        stages, once its last stage has retrained). A run resumed from a state saved after that epoch ends too."""
        return False

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A scalar added to the task loss at every step (e.g. a budget penalty); None adds nothing."""
        return None

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after each optimizer step (e.g. to re-apply masks)."""

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        """Called after each epoch, before the resume state is saved."""

    def restructure(self, model: nn.Module, optimizer_state: dict[str, dict]) -> bool:
        """Called after `after_epoch`: physically remove structure from `model` (in place) and return True when
        its parameters changed.

        `optimizer_state` maps each parameter's name to its state in the weights' optimizer (the momentum
        buffer); a method that changes the model edits it to match: drops the entries of removed parameters
        and slices those of thinner ones as it sliced the parameters.
        """
        return False

    def structure(self) -> dict | None:
        """The model's current structure, saved with the resume state when the method changes it (see
        `restore_structure`); None when it never does. It must load with `torch.load(weights_only=True)`."""
        return None

    def restore_structure(self, model: nn.Module, structure: dict) -> None:
        """On resume, before the model's weights and the optimizers' states are loaded: rebuild `model` (in
        place) to the structure `structure()` returned."""

    def fingerprint(self) -> dict:
        """Settings a resumed run must share with the interrupted one (JSON-serialisable)."""
        return {}

    def state_dict(self) -> dict:
        """State to keep across a resume; it must load with `torch.load(weights_only=True)`."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""


@dataclass
class EpochRecord:
    """One epoch: mean task loss and accuracy on the training batches, test accuracy, and
    the seconds spent in the training pass (evaluation and saving excluded)."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_accuracy: float
    seconds: float


@dataclass
class TrainResult:
    """The outcome of `train`; accuracies are fractions in [0, 1]."""

    history: list[EpochRecord]
    test_accuracy: float
    seconds_per_epoch: float
    resumed_from_epoch: int




def evaluate(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy of `model` on `loader` as a fraction, in eval mode; the model's mode is restored."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    try:
        with torch.no_grad():
            for inputs, targets in loader:
                inputs, targets = inputs.to(device), targets.to(device)
                correct += (model(inputs).argmax(dim=1) == targets).sum()
                seen += targets.numel()
    finally:
        model.train(was_training)
    if seen == 0:
        raise CompressorError("cannot evaluate: the test data is empty")
    return correct.item() / seen


def train(
    model: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader,
    config: TrainConfig,
    hooks: TrainingHooks | None = None,
    state_path: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    description: str = "train",
) -> TrainResult:
    """Train `model` in place for `config.epochs` epochs and return the per-epoch history.

    With `state_path`, the full training state is saved there after every epoch; the caller deletes it once
    the run's output is written (so a failure after training, a full disk say, resumes without retraining).
    With `resume=True` as well, a state found there is checked against `config` and the model, restored, and
    training continues from the next epoch (a state refused as not fitting is left where it was); a run
    without `resume` discards a state found there when its training starts. Shuffling is reproducible across
    a resume: a loader (or sampler) with its own generator is reseeded from `config.seed + epoch` at every
    epoch, and one without draws from the global torch RNG, whose state is part of the saved state.

    In a process group started by torchrun (see `compressor.distributed`), each process trains on its shard of
    every global batch under DistributedDataParallel, the epoch's loss and accuracy are summed over the
    processes, only the main process saves the state, and the run ends by verifying that every process holds
    the same weights.
    """
    check_config(config)
    hooks = hooks if hooks is not None else TrainingHooks()
    was_training = model.training
    try:
        result = _train(model, train_loader, test_loader, config, hooks, state_path, resume, progress, description)
    finally:
        model.train(was_training)
    return result


def _train(
    model: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader,
    config: TrainConfig,
    hooks: TrainingHooks,
    state_path: str | os.PathLike | None,
    resume: bool,
    progress: bool,
    description: str,
) -> TrainResult:
    if config.epochs == 0:
        return TrainResult(history=[], test_accuracy=evaluate(model, test_loader), seconds_per_epoch=0.0,
                           resumed_from_epoch=0)

    device = model_device(model)
    train_loader = shard(train_loader, config.seed)
    network, replicated, checked = model, None, True
    main = group().main
    progress = progress and main
    batches_per_epoch = len(train_loader)
    if batches_per_epoch == 0:
        raise CompressorError("cannot train: the training data is empty")
    hooks.on_train_begin(model, config)
    # Taken before a resumed structure is restored: a resumed run starts from the same model as the one it continues.
    fingerprint = _fingerprint(model, config, batches_per_epoch, hooks)
    state = _load_state(state_path, device) if resume and state_path is not None else None
    if state is not None:
        _check_fingerprint(state, state_path, fingerprint, config, hooks)
        if state.get("structure") is not None:
            hooks.restore_structure(model, state["structure"])
    optimizers = _Optimizers(model, config, hooks, config.epochs * batches_per_epoch, batches_per_epoch)
    criterion = task_criterion(config.loss, config.label_smoothing)

    history: list[EpochRecord] = []
    completed = 0
    if state is not None:
        completed = _restore(state, state_path, config, model, optimizers, hooks, device)
        history = [EpochRecord(**record) for record in state["history"]]
        logger.info("%s: resuming from %s after epoch %d of %d", description, printable(state_path), completed,
                    config.epochs)
    else:
        if resume and state_path is not None:
            logger.info("%s: no training state at %s, starting fresh", description, printable(state_path))
        elif state_path is not None and main and Path(state_path).exists():
            logger.info("%s: starting fresh; discarding the training state of an interrupted run at %s",
                        description, printable(state_path))
            Path(state_path).unlink()
        torch.manual_seed(config.seed)

    step = completed * batches_per_epoch
    for epoch in range(completed + 1, config.epochs + 1):
        if hooks.stop_training():
            break
        _seed_shuffling(train_loader, config.seed, epoch)
        model.train()
        hooks.before_epoch(model, epoch)
        training = [(name, tuple(p.shape)) for name, p in model.named_parameters() if p.requires_grad]
        if training != replicated:
            network, replicated, checked = replicate(model, device), training, False
        start = time.perf_counter()
        # Sums stay on the device so that, with the progress bar off, the loop never waits on the GPU.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = torch.zeros((), dtype=torch.long, device=device)
        # disable=None: tqdm draws the bar only on a terminal, so logs and CI output keep the epoch lines alone.
        with tqdm(train_loader, desc=f"{description} {epoch}/{config.epochs}", total=batches_per_epoch,
                  disable=None if progress else True, leave=True) as bar:
            for inputs, targets in bar:
                inputs, targets = inputs.to(device), targets.to(device)
                optimizers.zero_grad()
                logits = network(inputs)
                task_loss = criterion(logits, targets)
                extra = hooks.extra_loss(model)
                loss = task_loss if extra is None else task_loss + extra
                loss.backward()
                if not checked:
                    check_every_parameter_trains(model)
                    checked = True
                optimizers.step()
                step += 1
                hooks.after_step(model, step)
                loss_sum += task_loss.detach() * targets.numel()
                correct += (logits.detach().argmax(dim=1) == targets).sum()
                seen += targets.numel()
                if progress:
                    bar.set_postfix(loss=f"{loss_sum.item() / seen.item():.4f}",
                                    acc=f"{correct.item() / seen.item():.4f}")
            seconds = time.perf_counter() - start

        share_running_statistics(model)
        # Summed over the processes: every process sees the same epoch, and decides the same about divergence.
        loss_sum, correct, seen = total(loss_sum), total(correct), total(seen).item()
        train_loss = loss_sum.item() / seen
        if not math.isfinite(train_loss):
            raise CompressorError(f"{description}: training diverged (loss {train_loss}) in epoch {epoch}; "
                                  f"try a smaller learning rate than {config.lr}")
        record = EpochRecord(epoch=epoch, train_loss=train_loss, train_accuracy=correct.item() / seen,
                             test_accuracy=evaluate(model, test_loader), seconds=seconds)
        history.append(record)
        logger.info("%s epoch %d/%d: loss %.4f, train acc %.4f, test acc %.4f, %.1f s", description, epoch,
                    config.epochs, record.train_loss, record.train_accuracy, record.test_accuracy, record.seconds)
        hooks.after_epoch(model, epoch)
        optimizers.restructure(model)
        if state_path is not None:
            # Only the main process writes; a failure there (a full disk) stops every process cleanly.
            with together():
                if main:
                    _save_state(state_path, fingerprint, config, model, optimizers, hooks, history, epoch, device)
    check_replicas_agree(model)

    return TrainResult(
        history=history,
        test_accuracy=history[-1].test_accuracy,
        seconds_per_epoch=sum(record.seconds for record in history) / len(history),
        resumed_from_epoch=completed,
    )


def check_config(config: TrainConfig) -> None:
    """Refuse settings the loop cannot train with, in one line each."""
    if config.epochs < 0:
        raise CompressorError(f"epochs must be 0 or more, got {config.epochs}")
    if config.lr < 0 or config.momentum < 0 or config.weight_decay < 0:
        raise CompressorError("lr, momentum and weight decay must not be negative")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise CompressorError(f"label smoothing must be in [0, 1), got {config.label_smoothing}")
    if config.loss not in LOSSES:
        raise CompressorError(f"unknown loss {config.loss!r}; known losses: {', '.join(LOSSES)}")
    if config.optimizer not in OPTIMIZERS:
        raise CompressorError(f"unknown optimizer {config.optimizer!r}; known optimizers: {', '.join(OPTIMIZERS)}")
    if config.wd_mode not in WD_MODES:
        raise CompressorError(f"unknown weight-decay mode {config.wd_mode!r}; known modes: {', '.join(WD_MODES)}")
    if config.wd_mode == "decoupled" and config.optimizer != "adam":
        raise CompressorError("decoupled weight decay (AdamW) needs --optimizer adam; SGD's weight decay is L2")


def plain_parameter_name(name: str) -> str:
    """A parameter's name as the layer without parametrizations calls it (`conv.weight`, not
    `conv.parametrizations.weight.original`), which stays the same when a method adds or removes gates."""
    return re.sub(r"\.parametrizations\.([^.]+)\.original$", r".\1", name)


class _Optimizers:
    """The weights' optimizer (SGD, Adam or AdamW) with its cosine schedule, and the method's own optimizer when it
    has one.

    After a method's `restructure` changed the model, both are built anew for the new parameters: the weights'
    optimizer carries
    each surviving parameter's state by name (as the method sliced it) and its schedule continues where it
    was; the method carries its own optimizer's state.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, hooks: TrainingHooks, total_steps: int,
                 steps_per_epoch: int) -> None:
        self.config, self.hooks, self.total_steps = config, hooks, total_steps
        self.steps_per_epoch = steps_per_epoch
        self._build(model)
        self.scheduler = self._schedule()

    def _build(self, model: nn.Module) -> None:
        self.method = self.hooks.method_optimizer(model)
        own = {id(p) for group in self.method.param_groups for p in group["params"]} if self.method else set()
        groups = self.hooks.param_groups(model)
        if groups is None:
            groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in own]}]
        self.weights = weights_optimizer(groups, self.config)

    def _schedule(self) -> torch.optim.lr_scheduler.LRScheduler:
        schedule = self.hooks.lr_schedule(self.weights, self.total_steps, self.steps_per_epoch)
        # Stepped per batch, so that a short fine-tune of one or two epochs still anneals smoothly.
        return schedule or torch.optim.lr_scheduler.CosineAnnealingLR(self.weights, T_max=self.total_steps)

    def zero_grad(self) -> None:
        self.weights.zero_grad(set_to_none=True)
        if self.method is not None:
            self.method.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.weights.step()
        if self.method is not None:
            self.method.step()
        self.scheduler.step()

    def restructure(self, model: nn.Module) -> None:
        """Let the method remove structure; rebuild the optimizers when it did."""
        names = {id(p): plain_parameter_name(name) for name, p in model.named_parameters()}
        by_name = {names[id(p)]: dict(state) for p, state in self.weights.state.items() if id(p) in names}
        if not self.hooks.restructure(model, by_name):
            return
        old_groups, schedule = self.weights.param_groups, self.scheduler.state_dict()
        self._build(model)
        if len(self.weights.param_groups) != len(old_groups):
            raise RuntimeError("a method's restructure changed the number of optimizer groups")
        for new, old in zip(self.weights.param_groups, old_groups):
            new["lr"], new["initial_lr"] = old["lr"], old.get("initial_lr", old["lr"])
        for name, parameter in model.named_parameters():
            if plain_parameter_name(name) in by_name:
                self.weights.state[parameter] = by_name[plain_parameter_name(name)]
        # A new scheduler starts by setting the initial rate; the loaded schedule puts back the current one.
        self.scheduler = self._schedule()
        self.scheduler.load_state_dict(schedule)
        for param_group, lr in zip(self.weights.param_groups, self.scheduler.get_last_lr()):
            param_group["lr"] = lr

    def state_dict(self) -> dict:
        return {"optimizer": self.weights.state_dict(), "scheduler": self.scheduler.state_dict(),
                "method_optimizer": self.method.state_dict() if self.method is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.weights.load_state_dict(state["optimizer"])
        if self.method is not None:
            self.method.load_state_dict(state["method_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def weights_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer `config` names over `groups`: SGD with (Nesterov) momentum, Adam with L2 weight decay added
    to the gradient, or AdamW with decoupled weight decay; Adam's betas and epsilon are torch's defaults."""
    if config.optimizer == "adam":
        adam = torch.optim.AdamW if config.wd_mode == "decoupled" else torch.optim.Adam
        return adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    # Nesterov is undefined without momentum (torch refuses it), so momentum=0 means plain SGD.
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           nesterov=config.nesterov and config.momentum > 0)


def _seed_shuffling(loader: DataLoader, seed: int, epoch: int) -> None:
    """Reseed what decides the loader's order, so each epoch's order depends on the seed and the epoch only,
    not on how many epochs this process has run: the generators of the loader and its sampler get
    `seed + epoch`, a DistributedSampler (which holds `seed` already) its epoch."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    generators = [loader.generator, getattr(loader.sampler, "generator", None)]
    for generator in {id(g): g for g in generators if isinstance(g, torch.Generator)}.values():
        generator.manual_seed(seed + epoch)


def _fingerprint(model: nn.Module, config: TrainConfig, batches_per_epoch: int, hooks: TrainingHooks) -> str:
    """A hash of everything a resumed run must share with the run that wrote the state."""
    content = {
        "config": dataclasses.asdict(config),
        "hooks": hooks.fingerprint(),
        "batches_per_epoch": batches_per_epoch,
        "model": [[name, list(tensor.shape)] for name, tensor in model.state_dict().items()],
    }
    if group().parallel:
        # A state is continued by as many processes as wrote it: the shards, and so the batches, depend on it.
        content["processes"] = group().size
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _save_state(
    path: str | os.PathLike,
    fingerprint: str,
    config: TrainConfig,
    model: nn.Module,
    optimizers: _Optimizers,
    hooks: TrainingHooks,
    history: list[EpochRecord],
    epoch: int,
    device: torch.device,
) -> None:
    state = {
        "format": _STATE_FORMAT,
        "fingerprint": fingerprint,
        # Kept beside the hash only to say which setting differs when a resume is refused.
        "config": dataclasses.asdict(config),
        "method": hooks.fingerprint(),
        "epoch": epoch,
        "structure": hooks.structure(),
        "model": model.state_dict(),
        **optimizers.state_dict(),
        "hooks": hooks.state_dict(),
        "history": [dataclasses.asdict(record) for record in history],
        "rng": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    atomic_torch_save(state, path)


def _load_state(path: str | os.PathLike, device: torch.device) -> dict | None:
    if not Path(path).exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except OSError as error:
        raise cannot_read("training state", path, error) from None
    except Exception:  # a damaged file surfaces as whatever the zip/pickle readers hit first
        # torch's message is not passed on: for some damaged files it advises loading with weights_only=False.
        raise ResumeRefused(f"the training state {quoted(path)} is damaged; to start over, run without --resume "
                            "(that discards it)") from None
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise ResumeRefused(f"{quoted(path)} is not a training state written by this version; to start over, run "
                            "without --resume (that discards it)")
    return state


def _changed_settings(saved: dict, current: dict) -> list[str]:
    """`name saved -> current` for each setting that differs, for the message that refuses a resume."""
    return [f"{key} {saved.get(key)!r} -> {value!r}" for key, value in current.items()
            if key in saved and saved[key] != value]


def _check_fingerprint(state: dict, path: str | os.PathLike, fingerprint: str, config: TrainConfig,
                       hooks: TrainingHooks) -> None:
    if state["fingerprint"] != fingerprint:
        changed = _changed_settings(state["config"], dataclasses.asdict(config))
        changed += _changed_settings(state.get("method", {}), hooks.fingerprint())
        what = ", ".join(changed) if changed else "a different model, method or training data"
        raise ResumeRefused(f"the training state {quoted(path)} was written with different settings ({what}); "
                            "to continue it, run with the settings of the interrupted run and --resume; to start "
                            "over, run without --resume (that discards it)")


def _restore(
    state: dict,
    path: str | os.PathLike,
    config: TrainConfig,
    model: nn.Module,
    optimizers: _Optimizers,
    hooks: TrainingHooks,
    device: torch.device,
) -> int:
    """Load `state` (its fingerprint checked, its structure restored) into the training objects and return the
    number of epochs it completed."""
    try:
        model.load_state_dict(state["model"])
        optimizers.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as error:
        raise ResumeRefused(f"the training state {quoted(path)} does not fit this model or its optimizer groups "
                            f"({first_line(error)}); to start over, run without --resume (that discards it)") from None
    hooks.load_state_dict(state["hooks"])
    torch.set_rng_state(state["rng"].cpu())
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
    return int(state["epoch"])
