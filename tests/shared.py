"""Helpers that several test folders share (importable because pytest puts tests/ on the path).

Realistic BatchNorm statistics, so that a pass which mishandles them shows in the outputs, and single-threaded
torch, because on a shared 2-core machine a second busy process makes torch's OpenMP threads wait on each other
(the zoo-wide FoldBatchNorm test took 80 s with 2 threads under such load and 12 s with 1).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper


def randomize_batchnorm_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (in place)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                if module.affine:
                    module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model


def set_values_(model: nn.Module, name: str, values: Sequence[float]) -> nn.Module:
    """Set the first elements of `model`'s parameter or buffer `name` (e.g. "bn.running_var") to `values`, in
    place; for weights that are not finite."""
    tensors = dict(itertools.chain(model.named_parameters(), model.named_buffers()))
    with torch.no_grad():
        tensors[name].view(-1)[: len(values)] = torch.tensor(values)
    return model


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """Run torch on one thread inside the block, restoring the thread count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class UserNet(nn.Module):
    """A model from outside the zoo, written the way users write them: a depthwise-separable block, two
    branches joined by a concatenation, a residual add with a 1x1 projection shortcut, and flatten→linear.
    Input 1x8x8 (the digits); it lives here so that a pickled instance can be loaded back by class name."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.separable = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.left = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.branch = nn.Sequential(
            nn.Conv2d(32, 48, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
            nn.Conv2d(48, 48, 3, padding=1, bias=False), nn.BatchNorm2d(48))
        self.projection = nn.Sequential(nn.Conv2d(32, 48, 1, stride=2, bias=False), nn.BatchNorm2d(48))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(48 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.separable(self.stem(x))
        x = torch.cat([self.left(x), self.right(x)], 1)
        x = torch.relu(self.branch(x) + self.projection(x))
        return self.head(x)


def shared_weight_matmuls() -> onnx.ModelProto:
    """An ONNX graph whose weight `w` is read by two MatMuls, one named "first" and one unnamed (output "y")."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["a"], name="first"), helper.make_node("MatMul", ["a", "w"], ["y"])],
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with bias-free fully connected layers, as many user models write it."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, reduced, bias=False)
        self.fc2 = nn.Linear(reduced, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        return x * scale[:, :, None, None]


class TokenAttention(nn.Module):
    """Single-head self-attention over [N, T, C] tokens with bias-free q/k/v projections and a biased output."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.q = nn.Linear(channels, channels, bias=False)
        self.k = nn.Linear(channels, channels, bias=False)
        self.v = nn.Linear(channels, channels, bias=False)
        self.out = nn.Linear(channels, channels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.q(tokens) @ self.k(tokens).transpose(1, 2) / tokens.shape[-1] ** 0.5, -1)
        return tokens + self.out(weights @ self.v(tokens))


class BiasFreeUserNet(nn.Module):
    """A user model whose Linear layers mostly have no bias: conv stem → SE block → attention over the 64 pixel
    tokens → bias-free MLP → biased head. Input 1x8x8 (the digits); picklable by class name from here."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.excite = SqueezeExcite(16, 8)
        self.attention = TokenAttention(16)
        self.mlp = nn.Sequential(nn.Linear(16, 32, bias=False), nn.ReLU(), nn.Linear(32, 16, bias=False))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.excite(torch.relu(self.stem(x))).flatten(2).transpose(1, 2)
        tokens = self.attention(tokens)
        return self.head(self.mlp(tokens).mean(1))


class EncoderDecoderNet(nn.Module):
    """A segmentation-style user model: strided conv encoder → ConvTranspose2d decoder (with BatchNorm) →
    global pool → linear classifier. Input 1x8x8 (the digits); picklable by class name from here."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.decoder = nn.Sequential(nn.ConvTranspose2d(32, 16, 2, stride=2, bias=False), nn.BatchNorm2d(16),
                                     nn.ReLU())
        self.classifier = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.decoder(self.encoder(x)).mean((2, 3)))


# A user's script: its model class lives in `__main__` and holds a lambda, so plain pickle cannot write it and
# cloudpickle (which writes both by value) is how the user saved it.
_LAMBDA_MODEL_SCRIPT = """
import sys

import cloudpickle
import torch
import torch.nn as nn


class LambdaNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.activation = lambda x: torch.relu(x) - 0.1
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.activation(self.conv(x)).flatten(1))


