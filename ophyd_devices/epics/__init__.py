"""The beamline's devices over EPICS Channel Access, on stock Ophyd classes, named by a beamline description.

They keep the simulated devices' interface, so the plans, the bridge and the catalog run on them unchanged;
they never import the simulator (the import contracts check it).
"""
