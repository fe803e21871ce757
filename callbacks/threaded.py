"""Run a callback on its own thread so a slow consumer never slows the scan.

The RunEngine calls callbacks synchronously; an HTTP write per event to the catalog
would put that latency between every two frames. ``ThreadedCallback`` queues the
documents in order and lets one worker thread deliver them. Errors are not swallowed:
they are logged as they happen, raised into the RunEngine on the next document (so
the run stops at once instead of scanning on into a dead catalog) and again by
:meth:`flush`, which a plan's caller uses to wait until the catalog holds everything.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_STOP = object()


class ThreadedCallback:
    """Deliver ``(name, doc)`` to ``callback`` in order, from a background thread."""

    def __init__(self, callback: Callable[[str, dict], object], *, name: str = "callback"):
        self.callback, self.name = callback, name
        self._queue: queue.Queue = queue.Queue()
        self._errors: list[BaseException] = []
        self.delivered = 0
        self._thread = threading.Thread(target=self._run, name=f"threaded-{name}", daemon=True)
        self._thread.start()

    def __call__(self, name: str, doc: dict) -> None:
        if self._errors:  # the catalog is failing: stop the scan now, not three minutes later
            raise RuntimeError(f"{self.name}: {len(self._errors)} document(s) failed; first: {self._errors[0]!r}")
        self._queue.put((name, doc))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                name, doc = item
                try:
                    self.callback(name, doc)
                    self.delivered += 1
                except Exception as exc:
                    log.exception("%s failed on a %s document", self.name, name)
                    self._errors.append(exc)
            finally:
                self._queue.task_done()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def flush(self, timeout: float = 120.0) -> None:
        """Wait until every queued document is delivered; raise the first delivery error, if any."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {self.pending} documents still queued after {timeout} s")
            time.sleep(0.01)
        if self._errors:
            errors, self._errors = self._errors, []
            raise RuntimeError(f"{self.name}: {len(errors)} document(s) failed; first: {errors[0]!r}") from errors[0]

    def close(self, timeout: float = 120.0) -> None:
        """Flush, then stop the thread."""
        try:
            self.flush(timeout)
        finally:
            self._queue.put(_STOP)
            self._thread.join(timeout=5)
