"""Name → factory registry of the model zoo, in the style of timm.

Each family module decorates its factories with `@register_model`; `create_model(name)` builds one by name and
stamps it with `arch` (the registry name), `num_classes` and `input_shape` (C, H, W), so the loader, the CLI and
the tests can work from a name alone. Factories take `num_classes` and, optionally, `in_channels`; they own the
published input shape, and `in_channels` only replaces its channel count.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, TypeVar

import torch.nn as nn

from compressor.errors import CompressorError

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

_factories: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Factory) -> Factory:
    """Register a model factory under its function name."""
    name = fn.__name__
    existing = _factories.get(name)
    # Re-importing the same module is harmless; two different factories under one name is a bug.
    if existing is not None and (existing.__module__, existing.__qualname__) != (fn.__module__, fn.__qualname__):
        raise ValueError(f"model {name!r} is already registered by {existing.__module__}")
    _factories[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models that match the fnmatch `pattern`."""
    return sorted(name for name in _factories if fnmatch.fnmatchcase(name, pattern))


def create_model(name: str, num_classes: int = 10, in_channels: int | None = None) -> nn.Module:
    """Build the zoo model `name`; `in_channels=None` keeps the published input channels."""
    factory = _factories.get(name)
    if factory is None:
        raise CompressorError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    if num_classes < 1:
        raise CompressorError(f"num_classes must be at least 1, got {num_classes}")
    kwargs = {"num_classes": num_classes}
    if in_channels is not None:
        if in_channels < 1:
            raise CompressorError(f"in_channels must be at least 1, got {in_channels}")
        kwargs["in_channels"] = in_channels
    model = factory(**kwargs)
    model.arch = name
    return model
