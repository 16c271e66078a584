"""Compressing models from outside the zoo (tests/user_models.py), saved as whole pickled modules the way users
save them and compressed through the Python API on the real digits data with one fine-tune epoch.

What a user may expect of such models:

- the models themselves run, export to an ONNX that equals torch, and follow their seed;
- `channel` thins grouped convolutions (keeping a valid groups count), squeeze-and-excitation blocks (slicing
  through `x * sigmoid(...)` together with the SE layer's outputs) and GroupNorm (whole groups at a time);
- models whose channels cannot be thinned (channel splits, channel shuffles, transposed convolutions,
  LayerNorm) are either compiled or refused with one line that names the reason, before any fine-tuning;
- `magnitude` reaches ConvTranspose2d weights and counts their MACs, and `--pattern 2:4` reaches bias-free Linear
  layers in the ONNX;
- a model saved with cloudpickle (a lambda attribute) compresses and its model.pt loads back.
"""

from __future__ import annotations

import pickle
import re

import cloudpickle
import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

import compressor.api
from compressor.api import compress, export_onnx
from compressor.errors import CompressorError
from compressor.loading import load_model
from compressor.passes.check_onnx_sparsity import read_onnx_sparsity
from compressor.runtime.ort_backend import OrtBackend
from shared import single_torch_thread
from user_models import USER_MODELS, build

ONNX_TOLERANCE = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The models are tiny: torch runs single-threaded here (see tests/shared.py)."""
    with single_torch_thread():
        yield


def save(tmp_path, name: str, pickle_module=pickle):
    """The user model `name` (seed 0) saved as a whole pickled module, as users save theirs."""
    path = tmp_path / f"{name}.pt"
    torch.save(build(name), path, pickle_module=pickle_module)
    return path


def run(path, method: str, target: str | None, out, **settings):
    """`compress` as a user runs it on a pickled model of the digits' shape, one fine-tune epoch."""
    return compress(path, method, target, trust_model=True, input_shape=(1, 8, 8), data="digits", epochs=1, out=out,
                    progress=False, bench_runs=5, **settings)


def compressed_model(out) -> nn.Module:
    return load_model(out / "model.pt", trust=True).eval()


def assert_onnx_verified(report) -> None:
    assert report.onnx.max_abs_diff <= report.onnx.tolerance


