"""The old import path of the energy method's dependence measures, kept for one release: they live in
`compressor.methods.energy.dependence`."""

from compressor.methods.energy.dependence import (CAPTURE_BYTES, DENSE_OUTPUTS, PAIRS, STATISTICS,  # noqa: F401
                                                  class_distances, dependence, energy_distance, unit_dependences,
                                                  unit_output_module)
