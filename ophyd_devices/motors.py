"""Simulated piezo sample stage: two axes with limits, velocity, settle time and readback jitter.

A real stage never lands exactly on its setpoint; ptychography needs the readback,
so every move draws a seeded jitter and the readback is what gets recorded (and what
the simulated detector uses to place the probe).
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
    jitter = Cpt(Signal, value=2e-9, kind="config", doc="rms readback error, m")
    low_limit = Cpt(Signal, value=-50e-6, kind="config")
    high_limit = Cpt(Signal, value=50e-6, kind="config")
    user_offset = Cpt(_UserOffset, value=0.0, kind="config", doc="user = dial + offset, m")

    egu = "m"

    def __init__(self, prefix: str = "", *, name: str, seed: int = 0, **kwargs):
        super().__init__(prefix, name=name, **kwargs)
        self.readback.name = self.name
        self._rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        self._lock = threading.Lock()

    @property
    def position(self) -> float:
        return self.readback.get()

    @property
    def dial_position(self) -> float:
        """Where the axis itself is (its encoder), whatever the user offset says."""
        return self.readback.get() - self.user_offset.get()

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
        duration = abs(value - start) / self.velocity.get() + self.settle_time.get()

        def arrive() -> None:
            self.readback.put(landed)
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
