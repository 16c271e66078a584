"""Shared analysis that passes and methods read instead of walking the model themselves, one module per concern.

- `two_four`: which layers may hold 2:4 sparsity in the layout TensorRT accepts (and why not), and how a weight
  is cut into the groups of four that layout is defined on, for torch tensors and ONNX initializers alike;
- `layers`: whether a layer still computes with a mask, and which Conv/Linear → BatchNorm pairs a torch.fx trace
  of the model contains;
- `torch_pruning`: Torch-Pruning's dependency graph, with the pruners and the index-mapping cache this compiler
  adds to it;
- `zero_flow`: which channels of a coupled group are provably zero where they are read (zero propagation);
- `groups`: channel coupling, the channels of which layers must be removed together (`ChannelGroup`,
  `analyse_channels`), and where channel gates go;
- `importance`: what each channel of a group is worth (weight L1 norms), and which channels are dead already;
- `counts`: a model's parameters and MACs once given channels or modules are removed;
- `expected_counts`: their expectation when skip-units and channels are each kept with a probability.

The names of `two_four` and `layers` are importable from this package itself. The channel analyses are imported
from their own modules: they load Torch-Pruning, and the gate vocabulary (compressor.passes.gates) builds on them.
"""

from compressor.passes.analysis.layers import has_unbaked_mask, linear_bn_pairs  # noqa: F401
from compressor.passes.analysis.two_four import (  # noqa: F401
    GROUP, KEEP, Eligibility, from_groups, is_two_four, onnx_input_channel_axis, onnx_weight_groups, to_groups,
    two_four_eligibility, two_four_mask,
)
