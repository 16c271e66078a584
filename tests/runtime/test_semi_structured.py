"""Tests for torch's 2:4 sparse layers: which layers qualify, answered without a GPU, and the 1x1 conv as a GEMM."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import prune

from backend_cases import one_line, two_four_
from compressor.errors import CompressorError
from compressor.passes.analysis import two_four_mask
from compressor.runtime.semi_structured import Conv1x1AsGemm, semi_structured_candidates


class _Mixed(nn.Module):
    """One layer of every kind the 2:4 candidate search tells apart (it is never run)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.sparse_fc = nn.Linear(128, 64)
        self.dense_fc = nn.Linear(128, 64)
        self.small_fc = nn.Linear(8, 4)
        self.odd_fc = nn.Linear(6, 64)
        self.masked_fc = nn.Linear(128, 64)
        self.pointwise = nn.Conv2d(64, 32, 1)
        self.spatial = nn.Conv2d(64, 32, 3, padding=1)
        self.strided = nn.Conv2d(64, 32, 1, stride=2)
        self.grouped = nn.Conv2d(64, 32, 1, groups=2)
        self.temporal = nn.Conv1d(64, 32, 1)
        two_four_(self.sparse_fc, self.small_fc, self.masked_fc, self.pointwise, self.spatial, self.strided,
                  self.temporal)
        prune.custom_from_mask(self.masked_fc, "weight", two_four_mask(self.masked_fc.weight))


@pytest.mark.parametrize("backend", ["cusparselt", "cutlass"])
def test_candidates_name_eligible_layers_and_why_others_are_not(backend):
    choices = {c.name: c for c in semi_structured_candidates(_Mixed(), backend)}

    assert list(choices) == ["sparse_fc", "dense_fc", "small_fc", "odd_fc", "masked_fc", "pointwise", "spatial",
                             "strided", "grouped", "temporal"]
    assert {name for name, c in choices.items() if c.eligible} == {"sparse_fc", "pointwise"}
    assert not any(c.sparse for c in choices.values())
    assert choices["sparse_fc"].kind == "Linear" and choices["pointwise"].kind == "Conv2d"
    expected_reasons = {
        "dense_fc": "not 2:4 along in_features",
        "small_fc": f"4x8 weight breaks {backend}'s FP16 shape rule",
        "odd_fc": "in_features=6 is not a multiple of 4",
        "masked_fc": "mask is not baked",
        "spatial": "3x3 kernel",
        "strided": "stride (2, 2)",
        "grouped": "grouped convolution",
        "temporal": "Conv1d is not lowered to a GEMM",
    }
    for name, reason in expected_reasons.items():
        assert reason in choices[name].reason, (name, choices[name].reason)
        assert choices[name].dense_ms is None and choices[name].sparse_ms is None


def test_candidates_follow_each_librarys_shape_rule():
    model = nn.Sequential(nn.Linear(32, 16))
    two_four_(model[0])

    # cuSPARSELt takes FP16 weights in multiples of 16x16, torch's CUTLASS kernels only in multiples of 32x64.
    assert semi_structured_candidates(model, "cusparselt")[0].eligible
    assert not semi_structured_candidates(model, "cutlass")[0].eligible


def test_candidates_default_to_this_machines_library_and_refuse_unknown_ones():
    assert [c.name for c in semi_structured_candidates(_Mixed()) if c.eligible] == ["sparse_fc", "pointwise"]
    with pytest.raises(CompressorError, match="unknown semi-structured backend") as error:
        semi_structured_candidates(_Mixed(), "cublas")
    one_line(error)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv_as_gemm_equals_the_conv(memory_format, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 1, bias=bias).eval()
    x = torch.randn(3, 16, 5, 7).contiguous(memory_format=memory_format)

    with torch.no_grad():
        expected = conv(x)
        actual = Conv1x1AsGemm.from_conv(conv)(x)

    assert actual.shape == expected.shape
    # Same products, summed in another order than the convolution kernel: equal up to FP32 rounding.
    assert (actual - expected).abs().max() <= 1e-5 * expected.abs().max()
    # The result is a channels-last view of the GEMM's rows, not a copy.
    assert actual.is_contiguous(memory_format=torch.channels_last)


def test_conv_as_gemm_refuses_other_geometry():
    with pytest.raises(CompressorError, match="3x3 kernel") as error:
        Conv1x1AsGemm.from_conv(nn.Conv2d(8, 8, 3))
    one_line(error)
