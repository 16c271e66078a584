"""Verification that an exported ONNX computes what the torch model computes.

The compressed torch model and the ONNX file (through onnxruntime on the CPU) run the same real test batch;
the largest absolute difference of their outputs must stay within `RELATIVE_TOLERANCE × max|output|` (fp32).
A model that fails is never written out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn as nn

from compressor.errors import VerificationError
from compressor.runtime.ort_backend import OrtBackend

RELATIVE_TOLERANCE = 1e-4


@dataclass
class Verification:
    """Outcome of comparing torch and onnxruntime on one batch."""

    max_abs_diff: float
    tolerance: float
    samples: int


def verify_onnx(model: nn.Module, onnx_model: onnx.ModelProto, batch: torch.Tensor) -> Verification:
    """Run `batch` through both; raise VerificationError when they disagree beyond tolerance."""
    model = model.eval()
    with torch.no_grad():
        expected = model(batch).numpy()
    actual = OrtBackend(onnx_model, providers=["CPUExecutionProvider"]).run(batch.numpy())
    if actual.shape != expected.shape:
        raise VerificationError(f"ONNX output shape {actual.shape} differs from torch's {expected.shape}")
    max_abs_diff = float(np.max(np.abs(actual - expected)))
    tolerance = RELATIVE_TOLERANCE * float(np.max(np.abs(expected)))
    if not max_abs_diff <= tolerance:
        raise VerificationError(
            f"ONNX output differs from torch by {max_abs_diff:.3g} (allowed {tolerance:.3g}); the model was not written")
    return Verification(max_abs_diff, tolerance, int(batch.shape[0]))
