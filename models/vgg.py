"""The CIFAR VGG-16 of Li et al. 2017 ("Pruning Filters for Efficient ConvNets") for 3x32x32 inputs.

Thirteen conv3x3-BN-ReLU layers in five max-pooled stages, then Linear(512, 512)-BN-ReLU-Linear: the
batch-normalised VGG-16 that filter-pruning papers report as 1.5e7 parameters and 3.13e8 MACs.
Convolutions carry no bias because the BatchNorm after each one makes it redundant.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn

from compressor.models.registry import register_model
from compressor.models.units import FeaturesClassifier, he_init

POOL = "M"
VGG16_LAYOUT = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL)
CLASSIFIER_WIDTH = 512
IMAGE_SIZE = 32


class CifarVGG(FeaturesClassifier):
    """Batch-normalised VGG for 32x32 inputs; `layout` lists conv widths and `"M"` for 2x2 max-pools."""

    def __init__(self, layout: tuple[int | str, ...], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_shape = (in_channels, IMAGE_SIZE, IMAGE_SIZE)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        conv_index = pool_index = 0
        for entry in layout:
            if entry == POOL:
                pool_index += 1
                layers[f"pool{pool_index}"] = nn.MaxPool2d(2)
                continue
            conv_index += 1
            layers[f"conv{conv_index}"] = nn.Sequential(
                nn.Conv2d(channels, entry, 3, padding=1, bias=False), nn.BatchNorm2d(entry), nn.ReLU()
            )
            channels = entry
        self.features = nn.Sequential(layers)
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                fc1=nn.Linear(channels, CLASSIFIER_WIDTH),
                bn=nn.BatchNorm1d(CLASSIFIER_WIDTH),
                relu=nn.ReLU(),
                fc2=nn.Linear(CLASSIFIER_WIDTH, num_classes),
            )
        )
        he_init(self)


@register_model
def vgg16(**kwargs) -> nn.Module:
    return CifarVGG(VGG16_LAYOUT, **kwargs)