torch.manual_seed(0)
torch.save(LambdaNet(), sys.argv[1], pickle_module=cloudpickle)
"""


def write_cloudpickled_lambda_model(path: str | os.PathLike) -> Path:
    """Write, in a separate Python process as a user's script would, a cloudpickled model (input 1x8x8) whose
    class and lambda exist nowhere but in the file."""
    subprocess.run([sys.executable, "-c", _LAMBDA_MODEL_SCRIPT, str(path)], check=True, timeout=120)
    return Path(path)


class ReopensLogNet(nn.Module):
    """A model that opens its log when it is unpickled: once loaded it holds an open file, which neither pickle
    nor cloudpickle can write. Input 1x8x8."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.log = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.log = open(os.devnull, "w")


def interrupted_compress(monkeypatch, method_class, epoch, *args, **kwargs):
    """Run `compress` and stop it like Ctrl-C right after `epoch` has been trained (and its state saved)."""
    from compressor.api import compress

    original = method_class.after_epoch

    def interrupt(self, model, finished):
        original(self, model, finished)
        if finished == epoch:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(method_class, "after_epoch", interrupt)
        with pytest.raises(KeyboardInterrupt):
            compress(*args, **kwargs)


def random_data(shape: Sequence[int], samples: int = 48, batch_size: int = 16):
    """A DataBundle of seeded random images and labels of 10 classes, shuffled reproducibly, for method tests that
    need data of the model's shape but not real data."""
    from torch.utils.data import DataLoader, TensorDataset

    from compressor.data import DataBundle

    generator = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randn(samples, *shape, generator=generator),
                            torch.randint(0, 10, (samples,), generator=generator))
    return DataBundle(train=DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(0)),
                      test=DataLoader(dataset, batch_size=batch_size), num_classes=10, name="random")


def assert_onnx_matches_torch(model: nn.Module, onnx_path: str | Path, batch: int = 3) -> None:
    """The exported ONNX computes what the torch model computes on a random batch (within 1e-4 × max |output|)."""
    from compressor.runtime.ort_backend import OrtBackend

    x = torch.randn(batch, *model.input_shape)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    actual = OrtBackend(onnx_path).run(x.numpy())
    assert np.max(np.abs(actual - expected)) <= 1e-4 * np.max(np.abs(expected))


@contextlib.contextmanager
def small_disk(megabytes: int) -> Iterator[Path]:
    """A tmpfs of `megabytes` MB: a real file system that fills up. The test is skipped where mounting one is
    not allowed (not root, or no mount command); `under_file_size_limit` covers those machines."""
    mount = shutil.which("mount")
    folder = Path(tempfile.mkdtemp(prefix="small-disk-"))
    result = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                            capture_output=True, text=True) if mount and os.geteuid() == 0 else None
    if result is None or result.returncode != 0:
        folder.rmdir()
        pytest.skip("mounting a small tmpfs needs root and the mount command")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
        folder.rmdir()


def under_file_size_limit(command: list[str], limit: int, **options) -> subprocess.CompletedProcess:
    """Run `command` with files limited to `limit` bytes (RLIMIT_FSIZE): a larger write fails with EFBIG, as
    a full disk fails with ENOSPC, on any machine and without privileges."""
    def limit_writes() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(command, capture_output=True, text=True, preexec_fn=limit_writes, **options)


def macs_latency_table(spec) -> float:
    """A synthetic latency table (a `LatencyTable`'s `measure`): each layer's MACs per sample, in microseconds, so
    that the latency a structure removes is its share of the MACs."""
    if spec.kind == "linear":
        return 1e-3 * spec.in_channels * spec.out_channels * max(1, math.prod(spec.spatial))
    outputs = math.prod(size // stride for size, stride in zip(spec.spatial, spec.stride))
    return 1e-3 * (spec.in_channels // spec.groups) * spec.out_channels * math.prod(spec.kernel) * outputs
