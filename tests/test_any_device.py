"""Every method, its training hooks, finalize and the torch passes on a model that is not on torch's default device.

A CUDA model meets a tensor created without a device as a CPU tensor, and the op that mixes the two fails. On
a machine without a GPU the same mistake is made visible by running the stages on a CPU model while torch's
default device is `meta`: a tensor created without a device is then a meta tensor, and `tensors_made_elsewhere`
raises at the first op that mixes one with a CPU tensor (torch raises for arithmetic by itself, but indexes a
CPU tensor with a meta index and reads garbage). A meta tensor that ends up inside the model (a buffer built
without a device) is caught by the check that every tensor of the result is on the model's device. CPU
bookkeeping must say `device="cpu"` here (a meta tensor has no values to read), which also keeps it on the CPU
when a user sets another default device.

What the check cannot see: a tensor created explicitly on the CPU that meets model tensors (on this machine it
is on the model's device), and code outside the checked stages: data loading (a loader makes its batches on the
CPU by design, and DataLoader draws its seed with a tensor on the default device), ONNX export and the API's
own steps. The CUDA tests cover those where a GPU is present.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, TensorDataset

from compressor.api import compress
from compressor.counting import count_layer_macs, layer_sparsity
from compressor.data import DataBundle
from compressor.loading import load_model
from compressor.methods import Method, create_method
from compressor.methods.masks import attach_masks
from compressor.models import create_model
from compressor.passes.bake_masks import BakeMasksPass
from compressor.passes.base import Pipeline
from compressor.passes.enforce_two_four import EnforceTwoFourPass
from compressor.passes.fold_batchnorm import fold_batchnorm
from compressor.passes.pipeline import compile_model
from compressor.structure import apply_structure, describe_structure
from compressor.training import TrainConfig
from shared import assert_onnx_matches_torch, single_torch_thread

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; torch sees none")

# (model, method, target, pattern, method options): every method, and the variants whose hooks differ.
CASES = {
    "magnitude": ("lenet5", "magnitude", 0.7, "unstructured", {}),
    "magnitude-2:4": ("lenet5", "magnitude", None, "2:4", {}),
    "budget": ("lenet5", "budget", 0.7, "unstructured", {}),
    "budget-flops": ("lenet5", "budget", 0.7, "unstructured", {"flops_target": 0.5}),
    "budget-fixed-bs": ("lenet5", "budget", 0.7, "unstructured", {"loss": "fixed-bs"}),
    "channel": ("lenet5", "channel", 0.5, "structured", {}),
    # Without rounding, resnet20 loses channels its option-A shortcuts copy, so the shortcuts rebuild their index.
    "channel-shortcuts": ("resnet20", "channel", 0.5, "structured", {"round_to": 1}),
    # Channel gates only (no skip-units), then unit and channel gates with a ρ high enough that structures die
    # within the epoch and are compiled away at its end.
    "bernoulli": ("lenet5", "bernoulli", 0.5, "structured", {}),
    "bernoulli-units": ("resnet20", "bernoulli", None, "structured", {"rho": 50.0, "probability_lr": 0.2}),
    # Two stages of one epoch: scoring, removal and the compile between them happen on the model's device.
    "energy": ("resnet20", "energy", None, "structured", {"stages": 2}),
    # Thresholds, frozen weights and a sweep of two θ settings, each retrained from a copy of the model.
    "snapshot": ("resnet20", "snapshot", 0.7, "unstructured", {"sweep": 2}),
    # Switchers built on the model's device; a target beyond the emergent sparsity tops up with frozen switches.
    "switcher": ("lenet5", "switcher", 0.99, "unstructured", {"encoder_channels": "4", "bottleneck_channels": 4}),
    # Neuron switches folded into columns, dead producer channels gated and sliced on the model's device.
    "switcher-neuron": ("lenet300_100", "switcher", None, "structured",
                        {"mode": "neuron", "encoder_channels": "4", "bottleneck_channels": 4}),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_torch_thread():
        yield


class _RefuseMixing(TorchFunctionMode):
    """Raises at any torch call that takes a meta tensor together with a tensor on a real device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # Operands and the lists torch.cat and torch.stack take; deeper containers are not searched (a deepcopy's
        # memo holds the whole model).
        operands = [item for value in (*args, *kwargs.values())
                    for item in (value if isinstance(value, (list, tuple)) else (value,))]
        devices = {operand.device.type for operand in operands if isinstance(operand, torch.Tensor)}
        if "meta" in devices and len(devices) > 1:
            name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
            raise RuntimeError(f"{name} mixes a tensor created without a device with a tensor on "
                               f"{', '.join(sorted(devices - {'meta'}))}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def tensors_made_elsewhere() -> Iterator[None]:
    """Inside the block, a tensor created without a device is a meta tensor, and mixing it with a real one raises."""
    with torch.device("meta"), _RefuseMixing():
        yield


class HostLoader(DataLoader):
    """A DataLoader whose batches are made on the CPU even inside `tensors_made_elsewhere`, as a real loader
    makes them (training moves them to the model's device)."""

    def __iter__(self):
        with torch.device("cpu"):
            return iter(list(super().__iter__()))


def random_data(shape: tuple[int, ...], samples: int = 32, batch_size: int = 16) -> DataBundle:
    generator = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randn(samples, *shape, generator=generator),
                            torch.randint(0, 10, (samples,), generator=generator))
    shuffled = HostLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    return DataBundle(train=shuffled, test=HostLoader(dataset, batch_size=batch_size), num_classes=10, name="random")


