"""What a model's parameters and MACs become when channels of its coupled groups, or whole modules, are removed.

The prediction is analytic, from per-layer counts (`layer_counts`: every Conv/Linear/ConvTranspose/norm keeps
`alive_out × alive_in` of its weights and MACs) and from how many of a layer's indices carry each of a group's
channels (`channel_multiplicity`). `predict_counts` answers one plan; `CountPredictor` answers the many plans of a
search, recounting only what changed; compressor.passes.analysis.expected_counts reads the same tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from compressor.counting import LayerMacs, count_layer_macs
from compressor.passes.analysis.groups import ChannelGroup, is_depthwise
from compressor.passes.analysis.zero_flow import NORM_LAYERS, WEIGHT_LAYERS


def predict_counts(
    model: nn.Module,
    input_shape: Sequence[int],
    groups: Sequence[ChannelGroup],
    removed_channels: Sequence[Iterable[int]],
    removed_modules: Iterable[nn.Module] = (),
    layer_macs: dict | None = None,
) -> tuple[int, int]:
    """(parameters, MACs) of `model` after removing `removed_channels[i]` (root indices) of `groups[i]`.

    `removed_modules` are layers that disappear entirely (a removed unit's branch). The prediction is
    analytic: every Conv/Linear/ConvTranspose/norm keeps `alive_out × alive_in` of its weights and MACs.
    `layer_macs` (from `count_layer_macs`) saves a forward pass; to predict many plans on one model, build
    a `CountPredictor` once instead.
    """
    return CountPredictor(model, input_shape, groups, removed_modules, layer_macs)(removed_channels)


@dataclass(frozen=True)
class LayerCount:
    """What a layer's parameters and MACs are made of, for counting them at other widths.

    A Conv/Linear/ConvTranspose (`kind` "layer") has `out_total × in_total` channel pairs (inputs divided by
    `groups` when `reading` is "grouped", one input per filter when "depthwise"), `per_pair` weights per pair,
    a bias per output channel when `has_bias`, and `macs_per_pair` MACs per pair for one sample; a norm (`kind`
    "norm") has `per_pair` parameters per channel of its `out_total`.
    """

    kind: str
    out_total: int
    in_total: int = 0
    reading: str = "all"
    groups: int = 1
    per_pair: int = 0
    has_bias: bool = False
    macs_per_pair: int = 0


def layer_counts(model: nn.Module, layer_macs: dict[str, LayerMacs], removed_modules: Iterable[nn.Module] = ()
                 ) -> tuple[dict[nn.Module, LayerCount], dict[nn.Module, int]]:
    """Per Conv/Linear/norm layer its `LayerCount`, and per other module its own parameter count.

    A gated layer's weights are counted with the layer, at their gated shape; `removed_modules` are left out.
    """
    gone = set(removed_modules)
    names = {module: name for name, module in model.named_modules()}
    layers: dict[nn.Module, LayerCount] = {}
    others: dict[nn.Module, int] = {}
    for module in model.modules():
        if isinstance(module, parametrize.ParametrizationList) or module in gone:
            continue
        direct = [p for p in module.parameters(recurse=False)]
        if parametrize.is_parametrized(module):
            direct += [getattr(module, name) for name in module.parametrizations]
        if not direct and not isinstance(module, WEIGHT_LAYERS):
            continue
        if isinstance(module, WEIGHT_LAYERS):
            transposed = isinstance(module, nn.ConvTranspose2d)
            conv_groups = getattr(module, "groups", 1)
            # Weights are [out, in / groups, ...], or [in, out / groups, ...] for a transposed convolution.
            out_total = module.weight.shape[1] * conv_groups if transposed else module.weight.shape[0]
            in_total = module.weight.shape[0] if transposed else module.weight.shape[1] * conv_groups
            # A depthwise filter reads one channel; a grouped convolution keeps its groups, each filter
            # reading its group's remaining channels.
            reading = ("depthwise" if is_depthwise(module) else
                       "grouped" if conv_groups > 1 and not transposed else "all")
            per_filter = module.weight.shape[0 if transposed else 1]
            layer = layer_macs.get(names[module])
            # Layers the forward never calls do no work.
            macs_per_pair = layer.macs // (out_total * per_filter) if layer is not None else 0
            layers[module] = LayerCount("layer", out_total, in_total, reading, conv_groups,
                                        module.weight[0, 0].numel(), module.bias is not None, macs_per_pair)
        elif isinstance(module, NORM_LAYERS):
            channels = module.num_channels if isinstance(module, nn.GroupNorm) else module.num_features
            layers[module] = LayerCount("norm", channels, per_pair=sum(p.numel() for p in direct) // channels)
        else:
            others[module] = sum(p.numel() for p in direct)
    return layers, others


def channel_multiplicity(group: ChannelGroup) -> tuple[list[tuple[nn.Module, bool]], torch.Tensor]:
    """The (layer, produces) pairs `group` touches, and for each how many of its indices carry each root channel
    (a member may list a root channel more than once: the features after flatten→linear); on the CPU."""
    keys = list(dict.fromkeys((m.module, m.produces) for m in group.members))
    rows = {key: row for row, key in enumerate(keys)}
    multiplicity = torch.zeros(len(keys), group.size, dtype=torch.long, device="cpu")
    for member in group.members:
        roots = torch.as_tensor(member.root_idxs, dtype=torch.long, device="cpu")
        multiplicity[rows[(member.module, member.produces)]].index_add_(0, roots, torch.ones_like(roots))
    return keys, multiplicity


class CountPredictor:
    """`predict_counts` for many plans on one model and one list of groups, as a search asks for them.

    The model is walked once; each call then recounts only the groups whose channels differ from the
    previous call's and the layers those groups touch, so a search that moves one group per step pays for
    that group alone. The model's shapes must not change while the predictor is in use.
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], groups: Sequence[ChannelGroup],
                 removed_modules: Iterable[nn.Module] = (), layer_macs: dict | None = None) -> None:
        layer_macs = layer_macs if layer_macs is not None else count_layer_macs(model, tuple(input_shape))
        self._layers, others = layer_counts(model, layer_macs, removed_modules)
        self._fixed_params = sum(others.values())
        self._lost = {(module, produces): 0 for module in self._layers for produces in (True, False)}
        self._terms = {module: self._term(module) for module in self._layers}
        self._params = self._fixed_params + sum(params for params, _ in self._terms.values())
        self._macs = sum(macs for _, macs in self._terms.values())
        self._groups = [channel_multiplicity(group) for group in groups]
        self._plan: list[frozenset[int]] = [frozenset() for _ in groups]
        self._counts: list[list[int]] = [[0] * len(keys) for keys, _ in self._groups]

    def _term(self, module: nn.Module) -> tuple[int, int]:
        """(parameters, MACs) of one layer at its current lost output and input channels."""
        layer = self._layers[module]
        alive_out = layer.out_total - self._lost[(module, True)]
        if layer.kind == "norm":
            return layer.per_pair * alive_out, 0
        alive_in = layer.in_total - self._lost[(module, False)]
        alive_in = 1 if layer.reading == "depthwise" else alive_in // layer.groups if layer.reading == "grouped" else alive_in
        params = alive_out * alive_in * layer.per_pair + (alive_out if layer.has_bias else 0)
        return params, layer.macs_per_pair * alive_out * alive_in

    def widths(self, module: nn.Module) -> tuple[int, int]:
        """(input, output) channels of Conv/Linear `module` under the last plan predicted (its input features
        for a Linear after flatten); a depthwise convolution's input follows its output."""
        layer = self._layers[module]
        alive_out = layer.out_total - self._lost[(module, True)]
        alive_in = alive_out if layer.reading == "depthwise" else layer.in_total - self._lost[(module, False)]
        return alive_in, alive_out

    def __call__(self, removed_channels: Sequence[Iterable[int]]) -> tuple[int, int]:
        touched = set()
        plan = list(removed_channels)
        for index in range(len(self._groups)):
            # A group the plan does not reach loses nothing.
            channels = frozenset(plan[index]) if index < len(plan) else frozenset()
            if channels == self._plan[index]:
                continue
            keys, multiplicity = self._groups[index]
            # Channels outside the group carry nothing, as in `ChannelGroup.member_channels`.
            inside = sorted(c for c in channels if 0 <= c < multiplicity.shape[1])
            counts = multiplicity[:, inside].sum(dim=1).tolist() if inside else [0] * len(keys)
            for key, old, new in zip(keys, self._counts[index], counts):
                if key in self._lost and old != new:
                    self._lost[key] += new - old
                    touched.add(key[0])
            self._plan[index], self._counts[index] = channels, counts
        for module in touched:
            params, macs = self._term(module)
            old_params, old_macs = self._terms[module]
            self._params += params - old_params
            self._macs += macs - old_macs
            self._terms[module] = (params, macs)
        return self._params, self._macs
