"""The whole simulated beamline as one caproto IOC: FCCD, stage, shutter and optics, named by a description.

Standing in for a facility's IOCs on loopback, so that the EPICS path (Ophyd over Channel Access, the same
plans, the catalog) runs without hardware. Everything physical comes from the same simulator as the
in-process beamline: the FCCD renders where the motor records' dial positions put the sample, dark while
the shutter's bi reads closed, with the optics the optics PVs hold at that frame (a change rebuilds the
simulation before the next frame; a combination the zone-plate model refuses is refused at the put), and
with the faults the fault PVs switch on (``faults.py``: beam loss, dropped packets, saturation, drift, a
beam dump that the beam-present PV shows, a full disk).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

from ns_bluesky.instrument.beamline import BeamlineDescription
from ns_bluesky.instrument.optics import ZonePlateOptics
from ns_bluesky.sim import PtychoSimulation
from ns_bluesky.sim.settings import SimConfig

from ..fccd import SimulationSource
from .faults import FaultySource, fault_group
from .fccd import FCCDCam, HDF5FilePlugin
from .motor import MotorRecord
from .network import server_env
from .prerender import Prerendered

SHUTTER_COMMANDS = ("Close", "Open")  # bo ZNAM/ONAM
SHUTTER_STATES = ("Closed", "Open")  # bi


def shutter_group(command_pv: str, status_pv: str, delay_s: float) -> PVGroup:
    """A bo command and a bi status; the status follows the last command ``delay_s`` later."""

    class Shutter(PVGroup):
        command = pvproperty(name=command_pv, value="Close", dtype=ChannelType.ENUM, enum_strings=SHUTTER_COMMANDS,
                             record="bo", doc="shutter command: Close / Open")
        status = pvproperty(name=status_pv, value="Closed", dtype=ChannelType.ENUM, enum_strings=SHUTTER_STATES,
                            record="bi", read_only=True, doc="shutter position: Closed / Open")

        _pending: asyncio.Task | None = None

        @command.putter
        async def command(self, instance, value):
            target = SHUTTER_STATES[SHUTTER_COMMANDS.index(value) if isinstance(value, str) else int(value)]
            if self._pending is not None:
                self._pending.cancel()  # a newer command wins over one still moving
            self._pending = asyncio.get_running_loop().create_task(self._actuate(target))
            return value

        async def _actuate(self, target: str) -> None:
            await asyncio.sleep(delay_s)
            await self.status.write(target)

        def is_open(self) -> bool:
            return self.status.value in ("Open", 1)

    return Shutter(prefix="")


OPTICS_UNITS = {"energy": "eV", "detector_distance": "m"}


def optics_group(description: BeamlineDescription) -> PVGroup:
    """One ao record per optics value; a write the zone-plate model would refuse is refused."""
    d, zp = description, description.ioc.zone_plate
    initial = {
        "energy": d.ioc.energy_eV, "zone_plate_diameter": zp.diameter_m, "outer_zone_width": zp.outer_zone_width_m,
        "central_stop_diameter": zp.central_stop_diameter_m, "defocus": zp.defocus_m,
        "detector_distance": d.detector.geometry.distance_m,
    }
    ns = {
        attr: pvproperty(name=d.pv(getattr(d.optics, attr)), value=float(value), record="ao",
                         units=OPTICS_UNITS.get(attr, "m"), precision=3 if attr == "energy" else 12)
        for attr, value in initial.items()
    }

    class Optics(PVGroup):
        def values(self) -> dict[str, float]:
            return {attr: float(getattr(self, attr).value) for attr in initial}

        async def group_write(self, instance, value):
            values = {**self.values(), instance.pvspec.attr: float(value)}
            optics_model(values)  # raises ValueError: the put fails and the value stays
            return value

    return type("Optics", (Optics,), ns)(prefix="")


def optics_model(values: dict[str, float]) -> tuple[float, ZonePlateOptics, float]:
    """(energy eV, zone plate, detector distance m) from the optics PVs' values, or ValueError."""
    if not (values["energy"] > 0 and values["detector_distance"] > 0):
        raise ValueError(f"energy and detector distance must be > 0, got {values['energy']} eV, "
                         f"{values['detector_distance']} m")
    zp = ZonePlateOptics(diameter_m=values["zone_plate_diameter"], outer_zone_width_m=values["outer_zone_width"],
                         central_stop_diameter_m=values["central_stop_diameter"], defocus_m=values["defocus"])
    return values["energy"], zp, values["detector_distance"]


