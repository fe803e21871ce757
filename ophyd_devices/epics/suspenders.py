"""Suspenders for the EPICS beamline: the RunEngine waits for the beam and for its IOCs instead of failing.

bluesky's suspenders watch a signal's value; an IOC that dies takes its PVs away without a value change, so
``SuspendWhenLost`` also trips when the watched PV disconnects, and resumes when it is back (and, for the beam,
high again). While they are installed the devices' disconnect guards stand aside (``waits.DisconnectGuard``):
the RunEngine suspends, rewinds to the last checkpoint (the current point), and on resume the devices put
back what a restarted IOC lost (shutter, user offsets, exposure) and the detector opens a new file.
"""

from __future__ import annotations

import logging
import threading
import time

from bluesky.suspenders import SuspendBoolLow

log = logging.getLogger(__name__)

#: seconds the beam (and its IOC) must be back before the scan resumes
RESUME_AFTER_S = 2.0
#: tries to reach a busy RunEngine loop when a suspender trips
TRIP_ATTEMPTS = 40


class SuspendWhenLost(SuspendBoolLow):
    """Suspend while ``signal`` reads 0 or is disconnected; resume ``sleep`` s after it is connected and 1.

    With ``only_disconnect`` the value is not judged (a shutter's status is closed in normal operation):
    only a lost PV suspends. Nothing here blocks the thread that delivers Channel Access callbacks (all of
    Ophyd's monitors share it).
    """

    def __init__(self, signal, *, only_disconnect: bool = False, **kwargs):
        super().__init__(signal, **kwargs)
        self._only_disconnect = only_disconnect
        self._lost = False
        self._value = 1

    def install(self, RE, *, event_type=None):
        super().install(RE, event_type=event_type)
        self._sig.subscribe(self._on_meta, event_type=self._sig.SUB_META, run=False)

    def remove(self):
        self._sig.clear_sub(self._on_meta)
        super().remove()

    def __call__(self, value, **kwargs):
        """A value update of the watched PV."""
        self._value = value
        self._judge()

    def _on_meta(self, *, connected: bool | None = None, **kwargs) -> None:
        if connected is None or (not connected) == self._lost:
            return
        self._lost = not connected
        self._judge()  # after a reconnection the value may have come first: judge it now that the PV is back

    def _judge(self) -> None:
        value = 0 if self._lost else (1 if self._only_disconnect else self._value)
        try:
            SuspendBoolLow.__call__(self, value)
        except RuntimeError:  # bluesky gives the RunEngine's loop 0.1 s to take the news; a busy loop misses it
            threading.Thread(target=self._judge_again, name="suspender-retry", daemon=True).start()

    def _judge_again(self) -> None:
        for _ in range(TRIP_ATTEMPTS):
            time.sleep(0.05)
            if self.RE is None:
                return
            value = 0 if self._lost else (1 if self._only_disconnect else self._value)
            try:
                SuspendBoolLow.__call__(self, value)
                return
            except RuntimeError:
                continue
        log.error("%s: could not tell the RunEngine (its loop stayed busy)", self._sig.name)

    def _should_suspend(self, value):
        return self._lost or not bool(value)

    def _should_resume(self, value):
        return not self._lost and bool(value)

    def _get_justification(self):
        if not self.tripped:
            return ""
        pv = getattr(self._sig, "pvname", self._sig.name)
        what = f"{pv} disconnected (its IOC is gone)" if self._lost else f"{pv} reads 0 (no beam)"
        return ": ".join(s for s in (what, self._tripped_message) if s)


def install_suspenders(RE, beamline, *, sleep_s: float = RESUME_AFTER_S) -> list[SuspendWhenLost]:
    """Suspend ``RE`` while the beam is lost or the beamline's IOCs are gone, resume when they are back.

    Watches the beam-present PV (value and connection), the shutter's status and the detector's Acquire
    (connection only: the detector and stage IOCs); the devices' disconnect guards stand aside while these
    are installed. Returns the suspenders (``RE.remove_suspender`` each to undo; ``remove_suspenders`` too).
    """
    watched = [
        SuspendWhenLost(beamline.beam, sleep=sleep_s, tripped_message="the beam is lost or its IOC is gone"),
        SuspendWhenLost(beamline.shutter.status, only_disconnect=True, sleep=sleep_s,
                        tripped_message="the shutter's IOC is gone"),
        SuspendWhenLost(beamline.fccd.cam.acquire, only_disconnect=True, sleep=sleep_s,
                        tripped_message="the detector's IOC is gone"),
        SuspendWhenLost(beamline.stage.x.motor_done_move, only_disconnect=True, sleep=sleep_s,
                        tripped_message="the stage's IOC is gone"),
    ]
    for suspender in watched:
        RE.install_suspender(suspender)
    for guard in beamline.guards():
        guard.fail_on_disconnect = False
    return watched


def remove_suspenders(RE, beamline, suspenders) -> None:
    """Undo :func:`install_suspenders`: a lost IOC fails the plan again, in one line."""
    for suspender in suspenders:
        RE.remove_suspender(suspender)
    for guard in beamline.guards():
        guard.fail_on_disconnect = True
