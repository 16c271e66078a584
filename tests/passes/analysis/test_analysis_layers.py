"""Tests of the layer analysis (compressor.passes.analysis.layers): Conv/Linear→BN pairs."""

from __future__ import annotations

import torch
import torch.nn as nn

from compressor.passes.analysis.layers import linear_bn_pairs


class _PairsModel(nn.Module):
    """conv→bn (pair), linear→bn1d (pair), relu→bn (no), conv with two users→bn (no), bn with no conv (no)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv_relu = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.bn_after_relu = nn.BatchNorm2d(8)
        self.conv_shared = nn.Conv2d(8, 8, 1)
        self.bn_after_shared = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 6)
        self.bn1d = nn.BatchNorm1d(6)

    def forward(self, x):
        x = self.bn(self.conv(x))
        x = self.bn_after_relu(self.relu(self.conv_relu(x)))
        y = self.conv_shared(x)
        x = self.bn_after_shared(y) + y  # conv_shared has two users
        x = x.mean((2, 3))
        return self.bn1d(self.fc(x))


def test_linear_bn_pairs_finds_exactly_the_foldable_pairs():
    assert linear_bn_pairs(_PairsModel()) == [("conv", "bn"), ("fc", "bn1d")]


def test_linear_bn_pairs_follows_dataflow_not_module_order():
    class Reordered(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(4)  # declared first, applied after the conv
            self.other = nn.Conv2d(4, 4, 1)  # declared between them, applied first
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.bn(self.conv(torch.relu(self.other(x))))

    assert linear_bn_pairs(Reordered()) == [("conv", "bn")]


def test_linear_bn_pairs_in_sequentials():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
    assert linear_bn_pairs(model) == [("0", "1")]


def test_linear_bn_pairs_does_not_pair_a_batchnorm_module_called_twice():
    class SharedBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.bn(torch.relu(x))

    # Folding `bn` into `conv` would also remove it from the relu path.
    assert linear_bn_pairs(SharedBN()) == []
