"""LeNet models of the pruning literature on 28x28 MNIST-shaped inputs.

`lenet300_100` is the 784-300-100-10 MLP and `lenet5` the Caffe LeNet-5 variant (20 and 50 5x5 filters, no
activation between the convolutions, an 800-500-10 classifier) used by Han et al. 2015 and the papers that
compare against them; their parameter counts are 266,610 and 431,080.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn

from compressor.models.registry import register_model
from compressor.models.units import FeaturesClassifier

IMAGE_SIZE = 28


class LeNet300100(FeaturesClassifier):
    """Fully connected 784-300-100-10 network on flattened images."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_shape = (in_channels, IMAGE_SIZE, IMAGE_SIZE)
        self.features = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                fc1=nn.Linear(in_channels * IMAGE_SIZE * IMAGE_SIZE, 300),
                relu1=nn.ReLU(),
                fc2=nn.Linear(300, 100),
                relu2=nn.ReLU(),
            )
        )
        self.classifier = nn.Sequential(OrderedDict(fc=nn.Linear(100, num_classes)))


class LeNet5(FeaturesClassifier):
    """Caffe LeNet-5: conv5x5(20)-maxpool-conv5x5(50)-maxpool-fc(500)-relu-fc."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_shape = (in_channels, IMAGE_SIZE, IMAGE_SIZE)
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 20, 5),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(20, 50, 5),
                pool2=nn.MaxPool2d(2),
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                fc1=nn.Linear(50 * 4 * 4, 500),
                relu=nn.ReLU(),
                fc2=nn.Linear(500, num_classes),
            )
        )


@register_model
def lenet300_100(**kwargs) -> nn.Module:
    return LeNet300100(**kwargs)


@register_model
def lenet5(**kwargs) -> nn.Module:
    return LeNet5(**kwargs)
