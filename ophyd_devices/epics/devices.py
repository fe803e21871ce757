"""The stage, shutter and optics over Channel Access, on stock Ophyd classes, with the simulated devices' interface.

The plans were written against the simulated devices; these keep their interface so the plans run unchanged:
the stage has ``y``/``x`` axes (``EpicsMotor``: readback named ``stage_y``, ``user_offset`` = the record's OFF,
which the adaptive drift correction writes) and ``check_positions``; the shutter takes ``"open"``/``"close"``
and has ``is_open``; the optics have ``energy``, ``diameter``, ``outer_zone_width``, ``central_stop_diameter``
and ``defocus``. PV names come from the beamline description.
"""

from __future__ import annotations

import logging

import numpy as np
from ophyd import Device, EpicsMotor, EpicsSignal, EpicsSignalRO
from ophyd import FormattedComponent as FCpt
from ophyd.positioner import PositionerBase
from ophyd.status import MoveStatus, SubscriptionStatus
from ophyd.status import wait as status_wait
from ophyd.utils import LimitError

from ns_bluesky.errors import ParameterError
from ns_bluesky.instrument.beamline import BeamlineDescription

from ..motors import LimitCheckedStage
from .waits import WRITE_TIMEOUT_S, DisconnectGuard, check_connected

log = logging.getLogger(__name__)

#: longest a single stage move or shutter actuation may take before its status fails instead of waiting forever
MOTION_TIMEOUT_S = 60.0
#: longest a restarted IOC's PV may take to reconnect when a resumed run needs it
RECONNECT_TIMEOUT_S = 30.0

__all__ = ["EpicsAxis", "EpicsOptics", "EpicsShutter", "EpicsStage", "make_optics", "make_shutter", "make_stage"]


class EpicsAxis(EpicsMotor):
    """A motor record; its limits are the record's HLM/LLM as monitored, not the control limits Ophyd
    cached at connection (those are refreshed only on some limit changes; see shared/reference/epics.md)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.guard = DisconnectGuard(self.name, self.motor_done_move)
        self._offset_at_pause: float | None = None
        # OFF as last seen while the IOC answered: by the time a suspension calls pause() the IOC may be gone
        # already (its loss is what suspended the run), and a disconnected signal no longer tells its value
        self._offset_seen: float | None = None
        self.user_offset.subscribe(self._see_offset, run=True)
        self._sent_to: float | None = None  # the target of this client's last move that ended well

    def _see_offset(self, value=None, **kwargs) -> None:
        if value is not None and np.isfinite(value):
            self._offset_seen = float(value)

    @property
    def limits(self) -> tuple[float, float]:
        return self.low_limit_travel.get(), self.high_limit_travel.get()

    def move(self, position, wait: bool = True, **kwargs):
        """``EpicsMotor.move``, refused in one line if the IOC is gone, and failed at once if it goes.

        An axis that this client's last move took to the same target, and that rests there (VAL and RBV there,
        DMOV=1, as monitored), is not sent again: over Channel Access each move costs a put, the record's
        processing and the DMOV, MOVN and RBV monitors, and a raster moves y only once a row (20 x 20 at 10 Hz:
        issuing the y move took 3.8 ms of each point at the median, 1.0 ms with this). A pause, a stop or a
        failed move forgets the target: after a suspension (an IOC restarted) the first move is always made."""
        check_connected(self.name, self.user_setpoint)
        if self._sent_to is not None and self._sent_to == position and self._at_rest_on(position):
            self.check_value(position)
            status = MoveStatus(self, position)
            status.set_finished()
            return status
        self._sent_to = None
        status = self.guard.watch(super().move(position, wait=False, **kwargs))
        status.add_callback(lambda st, target=position: setattr(self, "_sent_to", target if st.success else None))
        if wait:
            status_wait(status)
        return status

    #: readback within this of the target counts as there (float round-off of the record's dial + OFF)
    AT_TARGET_M = 1e-12

    def _at_rest_on(self, position) -> bool:
        try:
            target = float(position)
            return (self.motor_done_move.get() == 1 and self.user_setpoint.get() == target
                    and abs(self.user_readback.get() - target) <= self.AT_TARGET_M)
        except Exception:  # anything unclear: move as usual
            return False

    def stop(self, *, success: bool = False) -> None:
        """STOP the record if it answers; the pending move ends either way (a suspension stops every axis,
        and a move left pending would time out later and fail the resumed run)."""
        try:
            self.motor_stop.put(1, wait=False)
        except Exception as exc:  # the IOC is gone: nothing to stop there
            log.warning("%s: could not STOP the motor record: %s", self.name, exc)
        self._sent_to = None
        PositionerBase.stop(self, success=success)

    def pause(self) -> None:
        """Remember OFF for resume(). A second suspension before the first resumed (the restarted IOC's PVs
        reconnecting one by one can trip a suspender again) keeps the first value: by then the monitor
        may already show the new IOC's 0, and remembering that would put back nothing."""
        self._sent_to = None
        if self._offset_at_pause is None:
            self._offset_at_pause = self._offset_seen

    def resume(self) -> None:
        """Put back the user offset (a drift correction) if a restarted IOC lost it, as autosave would."""
        offset, self._offset_at_pause = self._offset_at_pause, None
        self._sent_to = None
        if offset is None:
            return
        # the suspender resumed on the shutter or beam PV: this axis's PVs reconnect one by one after it (libca's
        # search back-off; 10 s was not enough at load 48 in the test suite)
        self.user_offset.wait_for_connection(timeout=RECONNECT_TIMEOUT_S)
        if self.user_offset.get(use_monitor=False) != offset:
            log.warning("%s: the IOC lost the user offset; putting back %g", self.name, offset)
            self.user_offset.set(offset).wait(WRITE_TIMEOUT_S)

    @property
    def dial_position(self) -> float:
        return self.position - self.user_offset.get()

    def check_value(self, value: float) -> None:
        """``LimitError`` naming the axis and its limits for a target outside them (before anything moves)."""
        lo, hi = self.limits
        if not (np.isfinite(value) and lo <= value <= hi):
            raise LimitError(f"{self.name}: target {value!r} {self.egu} is outside the limits [{lo}, {hi}]")


