"""Old import path of the gate vocabulary, kept for one release: it lives in compressor.passes.gates.

Models pickled with gates name their classes by this path; they are the same class objects as there.
"""

from compressor.passes.gates import (  # noqa: F401
    GATE_TYPES, ChannelGate, FeatureRangeGate, UnitGate, attach_channel_gate, dense_unit_readers, gate_group,
    gate_unit, gates_of, last_layer, producing_group, reads_through_norm, units_of,
)
