"""One thread that finishes every simulated move on time.

A ``threading.Timer`` per move starts a new thread, and ``Thread.start`` blocks the
caller until that thread has run: inside the RunEngine's loop, that is a wait for
the GIL on every motor move. Measured on a rate-0 scan, the two moves of each point
spent about 1.8 ms there (py-spy), more than the RunEngine's own work on the point.
Devices hand their timed completions to this clock instead: ``after`` only pushes
onto a heap.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Pending:
    """A completion not yet run; ``cancel`` keeps it from running."""

    __slots__ = ("cancelled", "due", "fn")

    def __init__(self, due: float, fn: Callable[[], None]):
        self.due, self.fn, self.cancelled = due, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class _Clock:
    def __init__(self):
        self._heap: list[tuple[float, int, Pending]] = []
        self._order = itertools.count()  # equal due times run in the order they were asked for
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def after(self, delay_s: float, fn: Callable[[], None]) -> Pending:
        item = Pending(time.monotonic() + max(0.0, delay_s), fn)
        with self._wake:
            heapq.heappush(self._heap, (item.due, next(self._order), item))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="sim-motion-clock", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is item:  # earlier than what the thread sleeps for
                self._wake.notify()
        return item

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._wake.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                _, _, item = heapq.heappop(self._heap)
            if item.cancelled:
                continue
            try:
                item.fn()
            except Exception:  # one device's failure must not stop every other device's moves
                log.exception("simulated move completion %r failed", item.fn)


_clock = _Clock()


def after(delay_s: float, fn: Callable[[], None]) -> Pending:
    """Run ``fn`` on the clock thread ``delay_s`` seconds from now (in order of due time)."""
    return _clock.after(delay_s, fn)
