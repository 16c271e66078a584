"""Old import path of the channel-coupling analysis, kept for one release.

The analysis now lives in compressor.passes.analysis: `groups` (channel groups), `torch_pruning` (the dependency
graph and its pruners), `importance` (channel scores, dead channels) and `counts` (parameter and MAC prediction).
"""

from compressor.passes.analysis.counts import (  # noqa: F401
    CountPredictor, LayerCount, channel_multiplicity, layer_counts, predict_counts,
)
from compressor.passes.analysis.groups import (  # noqa: F401
    ChannelAnalysis, ChannelGroup, GroupMember, LeftWhole, analyse_channels, channel_groups, is_depthwise, realizable,
)
from compressor.passes.analysis.importance import (  # noqa: F401
    channel_l1, dead_channels, group_l1, reader_importance, zero_channels,
)
from compressor.passes.analysis.torch_pruning import (  # noqa: F401
    CouplingGraph, GroupNormPruner, PadShortcutPruner, dependency_graph,
)
