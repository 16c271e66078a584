"""Tests of the model zoo, parametrised over the registry so a new model enters every test at once."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.fx
import torch.nn as nn

from compressor.counting import count_macs, count_params
from compressor.errors import CompressorError
from compressor.models import ModelSummary, describe_models
from compressor.models import DenseUnit, PadShortcut, ResidualUnit, create_model, list_models, register_model

# Exact parameter counts at 10 classes. Sources: LeNets, Han et al. 2015 (Table 1: 267K and 431K);
# CIFAR ResNets with option-A shortcuts, He et al. 2016 (0.27M/0.46M/0.85M/1.7M), exact counts as in the widely
# reproduced CIFAR code; ResNet-164, He et al. "Identity Mappings" 2016 (1.7M); DenseNet-40 and DenseNet-BC-100,
# Huang et al. 2017 Table 2 (1.0M and 0.8M; stem of 16 channels, 2k for BC); VGG-16, Li et al. 2017 Table 2
# (1.5e7); MobileNet v1, Howard et al. 2017 (4.2M at 1000 classes, checked separately below); WRN-16-8,
# Zagoruyko & Komodakis 2016 (11.0M).
EXPECTED_PARAMS = {
    "densenet100": 769_162,
    "densenet40": 1_019_722,
    "lenet300_100": 266_610,
    "lenet5": 431_080,
    "mobilenet_v1": 3_217_226,
    "resnet110": 1_727_962,
    "resnet164": 1_703_258,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet56": 853_018,
    "vgg16": 14_987_722,
    "wrn16_8": 10_961_370,
}

# Skip-units each model must expose as modules; models not listed have none.
EXPECTED_UNITS = {
    "resnet20": (ResidualUnit, 9),
    "resnet32": (ResidualUnit, 15),
    "resnet56": (ResidualUnit, 27),
    "resnet110": (ResidualUnit, 54),
    "resnet164": (ResidualUnit, 54),
    "wrn16_8": (ResidualUnit, 6),
    "densenet40": (DenseUnit, 36),
    "densenet100": (DenseUnit, 48),
}

# Published multiply-accumulates at the published input size: (model, classes, MACs).
PUBLISHED_MACS = [
    ("resnet20", 10, 40.8e6),  # He et al. 2016 / common CIFAR ResNet tables
    ("resnet56", 10, 125e6),  # He et al. 2016 / Li et al. 2017 Table 2 (1.25e8)
    ("vgg16", 10, 313e6),  # Li et al. 2017 Table 2 (3.13e8)
    ("mobilenet_v1", 1000, 569e6),  # Howard et al. 2017 Table 1
]

ALL_MODELS = list_models()


@functools.lru_cache(maxsize=None)
def default_model(name: str) -> nn.Module:
    return create_model(name).eval()


def sample_batch(model: nn.Module) -> torch.Tensor:
    return torch.randn(2, *model.input_shape, generator=torch.Generator().manual_seed(0))


def test_every_registered_model_has_expected_counts():
    assert ALL_MODELS == sorted(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_gives_one_logit_row_per_sample(name):
    model = default_model(name)
    assert model.arch == name
    assert model.num_classes == 10
    with torch.no_grad():
        logits = model(sample_batch(model))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_parameter_count_matches_publication(name):
    assert count_params(default_model(name)) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_num_classes_and_in_channels_overrides(name):
    published_channels = default_model(name).input_shape[0]
    in_channels = 2 if published_channels != 2 else 4
    model = create_model(name, num_classes=7, in_channels=in_channels).eval()
    assert model.num_classes == 7
    assert model.input_shape == (in_channels, *default_model(name).input_shape[1:])
    with torch.no_grad():
        assert model(sample_batch(model)).shape == (2, 7)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_skip_units_are_explicit_modules(name):
    unit_type, expected = EXPECTED_UNITS.get(name, ((ResidualUnit, DenseUnit), 0))
    units = [m for m in default_model(name).modules() if isinstance(m, unit_type)]
    assert len(units) == expected


@pytest.mark.parametrize("name", ALL_MODELS)
def test_symbolic_trace_computes_the_same(name):
    model = default_model(name)
    traced = torch.fx.symbolic_trace(model)
    x = sample_batch(model)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


@pytest.mark.parametrize(("name", "num_classes", "published"), PUBLISHED_MACS)
def test_macs_match_publication(name, num_classes, published):
    model = create_model(name, num_classes=num_classes)
    assert count_macs(model, model.input_shape) == pytest.approx(published, rel=0.02)


def test_mobilenet_v1_parameters_at_imagenet_classes():
    # Howard et al. 2017 Table 1 reports 4.2M; 4,231,976 is the exact count of that layout.
    assert count_params(create_model("mobilenet_v1", num_classes=1000)) == 4_231_976


def test_unknown_name_is_a_user_error_listing_known_models():
    with pytest.raises(CompressorError) as caught:
        create_model("resnet21")
    message = str(caught.value)
    assert "\n" not in message
    assert "resnet21" in message
    assert all(name in message for name in ALL_MODELS)


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"in_channels": 0}])
def test_invalid_sizes_are_user_errors(kwargs):
    with pytest.raises(CompressorError):
        create_model("lenet5", **kwargs)


def test_list_models_filters_with_fnmatch_patterns():
    assert list_models("resnet*") == ["resnet110", "resnet164", "resnet20", "resnet32", "resnet56"]
    assert list_models("densenet4?") == ["densenet40"]
    assert list_models("no-such-model*") == []


def test_registering_a_different_factory_under_a_taken_name_fails():
    def resnet20(**kwargs):
        return nn.Identity()

    with pytest.raises(ValueError, match="resnet20"):
        register_model(resnet20)


def test_describe_models_measures_each_model():
    summaries = describe_models("lenet*")
    assert [s.name for s in summaries] == ["lenet300_100", "lenet5"]
    assert summaries[1] == ModelSummary("lenet5", (1, 28, 28), 431_080, 2_293_000)
    assert summaries[0].params == EXPECTED_PARAMS["lenet300_100"]
    assert summaries[0].macs == 784 * 300 + 300 * 100 + 100 * 10


def test_pad_shortcut_matches_hand_computed_example():
    shortcut = PadShortcut(in_channels=2, out_channels=5, stride=2)
    assert (shortcut.pad_before, shortcut.pad_after) == (1, 2)
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    expected = torch.zeros(1, 5, 2, 2)
    expected[0, 1] = torch.tensor([[0.0, 2.0], [8.0, 10.0]])
    expected[0, 2] = torch.tensor([[16.0, 18.0], [24.0, 26.0]])
    assert torch.equal(shortcut(x), expected)


def _unit_projection(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1, bias=False)
    nn.init.dirac_(conv.weight)
    return conv


def test_residual_unit_feeds_only_projection_shortcuts_from_the_preactivation():
    x = torch.randn(1, 3, 4, 4)
    identity_unit = ResidualUnit(nn.Identity(), nn.Identity(), preact=nn.ReLU())
    projection_unit = ResidualUnit(nn.Identity(), _unit_projection(3), preact=nn.ReLU())
    plain_projection_unit = ResidualUnit(nn.Identity(), _unit_projection(3), post_activation=nn.ReLU())
    assert not identity_unit.shortcut_uses_preact
    assert projection_unit.shortcut_uses_preact
    assert not plain_projection_unit.shortcut_uses_preact
    with torch.no_grad():
        torch.testing.assert_close(identity_unit(x), x.relu() + x)
        torch.testing.assert_close(projection_unit(x), 2 * x.relu())
        torch.testing.assert_close(plain_projection_unit(x), (2 * x).relu())
    assert isinstance(plain_projection_unit.preact, nn.Identity)


def test_dense_unit_appends_its_new_features():
    unit = DenseUnit(nn.Sequential(nn.ReLU(), nn.Conv2d(3, 5, 3, padding=1)))
    assert unit.growth == 5
    x = torch.randn(1, 3, 4, 4)
    y = unit(x)
    assert y.shape == (1, 8, 4, 4)
    assert torch.equal(y[:, :3], x)
