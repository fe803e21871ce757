"""A simulated EPICS motor record that keeps the record's promises, not only its field names.

caproto's ``pvproperty(record='motor')`` serves every motor field, but its example
simulator ignores what OFF, SET, FOFF and the soft limits mean (``shared/reference/epics.md``:
``set_current_position`` moved the motor, and the limits read 0..0 so ophyd checked nothing).
The adaptive drift correction writes OFF and the plans rely on limits, so this record keeps:

- user = dial + OFF (DIR Pos only); RBV/DRBV, VAL/DVAL and HLM/LLM vs DHLM/DLLM follow;
  writing OFF moves the user values, never the axis;
- SET=Set: a VAL write redefines the position instead of moving: FOFF=Variable changes OFF,
  FOFF=Frozen changes the dial position;
- VAL's control limits are LLM..HLM (what ophyd's ``EpicsMotor.limits`` and ``check_value`` read);
  a VAL outside them is refused as the motor record does: no motion, VAL restored, LVIO=1 and a
  SOFT/MAJOR alarm on the record, DMOV pulsed so that a client waiting for the move is told at once;
- motion takes |distance| / VELO + ACCL seconds, at least ``MIN_MOVE_S`` (linear between the ends; MOVN=1,
  DMOV=0 meanwhile, RBV updated every tick); a new VAL retargets a move under way; STOP halts it.
"""

from __future__ import annotations

import asyncio
import math
import time

from caproto import AlarmSeverity, AlarmStatus
from caproto.server import PVGroup, PvpropertyDouble, pvproperty

TICK_S = 0.02  # RBV updates during a move (50 Hz)
#: the least time DMOV stays 0 for a processed VAL: with a 0 and a 1 posted back to back, Ophyd's EpicsMotor
#: sometimes missed the fall and waited forever for its move to end (seen in the tests); a real motor record
#: also takes at least one processing cycle
MIN_MOVE_S = 0.01


class _RecordValue(PvpropertyDouble):
    """VAL without caproto's blanket refusal of writes beyond the control limits: the soft limits are the
    record's to enforce (LVIO and an alarm, the put itself accepted), as in a real motor record."""

    async def verify_value(self, value):
        return await self.putter(self, value)


def _enum(channel) -> str:
    """An enum field's state by name (caproto holds the index until the field is first written)."""
    value = channel.value
    return channel.enum_strings[value] if isinstance(value, int) else value


