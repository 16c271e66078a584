"""How long structured compression spends analysing and compiling real-size CNNs, stage by stage.

Builds ImageNet-size networks in the style of torchvision's definitions (plain modules, residual adds and
concatenations written in `forward`, as a user's `--trust-model` checkpoint would hold them):

- `resnet50`: ResNet-50, 3x224x224, 25.6M parameters;
- `densenet121`: DenseNet-121, 3x224x224, 8.0M parameters;
- `inception_v3`: Inception-v3 without the auxiliary head, 3x299x299 (`--inception-size`), 23.8M parameters.

and times on each, in the order `compress --method channel` runs them:

| stage | what is timed |
|---|---|
| channel_groups | one `compressor.passes.analysis.groups.channel_groups` call on the dense model, split into: |
| · dependency graph | Torch-Pruning's trace inside it (`dependency_graph`) |
| · TP group queries | Torch-Pruning's group enumeration inside it (time in `get_pruning_group`, index mappings included) |
| · per-group processing | the rest: turning Torch-Pruning's groups into `ChannelGroup`s |
| select | `ChannelMethod.select` (global scope, `--target`, round_to 8), its own channel_groups included |
| gating | `gate_group` on every group with the selected channels |
| FoldGates, RemoveDeadSkipUnits, RoundChannels | each pass of `compile_model` on the gated model |
| compile_model | the whole pipeline, its final output check included |
| total | select + gating + compile_model, what `ChannelMethod.prepare` costs |

Weights are random (seeded): what the stages do depends on the layers' shapes far more than on the weights'
values. The machine's load matters: the table says how many torch threads ran, and `--repeats N` reports each
stage's fastest of N runs on fresh models. On a 2-core machine that other processes share, forwards on 2
threads (traces, output checks) slow down many times over whenever both cores are busy; `--threads 1` gives
steadier numbers.

    python benchmarks/coupling_speed.py                              # all three models, 2 threads
    python benchmarks/coupling_speed.py --models resnet50 --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from compressor.passes.analysis import groups as coupling_groups

from compressor.counting import count_macs, count_params
from compressor.methods.channel import ChannelMethod
from compressor.modules import copy_model
from compressor.passes.gates import gate_group
from compressor.passes.pipeline import compile_model
from compressor.tables import text_table

SEED = 0
ROUND_TO = 8
STAGES = ("channel_groups", "· dependency graph", "· TP group queries", "· per-group processing", "select", "gating",
          "FoldGates", "RemoveDeadSkipUnits", "RoundChannels", "compile_model", "total")


def _conv_bn(in_channels: int, out_channels: int, kernel, stride=1, padding=0, eps: float = 1e-5) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(out_channels, eps=eps))


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 bottleneck: 1x1 → 3x3 (stride here) → 1x1 ×4, projection when shapes change."""

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * 4
        self.conv1, self.bn1 = _conv_bn(in_channels, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride, 1)
        self.conv3, self.bn3 = _conv_bn(width, out_channels, 1)
        self.downsample = (_conv_bn(in_channels, out_channels, 1, stride)
                           if stride != 1 or in_channels != out_channels else None)
        self.relu = nn.ReLU(inplace=True)  # one module called three times, as in torchvision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.input_shape = (3, 224, 224)
        self.stem = nn.Sequential(*_conv_bn(3, 64, 7, 2, 3), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers, channels = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for block in range(blocks):
                layers.append(Bottleneck(channels, width, stride if block == 0 else 1))
                channels = width * 4
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


class DenseLayer(nn.Module):
    """torchvision's DenseNet layer: reads the list of all earlier features, concatenated."""

    def __init__(self, in_channels: int, growth: int, bottleneck: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, bottleneck * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bottleneck * growth)
        self.conv2 = nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(torch.cat(features, 1)), inplace=True))
        return self.conv2(F.relu(self.norm2(out), inplace=True))


