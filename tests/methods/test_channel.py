"""Tests of the L1-norm channel-pruning method ("channel"): it gates off the lowest-L1 channels until the predicted
MACs (and parameters) removed reach the target, globally or uniformly per group, optionally keeping widths at a
multiple; compiling the gated model must then remove exactly what was predicted. Bad options are user errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from compressor.counting import count_macs, count_params
from compressor.errors import CompressorError
from compressor.methods import create_method
from compressor.methods.channel import filter_l1
from compressor.models import create_model
from compressor.passes.analysis.groups import channel_groups
from compressor.passes.gates import ChannelGate, gates_of
from compressor.passes.pipeline import compile_model
from shared import single_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_torch_thread():
        yield


def prune_and_compile(name: str, target: float | None = 0.5, **options):
    """(method, dense model counts, compiled model) for `name` pruned by the channel method with `options`."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    shape = tuple(model.input_shape)
    dense = count_params(model), count_macs(model, shape)
    method = create_method("channel", target, **options)
    gated = method.prepare(model, None)
    compiled = compile_model(gated, shape, round_to=method.round_to).model
    return method, dense, compiled


def removed_fractions(dense: tuple[int, int], compiled: nn.Module) -> tuple[float, float]:
    """(parameters removed, MACs removed), counted on the compiled model."""
    shape = tuple(compiled.input_shape)
    return 1 - count_params(compiled) / dense[0], 1 - count_macs(compiled, shape) / dense[1]


def zero_gated_channels(model: nn.Module) -> dict[str, list[int]]:
    """Per gated layer, the output channels its channel gate sets to 0."""
    zeros = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            gate = next(p for p in module.parametrizations.weight if isinstance(p, ChannelGate))
            zeros[name] = torch.nonzero(gate.value() == 0).flatten().tolist()
    return zeros


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v1", "lenet5"])
def test_half_the_macs_go_and_compilation_removes_what_was_predicted(name):
    method, dense, compiled = prune_and_compile(name, 0.5)

    predicted = method.predicted
    assert predicted["macs_removed"] >= 0.5
    assert predicted["macs_removed"] < 0.6, "the bisection takes the fewest channels that meet the target"
    params_removed, macs_removed = removed_fractions(dense, compiled)
    assert macs_removed == pytest.approx(predicted["macs_removed"], abs=1e-12)
    assert params_removed == pytest.approx(predicted["params_removed"], abs=1e-12)
    assert 0 < predicted["channels_removed"] < predicted["channels"]
    assert gates_of(compiled) == []
    assert method.outcome().structure.predicted == predicted


def test_the_lowest_l1_filters_are_gated_off():
    model = create_model("lenet5").eval()
    scores = {group.root: filter_l1(group) for group in channel_groups(model, model.input_shape)}
    method = create_method("channel", 0.5, round_to=1)
    zeros = zero_gated_channels(method.prepare(model, None))
    assert set(zeros) == set(scores)
    for layer, channels in zeros.items():
        assert channels, layer
        lowest = scores[layer].argsort()[: len(channels)].tolist()
        assert sorted(lowest) == channels, layer


def test_every_group_keeps_a_channel_at_an_extreme_target():
    method, dense, compiled = prune_and_compile("lenet300_100", 0.99, round_to=1)
    assert method.predicted["macs_removed"] >= 0.99
    assert compiled.features.fc1.out_features >= 1 and compiled.features.fc2.out_features >= 1
    assert removed_fractions(dense, compiled)[1] == pytest.approx(method.predicted["macs_removed"], abs=1e-12)


def test_uniform_scope_removes_the_same_share_of_every_group():
    model = create_model("vgg16").eval()
    sizes = {group.root: group.size for group in channel_groups(model, model.input_shape)}
    method = create_method("channel", 0.5, scope="uniform")
    zeros = zero_gated_channels(method.prepare(model, None))
    shares = {layer: len(zeros.get(layer, [])) / size for layer, size in sizes.items()}
    # each group removes int(level * size) channels for one common level
    assert max(shares.values()) <= min((len(zeros.get(layer, [])) + 1) / size for layer, size in sizes.items())
    assert method.predicted["macs_removed"] >= 0.5


