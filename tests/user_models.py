"""Small models from outside the zoo, written the way users write them, for the tests of user models.

Each class lives at module top level so that a whole pickled instance loads back by class name, and each
instance carries `input_shape` (C, H, W): 1x8x8 with 10 outputs, so the built-in `digits` data fits. They
hold a few thousand to about 50k parameters, so that a compression run on the CPU takes seconds.

- `SENet`: residual blocks with a squeeze-and-excitation gate `x * sigmoid(fc2(relu(fc1(avgpool(x)))))`, its
  fcs as Linear or 1x1 convolutions, with or without bias.
- `GroupNormNet`: a plain CNN normalised by GroupNorm (4 groups), or by BatchNorm with `norm="batch"`.
- `ResNeXtNet`: bottleneck blocks around a grouped 3x3 convolution (4 and 8 groups of 8 channels).
- `SplitNet`: channels split by `torch.chunk` or `torch.split`, convolved apart, concatenated.
- `ShuffleNet`: a ShuffleNet unit (grouped 1x1 convolutions, channel shuffle, depthwise 3x3, residual add).
- `EncoderDecoder`: strided convolution down, `nn.ConvTranspose2d` up, global pooling and a Linear head.
- `BiasFreeMLP`: bias-free Linear layers of widths that are multiples of 4.
- `TinyViT`: convolutional patch embedding, two pre-norm transformer blocks (LayerNorm, bias-free q/k/v,
  softmax attention, GELU MLP), mean token pooling and a Linear head.
- `LambdaNet`: a CNN whose activation is a lambda held as an attribute (plain pickle cannot save it).

`USER_MODELS` names one instance builder per variant; `build(name, seed)` makes the weights follow the seed.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

DIGITS_SHAPE = (1, 8, 8)
CLASSES = 10


def conv_bn(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, groups: int = 1,
            relu: bool = True) -> nn.Sequential:
    """Conv (no bias) → BatchNorm (→ ReLU), "same" padding for odd kernels."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_channels)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------ squeeze-excitation


class SqueezeExcitation(nn.Module):
    """`x * sigmoid(fc2(relu(fc1(avgpool(x)))))`, the fcs as Linear layers or as 1x1 convolutions."""

    def __init__(self, channels: int, reduction: int = 4, fc: str = "linear", bias: bool = True) -> None:
        super().__init__()
        hidden = channels // reduction
        self.pool = nn.AdaptiveAvgPool2d(1)
        if fc == "linear":
            self.fc1 = nn.Linear(channels, hidden, bias=bias)
            self.fc2 = nn.Linear(hidden, channels, bias=bias)
        elif fc == "conv":
            self.fc1 = nn.Conv2d(channels, hidden, 1, bias=bias)
            self.fc2 = nn.Conv2d(hidden, channels, 1, bias=bias)
        else:
            raise ValueError(f"fc must be 'linear' or 'conv', not {fc!r}")
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = self.pool(x)
        if self.fc == "linear":
            squeezed = squeezed.flatten(1)
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(squeezed))))
        return x * scale.view(x.shape[0], x.shape[1], 1, 1)


class SEBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, squeeze-and-excitation, identity residual add, ReLU."""

    def __init__(self, channels: int, fc: str, bias: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels, relu=False))
        self.se = SqueezeExcitation(channels, fc=fc, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.se(self.body(x)))


class SENet(nn.Module):
    """Two squeeze-and-excitation residual blocks (16 and 32 channels) with a strided transition between."""

    def __init__(self, fc: str = "linear", bias: bool = True) -> None:
        super().__init__()
        self.input_shape = DIGITS_SHAPE
        self.stem = conv_bn(1, 16)
        self.block1 = SEBlock(16, fc, bias)
        self.transition = conv_bn(16, 32, stride=2)
        self.block2 = SEBlock(32, fc, bias)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.transition(self.block1(self.stem(x))))
        return self.head(self.pool(x).flatten(1))


# ------------------------------------------------------------------------------------------ normalisation


class GroupNormNet(nn.Module):
    """conv-norm-ReLU ×3 (16, 32, 32 channels), pooling, Linear; GroupNorm with 4 groups or its BatchNorm twin."""

    def __init__(self, norm: str = "group", groups: int = 4) -> None:
        super().__init__()
        self.input_shape = DIGITS_SHAPE

        def normalise(channels: int) -> nn.Module:
            if norm == "group":
                return nn.GroupNorm(groups, channels)
            if norm == "batch":
                return nn.BatchNorm2d(channels)
            raise ValueError(f"norm must be 'group' or 'batch', not {norm!r}")

        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), normalise(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), normalise(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), normalise(32), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


# ------------------------------------------------------------------------------------------ grouped convolutions


class ResNeXtBlock(nn.Module):
    """1x1 reduce → grouped 3x3 → 1x1 expand (each with BN), residual add (a 1x1 projection when the shape
    changes), ReLU."""

    def __init__(self, in_channels: int, width: int, out_channels: int, groups: int, stride: int = 1) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            conv_bn(in_channels, width, kernel=1),
            conv_bn(width, width, stride=stride, groups=groups),
            conv_bn(width, out_channels, kernel=1, relu=False),
        )
        self.shortcut = (nn.Identity() if stride == 1 and in_channels == out_channels
                         else conv_bn(in_channels, out_channels, kernel=1, stride=stride, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.branch(x) + self.shortcut(x))


class ResNeXtNet(nn.Module):
    """Stem, a 32-wide block with 4 groups of 8, a strided 64-wide block with 8 groups of 8, pooling, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shape = DIGITS_SHAPE
        self.stem = conv_bn(1, 32)
        self.block1 = ResNeXtBlock(32, 32, 32, groups=4)
        self.block2 = ResNeXtBlock(32, 64, 64, groups=8, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(64, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.block2(self.block1(self.stem(x)))).flatten(1))