class DenseBlock(nn.ModuleList):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self:
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet121(nn.Module):
    def __init__(self, growth: int = 32, blocks=(6, 12, 24, 16), num_classes: int = 1000) -> None:
        super().__init__()
        self.input_shape = (3, 224, 224)
        channels = 64
        parts: list[nn.Module] = [*_conv_bn(3, channels, 7, 2, 3), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        for index, units in enumerate(blocks):
            parts.append(DenseBlock([DenseLayer(channels + i * growth, growth, 4) for i in range(units)]))
            channels += units * growth
            if index < len(blocks) - 1:
                parts += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                          nn.Conv2d(channels, channels // 2, 1, bias=False), nn.AvgPool2d(2)]
                channels //= 2
        parts += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*parts)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class BasicConv(nn.Sequential):
    """Inception-v3's conv → BatchNorm (eps 0.001) → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel, stride=1, padding=0) -> None:
        super().__init__(*_conv_bn(in_channels, out_channels, kernel, stride, padding, eps=0.001), nn.ReLU(inplace=True))


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.b1 = BasicConv(in_channels, 64, 1)
        self.b5 = nn.Sequential(BasicConv(in_channels, 48, 1), BasicConv(48, 64, 5, padding=2))
        self.b3 = nn.Sequential(BasicConv(in_channels, 64, 1), BasicConv(64, 96, 3, padding=1),
                                BasicConv(96, 96, 3, padding=1))
        self.pool = BasicConv(in_channels, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.b1(x), self.b5(x), self.b3(x), self.pool(F.avg_pool2d(x, 3, 1, 1))], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.b3 = BasicConv(in_channels, 384, 3, stride=2)
        self.b3dbl = nn.Sequential(BasicConv(in_channels, 64, 1), BasicConv(64, 96, 3, padding=1),
                                   BasicConv(96, 96, 3, stride=2))

    def forward(self, x):
        return torch.cat([self.b3(x), self.b3dbl(x), F.max_pool2d(x, 3, 2)], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, c7: int) -> None:
        super().__init__()
        self.b1 = BasicConv(in_channels, 192, 1)
        self.b7 = nn.Sequential(BasicConv(in_channels, c7, 1), BasicConv(c7, c7, (1, 7), padding=(0, 3)),
                                BasicConv(c7, 192, (7, 1), padding=(3, 0)))
        self.b7dbl = nn.Sequential(
            BasicConv(in_channels, c7, 1), BasicConv(c7, c7, (7, 1), padding=(3, 0)),
            BasicConv(c7, c7, (1, 7), padding=(0, 3)), BasicConv(c7, c7, (7, 1), padding=(3, 0)),
            BasicConv(c7, 192, (1, 7), padding=(0, 3)))
        self.pool = BasicConv(in_channels, 192, 1)

    def forward(self, x):
        return torch.cat([self.b1(x), self.b7(x), self.b7dbl(x), self.pool(F.avg_pool2d(x, 3, 1, 1))], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.b3 = nn.Sequential(BasicConv(in_channels, 192, 1), BasicConv(192, 320, 3, stride=2))
        self.b7x3 = nn.Sequential(BasicConv(in_channels, 192, 1), BasicConv(192, 192, (1, 7), padding=(0, 3)),
                                  BasicConv(192, 192, (7, 1), padding=(3, 0)), BasicConv(192, 192, 3, stride=2))

    def forward(self, x):
        return torch.cat([self.b3(x), self.b7x3(x), F.max_pool2d(x, 3, 2)], 1)


class InceptionE(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.b1 = BasicConv(in_channels, 320, 1)
        self.b3_1 = BasicConv(in_channels, 384, 1)
        self.b3_2a = BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.b3_2b = BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.dbl_1 = nn.Sequential(BasicConv(in_channels, 448, 1), BasicConv(448, 384, 3, padding=1))
        self.dbl_3a = BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.dbl_3b = BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.pool = BasicConv(in_channels, 192, 1)

    def forward(self, x):
        b3 = self.b3_1(x)
        dbl = self.dbl_1(x)
        return torch.cat([self.b1(x), self.b3_2a(b3), self.b3_2b(b3), self.dbl_3a(dbl), self.dbl_3b(dbl),
                          self.pool(F.avg_pool2d(x, 3, 1, 1))], 1)


class InceptionV3(nn.Module):
    def __init__(self, size: int = 299, num_classes: int = 1000) -> None:
        super().__init__()
        self.input_shape = (3, size, size)
        self.stem = nn.Sequential(
            BasicConv(3, 32, 3, stride=2), BasicConv(32, 32, 3), BasicConv(32, 64, 3, padding=1), nn.MaxPool2d(3, 2),
            BasicConv(64, 80, 1), BasicConv(80, 192, 3), nn.MaxPool2d(3, 2))
        self.mixed = nn.Sequential(
            InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64), InceptionB(288),
            InceptionC(768, 128), InceptionC(768, 160), InceptionC(768, 160), InceptionC(768, 192),
            InceptionD(768), InceptionE(1280), InceptionE(2048))
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.mixed(self.stem(x)), 1), 1))


def build(name: str, inception_size: int) -> nn.Module:
    torch.manual_seed(SEED)
    model = {"resnet50": ResNet50, "densenet121": DenseNet121,
             "inception_v3": lambda: InceptionV3(inception_size)}[name]()
    return model.eval()


def _timed(seconds: dict[str, float], stage: str, work: Callable):
    start = time.perf_counter()
    result = work()
    seconds[stage] = time.perf_counter() - start
    return result


@contextlib.contextmanager
def _inside_channel_groups() -> Iterator[dict[str, float]]:
    """Seconds spent, while the block runs, in Torch-Pruning's trace and in its group queries."""
    spent = {"trace": 0.0, "queries": 0.0}
    trace, query = coupling_groups.dependency_graph, tp.DependencyGraph.get_pruning_group

    def timed(key: str, function: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start
        return wrapper

    coupling_groups.dependency_graph = timed("trace", trace)
    tp.DependencyGraph.get_pruning_group = timed("queries", query)
    try:
        yield spent
    finally:
        coupling_groups.dependency_graph, tp.DependencyGraph.get_pruning_group = trace, query


def stage_seconds(model: nn.Module, target: float) -> dict[str, float]:
    """Seconds per stage (see the module docstring) on `model`, which is left gated."""
    shape = tuple(model.input_shape)
    seconds: dict[str, float] = {}
    with torch.no_grad():  # the first forward pays for allocations that no stage should be charged with
        model(torch.zeros(1, *shape))
    with _inside_channel_groups() as spent:
        _timed(seconds, "channel_groups", lambda: coupling_groups.channel_groups(model, shape))
    seconds["· dependency graph"] = spent["trace"]
    seconds["· TP group queries"] = spent["queries"]
    seconds["· per-group processing"] = seconds["channel_groups"] - spent["trace"] - spent["queries"]
    method = ChannelMethod(target, config=ChannelMethod.Config(round_to=ROUND_TO))
    plan = _timed(seconds, "select", lambda: method.select(model, shape))

    def gate() -> None:
        for group, channels in plan:
            if channels:
                scale = torch.ones(group.size)
                scale[list(channels)] = 0.0
                gate_group(group, scale)

    _timed(seconds, "gating", gate)
    result = _timed(seconds, "compile_model", lambda: compile_model(copy_model(model), shape, ROUND_TO))
    for step in result.steps:
        seconds[step.name] = step.seconds
    seconds["total"] = seconds["select"] + seconds["gating"] + seconds["compile_model"]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet50,densenet121,inception_v3")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--target", type=float, default=0.5, help="fraction of the MACs to remove")
    parser.add_argument("--inception-size", type=int, default=299, help="inception_v3's input height and width")
    parser.add_argument("--repeats", type=int, default=1, help="runs per model; each stage's fastest is shown")
    args = parser.parse_args()
    if args.threads < 1 or args.repeats < 1 or not 0 < args.target < 1:
        parser.error("need --threads >= 1, --repeats >= 1 and 0 < --target < 1")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    names = args.models.split(",")
    columns, facts = {}, []
    for name in names:
        model = build(name, args.inception_size)
        shape = tuple(model.input_shape)
        facts.append(f"{name}: {'x'.join(map(str, shape))}, {count_params(model) / 1e6:.1f}M parameters, "
                     f"{count_macs(model, shape) / 1e9:.2f} GMACs")
        runs = [stage_seconds(model if run == 0 else build(name, args.inception_size), args.target)
                for run in range(args.repeats)]
        columns[name] = {stage: min(run[stage] for run in runs) for stage in runs[0]}
    rows = [[stage, *(f"{columns[name].get(stage, 0.0):.2f}" for name in names)] for stage in STAGES]
    title = (f"channel method, {args.target:.0%} of the MACs, round_to {ROUND_TO}: seconds per stage, "
             f"{args.threads} torch threads, fastest of {args.repeats}")
    print(text_table(["stage", *names], rows, title=title, left_columns=1))
    print("\n" + "\n".join(facts))


if __name__ == "__main__":
    main()
