"""Old import path of the zero-propagation analysis, kept for one release: it lives in
compressor.passes.analysis.zero_flow."""

from compressor.passes.analysis.zero_flow import NORM_LAYERS, OPTYPE, WEIGHT_LAYERS, ZeroFlow, op_name  # noqa: F401