def case_setup(case: str, device: str) -> tuple[nn.Module, Method, DataBundle]:
    """The case's model (on `device`), its method and small random data on the CPU."""
    arch, method, target, pattern, options = CASES[case]
    torch.manual_seed(0)
    model = create_model(arch).to(device)
    return model, create_method(method, target, pattern, **options), random_data(tuple(model.input_shape))


def compression_stages(model: nn.Module, method: Method, data: DataBundle) -> nn.Module:
    """What `compress` does to the model in torch: prepare, one epoch with the method's hooks, finalize, the
    torch passes, and the counts and BatchNorm folding its report and export read."""
    shape = tuple(model.input_shape)
    model = method.prepare(model, data)
    method.fit(model, data, TrainConfig(epochs=1, lr=0.01), progress=False)
    model = method.finalize(model)
    if method.structured:
        compiled = compile_model(model, shape, method.round_to).model
    else:
        passes = [BakeMasksPass()] + ([EnforceTwoFourPass()] if method.pattern == "2:4" else [])
        compiled = Pipeline(passes).run(model).model
    layer_sparsity(compiled)
    count_layer_macs(compiled, shape)
    fold_batchnorm(compiled)
    return compiled


def devices_of(model: nn.Module) -> set[torch.device]:
    return {tensor.device for tensor in [*model.parameters(), *model.buffers()]}


def test_the_check_catches_tensors_made_without_a_device():
    layer = nn.Linear(4, 2)
    with tensors_made_elsewhere():
        with pytest.raises(RuntimeError, match="created without a device"):
            layer(torch.randn(3, 4))
        with pytest.raises(RuntimeError, match="created without a device"):
            layer.weight.detach()[torch.tensor([1])]
        with pytest.raises(RuntimeError, match="created without a device"):
            torch.cat([layer.bias.detach(), torch.zeros(1)])
        layer(torch.randn(3, 4, device="cpu"))
        assert torch.zeros(1).device.type == "meta"


@pytest.mark.parametrize("case", CASES)
def test_no_stage_creates_a_tensor_without_the_models_device(case):
    model, method, data = case_setup(case, "cpu")
    with tensors_made_elsewhere():
        compiled = compression_stages(model, method, data)
    assert devices_of(compiled) == {torch.device("cpu")}


