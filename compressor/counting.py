"""Measured model statistics: parameters, multiply-accumulates and weight sparsity.

MACs are counted by running one forward pass with hooks on every Conv/ConvTranspose/Linear layer and reading
the real tensor shapes, so they hold for any architecture, including ones whose shapes were changed by passes.
Sparsity is counted from the weights themselves (zeros ÷ weights), never estimated.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn

from compressor.modules import model_device

CONV_TRANSPOSE_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, *CONV_TRANSPOSE_TYPES, nn.Linear)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


def output_axis(module: nn.Module) -> int:
    """The weight axis of a layer's output channels: 1 for a transposed convolution ([in, out/groups, ...]), else 0."""
    return 1 if isinstance(module, CONV_TRANSPOSE_TYPES) else 0


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Conv/ConvTranspose/Linear layers whose weights methods may prune, in module order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, PRUNABLE_TYPES)]


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of the model."""
    return sum(p.numel() for p in model.parameters())


@dataclass
class LayerMacs:
    """MACs of one layer for one input sample: all of them, and those whose weight is non-zero."""

    macs: int
    macs_nonzero: int


def _effective_weight(module: nn.Module) -> torch.Tensor:
    # A layer under a pruning mask exposes its masked weight as `.weight`, so this reads what it computes with.
    return module.weight.detach()


@contextlib.contextmanager
def recording_layer_macs(model: nn.Module) -> Iterator[dict[str, LayerMacs]]:
    """Per-layer multiply-accumulates of the prunable layers, recorded during the forward that runs in the block.

    The forward must be of one sample. It lets an analysis that runs the model anyway (a trace) count the
    MACs on the way instead of paying for a forward of its own.
    """
    results: dict[str, LayerMacs] = {}
    handles = []

    def hook_for(name: str):
        def hook(module: nn.Module, inputs, output):
            weight = _effective_weight(module)
            # Every weight is used once per output position: each spatial location of a conv output, each row
            # of a linear output (one per sample, or one per token for sequence inputs). A transposed conv
            # scatters instead: each input value is multiplied by every weight of its group's
            # [C_out/groups, *kernel] slice, so every weight is used once per *input* spatial position.
            if isinstance(module, CONV_TRANSPOSE_TYPES):
                sample = inputs[0][0]
                positions = sample.numel() // sample.shape[0]
            else:
                sample = output[0]
                positions = sample.numel() // (sample.shape[-1] if isinstance(module, nn.Linear) else sample.shape[0])
            results[name] = LayerMacs(positions * weight.numel(), positions * int(torch.count_nonzero(weight)))

        return hook

    for name, module in prunable_layers(model):
        handles.append(module.register_forward_hook(hook_for(name)))
    try:
        yield results
    finally:
        for handle in handles:
            handle.remove()


def count_layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, LayerMacs]:
    """Per-layer multiply-accumulates of the prunable layers for one sample of `input_shape` (C, H, W)."""
    was_training = model.training
    model.eval()
    try:
        with recording_layer_macs(model) as results:
            with torch.no_grad():
                model(torch.zeros((1, *input_shape), device=model_device(model)))
    finally:
        model.train(was_training)
    return results


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Total multiply-accumulates of the prunable layers for one sample of `input_shape`."""
    return sum(layer.macs for layer in count_layer_macs(model, input_shape).values())


@dataclass
class LayerSparsity:
    """Counted zeros of one prunable layer's weight."""

    name: str
    kind: str
    shape: tuple[int, ...]
    weights: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.weights if self.weights else 0.0


def layer_sparsity(model: nn.Module) -> list[LayerSparsity]:
    """Counted sparsity of every prunable layer's (masked) weight."""
    rows = []
    for name, module in prunable_layers(model):
        weight = _effective_weight(module)
        rows.append(
            LayerSparsity(
                name=name,
                kind=type(module).__name__,
                shape=tuple(weight.shape),
                weights=weight.numel(),
                zeros=int(weight.numel() - torch.count_nonzero(weight)),
            )
        )
    return rows


def global_sparsity(rows: list[LayerSparsity]) -> float:
    """Zero weights ÷ weights over the given layers."""
    weights = sum(r.weights for r in rows)
    return sum(r.zeros for r in rows) / weights if weights else 0.0


def counted_params(model: nn.Module) -> int:
    """Parameters a sparse model stores: its non-zero prunable weights and every other parameter (biases,
    normalisation scales and shifts), whatever their value."""
    return count_params(model) - sum(row.zeros for row in layer_sparsity(model))


def binary_entropy(probability: float) -> float:
    """H2(p) in bits: the entropy of a coin that comes up heads with probability p."""
    if probability <= 0.0 or probability >= 1.0:
        return 0.0
    return -(probability * math.log2(probability) + (1 - probability) * math.log2(1 - probability))


def storage_bits(model: nn.Module, value_bits: int = 32) -> float:
    """Bits to store a sparse model, a lower bound of our own making: `value_bits` per parameter `counted_params`
    counts, plus, for each prunable layer of n weights at density d, the n·H2(d) bits that an entropy coder needs
    at least to say which weights are non-zero."""
    masks = sum(row.weights * binary_entropy(1 - row.sparsity) for row in layer_sparsity(model))
    return value_bits * counted_params(model) + masks
