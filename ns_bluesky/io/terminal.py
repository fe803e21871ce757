"""When a command last wrote to its terminal, so that a wait speaks up when the command has been quiet.

A command's waits (the pipeline's end, the catalog's documents, the picture) each say what they wait for once
nothing has been printed for ``TELL_S``. Counted from each wait's own start, a silence could span two waits, or
the end of a progress bar and the first wait after it, and grow past two seconds (`benchmarks/faults.py`
measured 1.8-2.9 s on an unloaded host). Counted from the command's last byte on stdout or stderr, whoever
wrote it (a progress bar, another wait, a warning), no silence outlasts ``TELL_S`` plus one poll.

:func:`watch` (the command line calls it once) puts a thin stamping layer over ``sys.stdout`` and
``sys.stderr``; without it (a library call, a test's captured streams) :func:`last_output` returns the
caller's own reference time and each wait counts from its own start, as before.
"""

from __future__ import annotations

import sys
import threading
import time

#: a wait that finds nothing printed for this long says what it waits for
TELL_S = 1.0
#: how often a wait looks whether it should speak: its line comes at most this much after ``TELL_S`` of quiet
POLL_S = 0.1

_last = [time.monotonic()]  # one element, set and read whole (atomic under the GIL: no lock)
_watching = False  # a flag, not a look at sys.stderr: colorama (imported by bluesky and caproto) wraps it again


class _Stamped:
    """A text stream that notes when it was last written to; everything else goes to the stream it wraps."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        n = self._stream.write(text)
        if text:
            if "\n" in text:  # line by line, as on a terminal: piped to a log, a buffered line would seem said
                self._stream.flush()
            _last[0] = time.monotonic()
        return n

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def watch() -> None:
    """Stamp every write to ``sys.stdout`` and ``sys.stderr`` from now on (once; later calls do nothing)."""
    global _watching
    if _watching:
        return
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _Stamped):
            setattr(sys, name, _Stamped(stream))
    _last[0] = time.monotonic()
    _watching = True


def watching() -> bool:
    return _watching


def last_output(otherwise: float) -> float:
    """``time.monotonic()`` of the last write to the terminal while :func:`watch` is on; else ``otherwise``."""
    return _last[0] if _watching else otherwise


class Ticker:
    """``t = Ticker(say, "making the picture").start()`` ... ``t.stop()``: a line every ``TELL_S`` while a
    long step of a command runs (reading a run back, drawing on a loaded host), so the command is never silent."""

    def __init__(self, say, what: str):
        self.say, self.what = say, what
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ticker", daemon=True)

    def start(self) -> Ticker:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        told = self.t0
        while not self._done.wait(POLL_S):
            now = time.monotonic()
            if now - last_output(told) >= TELL_S:
                told = now
                self.say(f"{self.what} ({now - self.t0:.0f} s)")

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=1)