def test_uniform_scope_compiles_to_the_prediction():
    method, dense, compiled = prune_and_compile("resnet20", 0.5, scope="uniform")
    assert method.predicted["macs_removed"] >= 0.5
    assert removed_fractions(dense, compiled)[1] == pytest.approx(method.predicted["macs_removed"], abs=1e-12)


def test_a_parameter_target_alone_is_met():
    method, dense, compiled = prune_and_compile("resnet20", None, target_params=0.5)
    assert method.predicted["params_removed"] >= 0.5
    params_removed, macs_removed = removed_fractions(dense, compiled)
    assert params_removed == pytest.approx(method.predicted["params_removed"], abs=1e-12)
    assert macs_removed == pytest.approx(method.predicted["macs_removed"], abs=1e-12)


def test_both_targets_are_met_together():
    method, dense, compiled = prune_and_compile("vgg16", 0.3, target_params=0.6)
    assert method.predicted["macs_removed"] >= 0.3 and method.predicted["params_removed"] >= 0.6
    assert removed_fractions(dense, compiled)[0] >= 0.6


@pytest.mark.parametrize("name", ["resnet20", "vgg16", "mobilenet_v1"])
def test_round_to_eight_keeps_conv_widths_at_multiples_of_eight(name):
    original = {n: m.out_channels for n, m in create_model(name).named_modules() if isinstance(m, nn.Conv2d)}
    method, dense, compiled = prune_and_compile(name, 0.5, round_to=8)
    assert method.round_to == 8
    for layer, module in compiled.named_modules():
        if isinstance(module, nn.Conv2d):
            assert module.out_channels % 8 == 0 or original[layer] < 8, (layer, module.out_channels)
    assert removed_fractions(dense, compiled)[1] > 0.4


@pytest.mark.parametrize("name", [
    "vgg16",
    "resnet20",
])
def test_round_to_eight_compiles_to_the_prediction(name):
    method, dense, compiled = prune_and_compile(name, 0.5, round_to=8)
    params_removed, macs_removed = removed_fractions(dense, compiled)
    assert macs_removed == pytest.approx(method.predicted["macs_removed"], abs=1e-12)
    assert macs_removed >= 0.5


def test_an_unreachable_target_is_a_user_error():
    model = create_model("lenet300_100").eval()
    with pytest.raises(CompressorError, match="cannot reach the target"):
        create_method("channel", 0.999).prepare(model, None)
    assert gates_of(model) == [], "a refused model is left ungated"


@pytest.mark.parametrize("options, message", [
    ({"scope": "layer"}, "scope"),
    ({"round_to": 3}, "round_to"),
    ({"round_to": 0}, "round_to"),
    ({"colour": "red"}, "no option colour"),
])
def test_bad_options_are_user_errors(options, message):
    with pytest.raises(CompressorError, match=message):
        create_method("channel", 0.5, **options)


def test_a_target_is_required():
    with pytest.raises(CompressorError, match="needs --target"):
        create_method("channel", None)


def test_the_method_is_structured_only():
    assert create_method("channel", 0.5).pattern == "structured"
    with pytest.raises(CompressorError, match="patterns"):
        create_method("channel", 0.5, "2:4")


def test_round_to_flag_accepts_only_the_listed_multiples():
    from compressor.methods.base import typed_options

    assert typed_options("channel", {"round_to": "16"}) == {"round_to": 16}
    with pytest.raises(CompressorError, match="--round-to"):
        typed_options("channel", {"round_to": "12"})
    with pytest.raises(CompressorError, match="--round-to"):
        typed_options("channel", {"round_to": "eight"})


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "mobilenet_v1"])
def test_default_rounding_takes_blocks_of_eight_and_stays_near_the_target(name):
    method, dense, compiled = prune_and_compile(name, 0.5)

    assert method.round_to == 8
    assert 0.5 <= method.predicted["macs_removed"] < 0.55
    assert removed_fractions(dense, compiled)[1] == pytest.approx(method.predicted["macs_removed"], abs=1e-12)
    for layer in compiled.modules():
        if isinstance(layer, nn.Conv2d) and layer.in_channels > 3:
            assert layer.out_channels % 8 == 0, layer
