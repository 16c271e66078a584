"""Wide Residual Networks (Zagoruyko & Komodakis 2016) for 3x32x32 inputs.

WRN-d-k has a 16-channel stem and three groups of (d-4)/6 pre-activation basic units of 16k/32k/64k channels;
where the shape changes, a 1x1 projection shortcut reads the shared pre-activation, as in the authors' code.
Dropout inside the units is left out (it has no parameters and the compression experiments train without it).
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn

from compressor.models.registry import register_model
from compressor.models.units import FeaturesClassifier, he_init, pooled_classifier, ResidualUnit

STEM_WIDTH = 16
GROUP_WIDTHS = (16, 32, 64)
IMAGE_SIZE = 32


def preact_basic_unit(in_channels: int, out_channels: int, stride: int) -> ResidualUnit:
    """BN-ReLU pre-activation, then conv3x3(stride)-BN-ReLU-conv3x3; 1x1 projection on a shape change."""
    preact = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU())
    branch = nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
    )
    if stride == 1 and in_channels == out_channels:
        shortcut: nn.Module = nn.Identity()
    else:
        shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
    return ResidualUnit(branch, shortcut, preact=preact)


class WideResNet(FeaturesClassifier):
    """WRN-`depth`-`widen_factor` without dropout."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n+4, got {depth}")
        units_per_group = (depth - 4) // 6
        self.num_classes = num_classes
        self.input_shape = (in_channels, IMAGE_SIZE, IMAGE_SIZE)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            stem=nn.Conv2d(in_channels, STEM_WIDTH, 3, padding=1, bias=False)
        )
        channels = STEM_WIDTH
        for index, base_width in enumerate(GROUP_WIDTHS):
            width = base_width * widen_factor
            units = []
            for position in range(units_per_group):
                stride = 2 if index > 0 and position == 0 else 1
                units.append(preact_basic_unit(channels, width, stride))
                channels = width
            layers[f"group{index + 1}"] = nn.Sequential(*units)
        layers["final_bn"] = nn.BatchNorm2d(channels)
        layers["final_relu"] = nn.ReLU()
        self.features = nn.Sequential(layers)
        self.classifier = pooled_classifier(channels, num_classes)
        he_init(self)


@register_model
def wrn16_8(**kwargs) -> nn.Module:
    return WideResNet(16, 8, **kwargs)
