"""Ophyd devices of the ptychography endstation: FCCD, sample stage, shutter, optics.

The simulated set (``make_sim_beamline``) shares one physics model so the detector sees
the sample where the stage really is; the EPICS set (``epics/``) drives the same hardware over
Channel Access, named by a beamline description; ``make_beamline`` picks one. ``ioc/`` is the
simulated hardware behind the EPICS set, for tests and demonstrations without a beamline.

Names are imported on first use, so that importing one module of the package (an EPICS
device, or the CA network helpers that must run before Ophyd is imported) imports neither
the simulator nor the rest.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EpicsBeamline": ".epics.beamline",
    "HDF5FrameWriter": "..io.frame_writer",
    "ReplaySource": ".fccd",
    "SampleStage": ".motors",
    "Shutter": ".shutter",
    "SimBeamline": ".beamline",
    "SimFCCD": ".fccd",
    "SimMotor": ".motors",
    "SimulationSource": ".fccd",
    "ZonePlateOptics": ".optics",
    "make_beamline": ".beamline",
    "make_epics_beamline": ".epics.beamline",
    "make_sim_beamline": ".beamline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
