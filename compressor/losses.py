"""Task losses of the training loop: softmax cross-entropy, or the bipolar softplus on log-likelihood-ratio outputs.

Under `bsp` (seed 000, eq. 6) the network is unchanged but its K outputs are read as per-class log-likelihood
ratios log p/(1-p), with no softmax. Targets are LLRs of which only the sign counts: +1 for the true class and
-1 for every other one. The prediction is the argmax either way, so evaluation, export and verification need
nothing of their own; a checkpoint records the loss it was trained with so that fine-tuning uses it too.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.errors import CompressorError

LOSSES = ("ce", "bsp")


def bipolar_softplus(outputs: torch.Tensor, target_llrs: torch.Tensor, beta: float = 1.0,
                     sum_classes: bool = False) -> torch.Tensor:
    """Eq. 6: 1/(βN) · Σ_n log(1 + exp(-β·sgn(T_n)·Y_n)) over every element n of the outputs Y.

    N is the number of elements, B·K (the literal reading); `sum_classes` divides by the batch size B only,
    summing over the classes. A target of 0 contributes log 2 / β and no gradient.
    """
    if beta <= 0:
        raise CompressorError(f"the bipolar softplus needs β > 0, got {beta}")
    signs = torch.sign(target_llrs).to(outputs.dtype)
    total = F.softplus(-beta * signs * outputs).sum()
    count = outputs.shape[0] if sum_classes else outputs.numel()
    return total / (beta * count)


class BipolarSoftplusLoss(nn.Module):
    """The bipolar softplus on class-index targets: +1 for the true class, -1 for the others."""

    def __init__(self, beta: float = 1.0, sum_classes: bool = False) -> None:
        super().__init__()
        self.beta, self.sum_classes = beta, sum_classes

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        signs = 2 * F.one_hot(targets, outputs.shape[1]).to(outputs.dtype) - 1
        return bipolar_softplus(outputs, signs, self.beta, self.sum_classes)


def task_criterion(name: str, label_smoothing: float = 0.0) -> nn.Module:
    """The criterion named `name` (one of `LOSSES`)."""
    if name == "ce":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if name == "bsp":
        if label_smoothing:
            raise CompressorError("label smoothing is a cross-entropy setting; the bipolar softplus reads only the "
                                  "sign of its targets")
        return BipolarSoftplusLoss()
    raise CompressorError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}")