def test_a_recorded_structure_is_rebuilt_on_the_models_device():
    model, method, data = case_setup("channel", "cpu")
    compiled = compression_stages(model, method, data)
    rebuilt = create_model("lenet5")
    with tensors_made_elsewhere():
        apply_structure(rebuilt, describe_structure(compiled))
    assert devices_of(rebuilt) == {torch.device("cpu")}
    rebuilt.load_state_dict(compiled.state_dict())


@needs_cuda
def test_masks_made_on_the_cpu_prune_a_cuda_model():
    model = create_model("lenet5").to("cuda")
    masks = {"classifier.fc1": torch.zeros_like(model.classifier.fc1.weight, device="cpu")}
    attach_masks(model, masks)
    assert model.classifier.fc1.weight_mask.device.type == "cuda"
    with torch.no_grad():
        model(torch.randn(2, *model.input_shape, device="cuda"))
    assert not model.classifier.fc1.weight.any()


@needs_cuda
@pytest.mark.parametrize("case", CASES)
def test_stages_run_with_the_model_on_cuda(case):
    model, method, data = case_setup(case, "cuda")
    compiled = compression_stages(model, method, data)
    assert {device.type for device in devices_of(compiled)} == {"cuda"}
    with torch.no_grad():
        assert torch.isfinite(compiled.eval()(torch.randn(2, *compiled.input_shape, device="cuda"))).all()


def compress_on_cuda(checkpoint, out, method: str, target: str):
    """One epoch of `method` through `compress` with training on the GPU; the ONNX must compute what torch does."""
    report = compress(checkpoint, method, target, epochs=1, out=out, progress=False, device="cuda")
    assert report.onnx.max_abs_diff <= report.onnx.tolerance
    assert_onnx_matches_torch(load_model(out / "model.pt"), out / "model.onnx")
    return report


@needs_cuda
def test_magnitude_compresses_on_cuda(lenet5_checkpoint, tmp_path):
    report = compress_on_cuda(lenet5_checkpoint, tmp_path / "o", "magnitude", "85%")
    assert abs(report.compressed.sparsity - 0.85) < 0.005


@needs_cuda
def test_budget_compresses_on_cuda(lenet5_checkpoint, tmp_path):
    report = compress_on_cuda(lenet5_checkpoint, tmp_path / "o", "budget", "85%")
    assert abs(report.compressed.sparsity - 0.85) <= 0.002
    assert all(row.predicted_sparsity is not None for row in report.layers if row.pattern == "unstructured")


@needs_cuda
def test_energy_compresses_on_cuda(tmp_path):
    torch.manual_seed(0)
    report = compress(create_model("resnet20"), "energy", "30%", epochs=1, out=tmp_path / "o", progress=False,
                      device="cuda")
    assert report.onnx.max_abs_diff <= report.onnx.tolerance
    assert report.structure.macs_removed >= 0.3 and report.structure.removed_units


@needs_cuda
def test_snapshot_compresses_on_cuda(lenet5_checkpoint, tmp_path):
    report = compress_on_cuda(lenet5_checkpoint, tmp_path / "o", "snapshot", "90%")
    assert f"{report.compressed.sparsity:.4f}" == "0.9000"
    assert report.snapshot.params == report.compressed.params_nonzero


@needs_cuda
@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_switcher_compresses_on_cuda(lenet5_checkpoint, tmp_path, mode):
    report = compress(lenet5_checkpoint, "switcher", None, epochs=2, out=tmp_path / "o", progress=False, device="cuda",
                      method_options={"mode": mode})
    assert report.onnx.max_abs_diff <= report.onnx.tolerance
    assert report.switcher.mode == mode and report.device.startswith("cuda")


@needs_cuda
def test_channel_compresses_on_cuda(lenet5_checkpoint, tmp_path):
    report = compress_on_cuda(lenet5_checkpoint, tmp_path / "o", "channel", "50%")
    assert report.structure.macs_removed >= 0.5
    assert report.structure.macs_removed == pytest.approx(1 - report.compressed.macs / report.dense.macs)
    assert report.compressed.params < report.dense.params
