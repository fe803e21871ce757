"""Faults on demand over Channel Access: the in-process simulator's faults, switched by PVs of the IOC.

Adaptive acquisition and the RunEngine's recovery must be testable over EPICS as they are in process
(:mod:`ns_bluesky.sim.faults`), so the IOC serves one PV per fault, named by the description's ``faults``
section (a real beamline has none of these):

- ``BeamLoss``, ``DroppedPackets``, ``Saturation`` (longout): the next N light frames come out spoiled as the
  simulator spoils them (no photons, a band of zero rows, a band at full scale); each counts down as its
  frames are taken, so one put mid-scan spoils exactly N frames, unannounced, as on a beamline;
- ``DriftY``/``DriftX`` (ao, m): the sample slips on the stage by this much, unseen by the encoders: frames
  are rendered at the motor records' dial position plus the drift from the next frame on;
- ``BeamDump`` (bo): the beam is gone (the beam-present bi reads 0 and light frames are dark) until it is 0
  again: what the RunEngine's suspenders watch;
- ``DiskFull`` (bo): the HDF5 plugin's disk reads as full (FilePathExists_RBV No, WriteStatus/WriteMessage
  say so, frames are not filed).
"""

from __future__ import annotations

import threading

import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

from ns_bluesky.instrument.beamline import BeamlineDescription
from ns_bluesky.sim.faults import Faults, StageDrift

BEAM_STATES = ("Lost", "Present")  # the beam-present bi
SWITCH = ("Off", "On")  # the fault bo records
COUNTED = ("beam_loss", "dropped_packets", "saturation")


def fault_group(description: BeamlineDescription, *, on_disk_full) -> PVGroup:
    """The fault PVs and the beam-present PV; ``on_disk_full(flag)`` (a coroutine) tells the file plugin."""
    d, f = description, description.faults

    def counter(attr: str) -> pvproperty:
        return pvproperty(name=d.pv(getattr(f, attr)), value=0, dtype=int, record="longout",
                          doc=f"{attr}: light frames still to spoil")

    def switch(attr: str) -> pvproperty:
        return pvproperty(name=d.pv(getattr(f, attr)), value="Off", dtype=ChannelType.ENUM, enum_strings=SWITCH,
                          record="bo")

    ns = {attr: counter(attr) for attr in COUNTED}
    ns.update({
        "drift_y": pvproperty(name=d.pv(f.drift_y), value=0.0, record="ao", units="m", precision=12),
        "drift_x": pvproperty(name=d.pv(f.drift_x), value=0.0, record="ao", units="m", precision=12),
        "beam_dump": switch("beam_dump"),
        "disk_full": switch("disk_full"),
        "beam_present": pvproperty(name=d.pv(d.beam.present), value="Present", dtype=ChannelType.ENUM,
                                   enum_strings=BEAM_STATES, record="bi", read_only=True),
    })

    group = type("FaultPVs", (FaultSwitches,), ns)(prefix="")
    group._on_disk_full = on_disk_full
    return group


def _on(value) -> bool:
    return value in (1, "On")


class FaultSwitches(PVGroup):
    """What the fault PVs hold, for the detector's worker thread (``take``) and the IOC's loop (``publish``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._pending = dict.fromkeys(COUNTED, 0)  # the worker's copy of the counters
        self._drift = np.zeros(2)
        self.dumped = False

    async def group_write(self, instance, value):
        attr = instance.pvspec.attr
        if attr in COUNTED:
            if value < 0:
                raise ValueError(f"{instance.pvname}: a number of frames >= 0, got {value}")
            with self._lock:
                self._pending[attr] = int(value)
        elif attr in ("drift_y", "drift_x"):
            if not np.isfinite(value):
                raise ValueError(f"{instance.pvname}: a finite drift in metres, got {value}")
            with self._lock:
                self._drift[0 if attr == "drift_y" else 1] = float(value)
        elif attr == "beam_dump":
            self.dumped = _on(value)
            await self.beam_present.write("Lost" if self.dumped else "Present")
        elif attr == "disk_full":
            await self._on_disk_full(_on(value))
        return value

    def take(self, light_frame: int) -> Faults | None:
        """In the worker thread, before light frame ``light_frame``: its faults, the counters counted down."""
        with self._lock:
            hit = {attr: n > 0 for attr, n in self._pending.items()}
            for attr, spoiled in hit.items():
                self._pending[attr] -= int(spoiled)
            drift = self._drift.copy()
        if not any(hit.values()) and not drift.any():
            return None
        frame = [light_frame]
        return Faults.make(beam_loss=frame if hit["beam_loss"] else (),
                           dropped_packets=frame if hit["dropped_packets"] else (),
                           saturation=frame if hit["saturation"] else (),
                           drift=StageDrift(start=0, jump_m=(float(drift[0]), float(drift[1]))) if drift.any() else None)

    async def publish(self) -> None:
        """In the IOC's loop, after a frame: the counters as the worker left them."""
        with self._lock:
            pending = dict(self._pending)
        for attr, n in pending.items():
            channel = getattr(self, attr)
            if channel.value != n:
                await channel.write(n, verify_value=False)


class FaultySource:
    """The simulation source with the fault PVs applied: what the IOC's detector renders."""

    def __init__(self, source, faults: FaultSwitches):
        self.source, self.faults = source, faults

    @property
    def geometry(self):
        return self.source.geometry

    def render(self, frame_index: int, exposure_s: float, light: bool) -> np.ndarray:
        light = light and not self.faults.dumped  # no beam: a dark frame, whatever the shutter says
        if light:
            self.source.faults = self.faults.take(self.source.light_frames)
        return self.source.render(frame_index, exposure_s, light)
