"""Skip-units of the model zoo as explicit modules, plus the weight initialisation the zoo shares.

Residual and dense connections are the places where channel pruning couples layers and where whole units can
be removed, so every one of them is a `ResidualUnit` or a `DenseUnit` that methods and passes find by type
instead of by pattern-matching a graph. Forwards contain no data-dependent control flow, so the models trace
with torch.fx and export to ONNX.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F


def _is_projection(shortcut: nn.Module) -> bool:
    # A projection shortcut learns a linear map; identity and zero-padding shortcuts have no weights.
    return any(True for _ in shortcut.parameters())


class ResidualUnit(nn.Module):
    """`post_activation(gate(branch(h)) + shortcut(s))` with `h = preact(x)`; missing parts are identities.

    `gate` is the slot where a method puts a unit gate (a scale on the branch); compilation folds it away or,
    when it is 0, removes the branch, after which `branch` is None and the unit is its shortcut alone.

    `s` is `h` when the unit has a pre-activation and a projection shortcut, and `x` otherwise: the original
    pre-activation ResNet and Wide ResNet code share the first BN-ReLU between the branch and a projection
    shortcut, while an identity shortcut carries the raw input. The choice is fixed at construction in
    `shortcut_uses_preact`, so passes that later replace the shortcut keep what the unit computes.
    """

    def __init__(
        self,
        branch: nn.Module,
        shortcut: nn.Module,
        preact: nn.Module | None = None,
        post_activation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.preact = preact if preact is not None else nn.Identity()
        self.branch = branch
        self.shortcut = shortcut
        self.post_activation = post_activation if post_activation is not None else nn.Identity()
        self.gate: nn.Module = nn.Identity()
        self.shortcut_uses_preact = preact is not None and _is_projection(shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch is None:
            return self.post_activation(self.shortcut(self.preact(x) if self.shortcut_uses_preact else x))
        h = self.preact(x)
        shortcut_input = h if self.shortcut_uses_preact else x
        return self.post_activation(self.gate(self.branch(h)) + self.shortcut(shortcut_input))


class PadShortcut(nn.Module):
    """Option-A shortcut of the CIFAR ResNets (He et al. 2016): subsample spatially, zero-pad the channels.

    The new channels are split around the old ones, `(out - in) // 2` before and the rest after, as in the
    widely used CIFAR ResNet code whose parameter counts the papers report. Channel slicing can later remove
    input and output channels independently, so the shortcut keeps, for every output channel, the input
    channel it copies (`sources`, -1 for a zero channel); while that map is a plain zero-padding the forward
    is one `F.pad`, otherwise one gather from the input followed by a zero channel.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, sources: list[int] | None = None) -> None:
        super().__init__()
        if out_channels < in_channels and sources is None:
            raise ValueError(f"PadShortcut cannot shrink channels ({in_channels} -> {out_channels})")
        self.stride = stride
        if sources is None:
            before = (out_channels - in_channels) // 2
            sources = [-1] * before + list(range(in_channels)) + [-1] * (out_channels - in_channels - before)
        self.set_sources(in_channels, sources)

    def set_sources(self, in_channels: int, sources: list[int]) -> None:
        """Make output channel `o` copy input channel `sources[o]` (a zero channel where it is -1)."""
        if any(not -1 <= source < in_channels for source in sources):
            raise ValueError(f"PadShortcut sources must lie in [-1, {in_channels}), got {sources}")
        self.in_channels = in_channels
        self.out_channels = len(sources)
        self.sources = list(sources)
        copied = [source for source in sources if source >= 0]
        first = next((o for o, source in enumerate(sources) if source >= 0), len(sources))
        self.pad_before = first
        self.pad_after = len(sources) - first - len(copied)
        # F.pad applies when the copied channels are all inputs, in order, in one contiguous run.
        self.is_padding = copied == list(range(in_channels)) and sources[first:first + len(copied)] == copied
        zero_channel = in_channels
        # A shortcut whose channels are sliced keeps its index on the device it is on; a new one is made where
        # the model's modules are made.
        device = self.gather_index.device if "gather_index" in self._buffers else None
        gather = torch.tensor([zero_channel if s < 0 else s for s in sources], dtype=torch.long, device=device)
        self.register_buffer("gather_index", gather, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        subsampled = x[:, :, :: self.stride, :: self.stride]
        if self.is_padding:
            return F.pad(subsampled, (0, 0, 0, 0, self.pad_before, self.pad_after))
        with_zero = torch.cat([subsampled, torch.zeros_like(subsampled[:, :1])], 1)
        return with_zero.index_select(1, self.gather_index)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class DenseUnit(nn.Module):
    """DenseNet unit: concatenates `new_features(x)` after its input `x` along the channels.

    A unit gate on a dense unit scales its features as every later layer reads them (see compressor.passes.gates);
    `gate` holds it so that methods and passes find it on the unit.
    """

    def __init__(self, new_features: nn.Module) -> None:
        super().__init__()
        self.new_features = new_features
        self.gate: nn.Module = nn.Identity()
        # Fail at construction rather than at the first pass that asks for the growth.
        _ = self.growth

    @property
    def growth(self) -> int:
        """Number of channels this unit adds, read from its last layer so it follows channel slicing."""
        last = None
        for module in self.new_features.modules():
            if hasattr(module, "out_channels"):
                last = module
        if last is None:
            raise ValueError("DenseUnit.new_features has no layer with out_channels")
        return int(last.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.new_features(x)], 1)


def he_init(model: nn.Module) -> nn.Module:
    """He-normal convolution weights (fan-out), as the CIFAR ResNet, WRN, DenseNet and VGG papers' code uses."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


class FeaturesClassifier(nn.Module):
    """The zoo's common shape: a `features` trunk followed by a `classifier` head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def pooled_classifier(channels: int, num_classes: int) -> nn.Sequential:
    """Global average pooling and one linear layer: the head of every CIFAR/ImageNet conv net in the zoo."""
    return nn.Sequential(OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(channels, num_classes)))
