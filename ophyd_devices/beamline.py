"""The beamline's devices in one call: simulated (sharing one physics model), or EPICS from a description."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ns_bluesky.instrument.beamline import BeamlineDescription
from ns_bluesky.sim import PtychoSimulation
from ns_bluesky.sim.settings import SimConfig

from ..io.description import load_description
from .epics.beamline import EpicsBeamline, make_epics_beamline
from .fccd import SimFCCD, SimulationSource
from .motors import SampleStage
from .optics import ZonePlateOptics
from .shutter import Shutter


@dataclass
class SimBeamline:
    fccd: SimFCCD
    stage: SampleStage
    shutter: Shutter
    optics: ZonePlateOptics
    sim: PtychoSimulation

    @property
    def devices(self) -> dict:
        return {"fccd": self.fccd, "stage": self.stage, "shutter": self.shutter, "optics": self.optics}


def make_sim_beamline(
    write_dir: str | Path, config: SimConfig | None = None, *, image: np.ndarray | None = None, rate_hz: float = 10.0
) -> SimBeamline:
    """FCCD, stage, shutter and optics on one simulated sample; ``rate_hz=0`` free-runs the detector."""
    config = config or SimConfig()
    sim = PtychoSimulation(config, image=image)
    stage = SampleStage(name="stage", seed=config.seed)
    shutter = Shutter(name="shutter")
    fccd = SimFCCD(name="fccd", source=SimulationSource(sim, stage), write_dir=write_dir, shutter=shutter)
    fccd.acquire_time.put(config.exposure_s)
    fccd.acquire_period.put(1.0 / rate_hz if rate_hz > 0 else 0.0)
    optics = ZonePlateOptics.from_model(config.optics, config.energy_eV)
    return SimBeamline(fccd=fccd, stage=stage, shutter=shutter, optics=optics, sim=sim)


def make_beamline(
    description: BeamlineDescription | str | os.PathLike | None,
    write_dir: str | Path,
    *,
    config: SimConfig | None = None,
    image: np.ndarray | None = None,
    rate_hz: float = 10.0,
    connect_timeout_s: float = 3.0,
) -> SimBeamline | EpicsBeamline:
    """No description: the simulated beamline (``config``, ``image``, ``rate_hz``). A description (or its YAML/TOML
    file): the EPICS devices it names, connected within ``connect_timeout_s``; their IOC files the frames under
    ``write_dir`` and keeps its own rate. Both kinds have ``fccd``, ``stage``, ``shutter``, ``optics`` and ``devices``."""
    if description is None:
        return make_sim_beamline(write_dir, config, image=image, rate_hz=rate_hz)
    if not isinstance(description, BeamlineDescription):
        description = load_description(description)
    return make_epics_beamline(description, write_dir, connect_timeout_s=connect_timeout_s)
