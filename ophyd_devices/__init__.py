"""Ophyd devices of the ptychography endstation: FCCD, sample stage, shutter, optics.

The simulated set (``make_sim_beamline``) shares one physics model so the detector sees
the sample where the stage really is.
"""

from ..io.frame_writer import HDF5FrameWriter
from .beamline import SimBeamline, make_sim_beamline
from .fccd import ReplaySource, SimFCCD, SimulationSource
from .motors import SampleStage, SimMotor
from .optics import ZonePlateOptics
from .shutter import Shutter

__all__ = [
    "HDF5FrameWriter",
    "ReplaySource",
    "SampleStage",
    "Shutter",
    "SimBeamline",
    "SimFCCD",
    "SimMotor",
    "SimulationSource",
    "ZonePlateOptics",
    "make_sim_beamline",
]
