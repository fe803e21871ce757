"""Simulated piezo sample stage: two axes with limits, velocity, settle time, settling jitter and encoder noise.

A real stage never lands exactly on its setpoint, and its encoder never reads exactly
where it landed. Every move draws (seeded) a settling error, so the axis comes to rest a
few nm off the setpoint (a raster is no perfect lattice), and an encoder error, so the
readback, which is what gets recorded, is a few nm off where the axis really is. The
simulated detector renders the frame where the axis really is (``true_dial_position``):
what the reconstruction is given differs from the truth by the encoder noise, which
position refinement has to find.
"""

from __future__ import annotations

import threading
import zlib

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus
from ophyd.utils import LimitError

from . import clock

#: moves shorter than this finish inside ``set`` instead of on the motion clock
_SYNC_MOVE_S = 5e-4


class _UserOffset(Signal):
    """The axis's user offset (an EPICS motor record's OFF): user = dial + offset. Changing it moves the
    user readback, not the axis, which is how a drift correction is applied."""

    def put(self, value, **kwargs):
        old = self.get()
        super().put(float(value), **kwargs)
        parent = self.parent
        if parent is not None and old is not None:
            parent.readback.put(parent.readback.get() + float(value) - old)


class SimMotor(Device):
    """One stage axis in metres; ``set`` returns a status that finishes after the move and settle time.

    Positions are user coordinates, ``dial + user_offset``; with the default offset 0 they are the dial.
    """

    readback = Cpt(Signal, value=0.0, kind="hinted")
    setpoint = Cpt(Signal, value=0.0, kind="normal")
    velocity = Cpt(Signal, value=1e-3, kind="config", doc="m/s")
    settle_time = Cpt(Signal, value=1e-3, kind="config", doc="s after arrival")
    jitter = Cpt(Signal, value=2e-9, kind="config", doc="rms settling error: where the axis comes to rest is off the setpoint by this, m")
    encoder_noise = Cpt(Signal, value=2e-9, kind="config", doc="rms encoder error: the readback is off where the axis is by this, m")
    low_limit = Cpt(Signal, value=-50e-6, kind="config")
    high_limit = Cpt(Signal, value=50e-6, kind="config")
    user_offset = Cpt(_UserOffset, value=0.0, kind="config", doc="user = dial + offset, m")

    egu = "m"

    def __init__(self, prefix: str = "", *, name: str, seed: int = 0, **kwargs):
        super().__init__(prefix, name=name, **kwargs)
        self.readback.name = self.name
        self._rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        self._lock = threading.Lock()
        self._true_dial = 0.0  # where the axis really is (dial coordinates); the readback adds the encoder's error

    @property
    def position(self) -> float:
        return self.readback.get()

    @property
    def dial_position(self) -> float:
        """Where the encoder says the axis itself is, whatever the user offset says."""
        return self.readback.get() - self.user_offset.get()

    @property
    def true_dial_position(self) -> float:
        """Where the axis really is, in dial coordinates: the readback's dial position less the encoder's error.
        Only a simulation knows it; the simulated detector renders the frame there."""
        return self._true_dial

    @property
    def true_position(self) -> float:
        """Where the axis really is, in user coordinates (what a perfect encoder would read)."""
        return self._true_dial + self.user_offset.get()

    @property
    def limits(self) -> tuple[float, float]:
        return self.low_limit.get(), self.high_limit.get()

    def check_value(self, value: float) -> None:
        """Raise ``LimitError`` naming the axis and its limits for a target outside them."""
        lo, hi = self.limits
        if not np.isfinite(value) or not lo <= value <= hi:
            raise LimitError(f"{self.name}: target {value!r} m is outside the limits [{lo}, {hi}] m")

    def set(self, value: float, **kwargs) -> DeviceStatus:
        value = float(value)
        self.check_value(value)
        status = DeviceStatus(self)
        with self._lock:
            start = self.readback.get()
            self.setpoint.put(value)
            landed = value + self._rng.normal(0.0, self.jitter.get()) if self.jitter.get() > 0 else value
            read = landed + self._rng.normal(0.0, self.encoder_noise.get()) if self.encoder_noise.get() > 0 else landed
            offset = self.user_offset.get()
        duration = abs(value - start) / self.velocity.get() + self.settle_time.get()

        def arrive() -> None:
            self._true_dial = landed - offset
            self.readback.put(read)
            status.set_finished()

        if duration < _SYNC_MOVE_S:
            arrive()
        else:
            clock.after(duration, arrive)
        return status

    def stop(self, *, success: bool = False) -> None:
        """Moves are short timed waits; nothing to halt, the readback stays where it lands."""


class LimitCheckedStage:
    """``check_positions`` for a stage whose ``y`` and ``x`` axes have ``limits``: the simulated stage's and
    the EPICS stage's, so a scan past the limits is refused the same way, and before it starts, on either."""

    def check_positions(self, positions_yx: np.ndarray) -> None:
        """Fail before a scan starts if any planned point lies outside the axis limits."""
        pos = np.asarray(positions_yx, dtype=float)
        for col, axis in ((0, self.y), (1, self.x)):
            lo, hi = axis.limits
            bad = np.flatnonzero((pos[:, col] < lo) | (pos[:, col] > hi) | ~np.isfinite(pos[:, col]))
            if bad.size:
                i = int(bad[0])
                raise LimitError(
                    f"{axis.name}: point {i} at {pos[i, col]:.3e} m (and {bad.size - 1} more) is outside "
                    f"the stage limits [{lo:.3e}, {hi:.3e}] m; shrink the scan or move its centre"
                )


class SampleStage(LimitCheckedStage, Device):
    """The scanned sample: ``x`` horizontal, ``y`` vertical, both in metres."""

    x = Cpt(SimMotor, "", kind="hinted")
    y = Cpt(SimMotor, "", kind="hinted")

    def __init__(self, prefix: str = "", *, name: str, seed: int = 0, **kwargs):
        super().__init__(prefix, name=name, **kwargs)
        for axis in (self.x, self.y):
            axis._rng = np.random.default_rng([seed, 1 if axis is self.x else 2])
