"""CIFAR ResNets: the basic-block ResNet-20/32/56/110 and the pre-activation bottleneck ResNet-164.

`resnet20`…`resnet110` follow He et al. 2016 ("Deep Residual Learning", section 4.2): three stages of 16/32/64
channels with n basic blocks each and the parameter-free option-A shortcut when the shape changes.
`resnet164` follows He et al. 2016 ("Identity Mappings"): 18 pre-activation bottleneck units per stage with
1x1 projection shortcuts, fed from the pre-activation, where the shape changes. Input is 3x32x32.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn

from compressor.models.registry import register_model
from compressor.models.units import FeaturesClassifier, he_init, PadShortcut, pooled_classifier, ResidualUnit

STAGE_WIDTHS = (16, 32, 64)
BOTTLENECK_EXPANSION = 4
IMAGE_SIZE = 32


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def basic_unit(in_channels: int, out_channels: int, stride: int) -> ResidualUnit:
    """conv-BN-ReLU-conv-BN branch, option-A shortcut on a shape change, ReLU after the addition."""
    branch = nn.Sequential(
        _conv3x3(in_channels, out_channels, stride),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        _conv3x3(out_channels, out_channels),
        nn.BatchNorm2d(out_channels),
    )
    if stride == 1 and in_channels == out_channels:
        shortcut: nn.Module = nn.Identity()
    else:
        shortcut = PadShortcut(in_channels, out_channels, stride)
    return ResidualUnit(branch, shortcut, post_activation=nn.ReLU())


def preact_bottleneck_unit(in_channels: int, width: int, stride: int) -> ResidualUnit:
    """BN-ReLU pre-activation, then conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1 to 4x`width` channels."""
    out_channels = width * BOTTLENECK_EXPANSION
    preact = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU())
    branch = nn.Sequential(
        _conv1x1(in_channels, width),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        _conv3x3(width, width, stride),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        _conv1x1(width, out_channels),
    )
    if stride == 1 and in_channels == out_channels:
        shortcut: nn.Module = nn.Identity()
    else:
        shortcut = _conv1x1(in_channels, out_channels, stride)
    return ResidualUnit(branch, shortcut, preact=preact)


class CifarResNet(FeaturesClassifier):
    """ResNet-(6n+2) with basic blocks and option-A shortcuts (He et al. 2016, CIFAR-10 experiments)."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        units_per_stage = (depth - 2) // 6
        self.num_classes = num_classes
        self.input_shape = (in_channels, IMAGE_SIZE, IMAGE_SIZE)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            stem=nn.Sequential(_conv3x3(in_channels, STAGE_WIDTHS[0]), nn.BatchNorm2d(STAGE_WIDTHS[0]), nn.ReLU())
        )
        channels = STAGE_WIDTHS[0]
        for index, width in enumerate(STAGE_WIDTHS):
            units = []
            for position in range(units_per_stage):
                stride = 2 if index > 0 and position == 0 else 1
                units.append(basic_unit(channels, width, stride))
                channels = width
            layers[f"stage{index + 1}"] = nn.Sequential(*units)
        self.features = nn.Sequential(layers)
        self.classifier = pooled_classifier(channels, num_classes)
        he_init(self)


class PreActBottleneckResNet(FeaturesClassifier):
    """Pre-activation ResNet-(9n+2) with bottleneck units (He et al. 2016, "Identity Mappings", CIFAR)."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 9:
            raise ValueError(f"pre-activation bottleneck ResNet depth must be 9n+2, got {depth}")
        units_per_stage = (depth - 2) // 9
        self.num_classes = num_classes
        self.input_shape = (in_channels, IMAGE_SIZE, IMAGE_SIZE)
        # The stem is a bare convolution: the first unit's pre-activation supplies its BN-ReLU.
        layers: OrderedDict[str, nn.Module] = OrderedDict(stem=_conv3x3(in_channels, STAGE_WIDTHS[0]))
        channels = STAGE_WIDTHS[0]
        for index, width in enumerate(STAGE_WIDTHS):
            units = []
            for position in range(units_per_stage):
                stride = 2 if index > 0 and position == 0 else 1
                units.append(preact_bottleneck_unit(channels, width, stride))
                channels = width * BOTTLENECK_EXPANSION
            layers[f"stage{index + 1}"] = nn.Sequential(*units)
        layers["final_bn"] = nn.BatchNorm2d(channels)
        layers["final_relu"] = nn.ReLU()
        self.features = nn.Sequential(layers)
        self.classifier = pooled_classifier(channels, num_classes)
        he_init(self)


@register_model
def resnet20(**kwargs) -> nn.Module:
    return CifarResNet(20, **kwargs)


@register_model
def resnet32(**kwargs) -> nn.Module:
    return CifarResNet(32, **kwargs)


@register_model
def resnet56(**kwargs) -> nn.Module:
    return CifarResNet(56, **kwargs)


@register_model
def resnet110(**kwargs) -> nn.Module:
    return CifarResNet(110, **kwargs)


@register_model
def resnet164(**kwargs) -> nn.Module:
    return PreActBottleneckResNet(164, **kwargs)