class EpicsStage(LimitCheckedStage, Device):
    """The scanned sample: ``y`` vertical, ``x`` horizontal, one motor record each, in metres."""

    y = FCpt(EpicsAxis, "{prefix}{_y_record}", kind="hinted")
    x = FCpt(EpicsAxis, "{prefix}{_x_record}", kind="hinted")

    def __init__(self, prefix: str = "", *, y_record: str, x_record: str, name: str, **kwargs):
        self._y_record, self._x_record = y_record, x_record
        super().__init__(prefix, name=name, **kwargs)
        for axis in (self.y, self.x):
            axis._timeout = MOTION_TIMEOUT_S

    def check_units(self) -> None:
        """The plans position in metres: refuse motor records in other units rather than scale silently."""
        for axis in (self.y, self.x):
            egu = axis.egu
            if egu != "m":
                raise ParameterError(
                    f"{axis.name} ({axis.prefix}) reports EGU {egu!r}; the plans position the stage in metres: "
                    "configure the motor record in metres (EGU m)"
                )


_OPEN, _CLOSE = {"open", "opened", 1}, {"close", "closed", 0}


class EpicsShutter(Device):
    """A bo command and a bi status; ``set("open")`` finishes when the status reads open."""

    command = FCpt(EpicsSignal, "{prefix}{_command_pv}", kind="omitted")
    status = FCpt(EpicsSignalRO, "{prefix}{_status_pv}", kind="normal", auto_monitor=True)

    def __init__(self, prefix: str = "", *, command_pv: str, status_pv: str, name: str, **kwargs):
        self._command_pv, self._status_pv = command_pv, status_pv
        super().__init__(prefix, name=name, **kwargs)
        self.guard = DisconnectGuard(self.name, self.status)
        self.commanded: int | None = None  # the last command: what a restarted IOC is told again on resume

    @property
    def is_open(self) -> bool:
        return self.status.get() == 1

    def set(self, value, **kwargs) -> SubscriptionStatus:
        key = value.lower() if isinstance(value, str) else value
        if key in _OPEN:
            target = 1
        elif key in _CLOSE:
            target = 0
        else:
            raise ParameterError(f"{self.name}: unknown shutter command {value!r}; use 'open' or 'close'")
        check_connected(self.name, self.command)
        status = SubscriptionStatus(self.status, lambda *, value, **kw: value == target, timeout=MOTION_TIMEOUT_S)
        self.guard.watch(status)
        self.command.put(target, wait=False)
        self.commanded = target
        return status

    def stop(self, *, success: bool = False) -> None:
        """A suspension stops what moved: the actuation in flight is abandoned (it is commanded again)."""
        self.guard.abandon()

    def resume(self) -> None:
        """After a suspension: command again what was commanded, if the status (a restarted IOC) differs."""
        if self.commanded is None:
            return
        self.status.wait_for_connection(timeout=WRITE_TIMEOUT_S)
        if self.status.get(use_monitor=False) != self.commanded:
            log.warning("%s: not as commanded after the suspension; commanding it again", self.name)
            self.set(self.commanded).wait(MOTION_TIMEOUT_S)


class EpicsOptics(Device):
    """Photon energy (eV) and zone-plate geometry (m) as their PVs hold them; recorded as configuration."""

    energy = FCpt(EpicsSignal, "{prefix}{_pvs[energy]}", kind="config")
    diameter = FCpt(EpicsSignal, "{prefix}{_pvs[zone_plate_diameter]}", kind="config")
    outer_zone_width = FCpt(EpicsSignal, "{prefix}{_pvs[outer_zone_width]}", kind="config")
    central_stop_diameter = FCpt(EpicsSignal, "{prefix}{_pvs[central_stop_diameter]}", kind="config")
    defocus = FCpt(EpicsSignal, "{prefix}{_pvs[defocus]}", kind="config")

    def __init__(self, prefix: str = "", *, pvs: dict[str, str], name: str, **kwargs):
        self._pvs = pvs
        super().__init__(prefix, name=name, **kwargs)


def make_stage(d: BeamlineDescription, name: str = "stage") -> EpicsStage:
    return EpicsStage(d.prefix, y_record=d.stage.y, x_record=d.stage.x, name=name)


def make_shutter(d: BeamlineDescription, name: str = "shutter") -> EpicsShutter:
    return EpicsShutter(d.prefix, command_pv=d.shutter.command, status_pv=d.shutter.status, name=name)


def make_optics(d: BeamlineDescription, name: str = "optics") -> EpicsOptics:
    return EpicsOptics(d.prefix, pvs=d.optics.model_dump(), name=name)
