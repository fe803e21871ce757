"""Simulated beamline physics: pure numpy, seeded, no I/O.

``PtychoSimulation`` ties a sample, a zone-plate probe, a scan pattern and the FCCD's
raw-frame model together; ``fccd`` holds the raw layout and its inverse (used by the
processing as well).
"""

from ..instrument.detector import assemble, disassemble
from ..instrument.probe import zone_plate_probe
from ..instrument.scan import fermat_spiral, positions, raster, step_from_overlap
from .experiment import PtychoSimulation, SimulatedScan, Truth, simulate_scan
from .fccd import FCCDModel, sample_photons
from .sample import test_pattern, transmission

__all__ = [
    "FCCDModel",
    "PtychoSimulation",
    "SimulatedScan",
    "Truth",
    "assemble",
    "disassemble",
    "fermat_spiral",
    "positions",
    "raster",
    "sample_photons",
    "simulate_scan",
    "step_from_overlap",
    "test_pattern",
    "transmission",
    "zone_plate_probe",
]
