"""Counted parameters, MACs and sparsity agree with hand computations."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from compressor.counting import count_layer_macs, count_macs, count_params, global_sparsity, layer_sparsity
from compressor.methods.masks import attach_masks


def small_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1, groups=2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 10))


def test_macs_match_hand_count():
    macs = count_layer_macs(small_net(), (3, 8, 8))
    assert macs["0"].macs == 8 * 8 * 8 * 3 * 9
    assert macs["2"].macs == 4 * 4 * 4 * (8 // 2) * 9
    assert macs["4"].macs == 64 * 10
    assert count_macs(small_net(), (3, 8, 8)) == sum(m.macs for m in macs.values())


def test_params_and_counted_sparsity_follow_masks():
    net = small_net()
    assert count_params(net) == sum(p.numel() for p in net.parameters())
    mask = torch.ones_like(net[4].weight)
    mask[:, :16] = 0
    attach_masks(net, {"4": mask})
    rows = {row.name: row for row in layer_sparsity(net)}
    assert rows["4"].zeros == 160 and rows["4"].sparsity == 0.25
    assert rows["0"].zeros == 0
    total = sum(r.weights for r in rows.values())
    assert global_sparsity(list(rows.values())) == 160 / total
    assert count_layer_macs(net, (3, 8, 8))["4"].macs_nonzero == 480


def _scatter_conv_transpose2d(layer: nn.ConvTranspose2d, x: torch.Tensor) -> tuple[np.ndarray, int, int]:
    """The layer's output on one sample [C_in, H, W], computed by scattering every input value through its
    group's weights, with the multiply-accumulates it did: all of them, and those with a non-zero weight."""
    weight = layer.weight.detach().numpy()
    values = x.numpy()
    c_in, c_out_per_group, kh, kw = weight.shape
    in_per_group = c_in // layer.groups
    (sh, sw), (ph, pw), (dh, dw), (oh, ow) = layer.stride, layer.padding, layer.dilation, layer.output_padding
    height, width = values.shape[1:]
    full = np.zeros((c_out_per_group * layer.groups, (height - 1) * sh + dh * (kh - 1) + 1 + oh,
                     (width - 1) * sw + dw * (kw - 1) + 1 + ow))
    macs = nonzero = 0
    for i in range(c_in):
        first_out = i // in_per_group * c_out_per_group
        for y in range(height):
            for x_ in range(width):
                for j in range(c_out_per_group):
                    for a in range(kh):
                        for b in range(kw):
                            product = values[i, y, x_] * weight[i, j, a, b]
                            full[first_out + j, y * sh + a * dh, x_ * sw + b * dw] += product
                            macs += 1
                            nonzero += int(weight[i, j, a, b] != 0)
    # Padding crops the scattered result: those products were computed all the same.
    output = full[:, ph:full.shape[1] - ph, pw:full.shape[2] - pw] + layer.bias.detach().numpy()[:, None, None]
    return output, macs, nonzero


@pytest.mark.parametrize(
    "settings",
    [dict(stride=2, padding=1, output_padding=1, groups=2), dict(stride=1, padding=0, dilation=2),
     dict(stride=(2, 1), padding=(0, 1), groups=4)],
    ids=["stride2_pad1_outpad1_groups2", "dilation2", "mixed_stride_groups4"],
)
def test_conv_transpose_macs_equal_a_brute_force_scatter(settings):
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(4, 8, 3, **settings)
    mask = (torch.rand_like(layer.weight) > 0.6).float()
    attach_masks(nn.Sequential(layer), {"0": mask})
    x = torch.randn(4, 3, 5)
    expected, macs, nonzero = _scatter_conv_transpose2d(layer, x)
    with torch.no_grad():
        np.testing.assert_allclose(layer(x[None])[0].numpy(), expected, rtol=1e-5, atol=1e-5)
    counted = count_layer_macs(nn.Sequential(layer), (4, 3, 5))["0"]
    assert (counted.macs, counted.macs_nonzero) == (macs, nonzero)
    assert 0 < nonzero < macs


def test_conv_transpose_layers_are_counted_and_pruned():
    net = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ConvTranspose2d(8, 4, 2, stride=2),
                        nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    macs = count_layer_macs(net, (1, 8, 8))
    assert macs["1"].macs == 4 * 4 * 8 * 4 * 2 * 2  # input positions × weights
    assert [row.kind for row in layer_sparsity(net)] == ["Conv2d", "ConvTranspose2d", "Linear"]