def simulating(description: BeamlineDescription, config: SimConfig) -> BeamlineDescription:
    """The description with the start values (energy, zone plate, exposure, detector) ``config`` simulates,
    so the optics PVs hold what the simulation was built with and the first frame does not rebuild it."""
    data = description.model_dump()
    data["ioc"].update(energy_eV=config.energy_eV, zone_plate=config.optics.model_dump(), exposure_s=config.exposure_s)
    data["detector"]["geometry"] = config.detector.model_dump()
    return BeamlineDescription.model_validate(data)


class BeamlineIOC:
    """Every PV of the description, served by one process; ``pvdb`` is what caproto runs."""

    def __init__(self, description: BeamlineDescription | None = None, *, rate_hz: float = 10.0, seed: int = 0,
                 image: np.ndarray | None = None, config: SimConfig | None = None, draw_ahead: bool = True):
        """``config`` (the demo's): simulate exactly that experiment (seed, sample, scan, noise); its energy,
        zone plate, exposure and detector replace the description's start values. Else the description's."""
        d = description or BeamlineDescription()
        if config is not None:
            d = simulating(d, config)
        self.description = d
        ioc = d.ioc
        self.config = config or SimConfig(energy_eV=ioc.energy_eV, exposure_s=ioc.exposure_s, seed=seed,
                                          detector=d.detector.geometry, optics=ioc.zone_plate)
        self._image = image
        limits = (ioc.low_limit_m, ioc.high_limit_m)
        axes = {
            axis: MotorRecord(d.pv(getattr(d.stage, axis)), desc=f"sample {axis}", velocity=ioc.velocity_m_s,
                              acceleration=ioc.acceleration_s, limits=limits)
            for axis in ("y", "x")
        }
        self.shutter = shutter_group(d.pv(d.shutter.command), d.pv(d.shutter.status), ioc.shutter_delay_s)
        self.optics = optics_group(d)
        self.prerendered = Prerendered(PtychoSimulation(self.config, image=image))
        self.source = SimulationSource(self.prerendered, SimpleNamespace(**axes))
        self._axes = axes
        self._ahead: asyncio.TimerHandle | None = None
        for axis in axes.values():
            axis.on_move = self._draw_ahead if draw_ahead else None
        self.hdf = HDF5FilePlugin(d.hdf_prefix, shape=self.source.geometry.raw_shape)
        self.faults = fault_group(d, on_disk_full=self.hdf.set_disk_full)
        period = 1.0 / rate_hz if rate_hz > 0 else 0.0
        self.cam = FCCDCam(d.cam_prefix, source=FaultySource(self.source, self.faults), hdf=self.hdf,
                           light=self.shutter.is_open, prepare=self._follow_optics, after_frame=self.faults.publish,
                           exposure_s=min(ioc.exposure_s, period or ioc.exposure_s), period_s=period)
        self.pvdb: dict = {}
        for group in (*axes.values(), self.shutter, self.optics, self.faults, self.cam, self.hdf):
            self.pvdb.update(group.pvdb)

    def _follow_optics(self) -> None:
        """In the detector's worker thread, before a frame: rebuild the simulation if an optics PV changed."""
        energy, zp, distance = optics_model(self.optics.values())
        cfg = self.config
        if (energy, zp, distance) == (cfg.energy_eV, cfg.optics, cfg.detector.distance_m):
            return
        detector = cfg.detector.model_copy(update={"distance_m": distance})
        self.config = SimConfig.model_validate({**cfg.model_dump(), "energy_eV": energy, "optics": zp.model_dump(),
                                                "detector": detector.model_dump()})
        sim = PtychoSimulation(self.config, image=self._image)
        self.prerendered = Prerendered(sim)
        self.source.sim, self.source.geometry = self.prerendered, sim.geom

    #: a plan writes both axes' VAL back to back: the frame is drawn for both targets, not for each
    DRAW_AHEAD_AFTER_S = 0.003

    def _draw_ahead(self) -> None:
        """In the IOC's loop, when a move starts: soon, draw the light frame the next trigger will take
        (``prerender.py``), unless a frame is being taken or the shutter is closed (a dark frame is cheap)."""
        if self._ahead is not None:
            self._ahead.cancel()
        self._ahead = asyncio.get_running_loop().call_later(self.DRAW_AHEAD_AFTER_S, self._submit_ahead)

    def _submit_ahead(self) -> None:
        cam = self.cam
        if cam.acquiring or not self.shutter.is_open() or self.faults.dumped:
            return
        where = (self._axes["y"].target, self._axes["x"].target)
        cam.in_worker(self._draw, where, cam.frames, cam.get("AcquireTime"))

    def _draw(self, where, frame_index: int, exposure_s: float) -> None:
        """In the detector's worker thread; a newer move queued behind this one makes it pointless: skipped."""
        if where != (self._axes["y"].target, self._axes["x"].target) or frame_index != self.cam.frames:
            return
        self._follow_optics()  # the simulation the frame will be drawn with
        self.prerendered.draw(where, frame_index, exposure_s)

    def serve(self, *, port: int | None = None, interfaces: Sequence[str] = ("127.0.0.1",)) -> None:
        """Serve until interrupted; prints one JSON line ``{"ioc": "ready", ...}`` once it answers."""
        if port is not None:  # caproto reads these when the server starts: search (UDP) and first TCP port
            os.environ.update({k: v for k, v in server_env(port).items() if "SERVER_PORT" in k})
        if all(i.startswith("127.") for i in interfaces):  # beacons stay on loopback too
            for key, value in server_env(0).items():
                if "BEACON" in key:
                    os.environ.setdefault(key, value)
        import caproto.server.common as ca_common
        from caproto.asyncio.server import Context

        # caproto holds back a monitor update that follows another within this time, to batch them: 10 ms by
        # default, which every stage move and frame paid twice. A few updates a millisecond apart is our load.
        ca_common.HIGH_LOAD_TIMEOUT = min(ca_common.HIGH_LOAD_TIMEOUT, 0.001)

        async def main() -> None:
            ctx = Context(self.pvdb, list(interfaces))

            async def ready(async_lib) -> None:
                # Nagle off, as EPICS servers have it: asyncio sets TCP_NODELAY only on sockets whose proto says
                # TCP, which caproto's are not, and a monitor update then waited for the client's delayed ACK
                # (about 40 ms: a 1 um stage move took 58 ms instead of 11). Accepted sockets inherit it.
                for sock in ctx.tcp_sockets.values():
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await asyncio.sleep(0.1)  # the records' start-up values are in place
                said = {"ioc": "ready", "pvs": len(self.pvdb), "port": ctx.ca_server_port, "tcp_port": ctx.port,
                        "interfaces": list(interfaces), "prefix": self.description.prefix}
                print(json.dumps(said), flush=True)

            await ctx.run(startup_hook=ready)

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            pass
        finally:
            self.cam.close()
            logging.getLogger(__name__).info("stopped after %d frames; %d drawn ahead, %d of them taken",
                                             self.cam.frames, self.prerendered.drawn_ahead, self.prerendered.hits)
            if gaps := sorted(self.cam.trigger_gaps):
                logging.getLogger(__name__).info(
                    "the next trigger came %.1f ms (median), %.1f ms (90 %%), %.1f ms (99 %%) after a frame's end; "
                    "%d of %d too late to keep the period", 1e3 * gaps[len(gaps) // 2], 1e3 * gaps[int(len(gaps) * 0.9)],
                    1e3 * gaps[int(len(gaps) * 0.99)], self.cam.late_triggers, self.cam.triggers)
            sys.stdout.flush()
