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


class BeamPVs(Model):
    """Whether the source delivers beam: what the RunEngine's suspenders watch (with the shutter status)."""

    present: str = Field("BEAM:Present", description="bi: 1 while beam reaches the endstation, 0 when it is lost")

    check_names = field_validator("present")(_pv_part)


class FaultPVs(Model):
    """Faults on demand, served only by the simulated IOC (``ns-bluesky ioc``), as the in-process simulator has
    them (:mod:`ns_bluesky.sim.faults`); a real beamline's IOCs do not have these and ignore the section.

    The counted faults spoil the next so many light frames (frames taken with the shutter open) and count
    down as they do, so a test or a demo switches one on mid-scan with one put.
    """

    beam_loss: str = Field("FAULT:BeamLoss", description="longout: the next N light frames see no beam")
    dropped_packets: str = Field("FAULT:DroppedPackets", description="longout: the next N light frames lose rows")
    saturation: str = Field("FAULT:Saturation", description="longout: the next N light frames saturate a band")
    drift_y: str = Field("FAULT:DriftY", description="ao, m: the sample's slip on the stage (unseen by encoders)")
    drift_x: str = Field("FAULT:DriftX", description="ao, m: the sample's slip on the stage (unseen by encoders)")
    beam_dump: str = Field("FAULT:BeamDump", description="bo: 1 dumps the beam (the beam PV reads 0) until 0")
    disk_full: str = Field("FAULT:DiskFull", description="bo: 1 makes the file plugin's disk read as full")

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
    beam: BeamPVs = Field(default_factory=BeamPVs)
    faults: FaultPVs = Field(default_factory=FaultPVs)
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
        parts = [self.stage.y, self.stage.x, self.shutter.command, self.shutter.status, self.beam.present]
        parts += [getattr(self.optics, f) for f in OpticsPVs.model_fields]
        return [self.pv(p) for p in parts]
