"""MobileNet v1 (Howard et al. 2017), width multiplier 1.0, for 3x224x224 inputs.

A stride-2 conv3x3 stem and thirteen depthwise-separable blocks (depthwise conv3x3-BN-ReLU, pointwise
conv1x1-BN-ReLU), then global average pooling and a linear classifier: 4,231,976 parameters and 569M MACs
with 1000 classes, as in the paper's Table 1.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn

from compressor.models.registry import register_model
from compressor.models.units import FeaturesClassifier, he_init, pooled_classifier

STEM_WIDTH = 32
# (output channels, stride of the depthwise convolution) of each depthwise-separable block, from Table 1.
SEPARABLE_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
IMAGE_SIZE = 224


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Convolution without bias, BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def separable_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Depthwise conv3x3-BN-ReLU followed by pointwise conv1x1-BN-ReLU."""
    return nn.Sequential(
        OrderedDict(
            depthwise=conv_bn_relu(in_channels, in_channels, 3, stride, groups=in_channels),
            pointwise=conv_bn_relu(in_channels, out_channels, 1),
        )
    )


class MobileNetV1(FeaturesClassifier):
    """MobileNet v1 at width 1.0."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_shape = (in_channels, IMAGE_SIZE, IMAGE_SIZE)
        layers: OrderedDict[str, nn.Module] = OrderedDict(stem=conv_bn_relu(in_channels, STEM_WIDTH, 3, stride=2))
        channels = STEM_WIDTH
        for index, (width, stride) in enumerate(SEPARABLE_BLOCKS, start=1):
            layers[f"block{index}"] = separable_block(channels, width, stride)
            channels = width
        self.features = nn.Sequential(layers)
        self.classifier = pooled_classifier(channels, num_classes)
        he_init(self)


@register_model
def mobilenet_v1(**kwargs) -> nn.Module:
    return MobileNetV1(**kwargs)