def assert_onnx_equals_torch(out, model: nn.Module) -> None:
    x = torch.randn(4, *model.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    actual = OrtBackend(out / "model.onnx").run(x.numpy())
    assert np.max(np.abs(actual - expected)) <= ONNX_TOLERANCE * np.max(np.abs(expected))


def one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
    return message


def channel_refusal(tmp_path, monkeypatch, name: str, target: str) -> str | None:
    """Run `channel` on `name`: None when it compiled (ONNX verified), else the one-line refusal.

    A refusal must come before the fine-tune: `train` is watched and must not have run.
    """
    trained = []
    original = compressor.api.train

    def watched_train(*args, **kwargs):
        trained.append(True)
        return original(*args, **kwargs)

    monkeypatch.setattr(compressor.api, "train", watched_train)
    try:
        report = run(save(tmp_path, name), "channel", target, tmp_path / "o")
    except CompressorError as error:
        assert not trained, f"refused after fine-tuning: {error}"
        return one_line(error)
    assert_onnx_verified(report)
    assert_onnx_equals_torch(tmp_path / "o", compressed_model(tmp_path / "o"))
    return None


def reference_macs(model: nn.Module) -> int:
    """Multiply-accumulates of every Conv2d, ConvTranspose2d and Linear for one digits sample, by formula."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        weight = module.weight.numel()
        if isinstance(module, nn.ConvTranspose2d):
            total += inputs[0][0, 0].numel() * weight  # every input position scatters the whole kernel
        elif isinstance(module, nn.Conv2d):
            total += output[0, 0].numel() * weight
        else:
            total += weight

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *model.input_shape))
    for handle in handles:
        handle.remove()
    return total


# ------------------------------------------------------------------------------------------ the models themselves


@pytest.mark.parametrize("name", list(USER_MODELS))
def test_user_model_runs_and_exports(name):
    """Each user model maps a digits batch to 10 finite logits and exports to an ONNX that equals torch."""
    model = build(name).eval()
    x = torch.randn(3, *model.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    assert expected.shape == (3, 10) and torch.isfinite(expected).all()
    actual = OrtBackend(export_onnx(model).model).run(x.numpy())
    assert np.max(np.abs(actual - expected.numpy())) <= ONNX_TOLERANCE * expected.abs().max().item()


@pytest.mark.parametrize("name", list(USER_MODELS))
def test_user_model_follows_its_seed(name):
    """The same seed builds the same weights; another seed builds other weights."""
    first, again, other = build(name, 0).state_dict(), build(name, 0).state_dict(), build(name, 1).state_dict()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_lambda_net_needs_cloudpickle():
    """LambdaNet cannot be saved with plain pickle, and a cloudpickle round trip computes the same."""
    model = build("lambda").eval()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(model)
    copy = cloudpickle.loads(cloudpickle.dumps(model))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(copy(x), model(x))


# ------------------------------------------------------------------------------------------ channel pruning


def test_resnext_grouped_convolutions_are_thinned(tmp_path):
    """channel 50% on ResNeXtNet compiles; its grouped convolutions lose channels and keep a valid groups count."""
    report = run(save(tmp_path, "resnext"), "channel", "50%", tmp_path / "o")
    assert_onnx_verified(report)
    assert report.structure.macs_removed >= 0.5
    before = {name: m for name, m in build("resnext").named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    model = compressed_model(tmp_path / "o")
    after = dict(model.named_modules())
    thinned = []
    for name, dense in before.items():
        conv = after[name]
        assert conv.groups >= 1 and conv.in_channels % conv.groups == 0 and conv.out_channels % conv.groups == 0
        assert conv.weight.shape[1] == conv.in_channels // conv.groups
        thinned.append(conv.in_channels < dense.in_channels and conv.out_channels < dense.out_channels)
    assert any(thinned), "no grouped convolution lost channels"
    assert_onnx_equals_torch(tmp_path / "o", model)


def test_senet_channels_are_sliced_through_the_excitation_product(tmp_path):
    """channel 30% on SENet compiles, and the SE fc2's outputs shrink with the channels they scale."""
    report = run(save(tmp_path, "senet"), "channel", "30%", tmp_path / "o",
                 method_options={"scope": "uniform", "round_to": 1})
    assert_onnx_verified(report)
    dense, model = build("senet"), compressed_model(tmp_path / "o")
    for block in ("block1", "block2"):
        se, body = model.get_submodule(f"{block}.se"), model.get_submodule(f"{block}.body")
        assert se.fc2.out_features == se.fc1.in_features == body[1][0].out_channels
    assert any(model.get_submodule(f"{block}.se.fc2").out_features
               < dense.get_submodule(f"{block}.se.fc2").out_features for block in ("block1", "block2"))
    assert_onnx_equals_torch(tmp_path / "o", model)


def test_groupnorm_loses_whole_groups(tmp_path):
    """channel 50% on GroupNormNet compiles; its GroupNorms lose whole groups, keeping channels per group."""
    report = run(save(tmp_path, "groupnorm"), "channel", "50%", tmp_path / "o")
    assert_onnx_verified(report)
    dense = dict(build("groupnorm").named_modules())
    norms = [(name, m) for name, m in compressed_model(tmp_path / "o").named_modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 3
    for name, norm in norms:
        before = dense[name]
        assert norm.num_channels // norm.num_groups == before.num_channels // before.num_groups
        assert norm.num_channels % norm.num_groups == 0
    assert any(norm.num_groups < dense[name].num_groups for name, norm in norms)


def test_batchnorm_twin_of_groupnorm_net_is_thinned(tmp_path):
    """channel 50% on the BatchNorm twin of GroupNormNet compiles to thinner convolutions."""
    report = run(save(tmp_path, "batchnorm"), "channel", "50%", tmp_path / "o")
    assert_onnx_verified(report)
    assert report.structure.macs_removed >= 0.5
    assert any(layer.kept < 1 for layer in report.structure.layers)


@pytest.mark.parametrize("name, op", [("chunk", "chunk"), ("split", "split")])
def test_channel_splits_are_compiled_or_refused_up_front(tmp_path, monkeypatch, name, op):
    """channel 50% on a model that splits channels compiles, or is refused in one line naming the split, before
    any fine-tuning."""
    refusal = channel_refusal(tmp_path, monkeypatch, name, "50%")
    if refusal is not None:
        assert re.search(rf"\b{op}\b", refusal), refusal


def test_channel_shuffle_is_compiled_or_refused_up_front(tmp_path, monkeypatch):
    """channel 50% on ShuffleNet compiles, or is refused in one line naming the shuffle, before any fine-tuning."""
    refusal = channel_refusal(tmp_path, monkeypatch, "shuffle", "50%")
    if refusal is not None:
        assert "division" not in refusal and "modulo" not in refusal, refusal
        assert re.search(r"shuffle|transpose|view", refusal, re.IGNORECASE), refusal


def test_tiny_vit_is_thinned_or_the_refusal_names_layernorm(tmp_path, monkeypatch):
    """channel 30% on TinyViT compiles, or the refusal names LayerNorm (or the op) that keeps the channels whole."""
    refusal = channel_refusal(tmp_path, monkeypatch, "tiny-vit", "30%")
    if refusal is not None:
        assert re.search(r"LayerNorm|layer_norm|softmax", refusal, re.IGNORECASE), refusal


# ------------------------------------------------------------------------------------------ transposed convolution


def test_magnitude_prunes_and_counts_the_transposed_convolution(tmp_path):
    """magnitude 85% on EncoderDecoder zeros most ConvTranspose2d weights and counts its MACs in the report."""
    report = run(save(tmp_path, "encoder-decoder"), "magnitude", "85%", tmp_path / "o")
    assert_onnx_verified(report)
    assert report.dense.macs == reference_macs(build("encoder-decoder"))
    rows = {row.name: row for row in report.layers}
    assert "up" in rows and rows["up"].sparsity > 0.5
    model = compressed_model(tmp_path / "o")
    assert (model.up.weight == 0).float().mean().item() > 0.5
    assert report.compressed.macs == reference_macs(model)


def test_channel_slices_the_transposed_convolution_or_says_why_not(tmp_path):
    """channel 50% on EncoderDecoder slices the ConvTranspose2d, or the report names it as left whole with a
    reason."""
    try:
        report = run(save(tmp_path, "encoder-decoder"), "channel", "50%", tmp_path / "o")
    except CompressorError as error:
        assert re.search(r"ConvTranspose|\bup\b", one_line(error)), str(error)
        return
    assert_onnx_verified(report)
    up = compressed_model(tmp_path / "o").up
    if up.in_channels == 32 and up.out_channels == 16:
        rows = {row.name: row for row in report.layers}
        assert "up" in rows and rows["up"].note, "the ConvTranspose2d stayed whole and the report does not say why"


# ------------------------------------------------------------------------------------------ 2:4 on bias-free Linear


@pytest.mark.parametrize("name", ["bias-free-mlp", "senet-bias-free"])
def test_two_four_reaches_bias_free_linear_layers(tmp_path, name):
    """magnitude 2:4 runs end to end on bias-free Linear layers, and every eligible Linear is 2:4 in the ONNX."""
    report = run(save(tmp_path, name), "magnitude", None, tmp_path / "o", pattern="2:4")
    assert_onnx_verified(report)
    eligible = [layer_name for layer_name, m in build(name).named_modules()
                if isinstance(m, nn.Linear) and m.in_features % 4 == 0]
    assert eligible
    rows = {row.name: row for row in report.layers}
    assert all(rows[layer_name].pattern == "2:4" for layer_name in eligible)
    two_four = {row.name for row in read_onnx_sparsity(onnx.load(tmp_path / "o" / "model.onnx")) if row.two_four}
    assert {f"{layer_name}.weight" for layer_name in eligible} <= two_four
    assert_onnx_equals_torch(tmp_path / "o", compressed_model(tmp_path / "o"))


# ------------------------------------------------------------------------------------------ cloudpickle


def test_cloudpickled_model_compresses_and_reloads(tmp_path):
    """A LambdaNet saved with cloudpickle compresses with magnitude; its model.pt loads back and equals the ONNX."""
    run(save(tmp_path, "lambda", pickle_module=cloudpickle), "magnitude", "50%", tmp_path / "o")
    assert {"model.onnx", "report.json", "model.pt"} <= {p.name for p in (tmp_path / "o").iterdir()}
    model = compressed_model(tmp_path / "o")
    assert type(model).__name__ == "LambdaNet"
    assert_onnx_equals_torch(tmp_path / "o", model)
