"""The measured size of every zoo model: parameters, and multiply-accumulates of one sample at its published
input shape, which `compress zoo` prints.
"""

from __future__ import annotations

from dataclasses import dataclass

from compressor.counting import count_macs, count_params
from compressor.models.registry import create_model, list_models

__all__ = ["ModelSummary", "describe_models"]


@dataclass(frozen=True)
class ModelSummary:
    """Measured size of one zoo model with its default number of classes."""

    name: str
    input_shape: tuple[int, ...]
    params: int
    macs: int


def describe_models(pattern: str = "*") -> list[ModelSummary]:
    """Parameters and MACs of every zoo model whose name matches `pattern`, in name order."""
    summaries = []
    for name in list_models(pattern):
        model = create_model(name)
        summaries.append(
            ModelSummary(
                name=name,
                input_shape=tuple(model.input_shape),
                params=count_params(model),
                macs=count_macs(model, model.input_shape),
            )
        )
    return summaries
