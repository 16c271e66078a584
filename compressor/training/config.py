"""The settings of a training run: `TrainConfig`, its defaults, and `check_config`, which refuses settings the loop
cannot train with before any work starts. Every field of `TrainConfig` is part of what a resumed run must share with
the interrupted one (`compressor.training.resume`), so a field added here is checked on resume with no more work.
"""

from __future__ import annotations

from dataclasses import dataclass

from compressor.errors import CompressorError
from compressor.losses import LOSSES

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
