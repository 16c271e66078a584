"""Tests of the 2:4 analysis (compressor.passes.analysis.two_four): 2:4 groups (torch and ONNX), 2:4 masks,
eligibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from compressor.passes.analysis.two_four import (
    from_groups,
    is_two_four,
    onnx_weight_groups,
    to_groups,
    two_four_eligibility,
    two_four_mask,
)


@pytest.mark.parametrize(
    "shape", [(8, 12, 3, 3), (6, 4, 1, 1), (5, 8, 3), (4, 8, 2, 3, 3), (7, 12), (3, 4)],
    ids=["conv2d", "conv2d_1x1", "conv1d", "conv3d", "linear", "linear_one_group"],
)
def test_to_groups_from_groups_round_trip(shape):
    weight = torch.randn(shape)
    groups = to_groups(weight)
    assert groups.shape == (weight.numel() // 4, 4)
    assert torch.equal(from_groups(groups, weight), weight)


def test_conv_groups_are_four_consecutive_input_channels_at_one_kernel_position():
    weight = torch.arange(2 * 8 * 3 * 3, dtype=torch.float32).reshape(2, 8, 3, 3)
    groups = to_groups(weight)
    expected = {tuple(weight[k, c0:c0 + 4, r, s].tolist()) for k in range(2) for c0 in (0, 4) for r in range(3)
                for s in range(3)}
    assert {tuple(row.tolist()) for row in groups} == expected
    assert len(groups) == len(expected)


def test_linear_groups_are_four_consecutive_inputs_of_one_output():
    weight = torch.arange(3 * 8, dtype=torch.float32).reshape(3, 8)
    assert torch.equal(to_groups(weight), weight.reshape(6, 4))


def test_two_four_mask_keeps_the_two_largest_magnitudes_per_group():
    weight = torch.tensor(
        [
            [1.0, -5.0, 3.0, 0.5, 2.0, 2.5, -0.1, 0.0],
            [-0.2, 0.1, -0.3, 0.4, 0.0, 0.0, 0.0, 7.0],
        ]
    )
    expected = torch.tensor(
        [
            [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0],  # one zero of three: which one is kept does not matter
        ]
    )
    mask = two_four_mask(weight)
    assert mask.dtype == weight.dtype and mask.shape == weight.shape
    assert torch.equal(mask[0], expected[0])
    assert torch.equal(mask[1, :4], expected[1, :4])
    assert mask[1, 7] == 1 and mask[1, 4:].sum() == 2
    assert torch.equal((to_groups(mask) != 0).sum(dim=1), torch.full((4,), 2))


def test_two_four_mask_on_conv_groups_along_input_channels():
    torch.manual_seed(0)
    weight = torch.randn(6, 8, 3, 3)
    mask = two_four_mask(weight)
    for k in range(6):
        for c0 in (0, 4):
            for r in range(3):
                for s in range(3):
                    group = weight[k, c0:c0 + 4, r, s].abs()
                    kept = mask[k, c0:c0 + 4, r, s]
                    assert kept.sum() == 2
                    assert set(torch.nonzero(kept).flatten().tolist()) == set(group.topk(2).indices.tolist())


def test_is_two_four_torch_and_numpy():
    ok = torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]])
    bad = torch.tensor([[1.0, 0.0, 0.0, 2.0], [1.0, 1.0, 1.0, 0.0]])
    assert is_two_four(ok) and is_two_four(ok.numpy())
    assert not is_two_four(bad) and not is_two_four(bad.numpy())


@pytest.mark.parametrize(
    "layer, eligible, reason",
    [
        (nn.Conv2d(3, 16, 3), False, "in_channels=3"),
        (nn.Conv2d(1, 16, 3), False, "in_channels=1"),
        (nn.Conv2d(8, 16, 3), True, ""),
        (nn.Conv2d(6, 16, 3), False, "in_channels=6"),
        (nn.Conv2d(8, 8, 3, groups=8), False, "grouped convolution (groups=8)"),
        (nn.Conv2d(16, 16, 3, groups=2), False, "grouped convolution (groups=2)"),
        (nn.Conv1d(12, 4, 3), True, ""),
        (nn.Linear(10, 5), False, "in_features=10"),
        (nn.Linear(12, 5), True, ""),
        (nn.BatchNorm2d(8), False, "BatchNorm2d is not a Conv/Linear layer"),
        (nn.ConvTranspose2d(8, 8, 2, stride=2), False, "not transposed convolutions"),
    ],
    ids=["conv_c3", "conv_c1", "conv_c8", "conv_c6", "depthwise", "grouped", "conv1d_c12", "linear_in10",
         "linear_in12", "batchnorm", "conv_transpose"],
)
def test_two_four_eligibility(layer, eligible, reason):
    verdict = two_four_eligibility(layer)
    assert verdict.eligible is eligible
    if eligible:
        assert verdict.reason == ""
    else:
        assert reason in verdict.reason


def test_onnx_conv_groups_agree_with_torch_groups():
    weight = torch.randn(8, 12, 3, 3)
    groups = onnx_weight_groups("Conv", weight.numpy())
    np.testing.assert_array_equal(groups, to_groups(weight).numpy())


@pytest.mark.parametrize("trans_b", [True, False], ids=["transB1", "transB0"])
def test_onnx_gemm_groups_agree_with_torch_linear_groups(trans_b):
    weight = torch.randn(6, 12)  # torch Linear layout [out, in]
    stored = weight.numpy() if trans_b else np.ascontiguousarray(weight.numpy().T)  # transB=0 stores [in, out]
    groups = onnx_weight_groups("Gemm", stored, trans_b=trans_b)
    np.testing.assert_array_equal(groups, to_groups(weight).numpy())


def test_onnx_matmul_groups_agree_with_torch_linear_groups():
    weight = torch.randn(6, 12)
    groups = onnx_weight_groups("MatMul", np.ascontiguousarray(weight.numpy().T))  # x @ W stores [in, out]
    np.testing.assert_array_equal(groups, to_groups(weight).numpy())


@pytest.mark.parametrize("trans_a", [False, True], ids=["transA0", "transA1"])
def test_onnx_gemm_weight_as_a_groups_along_its_summed_axis(trans_a):
    weight = torch.randn(6, 12)  # W @ x: A is [out, in], or [in, out] with transA
    stored = np.ascontiguousarray(weight.numpy().T) if trans_a else weight.numpy()
    groups = onnx_weight_groups("Gemm", stored, trans_a=trans_a, weight_input=0)
    np.testing.assert_array_equal(groups, to_groups(weight).numpy())


def test_onnx_matmul_weight_on_the_left_groups_along_its_last_axis():
    weight = torch.randn(6, 12)
    np.testing.assert_array_equal(onnx_weight_groups("MatMul", weight.numpy(), weight_input=0),
                                  to_groups(weight).numpy())


def test_onnx_conv_transpose_is_never_two_four():
    assert onnx_weight_groups("ConvTranspose", np.ones((8, 8, 3, 3), dtype=np.float32)) is None


@pytest.mark.parametrize(
    "op_type, shape, trans_b",
    [("Conv", (16, 3, 3, 3), False), ("Conv", (32, 1, 3, 3), False), ("Gemm", (5, 10), True),
     ("Gemm", (10, 5), False), ("MatMul", (10, 5), False), ("Relu", (4, 4), False)],
    ids=["conv_c3", "conv_depthwise", "gemm_in10_transB1", "gemm_in10_transB0", "matmul_in10", "not_a_layer"],
)
def test_onnx_weight_groups_is_none_when_ineligible(op_type, shape, trans_b):
    assert onnx_weight_groups(op_type, np.ones(shape, dtype=np.float32), trans_b) is None
