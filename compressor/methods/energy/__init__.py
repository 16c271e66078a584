"""The energy method (PED): skip-units removed stage after stage by their energy dependence on the labels.

`method` holds the method (its options, the stages, the choice of units to remove) and `dependence` the energy
distance and energy dependence it scores units by. Importing the package registers the method.
"""

from compressor.methods.energy.method import (KEEP, SELECTIONS, EnergyConfig, EnergyMethod,  # noqa: F401
                                              labels_of, ped_kept, removal, remove_units, samples_at,
                                              stratified_indices)
