"""The optimizers of a training run: the weights' optimizer that `TrainConfig` names (SGD, Adam or AdamW) with its
learning-rate schedule, and the method's own optimizer when it has one, rebuilt together when a method removes
structure in the middle of a run.
"""

from __future__ import annotations

import torch
from torch import nn

from compressor.training.config import TrainConfig
from compressor.training.hooks import TrainingHooks, plain_parameter_name


class _Optimizers:
    """The weights' optimizer (SGD, Adam or AdamW) with its cosine schedule, and the method's own optimizer when it
    has one.

    After a method's `restructure` changed the model, both are built anew for the new parameters: the weights'
    optimizer carries each surviving parameter's state by name (as the method sliced it) and its schedule
    continues where it was; the method carries its own optimizer's state.
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
