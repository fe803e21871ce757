"""What describes the real instrument and its data, shared by hardware, simulator and analysis alike.

The FCCD's readout geometry, scan patterns, the zone-plate probe model, the optics and
units. Imports numpy, scipy and pydantic only: a beamline running real hardware needs
all of it and none of the simulator.
"""