class MotorRecord(PVGroup):
    """One motor record named by the group's prefix (``BL701:SS:X`` serves ``BL701:SS:X.VAL``, ``.RBV``...)."""

    motor = pvproperty(value=0.0, name="", record="motor", dtype=_RecordValue, precision=9, doc="VAL: user target")

    def __init__(self, prefix: str, *, desc: str, velocity: float, acceleration: float, limits: tuple[float, float],
                 egu: str = "m", **kwargs):
        super().__init__(prefix, **kwargs)
        self._settings = dict(desc=desc, velocity=velocity, acceleration=acceleration, limits=limits, egu=egu)
        self.dial = 0.0  # where the axis is (the simulated encoder); what a simulated detector sees
        self.target = 0.0  # where the last move goes (dial)
        self.on_move = None  # called in the IOC's loop when a move starts (the detector draws ahead)
        self._move: asyncio.Task | None = None

    @property
    def f(self):
        return self.motor.field_inst

    @property
    def dial_position(self) -> float:
        """Where the axis is, whatever the user offset says: what the simulated detector renders at."""
        return self.dial

    @property
    def position(self) -> float:
        """The user readback (RBV)."""
        return self.f.user_readback_value.value

    @property
    def offset(self) -> float:
        return self.f.user_offset.value

    # internal writes skip the putters (verify_value=False): those are for clients ----------------
    async def _put(self, channel, value) -> None:
        await channel.write(value, verify_value=False)

    async def _show_position(self) -> None:
        f = self.f
        await self._put(f.dial_readback_value, self.dial)
        await self._put(f.user_readback_value, self.dial + self.offset)
        step = f.motor_step_size.value or 1e-9
        await self._put(f.raw_readback_value, int(round(self.dial / step)))

    async def _publish_limits(self) -> None:
        """User limits from the dial limits and the offset; VAL's control limits are what ophyd checks."""
        f, off = self.f, self.offset
        hlm, llm = f.dial_high_limit.value + off, f.dial_low_limit.value + off
        # VAL's first: ophyd re-reads VAL's control limits when it sees HLM or LLM change
        await self.motor.write_metadata(upper_ctrl_limit=hlm, lower_ctrl_limit=llm,
                                        upper_disp_limit=hlm, lower_disp_limit=llm)
        await self._put(f.user_high_limit, hlm)
        await self._put(f.user_low_limit, llm)

    async def _alarm(self, status: AlarmStatus, severity: AlarmSeverity) -> None:
        # EPICS alarms belong to the record: every field (RBV included, which ophyd checks) reports them
        await self.motor.alarm.write(status=status, severity=severity)
        await self.f.user_readback_value.alarm.write(status=status, severity=severity)

    @motor.startup
    async def motor(self, instance, async_lib) -> None:
        f, s = self.f, self._settings
        await self._put(f.description, s["desc"])
        await self._put(f.engineering_units, s["egu"])
        await self._put(f.velocity, s["velocity"])
        await self._put(f.seconds_to_velocity, s["acceleration"])
        await self._put(f.motor_step_size, 1e-9)
        await self._put(f.display_precision, 9)
        await self._put(f.dial_low_limit, s["limits"][0])
        await self._put(f.dial_high_limit, s["limits"][1])
        await self._put(f.limit_violation, 0)
        await self._put(f.done_moving_to_value, 1)
        await self._put(f.motor_is_moving, 0)
        await self._put(f.dial_desired_value, 0.0)
        await self._publish_limits()
        await self._show_position()

    # VAL: move, redefine, or refuse ---------------------------------------------------------------
    @motor.putter
    async def motor(self, instance, value):
        f = self.f
        value = float(value)
        if _enum(f.set_use_switch) == "Set":
            if _enum(f.offset_freeze_switch) == "Variable":
                await self._put(f.user_offset, value - self.dial)
                await self._publish_limits()
            else:
                self.dial = value - self.offset
            await self._put(f.dial_desired_value, value - self.offset)
            await self._show_position()
            return value
        llm, hlm = f.user_low_limit.value, f.user_high_limit.value
        if not (math.isfinite(value) and llm <= value <= hlm):
            await self._put(f.limit_violation, 1)
            await self._alarm(AlarmStatus.SOFT, AlarmSeverity.MAJOR_ALARM)
            await self._put(f.done_moving_to_value, 0)  # the record processed: a waiting client is told now
            await asyncio.sleep(MIN_MOVE_S)
            await self._put(f.done_moving_to_value, 1)
            return instance.value  # not moved; VAL keeps the last accepted target
        if f.limit_violation.value:
            await self._put(f.limit_violation, 0)
            await self._alarm(AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM)
        await self._put(f.dial_desired_value, value - self.offset)
        self._start_move(value - self.offset)
        return value

    def _start_move(self, target_dial: float) -> None:
        if self._move is not None and not self._move.done():
            self._move.cancel()  # retarget from where the axis is now
        self._move = asyncio.get_running_loop().create_task(self._run_move(target_dial))
        self.target = target_dial
        if self.on_move is not None:
            self.on_move()

    async def _run_move(self, target: float) -> None:
        f = self.f
        start = self.dial
        distance = abs(target - start)
        duration = max(distance / f.velocity.value + (f.seconds_to_velocity.value if distance > 0 else 0.0), MIN_MOVE_S)
        await self._put(f.direction_of_travel, int(target >= start))
        await self._put(f.done_moving_to_value, 0)
        await self._put(f.motor_is_moving, 1)
        t0 = time.monotonic()
        try:
            while (elapsed := time.monotonic() - t0) < duration:
                self.dial = start + (target - start) * elapsed / duration
                await self._show_position()
                await asyncio.sleep(min(TICK_S, duration - elapsed))
            self.dial = target
        finally:  # a halted or retargeted move leaves the axis where it got to
            await self._show_position()
        await self._put(f.motor_is_moving, 0)
        await self._put(f.done_moving_to_value, 1)

    @motor.fields.stop.putter
    async def motor(fields, instance, value):
        self = fields.parent.group
        if value and self._move is not None and not self._move.done():
            self._move.cancel()
            try:
                await self._move
            except asyncio.CancelledError:
                pass
            await self._put(self.f.motor_is_moving, 0)
            await self._put(self.f.done_moving_to_value, 1)
        await self._put(self.motor, self.dial + self.offset)
        await self._put(self.f.dial_desired_value, self.dial)
        return 0

    @motor.fields.dial_desired_value.putter
    async def motor(fields, instance, value):
        self = fields.parent.group
        await self.motor.write(float(value) + self.offset)  # as a VAL write: limits, SET mode and all
        return self.motor.value - self.offset

    # coordinates: the offset and the limits -------------------------------------------------------
    @motor.fields.user_offset.putter
    async def motor(fields, instance, value):
        self = fields.parent.group
        value = float(value)
        await self._put(self.motor, self.motor.value - self.offset + value)  # VAL keeps its dial target
        await self._put(instance, value)
        await self._publish_limits()
        await self._show_position()
        return value

    async def _limit(self, dial_field, dial_value: float) -> None:
        """Every limit write is a dial limit: the user limits and VAL's control limits follow from it."""
        await self._put(dial_field, dial_value)
        await self._publish_limits()

    @motor.fields.user_high_limit.putter
    async def motor(fields, instance, value):
        self = fields.parent.group
        await self._limit(self.f.dial_high_limit, float(value) - self.offset)
        return float(value)

    @motor.fields.user_low_limit.putter
    async def motor(fields, instance, value):
        self = fields.parent.group
        await self._limit(self.f.dial_low_limit, float(value) - self.offset)
        return float(value)

    @motor.fields.dial_high_limit.putter
    async def motor(fields, instance, value):
        await fields.parent.group._limit(instance, float(value))
        return float(value)

    @motor.fields.dial_low_limit.putter
    async def motor(fields, instance, value):
        await fields.parent.group._limit(instance, float(value))
        return float(value)

    @motor.fields.velocity.putter
    async def motor(fields, instance, value):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{instance.pvname}: VELO must be > 0, got {value}")
        return value

    @motor.fields.seconds_to_velocity.putter
    async def motor(fields, instance, value):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{instance.pvname}: ACCL must be >= 0 s, got {value}")
        return value

    @motor.fields.user_direction.putter
    async def motor(fields, instance, value):
        if value not in ("Pos", 0):  # the index or the name, as the client sent it
            raise ValueError(f"{instance.pvname}: only DIR=Pos is simulated (user = dial + OFF)")
        return value
