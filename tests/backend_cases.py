"""What the tests of the torch backends and their 2:4 layers share: a small CNN, seeded input batches, layers
made 2:4 in place, and the check that an error's message is one line.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from compressor.passes.analysis import two_four_mask


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def two_four_(*layers: nn.Module) -> None:
    with torch.no_grad():
        for layer in layers:
            layer.weight.mul_(two_four_mask(layer.weight))


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )
    model.input_shape = (3, 8, 8)
    return model


def random_batch(batch: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(batch).standard_normal((batch, *shape), dtype=np.float32)
