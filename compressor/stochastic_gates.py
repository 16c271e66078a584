"""The old import path of the Bernoulli method's stochastic gates, kept for one release: they live in
`compressor.methods.bernoulli.gates`. The classes and hook functions are the same objects, so models pickled
with the gates under this path still load."""

from compressor.methods.bernoulli.gates import (CHANNEL_GATES, BernoulliChannelGate, BernoulliUnitGate,  # noqa: F401
                                                _new_samples, _ReaderScale, channel_gates, draw_per_forward,
                                                remove_stochastic_gates, straight_through_sample, unit_gates)
