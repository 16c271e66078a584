"""How closely a backend's output must match the FP32 reference, per precision.

Every comparison in the runtime (TensorRT or torch against onnxruntime, a deployed engine against the
bundle's stored output) measures the largest absolute difference and allows a fraction of the reference's
largest magnitude, because logits of different models live on different scales. The fraction depends on the
arithmetic: FP32 kernels differ only in summation order; TF32 and FP16 keep a 10-bit mantissa, so their
errors grow to about 1e-3 per layer and add up over a deep network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compressor.errors import CompressorError

RELATIVE_TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "fp16": 2e-2}
PRECISIONS = tuple(RELATIVE_TOLERANCE)


def check_precision(precision: str) -> str:
    """`precision` itself when it is one the runtime knows, else a one-line error listing them."""
    if precision not in RELATIVE_TOLERANCE:
        raise CompressorError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


@dataclass(frozen=True)
class Agreement:
    """max|actual − expected| against the tolerance `precision` allows for this reference."""

    precision: str
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def describe(self) -> str:
        verdict = "within" if self.ok else "outside"
        return (f"max |diff| {self.max_abs_diff:.3g}, {verdict} the {self.precision} tolerance "
                f"{self.tolerance:.3g} ({RELATIVE_TOLERANCE[self.precision]:g} × max |expected|)")


def compare_outputs(actual: np.ndarray, expected: np.ndarray, precision: str) -> Agreement:
    """Measure how far `actual` is from the FP32 reference `expected`; shapes must match exactly."""
    check_precision(precision)
    actual = np.asarray(actual, dtype=np.float32)
    expected = np.asarray(expected, dtype=np.float32)
    if actual.shape != expected.shape:
        raise CompressorError(f"output shape {actual.shape} differs from the reference's {expected.shape}")
    if not np.all(np.isfinite(actual)):
        return Agreement(precision, float("inf"), RELATIVE_TOLERANCE[precision] * float(np.max(np.abs(expected))))
    max_abs_diff = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    tolerance = RELATIVE_TOLERANCE[precision] * float(np.max(np.abs(expected))) if expected.size else 0.0
    return Agreement(precision, max_abs_diff, tolerance)
