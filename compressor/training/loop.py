"""The training loop: `train` runs the epochs of one run (SGD with Nesterov momentum, or Adam or AdamW, under a
cosine learning-rate schedule and the model's task loss), calls the method's `TrainingHooks` at each point they
name, evaluates test accuracy after every epoch, saves the resume state, and under torchrun trains each process on
its shard of every batch; `evaluate` measures top-1 accuracy.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from compressor.distributed import (check_every_parameter_trains, check_replicas_agree, group, replicate, shard,
                                    share_running_statistics, together, total)
from compressor.errors import CompressorError, printable
from compressor.losses import task_criterion
from compressor.modules import model_device
from compressor.training.config import TrainConfig, check_config
from compressor.training.hooks import TrainingHooks
from compressor.training.optimizers import _Optimizers
from compressor.training.results import EpochRecord, TrainResult
from compressor.training.resume import _check_fingerprint, _fingerprint, _load_state, _restore, _save_state

logger = logging.getLogger(__name__)


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


@dataclass
class _Run:
    """What every epoch of one run trains with; `train_loader` is this process's shard."""

    model: nn.Module
    train_loader: DataLoader
    test_loader: DataLoader
    config: TrainConfig
    hooks: TrainingHooks
    optimizers: _Optimizers
    criterion: nn.Module
    device: torch.device
    batches_per_epoch: int
    main: bool
    progress: bool
    description: str


class _Replica:
    """The network the batches run through: the model, wrapped by `replicate` anew whenever the parameters that
    train change (DistributedDataParallel averages the gradients of those it was made with), and checked after the
    first backward pass of each new wrapper."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device
        self.network, self.replicated, self.checked = model, None, True

    def follow_training_parameters(self) -> None:
        """Wrap the model anew when the parameters that train changed since the last wrapper was made."""
        training = [(name, tuple(p.shape)) for name, p in self.model.named_parameters() if p.requires_grad]
        if training != self.replicated:
            self.network, self.replicated, self.checked = replicate(self.model, self.device), training, False

    def check_after_backward(self) -> None:
        """After the first backward pass of a new wrapper: refuse a trained parameter that got no gradient."""
        if not self.checked:
            check_every_parameter_trains(self.model)
            self.checked = True


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
    main = group().main
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
    run = _Run(model=model, train_loader=train_loader, test_loader=test_loader, config=config, hooks=hooks,
               optimizers=optimizers, criterion=task_criterion(config.loss, config.label_smoothing), device=device,
               batches_per_epoch=batches_per_epoch, main=main, progress=progress and main, description=description)
    history, completed = _resume_or_start(run, state, state_path, resume)

    replica = _Replica(model, device)
    step = completed * batches_per_epoch
    for epoch in range(completed + 1, config.epochs + 1):
        if hooks.stop_training():
            break
        record, step = _train_epoch(run, replica, epoch, step)
        history.append(record)
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


def _resume_or_start(run: _Run, state: dict | None, state_path: str | os.PathLike | None,
                     resume: bool) -> tuple[list[EpochRecord], int]:
    """The history so far and the number of epochs completed: those of `state`, restored into the run's model,
    optimizers and hooks, or none for a fresh start, which discards a state left at `state_path` by a run not
    resumed and seeds the global RNG."""
    if state is not None:
        completed = _restore(state, state_path, run.config, run.model, run.optimizers, run.hooks, run.device)
        history = [EpochRecord(**record) for record in state["history"]]
        logger.info("%s: resuming from %s after epoch %d of %d", run.description, printable(state_path), completed,
                    run.config.epochs)
        return history, completed
    if resume and state_path is not None:
        logger.info("%s: no training state at %s, starting fresh", run.description, printable(state_path))
    elif state_path is not None and run.main and Path(state_path).exists():
        logger.info("%s: starting fresh; discarding the training state of an interrupted run at %s",
                    run.description, printable(state_path))
        Path(state_path).unlink()
    torch.manual_seed(run.config.seed)
    return [], 0


def _train_epoch(run: _Run, replica: _Replica, epoch: int, step: int) -> tuple[EpochRecord, int]:
    """Train epoch `epoch` over every batch of the run's loader, `step` being the optimizer steps taken before it;
    return the epoch's record and the steps taken after it."""
    model, config, hooks, device = run.model, run.config, run.hooks, run.device
    _seed_shuffling(run.train_loader, config.seed, epoch)
    model.train()
    hooks.before_epoch(model, epoch)
    replica.follow_training_parameters()
    start = time.perf_counter()
    # Sums stay on the device so that, with the progress bar off, the loop never waits on the GPU.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = torch.zeros((), dtype=torch.long, device=device)
    # disable=None: tqdm draws the bar only on a terminal, so logs and CI output keep the epoch lines alone.
    with tqdm(run.train_loader, desc=f"{run.description} {epoch}/{config.epochs}", total=run.batches_per_epoch,
              disable=None if run.progress else True, leave=True) as bar:
        for inputs, targets in bar:
            inputs, targets = inputs.to(device), targets.to(device)
            run.optimizers.zero_grad()
            logits = replica.network(inputs)
            task_loss = run.criterion(logits, targets)
            extra = hooks.extra_loss(model)
            loss = task_loss if extra is None else task_loss + extra
            loss.backward()
            replica.check_after_backward()
            run.optimizers.step()
            step += 1
            hooks.after_step(model, step)
            loss_sum += task_loss.detach() * targets.numel()
            correct += (logits.detach().argmax(dim=1) == targets).sum()
            seen += targets.numel()
            if run.progress:
                bar.set_postfix(loss=f"{loss_sum.item() / seen.item():.4f}",
                                acc=f"{correct.item() / seen.item():.4f}")
        seconds = time.perf_counter() - start
    return _epoch_record(run, epoch, loss_sum, correct, seen, seconds), step


def _epoch_record(run: _Run, epoch: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: torch.Tensor,
                  seconds: float) -> EpochRecord:
    """The record of an epoch trained in `seconds` from this process's sums, after the processes have shared
    their running statistics and sums: refused when the loss diverged, evaluated on the test data, logged."""
    share_running_statistics(run.model)
    # Summed over the processes: every process sees the same epoch, and decides the same about divergence.
    loss_sum, correct, seen = total(loss_sum), total(correct), total(seen).item()
    train_loss = loss_sum.item() / seen
    if not math.isfinite(train_loss):
        raise CompressorError(f"{run.description}: training diverged (loss {train_loss}) in epoch {epoch}; "
                              f"try a smaller learning rate than {run.config.lr}")
    record = EpochRecord(epoch=epoch, train_loss=train_loss, train_accuracy=correct.item() / seen,
                         test_accuracy=evaluate(run.model, run.test_loader), seconds=seconds)
    logger.info("%s epoch %d/%d: loss %.4f, train acc %.4f, test acc %.4f, %.1f s", run.description, epoch,
                run.config.epochs, record.train_loss, record.train_accuracy, record.test_accuracy, record.seconds)
    return record


def _seed_shuffling(loader: DataLoader, seed: int, epoch: int) -> None:
    """Reseed what decides the loader's order, so each epoch's order depends on the seed and the epoch only,
    not on how many epochs this process has run: the generators of the loader and its sampler get
    `seed + epoch`, a DistributedSampler (which holds `seed` already) its epoch."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    generators = [loader.generator, getattr(loader.sampler, "generator", None)]
    for generator in {id(g): g for g in generators if isinstance(g, torch.Generator)}.values():
        generator.manual_seed(seed + epoch)
