"""The EPICS beamline: every device of a description, connected or refused in seconds with one clear line.

Channel Access connects in the background, so an absent IOC would otherwise surface as a timeout deep in
the first plan; ``make_epics_beamline`` waits once, for all devices together, and names what did not answer.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ophyd import Device, EpicsSignalRO

from ns_bluesky.errors import DeviceError
from ns_bluesky.instrument.beamline import BeamlineDescription

from .devices import EpicsOptics, EpicsShutter, EpicsStage, make_optics, make_shutter, make_stage
from .fccd import EpicsFCCD, make_fccd
from .waits import DisconnectGuard, bound_writes, staged_signals


@dataclass
class EpicsBeamline:
    fccd: EpicsFCCD
    stage: EpicsStage
    shutter: EpicsShutter
    optics: EpicsOptics
    description: BeamlineDescription
    #: the beam-present PV (1 while beam reaches the endstation): what the suspenders watch
    beam: EpicsSignalRO | None = None

    @property
    def devices(self) -> dict:
        return {"fccd": self.fccd, "stage": self.stage, "shutter": self.shutter, "optics": self.optics}

    def guards(self) -> list[DisconnectGuard]:
        """The devices' disconnect guards (``waits.DisconnectGuard``)."""
        return [self.fccd.guard, self.stage.y.guard, self.stage.x.guard, self.shutter.guard]

    def install_suspenders(self, RE, **kwargs) -> list:
        """The RunEngine suspends while the beam is lost or an IOC is gone, and resumes when they are back
        (:func:`~ns_bluesky.ophyd_devices.epics.suspenders.install_suspenders`)."""
        from .suspenders import install_suspenders

        return install_suspenders(RE, self, **kwargs)


def _signals_to_connect(devices: list[Device]) -> list:
    fccd = next(d for d in devices if isinstance(d, EpicsFCCD))
    wanted = [fccd.cam.acquire, fccd.cam.acquire_time, fccd.cam.acquire_period, fccd.hdf5.capture,
              fccd.hdf5.file_path, fccd.hdf5.num_captured, fccd.hdf5.full_file_name, fccd.hdf5.write_message,
              fccd.distance]  # all the FCCD's read() needs, connected before the first frame
    for dev in devices:
        if dev is fccd:
            continue
        wanted += [item.item for item in dev.walk_signals(include_lazy=False)] if isinstance(dev, Device) else [dev]
    return wanted


def wait_for_connection(devices: list[Device], timeout_s: float) -> None:
    """``DeviceError`` naming the PVs that did not connect within ``timeout_s`` (all devices share the wait)."""
    signals = _signals_to_connect(devices)
    deadline = time.monotonic() + timeout_s
    for sig in signals:
        try:
            sig.wait_for_connection(timeout=max(deadline - time.monotonic(), 1e-3))
        except TimeoutError:
            pass
    missing = sorted({getattr(s, "pvname", s.name) for s in signals if not s.connected})
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        reach = os.environ.get("EPICS_CA_ADDR_LIST") or "(EPICS_CA_ADDR_LIST unset: broadcast)"
        raise DeviceError(f"the beamline's IOC does not answer: {shown} did not connect within {timeout_s:g} s "
                          f"(searched {reach}); start it with 'ns-bluesky ioc' or check the description's prefix")


def make_epics_beamline(description: BeamlineDescription, write_dir: str | os.PathLike, *,
                        connect_timeout_s: float = 3.0) -> EpicsBeamline:
    """FCCD (frames filed by its IOC under ``write_dir``), stage, shutter, optics and the beam-present PV,
    connected and checked; every write bounded in time. ``bl.install_suspenders(RE)`` makes a RunEngine
    wait for the beam and for lost IOCs instead of failing."""
    d = description
    write_dir = Path(write_dir).resolve()
    write_dir.mkdir(parents=True, exist_ok=True)  # the IOC files there (one host: its path is ours)
    bl = EpicsBeamline(fccd=make_fccd(d, str(write_dir)), stage=make_stage(d),
                       shutter=make_shutter(d), optics=make_optics(d), description=d,
                       beam=EpicsSignalRO(d.pv(d.beam.present), name="beam_present", auto_monitor=True))
    wait_for_connection([*bl.devices.values(), bl.beam], connect_timeout_s)
    hdf = bl.fccd.hdf5  # what staging the detector writes, beyond its stage_sigs
    lazy = [*staged_signals(bl.fccd), hdf.file_path, hdf.file_name, hdf.file_number, hdf.capture, hdf.file_template]
    for device in bl.devices.values():
        bound_writes(device, also=lazy if device is bl.fccd else ())  # no write waits forever for a read-back
    bl.stage.check_units()
    return bl
