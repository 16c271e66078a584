"""The old import path of the latency goal that structured methods share, kept for one release: it lives in
`compressor.methods.latency_goal`."""

from compressor.methods.latency_goal import (CHECK_ROUNDS, CHECK_RUNS, CHECK_SECONDS, CHECK_TOLERANCE,  # noqa: F401
                                             LATENCY_ROUNDINGS, LOOKAHEAD, MEASURE_RUNS, MEASURE_SECONDS, LatencyGoal,
                                             Step, check_latency_settings, greedy_by_latency, latency_backend_field,
                                             latency_cache_field, latency_checks_field, latency_steps,
                                             parse_latency_target, target_latency_field)
