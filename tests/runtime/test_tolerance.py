"""Output agreement per precision: relative to the reference's largest magnitude, strict shapes, no NaNs."""

from __future__ import annotations

import numpy as np
import pytest

from compressor.errors import CompressorError
from compressor.runtime.tolerance import RELATIVE_TOLERANCE, check_precision, compare_outputs


def test_tolerance_scales_with_the_reference_and_the_precision():
    expected = np.array([[10.0, -20.0, 5.0]], dtype=np.float32)
    nudged = expected + np.array([[0.0, 0.3, 0.0]], dtype=np.float32)

    assert compare_outputs(expected, expected, "fp32").ok
    assert not compare_outputs(nudged, expected, "fp32").ok
    assert not compare_outputs(nudged, expected, "tf32").ok
    fp16 = compare_outputs(nudged, expected, "fp16")
    assert fp16.ok and fp16.tolerance == pytest.approx(RELATIVE_TOLERANCE["fp16"] * 20.0)
    assert fp16.max_abs_diff == pytest.approx(0.3, rel=1e-5)
    assert "within the fp16 tolerance" in fp16.describe()


def test_precisions_order_from_strict_to_loose():
    assert RELATIVE_TOLERANCE["fp32"] < RELATIVE_TOLERANCE["tf32"] <= RELATIVE_TOLERANCE["fp16"]


def test_non_finite_output_never_agrees():
    expected = np.ones((2, 3), dtype=np.float32)
    actual = expected.copy()
    actual[1, 2] = np.nan
    agreement = compare_outputs(actual, expected, "fp16")
    assert not agreement.ok and "outside" in agreement.describe()


def test_shape_mismatch_and_unknown_precision_are_one_line_errors():
    with pytest.raises(CompressorError, match=r"shape \(2, 3\) differs"):
        compare_outputs(np.zeros((2, 3)), np.zeros((3, 2)), "fp32")
    with pytest.raises(CompressorError, match="unknown precision 'int4'.*fp32, tf32, fp16"):
        check_precision("int4")
