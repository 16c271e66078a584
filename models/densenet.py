"""DenseNets of Huang et al. 2017 for 3x32x32 inputs: DenseNet-40 (k=12) and DenseNet-BC-100 (k=12).

Each block is a chain of `DenseUnit`s that append k new channels; transitions (BN-ReLU-conv1x1-avgpool2) sit
between the three blocks. DenseNet-BC adds the 1x1 bottleneck to 4k channels in every unit and halves the
channels at each transition. The stem convolution has 16 output channels for DenseNet and 2k for DenseNet-BC,
as the paper's implementation details specify (this gives the published 1.0M and 0.8M parameters).
Dropout is left out (it has no parameters and the compression experiments train with data augmentation).
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn

from compressor.models.registry import register_model
from compressor.models.units import DenseUnit, FeaturesClassifier, he_init, pooled_classifier

BLOCKS = 3
PLAIN_STEM_CHANNELS = 16
BOTTLENECK_WIDTH_FACTOR = 4
IMAGE_SIZE = 32


def dense_unit(in_channels: int, growth: int, bottleneck: bool) -> DenseUnit:
    """BN-ReLU-conv3x3(k), preceded by BN-ReLU-conv1x1(4k) in DenseNet-BC."""
    layers: list[nn.Module] = []
    channels = in_channels
    if bottleneck:
        width = BOTTLENECK_WIDTH_FACTOR * growth
        layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, width, 1, bias=False)]
        channels = width
    layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, growth, 3, padding=1, bias=False)]
    return DenseUnit(nn.Sequential(*layers))


def transition(in_channels: int, out_channels: int) -> nn.Sequential:
    """BN-ReLU-conv1x1-avgpool2 between two dense blocks."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.AvgPool2d(2),
    )


class DenseNet(FeaturesClassifier):
    """DenseNet of depth `depth` (counting convolutions and the classifier) and growth rate `growth`."""

    def __init__(
        self,
        depth: int,
        growth: int,
        bottleneck: bool,
        compression: float,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        convs_per_unit = 2 if bottleneck else 1
        if (depth - 4) % (BLOCKS * convs_per_unit):
            raise ValueError(f"DenseNet depth {depth} does not split into {BLOCKS} equal blocks")
        units_per_block = (depth - 4) // (BLOCKS * convs_per_unit)
        self.num_classes = num_classes
        self.input_shape = (in_channels, IMAGE_SIZE, IMAGE_SIZE)
        # Huang et al. 2017, Sec. 4 (implementation details): 16 stem channels, or twice the growth rate for BC.
        channels = 2 * growth if bottleneck else PLAIN_STEM_CHANNELS
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            stem=nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        )
        for block in range(1, BLOCKS + 1):
            units = []
            for _ in range(units_per_block):
                units.append(dense_unit(channels, growth, bottleneck))
                channels += growth
            layers[f"block{block}"] = nn.Sequential(*units)
            if block < BLOCKS:
                reduced = int(channels * compression)
                layers[f"transition{block}"] = transition(channels, reduced)
                channels = reduced
        layers["final_bn"] = nn.BatchNorm2d(channels)
        layers["final_relu"] = nn.ReLU()
        self.features = nn.Sequential(layers)
        self.classifier = pooled_classifier(channels, num_classes)
        he_init(self)


@register_model
def densenet40(**kwargs) -> nn.Module:
    return DenseNet(40, 12, bottleneck=False, compression=1.0, **kwargs)


@register_model
def densenet100(**kwargs) -> nn.Module:
    return DenseNet(100, 12, bottleneck=True, compression=0.5, **kwargs)
