"""Simulated FCCD: an ophyd Device that exposes, reads out raw frames and files them in HDF5.

Assembled from collaborators, as ophyd-async's detectors are: a *frame source* says
what the sensor sees (the physics simulation at the stage's readback, or replayed
frames), an :class:`HDF5FrameWriter` files the frames and composes their documents.
The device itself keeps time, like a free-running camera: frames end on a clock of
``acquire_period`` seconds (0 = as fast as the source renders). A trigger that comes
less than one period after the last frame ended is done one period after that end,
so the RunEngine's own overhead between points does not lower the rate: ``--rate 10``
gives 10 frames/s.
"""

from __future__ import annotations

import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus

from ns_bluesky.errors import DeviceError, DiskFullError
from ns_bluesky.instrument.detector import DetectorGeometry
from ns_bluesky.sim import PtychoSimulation
from ns_bluesky.sim.faults import Faults

from ..io.frame_writer import HDF5FrameWriter
from .detector_settings import check_exposure_and_period


class FrameSource(Protocol):
    """What the sensor sees; ``render`` must return a raw frame of ``geometry.raw_shape`` uint16."""

    geometry: DetectorGeometry

    def render(self, frame_index: int, exposure_s: float, light: bool) -> np.ndarray: ...


class SimulationSource:
    """Frames from the physics model, at the position the stage actually reached.

    ``faults`` (:class:`ns_bluesky.sim.faults.Faults`) spoils scheduled light frames
    (dropped packets, beam loss, saturation) and lets the sample drift on the stage: the
    frame is rendered where the sample really is, the stage's true dial position (not its
    encoder's reading) plus the drift, while the stage reports its own readback.
    """

    def __init__(self, sim: PtychoSimulation, stage, faults: Faults | None = None):
        self.sim, self.stage, self.geometry = sim, stage, sim.geom
        self.faults = faults
        self.light_frames = 0  # light frames rendered: the faults' clock

    def render(self, frame_index: int, exposure_s: float, light: bool) -> np.ndarray:
        if not light:
            return self.sim.raw_frame(None, frame_index, exposure_s)
        axes = (self.stage.y, self.stage.x)
        translation = np.array([getattr(a, "true_dial_position", getattr(a, "dial_position", a.position)) for a in axes])
        faults, k = self.faults, self.light_frames
        self.light_frames += 1
        if faults is None:
            return self.sim.raw_frame(translation, frame_index, exposure_s)
        lit = None if k in faults.beam_loss else translation + faults.drift_m(k)
        return faults.spoil(self.sim.raw_frame(lit, frame_index, exposure_s), k, self.geometry)


class ReplaySource:
    """Cycle through pre-rendered frames: for benchmarks of the acquisition stack alone."""

    def __init__(self, light_frames: np.ndarray, dark_frames: np.ndarray, geometry: DetectorGeometry):
        self.light, self.dark, self.geometry = light_frames, dark_frames, geometry

    def render(self, frame_index: int, exposure_s: float, light: bool) -> np.ndarray:
        bank = self.light if light else self.dark
        return bank[frame_index % len(bank)]


class _ExplainedStatus(DeviceStatus):
    """A status whose text carries its failure, so the run's stop document says why it failed."""

    def __repr__(self) -> str:
        text = super().__repr__()
        exc = self.exception(timeout=0) if self.done else None
        return f"{text}: {exc}" if exc is not None else text

    __str__ = __repr__


class SimFCCD(Device):
    """Fast CCD with COSMIC's raw 1040 x 1152 readout; frames go to HDF5, never into events."""

    acquire_time = Cpt(Signal, value=0.1, kind="config", doc="exposure, s")
    acquire_period = Cpt(Signal, value=0.1, kind="config", doc="wall-clock frame period, s (0: free-run)")
    frame_counter = Cpt(Signal, value=0, kind="normal", doc="frames acquired since the device was made")
    mode = Cpt(Signal, value="dark", kind="normal", doc="'dark' with the shutter closed, else 'light'")

    #: longest a single frame may take before the trigger fails instead of hanging the scan
    trigger_timeout_s = 30.0

    def __init__(self, prefix: str = "", *, name: str, source: FrameSource, write_dir: str | Path, shutter=None, **kwargs):
        super().__init__(prefix, name=name, **kwargs)
        self.source, self.shutter = source, shutter
        self.geometry: DetectorGeometry = source.geometry
        self.writer = HDF5FrameWriter(write_dir, self.image_key, self.geometry.raw_shape)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-readout")
        self._counter = itertools.count()
        self._last_frame_end = -float("inf")

    @property
    def image_key(self) -> str:
        return f"{self.name}_image"

    def validate_settings(self) -> None:
        """Exposure and period must make sense before any run opens."""
        check_exposure_and_period(self.name, self.acquire_time.get(), self.acquire_period.get())

    def check_room(self, frames: int) -> None:
        """``DiskFullError`` before a run opens when its ``frames`` do not fit on the frames' disk."""
        self.writer.check_room(frames)

    def stage(self):
        self.validate_settings()
        self.writer.open()
        return super().stage()

    def unstage(self):
        try:
            # a frame still being read out belongs to this run's file, not the next one's
            self._executor.submit(lambda: None).result(timeout=self.trigger_timeout_s)
            return super().unstage()
        finally:
            self.writer.close()

    def trigger(self) -> DeviceStatus:
        status = _ExplainedStatus(self, timeout=self.trigger_timeout_s + self.acquire_period.get())
        light = self.shutter is None or self.shutter.is_open
        exposure, period = self.acquire_time.get(), self.acquire_period.get()
        now = time.monotonic()
        start = self._last_frame_end if 0 <= now - self._last_frame_end < period else now
        end = start + period
        self._last_frame_end = end
        index = next(self._counter)

        def acquire() -> None:
            try:
                self.writer.write(self.source.render(index, exposure, light))
                remaining = end - time.monotonic()
                if remaining > 0:
                    time.sleep(remaining)
                self.mode.put("light" if light else "dark")
                self.frame_counter.put(index + 1)
            except DiskFullError as exc:  # its own words: which disk, what was kept
                status.set_exception(exc)
            except Exception as exc:  # reported through the status: the RunEngine fails the run, never hangs
                status.set_exception(DeviceError(f"{self.name}: frame {index} failed: {exc!r}"))
            else:
                status.set_finished()

        self._executor.submit(acquire)
        return status

    def describe(self) -> dict:
        d = super().describe()
        d[self.image_key] = {
            "source": f"sim:{self.name}",
            "dtype": "array",
            "shape": list(self.geometry.raw_shape),
            "dtype_numpy": "<u2",
            "external": "STREAM:",
        }
        return d

    def collect_asset_docs(self):
        yield from self.writer.collect_docs()
