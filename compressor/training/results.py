"""What a training run reports: an `EpochRecord` per epoch and the run's `TrainResult`. The records are also part of
the resume state, so that a resumed run reports the epochs it did not train again.
"""

from __future__ import annotations

from dataclasses import dataclass


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
