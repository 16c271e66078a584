"""What a compression method may plug into the training loop: `TrainingHooks`, whose every default does nothing,
and `plain_parameter_name`, the name by which the loop hands a method its parameters' optimizer state when it
restructures the model. Methods subclass `TrainingHooks` rather than writing loops of their own.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from compressor.training.config import TrainConfig


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


def plain_parameter_name(name: str) -> str:
    """A parameter's name as the layer without parametrizations calls it (`conv.weight`, not
    `conv.parametrizations.weight.original`), which stays the same when a method adds or removes gates."""
    return re.sub(r"\.parametrizations\.([^.]+)\.original$", r".\1", name)
