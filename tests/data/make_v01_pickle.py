"""Writes v01_residual_net.pt and v01_residual_net_io.pt, the fixture of tests/test_loading.py for model files
written by compressor 0.1.0 before models/, passes/ and runtime/ moved under the `compressor` package.

A model built from torch layers and a zoo skip-unit (`models.units.ResidualUnit` whose shortcut is a
`models.units.PadShortcut`) is channel-pruned and compiled by 0.1.0's `compress`; its model.pt is a pickled
module that names those classes by their 0.1.0 module names. The io file holds a seeded input batch and the
compiled model's output on it. Run from the repository root with the 0.1.0 sources first on the path:

    git worktree add /tmp/old01 b9db9c0~1
    PYTHONPATH=/tmp/old01 python tests/data/make_v01_pickle.py
    git worktree remove --force /tmp/old01
"""

import importlib
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from compressor.api import compress

# 0.1.0 installed its zoo as the top-level package `models`: this script runs against those sources only.
_FORMER_UNITS = importlib.import_module("models.units")
PadShortcut, ResidualUnit = _FORMER_UNITS.PadShortcut, _FORMER_UNITS.ResidualUnit

HERE = Path(__file__).resolve().parent


def conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels))


def residual_net() -> nn.Module:
    """Input 1x8x8 (the digits): a stem and a downsampling residual unit with the option-A shortcut."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        ResidualUnit(nn.Sequential(conv_bn(4, 8, 2), nn.ReLU(), conv_bn(8, 8)), PadShortcut(4, 8, 2),
                     post_activation=nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    model.input_shape = (1, 8, 8)
    return model


def main() -> None:
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        torch.save(residual_net(), work / "user.pt")
        compress(work / "user.pt", "channel", "40%", epochs=1, out=work / "out", trust_model=True,
                 input_shape=(1, 8, 8), bench_runs=2, method_options={"round_to": 1}, progress=False)
        shutil.copyfile(work / "out" / "model.pt", HERE / "v01_residual_net.pt")
    model = torch.load(HERE / "v01_residual_net.pt", weights_only=False).eval()
    batch = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.save({"input": batch, "output": model(batch)}, HERE / "v01_residual_net_io.pt")
    print(model)


if __name__ == "__main__":
    main()
