"""Shared fixtures of the pass tests: realistic models (random BatchNorm statistics, masks), output comparison,
input-not-mutated checks, onnxruntime runs, and zoo models exported to ONNX once per session.

Every pass is tested the same way (docs/ARCHITECTURE.md, "Contracts"): run it, assert `modified`, compare outputs
with the model before the pass (max |diff| <= 1e-5 * max |ref| in fp32), run it again expecting `modified is
False`, and check that the input model was not mutated. The helpers live here as fixtures that return functions, because the
test modules are imported with `--import-mode=importlib`, where importing `conftest` by name is not reliable.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from compressor.counting import prunable_layers
from compressor.methods.masks import attach_masks
from compressor.models import create_model
from compressor.passes.analysis import two_four_eligibility, two_four_mask
from compressor.passes.bake_masks import BakeMasksPass
from compressor.passes.emit_onnx import EmitOnnxPass
from shared import randomize_batchnorm_, single_torch_thread

RELATIVE_TOLERANCE = 1e-5


# --------------------------------------------------------------------------------------------------- helpers


def random_masks(model: nn.Module, sparsity: float = 0.5, seed: int = 0, layers=None) -> dict[str, torch.Tensor]:
    """Unstructured random masks (a `sparsity` fraction of zeros) for the named (default: all) prunable layers."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name, layer in prunable_layers(model):
        if layers is None or name in layers:
            masks[name] = (torch.rand(layer.weight.shape, generator=generator) >= sparsity).float()
    return masks


def two_four_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """2:4 masks (the analysis' own `two_four_mask`) for every 2:4-eligible layer."""
    return {
        name: two_four_mask(layer.weight)
        for name, layer in prunable_layers(model)
        if two_four_eligibility(layer).eligible
    }


def sparse_model(name: str, seed: int = 0) -> nn.Module:
    """A zoo model in eval mode with random BN statistics, 2:4 masks on eligible layers and unstructured masks on
    the others, baked into plain weights: what the torch passes hand to EmitOnnx in a 2:4 run."""
    torch.manual_seed(seed)
    model = randomize_batchnorm_(create_model(name).eval(), seed)
    masks = random_masks(model, 0.5, seed)
    masks.update(two_four_masks(model))
    attach_masks(model, masks)
    return BakeMasksPass().run(model).model


def assert_same_outputs(actual, reference, rel: float = RELATIVE_TOLERANCE) -> None:
    """max |actual - reference| <= rel * max |reference| (tensors or arrays)."""
    actual = torch.as_tensor(np.asarray(actual.detach() if isinstance(actual, torch.Tensor) else actual))
    reference = torch.as_tensor(np.asarray(reference.detach() if isinstance(reference, torch.Tensor) else reference))
    assert actual.shape == reference.shape, (actual.shape, reference.shape)
    scale = reference.abs().max().item()
    assert scale > 0, "reference output is all zeros: the comparison would prove nothing"
    diff = (actual.double() - reference.double()).abs().max().item()
    assert diff <= rel * scale, f"max |diff| = {diff:.3g} > {rel:g} * max |ref| = {rel * scale:.3g}"


def snapshot_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of the state dict (works on masked models, whose masked weight is computed)."""
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def assert_state_unchanged(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == snapshot.keys(), "the pass added or removed entries of its input's state dict"
    for key, value in snapshot.items():
        assert torch.equal(state[key], value), f"the pass mutated its input: {key} changed"


def run_onnx(proto: onnx.ModelProto, x) -> np.ndarray:
    """The first output of `proto` on input `x` with onnxruntime on the CPU (one thread, see `_one_thread`)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = np.ascontiguousarray(x.detach().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    return session.run(None, {session.get_inputs()[0].name: feed})[0]


def torch_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def batchnorm_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The models here are small: torch runs single-threaded in these tests (see tests/shared.py)."""
    with single_torch_thread():
        yield

# Each helper is also a fixture so test modules can request it by name.


@pytest.fixture
def check_outputs():
    return assert_same_outputs


@pytest.fixture
def randomize_bn():
    return randomize_batchnorm_


@pytest.fixture
def make_random_masks():
    return random_masks


@pytest.fixture
def make_two_four_masks():
    return two_four_masks


@pytest.fixture
def make_sparse_model():
    return sparse_model


@pytest.fixture
def snapshot():
    return snapshot_state


@pytest.fixture
def check_unchanged():
    return assert_state_unchanged


@pytest.fixture
def onnx_run():
    return run_onnx


@pytest.fixture
def torch_run():
    return torch_outputs


@pytest.fixture
def bn_count():
    return batchnorm_count


class Exported:
    """A torch model and its ONNX export by EmitOnnxPass (the torch model must not be modified by tests)."""

    def __init__(self, name: str):
        self.name = name
        threads = torch.get_num_threads()  # session fixtures start before the module-scoped `_one_thread`
        torch.set_num_threads(1)
        try:
            self.torch_model = sparse_model(name)
            self.state_before = snapshot_state(self.torch_model)
            self.result = EmitOnnxPass(self.torch_model.input_shape).run(self.torch_model)
        finally:
            torch.set_num_threads(threads)
        self.proto = self.result.model
        self.bytes = self.proto.SerializeToString()

    def fresh_proto(self) -> onnx.ModelProto:
        """An independent copy of the exported model, for tests that edit it."""
        return onnx.load_from_string(self.bytes)

    def inputs(self, batch: int, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn((batch, *self.torch_model.input_shape), generator=generator)


# The dynamo exporter takes seconds per model, so each model is exported once for the whole session and shared by
# the EmitOnnx, CleanOnnx, WriteOnnxMetadata and CheckOnnxSparsity tests.
@pytest.fixture(scope="session")
def lenet5_export() -> Exported:
    return Exported("lenet5")


@pytest.fixture(scope="session")
def resnet20_export() -> Exported:
    return Exported("resnet20")