# ------------------------------------------------------------------------------------------ split channels


class SplitNet(nn.Module):
    """Stem of 32 channels cut in two by `torch.chunk` (halves), or by `torch.split` into fixed `sizes`, a conv
    on each part, concatenated, conv, head."""

    def __init__(self, sizes: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.input_shape = DIGITS_SHAPE
        self.sizes = sizes
        first, second = sizes or (16, 16)
        self.stem = conv_bn(1, 32)
        self.left = conv_bn(first, 16)
        self.right = conv_bn(second, 16, kernel=1)
        self.mix = conv_bn(32, 32, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        first, second = torch.chunk(x, 2, dim=1) if self.sizes is None else torch.split(x, list(self.sizes), dim=1)
        x = torch.cat([self.left(first), self.right(second)], dim=1)
        return self.head(self.pool(self.mix(x)).flatten(1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle: [N, g·k, H, W] → view [N, g, k, H, W] → swap g and k → [N, k·g, H, W]."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """Grouped 1x1 conv-BN-ReLU, channel shuffle, depthwise 3x3 conv-BN, grouped 1x1 conv-BN, residual, ReLU."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.reduce = conv_bn(channels, channels, kernel=1, groups=groups)
        self.depthwise = conv_bn(channels, channels, groups=channels, relu=False)
        self.expand = conv_bn(channels, channels, kernel=1, groups=groups, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = channel_shuffle(self.reduce(x), self.groups)
        return torch.relu(x + self.expand(self.depthwise(y)))


class ShuffleNet(nn.Module):
    """Stem of 32 channels, two ShuffleNet units with 4 groups of 8, pooling, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shape = DIGITS_SHAPE
        self.stem = conv_bn(1, 32)
        self.units = nn.Sequential(ShuffleUnit(32, 4), ShuffleUnit(32, 4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.units(self.stem(x))).flatten(1))


# ------------------------------------------------------------------------------------------ transposed convolution


class EncoderDecoder(nn.Module):
    """8x8 → conv → strided conv 4x4 → ConvTranspose2d back to 8x8 (with BN) → conv → pooling → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shape = DIGITS_SHAPE
        self.encoder = nn.Sequential(conv_bn(1, 16), conv_bn(16, 32, stride=2))
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2, bias=False)
        self.up_norm = nn.BatchNorm2d(16)
        self.decoder = conv_bn(16, 16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.up_norm(self.up(self.encoder(x))))
        return self.head(self.pool(self.decoder(x)).flatten(1))


# ------------------------------------------------------------------------------------------ Linear models


class BiasFreeMLP(nn.Module):
    """Flatten → Linear 64→128 → ReLU → Linear 128→64 → ReLU → Linear 64→10, all without bias."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shape = DIGITS_SHAPE
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 128, bias=False), nn.ReLU(), nn.Linear(128, 64, bias=False), nn.ReLU(),
            nn.Linear(64, CLASSES, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Attention(nn.Module):
    """Multi-head softmax self-attention with bias-free q/k/v projections and an output projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        head_dim = dim // self.heads

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, tokens, self.heads, head_dim).transpose(1, 2)

        q, k, v = split_heads(self.q(x)), split_heads(self.k(x)), split_heads(self.v(x))
        weights = torch.softmax(q @ k.transpose(-2, -1) / head_dim ** 0.5, dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(n, tokens, dim))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)) with GELU."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """2x2 patches embedded to 32 dims by a conv (16 tokens), two transformer blocks, LayerNorm, mean, Linear."""

    def __init__(self, dim: int = 32, heads: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.input_shape = DIGITS_SHAPE
        self.embed = nn.Conv2d(1, dim, 2, stride=2)
        self.blocks = nn.Sequential(TransformerBlock(dim, heads, hidden), TransformerBlock(dim, heads, hidden))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))


# ------------------------------------------------------------------------------------------ not plainly picklable


class LambdaNet(nn.Module):
    """A small CNN whose activation is a lambda attribute: `pickle` cannot save it, `cloudpickle` can."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shape = DIGITS_SHAPE
        self.activation = lambda t: F.leaky_relu(t, 0.1)
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.conv2(self.activation(self.conv1(x))))
        return self.head(self.pool(x).flatten(1))


USER_MODELS: dict[str, Callable[[], nn.Module]] = {
    "senet": SENet,
    "senet-conv": lambda: SENet(fc="conv"),
    "senet-bias-free": lambda: SENet(bias=False),
    "groupnorm": GroupNormNet,
    "batchnorm": lambda: GroupNormNet(norm="batch"),
    "resnext": ResNeXtNet,
    "chunk": SplitNet,
    "split": lambda: SplitNet((8, 24)),
    "shuffle": ShuffleNet,
    "encoder-decoder": EncoderDecoder,
    "bias-free-mlp": BiasFreeMLP,
    "tiny-vit": TinyViT,
    "lambda": LambdaNet,
}


def build(name: str, seed: int = 0) -> nn.Module:
    """The user model `name` with weights drawn from `seed`."""
    torch.manual_seed(seed)
    return USER_MODELS[name]()
