"""Old import path of the expected parameter and MAC counts, kept for one release: they live in
compressor.passes.analysis.expected_counts."""

from compressor.passes.analysis.expected_counts import ExpectedCounts, unit_layers  # noqa: F401
