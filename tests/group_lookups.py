"""Lookups in a model's channel-coupling groups, for the tests of the channel analyses: the groups of a model at
its own input shape, the group rooted at a layer, and a group's member by name.
"""

from __future__ import annotations

import torch.nn as nn

from compressor.passes.analysis.groups import channel_groups


def groups_of(model: nn.Module):
    return channel_groups(model, model.input_shape)


def group_rooted_at(groups, root: str):
    return next(group for group in groups if group.root == root)


def member_named(group, name: str, produces: bool | None = None):
    return next(m for m in group.members if m.name == name and (produces is None or m.produces is produces))
