"""The beamline description: which EPICS process variables are the FCCD, the stage, the shutter and the optics.

A facility plugs the suite into its hardware by editing one file (YAML or TOML, read by
:func:`ns_bluesky.io.description.load_description`), not code: the PV names live here,
validated, and both the Ophyd devices (``ophyd_devices/epics/``) and the simulated IOC
(``ophyd_devices/ioc/``) are built from the same description, so they cannot disagree.
The defaults mirror a COSMIC-like soft X-ray ptychography endstation; the names are
illustrative, a real beamline substitutes its own.

Every PV name is ``prefix`` + the part given here. The ``ioc`` section is only what the
simulated IOC starts with (motor speeds and limits, shutter delay, optics); a real
beamline's IOCs hold those themselves and ignore it.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from .detector import DetectorGeometry
from .model import Model
from .optics import ZonePlateOptics

# Channel Access names: no spaces, no dots (fields), no braces (caproto expands {} as macros; see shared/reference/epics.md)
_PV_PART = re.compile(r"^[A-Za-z0-9_:\-]*$")


def _pv_part(cls, value: str) -> str:
    if not _PV_PART.match(value):
        raise ValueError(
            f"{value!r} is not a usable PV name part: letters, digits, '_', ':' and '-' only (a '.' starts a field)"
        )
    return value


class DetectorPVs(Model):
    """The FCCD's areaDetector IOC: driver (cam) and HDF5 file plugin, as areaDetector names them."""

    prefix: str = Field("FCCD:", description="the detector IOC's prefix, after the beamline prefix")
    cam: str = Field("cam1:", description="driver plugin")
    hdf: str = Field("HDF1:", description="HDF5 file plugin (NDFileHDF5)")
    geometry: DetectorGeometry = Field(default_factory=DetectorGeometry, description="readout layout and pixels")

    check_names = field_validator("prefix", "cam", "hdf")(_pv_part)


class StagePVs(Model):
    """The sample stage: one motor record per axis (positions in metres, the motor records' EGU)."""

    y: str = Field("SS:Y", description="vertical sample translation, motor record")
    x: str = Field("SS:X", description="horizontal sample translation, motor record")

    check_names = field_validator("y", "x")(_pv_part)

    @model_validator(mode="after")
    def _distinct(self) -> StagePVs:
        if self.y == self.x:
            raise ValueError(f"y and x name the same motor record {self.y!r}")
        return self


class ShutterPVs(Model):
    """The fast shutter: a bo record to command it and a bi record that reports where it is."""

    command: str = Field("SHUTTER:Cmd", description="bo: 0 close, 1 open")
    status: str = Field("SHUTTER:Sts", description="bi: 0 closed, 1 open")

    check_names = field_validator("command", "status")(_pv_part)


class OpticsPVs(Model):
    """What a reconstruction needs of the optics, one PV each (SI units, eV for the energy)."""

    energy: str = Field("MONO:Energy", description="photon energy, eV")
    zone_plate_diameter: str = Field("ZP:Diameter", description="m")
    outer_zone_width: str = Field("ZP:OuterZoneWidth", description="m")
    central_stop_diameter: str = Field("ZP:CentralStop", description="m")
    defocus: str = Field("ZP:Defocus", description="m, sample past focus")
    detector_distance: str = Field("FCCD:Distance", description="sample to detector, m")

    check_names = field_validator("*")(_pv_part)


class SimulatedIOC(Model):
    """What ``ns-bluesky ioc`` starts with; a real beamline's IOCs ignore this section."""

    velocity_m_s: float = Field(1e-3, gt=0, description="stage VELO")
    acceleration_s: float = Field(1e-3, ge=0, description="stage ACCL: time to reach VELO")
    low_limit_m: float = Field(-50e-6, description="stage LLM (both axes)")
    high_limit_m: float = Field(50e-6, description="stage HLM (both axes)")
    shutter_delay_s: float = Field(0.005, ge=0, description="from the bo command to the bi status")
    energy_eV: float = Field(800.0, gt=0)
    zone_plate: ZonePlateOptics = Field(default_factory=ZonePlateOptics)
    exposure_s: float = Field(0.1, gt=0, description="cam1:AcquireTime at start")

    @model_validator(mode="after")
    def _limits(self) -> SimulatedIOC:
        if not self.low_limit_m < self.high_limit_m:
            raise ValueError(f"low_limit_m={self.low_limit_m} must be below high_limit_m={self.high_limit_m}")
        return self


class BeamlineDescription(Model):
    """One beamline's EPICS names; ``pv(part)`` gives a full PV name."""

    name: str = "COSMIC-like ptychography endstation"
    prefix: str = Field("BL701:", description="prepended to every PV name below")
    detector: DetectorPVs = Field(default_factory=DetectorPVs)
    stage: StagePVs = Field(default_factory=StagePVs)
    shutter: ShutterPVs = Field(default_factory=ShutterPVs)
    optics: OpticsPVs = Field(default_factory=OpticsPVs)
    ioc: SimulatedIOC = Field(default_factory=SimulatedIOC)

    check_names = field_validator("prefix")(_pv_part)

    def pv(self, part: str) -> str:
        return self.prefix + part

    @property
    def cam_prefix(self) -> str:
        return self.pv(self.detector.prefix + self.detector.cam)

    @property
    def hdf_prefix(self) -> str:
        return self.pv(self.detector.prefix + self.detector.hdf)

    def all_pvs(self) -> list[str]:
        """The record names outside the detector (whose PVs areaDetector names): for a quick reachability check."""
        parts = [self.stage.y, self.stage.x, self.shutter.command, self.shutter.status]
        parts += [getattr(self.optics, f) for f in OpticsPVs.model_fields]
        return [self.pv(p) for p in parts]
