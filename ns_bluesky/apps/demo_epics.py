"""The demo's EPICS path (``ns-bluesky demo --epics``): its own IOC on loopback, and the beamline over Channel Access.

The demo starts the simulated IOC (:mod:`ns_bluesky.apps.ioc`) as a child process on a port free on 127.0.0.1,
its simulation built from the demo's own ``SimConfig`` (seed, exposure, sample and its image, scan pattern), so
the IOC renders the very experiment the in-process path would and the reconstruction can still be scored
against the truth. The EPICS beamline (``make_beamline`` on a description with the IOC's prefix) then drives it
with the same plans; the IOC files the frames in the catalog's detector folder, where the catalog reads them.
Everything here is undone by :meth:`EpicsDemo.close` (the IOC stopped), which the demo calls on every exit path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ..errors import ParameterError
from ..instrument.beamline import BeamlineDescription
from ..io.description import description_to_yaml
from ..sim.settings import SimConfig
from .ioc_process import IOCProcess

#: the demo IOC's PV prefix (one IOC on a port of its own: no other IOC is searched for)
DEMO_PREFIX = "NSDEMO:"
#: per scan point the EPICS path spends this long outside the exposure: from a frame's end to the next trigger
#: at the IOC (the frame seen, the event, the stage's move to DMOV=1, the trigger). The IOC logs it at its end;
#: with the pipeline and catalog on the same 2 cores it came 35 ms after the frame's end at the median, 47-50 ms
#: at the 90th percentile, 76-82 ms at the 99th (20 x 20 at 10 Hz, load 24, the demo's processes at priority):
#: 50 ms left 46 of 419 triggers too late for the period (9.90 frames/s), 60 ms left 9 (9.95)
POINT_OVERHEAD_S = 0.06


def default_exposure_s(rate_hz: float, epics: bool) -> float:
    """COSMIC's 100 ms, shortened when the rate asks for more frames per second. The IOC, like a camera,
    ends no frame sooner than its exposure after the trigger, so over EPICS the exposure also leaves the
    per-point overhead free within the period (at least 30 % of the period stays exposure)."""
    if rate_hz <= 0:
        return 0.1
    period = 1.0 / rate_hz
    return round(min(0.1, max(period - POINT_OVERHEAD_S, 0.3 * period) if epics else period), 6)


def point_channel_access() -> int:
    """A port free on 127.0.0.1 for the demo's IOC, and this process's CA client searching there only; call it
    before Ophyd is imported. libca reads the environment once, when it starts: a process whose Channel Access
    already runs cannot follow, and is told so."""
    from ..ophyd_devices.ioc.network import client_env, free_ca_ports

    ca = sys.modules.get("epics.ca")
    (port,) = free_ca_ports(1)
    wanted = client_env([port])
    if ca is not None and getattr(ca, "libca", None) is not None:
        if os.environ.get("EPICS_CA_ADDR_LIST") != wanted["EPICS_CA_ADDR_LIST"]:
            raise ParameterError("--epics: Channel Access already started in this process for other addresses; "
                                 "run the EPICS demo in a process of its own ('ns-bluesky demo --epics')")
    os.environ.update(wanted)
    return port


def stage_limits_m(planned_m, margin: float = 1.5) -> tuple[float, float]:
    """Symmetric stage limits (at least the description's +-50 um) that hold the planned scan with room."""
    reach = float(np.abs(np.asarray(planned_m)).max()) * margin if len(planned_m) else 0.0
    return -max(reach, 50e-6), max(reach, 50e-6)


class EpicsDemo:
    """The IOC process and the beamline connected to it; ``close`` stops the IOC."""

    def __init__(self, ioc: IOCProcess, beamline, description: BeamlineDescription):
        self.ioc, self.beamline, self.description = ioc, beamline, description
        self.cpu_at_scan_start: float | None = None

    @property
    def info(self) -> dict:
        ready = self.ioc.ready
        return {"prefix": self.description.prefix, "port": ready.get("port"), "tcp_port": ready.get("tcp_port"),
                "address": "127.0.0.1", "pvs": ready.get("pvs"), "pid": self.ioc.pid, "log": str(self.ioc.log_path)}

    def close(self) -> None:
        """Release the devices' channels first (else libca reports each lost circuit), then stop the IOC."""
        try:
            for device in self.beamline.devices.values():
                device.destroy()
        finally:
            self.ioc.stop()


def start_epics_demo(cfg: SimConfig, *, port: int, planned_m, rate_hz: float, exposure_s: float, workdir: Path,
                     write_dir: Path, prefix: str = DEMO_PREFIX, connect_timeout_s: float = 10.0,
                     ready_timeout_s: float = 90.0) -> EpicsDemo:
    """Start the IOC for ``cfg`` on ``port`` (from :func:`point_channel_access`) and connect the EPICS beamline
    to it; ``planned_m`` (the simulation's scan) sets the motor records' limits. On any failure the IOC stops."""
    from ..ophyd_devices.ioc.beamline import simulating

    low, high = stage_limits_m(planned_m)
    base = BeamlineDescription(prefix=prefix)
    description = simulating(base.model_copy(update={"ioc": base.ioc.model_copy(
        update={"low_limit_m": low, "high_limit_m": high})}), cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "beamline.yaml").write_text(description_to_yaml(description))
    (workdir / "simulation.json").write_text(cfg.model_dump_json(indent=2))
    ioc = IOCProcess(port=port, prefix=prefix, workdir=workdir, description=workdir / "beamline.yaml",
                     simulation=workdir / "simulation.json", rate_hz=rate_hz, ready_timeout_s=ready_timeout_s)
    ioc.start()
    try:
        from ..ophyd_devices import make_beamline

        beamline = make_beamline(description, write_dir, connect_timeout_s=connect_timeout_s)
        beamline.fccd.cam.acquire_time.put(exposure_s, wait=True)
        beamline.fccd.cam.acquire_period.put(1.0 / rate_hz if rate_hz > 0 else 0.0, wait=True)
        return EpicsDemo(ioc, beamline, description)
    except BaseException:
        ioc.stop()
        raise
