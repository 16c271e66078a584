"""Magnitude pruning: exact counted sparsity, 2:4 layout, masks that survive fine-tuning, every zoo model."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from compressor.counting import global_sparsity, layer_sparsity, prunable_layers
from compressor.data import DataBundle
from compressor.errors import CompressorError
from compressor.methods import create_method, list_methods
from compressor.methods.base import typed_options
from compressor.models import create_model, list_models
from compressor.training import TrainConfig, train
from compressor.passes.analysis import is_two_four, to_groups, two_four_eligibility


def no_data():
    return DataBundle(train=None, test=None, num_classes=10, name="none")


@pytest.mark.parametrize("name", list_models())
def test_global_magnitude_hits_target_on_every_zoo_model(name):
    model = create_model(name)
    create_method("magnitude", 0.85).prepare(model, no_data())
    rows = layer_sparsity(model)
    weights = sum(r.weights for r in rows)
    assert abs(global_sparsity(rows) - 0.85) <= 1 / weights
    with torch.no_grad():
        assert model.eval()(torch.randn(1, *model.input_shape)).shape == (1, 10)


def test_global_ranks_across_layers_and_layer_scope_prunes_each():
    model = create_model("lenet5")
    with torch.no_grad():
        model.get_submodule(prunable_layers(model)[0][0]).weight.abs_().add_(10)
    create_method("magnitude", 0.5).prepare(model, no_data())
    rows = layer_sparsity(model)
    assert rows[0].sparsity == 0.0 and abs(global_sparsity(rows) - 0.5) < 1e-5

    per_layer = create_model("lenet5")
    create_method("magnitude", 0.5, scope="layer").prepare(per_layer, no_data())
    for row in layer_sparsity(per_layer):
        assert abs(row.sparsity - 0.5) <= 1 / row.weights


def test_two_four_is_exact_on_eligible_layers_and_dense_elsewhere():
    model = create_model("resnet20")
    method = create_method("magnitude", None, "2:4")
    assert method.target == 0.5
    method.prepare(model, no_data())
    layers = dict(prunable_layers(model))
    for row in layer_sparsity(model):
        if two_four_eligibility(layers[row.name]).eligible:
            assert row.sparsity == 0.5 and is_two_four(to_groups(layers[row.name].weight))
        else:
            assert row.zeros == 0
    assert not two_four_eligibility(layers["features.stem.0"]).eligible


def test_conv_transpose_layers_are_pruned_by_magnitude_and_stay_dense_under_two_four():
    from shared import EncoderDecoderNet

    torch.manual_seed(0)
    model = EncoderDecoderNet()
    create_method("magnitude", 0.85).prepare(model, no_data())
    rows = {row.name: row for row in layer_sparsity(model)}
    assert rows["decoder.0"].kind == "ConvTranspose2d" and rows["decoder.0"].sparsity > 0.5
    assert abs(global_sparsity(list(rows.values())) - 0.85) <= 1 / sum(r.weights for r in rows.values())

    two_four = EncoderDecoderNet()
    create_method("magnitude", None, "2:4").prepare(two_four, no_data())
    rows = {row.name: row for row in layer_sparsity(two_four)}
    assert rows["decoder.0"].zeros == 0 and rows["encoder.2"].sparsity == 0.5


def test_masks_survive_fine_tuning():
    torch.manual_seed(0)
    model = create_model("lenet300_100")
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    method = create_method("magnitude", 0.9)
    method.prepare(model, no_data())
    zeros_before = [r.zeros for r in layer_sparsity(model)]
    train(model, loader, loader, TrainConfig(epochs=2, lr=0.05), hooks=method, progress=False)
    assert [r.zeros for r in layer_sparsity(model)] == zeros_before


@pytest.mark.parametrize("call, message", [
    (lambda: create_method("nope", 0.5), "unknown method"),
    (lambda: create_method("magnitude", 0.5, colour="red"), "no option colour"),
    (lambda: create_method("magnitude", 0.5, scope="tensor"), "scope"),
    (lambda: create_method("magnitude", None), "needs --target"),
    (lambda: create_method("magnitude", 0.8, "2:4"), "fixes sparsity at 50%"),
    (lambda: create_method("magnitude", 0.5, "4:8"), "supports patterns"),
])
def test_bad_method_requests(call, message):
    with pytest.raises(CompressorError, match=message):
        call()


def test_registry_and_typed_options():
    assert "magnitude" in list_methods()
    assert typed_options("magnitude", {"scope": "layer"}) == {"scope": "layer"}
    assert create_method("magnitude", 0.5).outcome().config == {"scope": "global"}
