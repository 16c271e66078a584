"""The model zoo: the architectures of the compression literature, built as published and found by name.

Importing this package registers every family (LeNet, CIFAR ResNets, DenseNets, VGG, MobileNet, WRN), so
`create_model(name)` and `list_models()` see all of them. Residual and dense connections are explicit
`ResidualUnit` / `DenseUnit` modules that methods and passes find by type.
"""

from compressor.models import densenet, lenet, mobilenet, resnet_cifar, vgg, wrn
from compressor.models.registry import create_model, list_models, register_model
from compressor.models.summary import ModelSummary, describe_models
from compressor.models.units import DenseUnit, PadShortcut, ResidualUnit

__all__ = [
    "DenseUnit",
    "ModelSummary",
    "PadShortcut",
    "ResidualUnit",
    "create_model",
    "densenet",
    "describe_models",
    "lenet",
    "list_models",
    "mobilenet",
    "register_model",
    "resnet_cifar",
    "vgg",
    "wrn",
]
