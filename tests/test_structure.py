"""A compiled zoo model's shapes are recorded in its checkpoint and rebuilt on load, without pickled code."""

from __future__ import annotations

import pytest
import torch

from compressor.errors import CompressorError
from compressor.loading import CHECKPOINT_FORMAT, load_model, save_checkpoint
from compressor.methods import create_method
from compressor.models import create_model
from compressor.passes.gates import gate_unit, units_of
from compressor.passes.pipeline import compile_model
from compressor.structure import apply_structure, describe_structure
from shared import randomize_batchnorm_, single_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_torch_thread():
        yield


def compiled(name: str) -> torch.nn.Module:
    """`name` with half its MACs gated off and its second skip-unit (if any) gated to 0, compiled."""
    torch.manual_seed(0)
    model = randomize_batchnorm_(create_model(name).eval())
    create_method("channel", 0.5, round_to=1).prepare(model, None)
    units = units_of(model)
    if len(units) > 1:
        gate_unit(model, units[1][1], 0.0, model.input_shape)
    return compile_model(model).model.eval()


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "resnet164", "densenet40", "mobilenet_v1"])
def test_a_compiled_checkpoint_rebuilds_the_same_model(name, tmp_path):
    model = compiled(name)
    save_checkpoint(model, tmp_path / "c.pt")
    loaded = load_model(tmp_path / "c.pt").eval()

    assert describe_structure(loaded) == describe_structure(model)
    x = torch.randn(2, *model.input_shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_removed_units_and_branches_are_recorded():
    records = describe_structure(compiled("resnet20"))
    assert records["features.stage1.1"] == {"type": "residual_without_branch"}
    assert not any(name.startswith("features.stage1.1.branch") for name in records)
    dense = describe_structure(compiled("densenet40"))
    assert dense["features.block1.1"] == {"type": "identity"}


def test_a_padding_shortcut_keeps_its_channel_map(tmp_path):
    model = create_model("resnet20").eval()
    shortcut = model.features.stage2[0].shortcut
    shortcut.set_sources(16, [-1, 3, 0, -1] + list(range(4, 16)) + [-1] * 12)
    model.features.stage2[0].branch[4] = torch.nn.BatchNorm2d(32)
    records = describe_structure(model)
    assert records["features.stage2.0.shortcut"] == {"type": "pad_shortcut", "in": 16,
                                                     "sources": shortcut.sources}
    rebuilt = apply_structure(create_model("resnet20").eval(), records)
    assert rebuilt.features.stage2[0].shortcut.sources == shortcut.sources
    assert not rebuilt.features.stage2[0].shortcut.is_padding


def test_a_structure_that_does_not_fit_the_architecture_is_refused():
    with pytest.raises(CompressorError, match="does not fit the architecture at features.stem.0"):
        apply_structure(create_model("resnet20"), {"features.stem.0": {"type": "linear", "in": 3, "out": 16}})


def test_a_version_1_checkpoint_without_structure_still_loads(tmp_path):
    model = create_model("lenet5").eval()
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "arch": "lenet5", "num_classes": 10,
                "input_shape": list(model.input_shape), "state_dict": model.state_dict(), "extra": {}},
               tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt").eval()
    x = torch.randn(2, *model.input_shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_transposed_convolution_is_rebuilt_to_its_recorded_widths():
    thin = torch.nn.Sequential(torch.nn.ConvTranspose2d(15, 6, 2, stride=2, groups=3, bias=False))
    model = torch.nn.Sequential(torch.nn.ConvTranspose2d(16, 8, 2, stride=2, groups=1))
    apply_structure(model, describe_structure(thin))
    rebuilt = model[0]
    assert (rebuilt.in_channels, rebuilt.out_channels, rebuilt.groups, rebuilt.stride) == (15, 6, 3, (2, 2))
    assert rebuilt.bias is not None, "what is not recorded stays as built"
    model.load_state_dict({"0.weight": thin[0].weight.detach(), "0.bias": torch.zeros(6)})
