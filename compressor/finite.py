"""Finding weights that are not finite numbers, in torch tensors and numpy arrays alike.

A NaN or Inf weight turns every output it reaches into NaN: such a model can be neither trained nor compared
with what it became. Models are refused by the name of the first tensor that holds one when they are read
(`compressor.loading` for torch models, `compressor.runtime.onnx_model` for ONNX initializers), rather than
after minutes of training end in a diverged loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

Name = TypeVar("Name")


def non_finite(values: torch.Tensor | np.ndarray) -> str | None:
    """What `values` holds besides finite numbers ("NaN", "Inf" or "NaN and Inf"); None when it holds none.

    One `isfinite(...).all()` per tensor; which kind it is is worked out only for a tensor that fails it.
    """
    if isinstance(values, np.ndarray):
        library = np
    else:
        import torch  # loaded already by whoever holds a tensor; the ONNX readers run without importing it

        library = torch
    if bool(library.isfinite(values).all()):
        return None
    kinds = [kind for kind, test in (("NaN", library.isnan), ("Inf", library.isinf)) if bool(test(values).any())]
    return " and ".join(kinds)


def first_non_finite(named_values: Iterable[tuple[Name, torch.Tensor | np.ndarray]]) -> tuple[Name, str] | None:
    """The name of the first tensor that is not all finite, with what it holds (see `non_finite`); None when
    every tensor is finite."""
    for name, values in named_values:
        kind = non_finite(values)
        if kind is not None:
            return name, kind
    return None
