"""Counted parameters, MACs and sparsity agree with hand computations."""

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
