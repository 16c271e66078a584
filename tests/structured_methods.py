"""What the tests of the Bernoulli and energy methods share: the input shape of their runs, seeded generators, zoo
models with BatchNorm statistics or a prepared Bernoulli method, and random gate probabilities.

Their runs train on the digits at 8x8 in three channels (`SHAPE`), so that resnet20 costs 2.5M MACs per sample.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from compressor.methods import create_method
from compressor.models import create_model
from shared import randomize_batchnorm_

SHAPE = (3, 8, 8)
EPSILON = 0.1  # the Bernoulli method's default ε: a probability below it dies


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def prepared(name: str, target: float | None = None, input_shape=None, **options):
    torch.manual_seed(0)
    model = create_model(name)
    if input_shape is not None:
        model.input_shape = input_shape
    method = create_method("bernoulli", target, "structured", **options)
    method.prepare(model, None)
    return model, method


def set_random_probabilities(method, model, seed: int, low: float = 0.2, high: float = 0.9) -> None:
    g = generator(seed)
    with torch.no_grad():
        for _, gate in method.gates(model):
            gate.probability.copy_(torch.rand(gate.probability.shape, generator=g) * (high - low) + low)


def zoo_model(name: str, shape=SHAPE) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name)
    model.input_shape = shape
    return randomize_batchnorm_(model).eval()
