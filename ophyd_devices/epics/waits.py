"""Never a hang over Channel Access: every write bounded in time, every pending status told when its IOC goes.

Ophyd's defaults wait forever in two places that a lost IOC reaches: ``EpicsSignal.set()`` waits for its
read-back without a limit (``write_timeout`` None), and a status that waits for a monitor update (a motor's
DMOV, the detector's Acquire_RBV) waits until its own timeout, if it has one. Here:

- :func:`bound_writes` gives every EPICS signal of a device a write timeout;
- :class:`DisconnectGuard` fails the statuses a device has pending, at once and with one line naming the PV,
  when the IOC disconnects; while the RunEngine's suspenders watch the beamline
  (:mod:`~ns_bluesky.ophyd_devices.epics.suspenders`) the guard stands aside and the RunEngine suspends
  instead (a status failed after the suspension began would abort the resumed run);
- :func:`finish_abandoned` ends what a suspension abandons, so no stale status times out later and fails
  the resumed run.
"""

from __future__ import annotations

import logging
import threading

from ophyd import Device
from ophyd.signal import EpicsSignalBase

from ns_bluesky.errors import DeviceError

log = logging.getLogger(__name__)

#: longest an EPICS write (put, then its read-back matching) may take
WRITE_TIMEOUT_S = 10.0


def staged_signals(device: Device) -> list:
    """The signals staging writes: each (sub)device's ``stage_sigs``, lazy ones instantiated."""
    out = []
    for dev in [device, *(getattr(device, name) for name in device._sub_devices)]:
        out += [getattr(dev, key) if isinstance(key, str) else key for key in dev.stage_sigs]
    return out


def bound_writes(device: Device, timeout_s: float = WRITE_TIMEOUT_S, *, also=()) -> None:
    """Every EPICS signal of ``device`` (its lazy ones in ``also``) waits at most ``timeout_s`` for a write."""
    for sig in [walked.item for walked in device.walk_signals(include_lazy=False)] + list(also):
        if isinstance(sig, EpicsSignalBase) and sig._write_timeout is None:
            sig._write_timeout = timeout_s


class DisconnectGuard:
    """Pending statuses of one device, failed with ``DeviceError`` when ``signal``'s IOC disconnects."""

    #: False while suspenders watch the beamline: the RunEngine suspends instead of failing the plan
    fail_on_disconnect = True

    def __init__(self, owner: str, signal):
        self.owner, self.signal = owner, signal
        self._pending: list = []
        self._lock = threading.Lock()
        signal.subscribe(self._on_meta, event_type=signal.SUB_META, run=False)

    def watch(self, status):
        """Fail ``status`` if the IOC goes before it is done; returns it."""
        if not self.signal.connected and self.fail_on_disconnect:
            self._fail(status)
            return status
        with self._lock:
            self._pending = [s for s in self._pending if not s.done] + [status]
        return status

    def abandon(self) -> None:
        """Finish what is pending (a suspension rewinds past it): nothing stale fails the resumed run."""
        with self._lock:
            pending, self._pending = self._pending, []
        finish_abandoned(pending, self.owner)

    def _message(self) -> str:
        pv = getattr(self.signal, "pvname", self.signal.name)
        return f"{self.owner}: lost the IOC ({pv} disconnected); restart it, or install the suspenders to wait for it"

    def _fail(self, status) -> None:
        if not status.done:
            try:
                status.set_exception(DeviceError(self._message()))
            except Exception:  # finished meanwhile
                pass

    def _on_meta(self, *, connected: bool | None = None, **kwargs) -> None:
        if connected is not False or not self.fail_on_disconnect:
            return
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:  # off the Channel Access callback thread: a failing status runs its callbacks where it fails,
            # and blocking that thread stalls every channel of the process (later connections time out)
            threading.Thread(target=lambda: [self._fail(s) for s in pending], name=f"{self.owner}-lost",
                             daemon=True).start()


def finish_abandoned(statuses, owner: str) -> None:
    for status in statuses:
        if status is not None and not status.done:
            log.info("%s: a status abandoned by a suspension is finished", owner)
            try:
                status.set_finished()
            except Exception:
                pass


def check_connected(owner: str, signal) -> None:
    """``DeviceError`` in one line if ``signal`` is not connected (instead of pyepics' DisconnectedError)."""
    if not signal.connected:
        pv = getattr(signal, "pvname", signal.name)
        raise DeviceError(f"{owner}: the IOC does not answer ({pv} disconnected); restart it and try again")
