"""A fast shutter: the detector's dark/light mode follows it."""

from __future__ import annotations

import threading

from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus

from ns_bluesky.errors import ParameterError

from . import clock

_OPEN = {"open", "opened", 1}  # 1 == True
_CLOSED = {"close", "closed", 0}  # 0 == False


class Shutter(Device):
    """``bps.mv(shutter, "open")`` / ``"close"``; the move takes ``actuation_time`` seconds."""

    state = Cpt(Signal, value="closed", kind="normal")
    actuation_time = Cpt(Signal, value=0.005, kind="config", doc="s")

    def __init__(self, prefix: str = "", *, name: str, **kwargs):
        super().__init__(prefix, name=name, **kwargs)
        self._lock = threading.Lock()
        self._timer: clock.Pending | None = None

    @property
    def is_open(self) -> bool:
        return self.state.get() == "open"

    def set(self, value, **kwargs) -> DeviceStatus:
        key = value.lower() if isinstance(value, str) else value
        if key in _OPEN:
            target = "open"
        elif key in _CLOSED:
            target = "closed"
        else:
            raise ParameterError(f"{self.name}: unknown shutter command {value!r}; use 'open' or 'close'")
        status = DeviceStatus(self)
        with self._lock:
            if self._timer is not None:  # a newer command wins over one still moving
                self._timer.cancel()
                self._timer = None
                self._pending.set_finished()  # superseded: whoever waits on it must not hang
            if target == self.state.get():
                status.set_finished()
                return status

            def done() -> None:
                with self._lock:
                    self.state.put(target)
                    self._timer = None
                status.set_finished()

            self._pending = status
            self._timer = clock.after(self.actuation_time.get(), done)
        return status
