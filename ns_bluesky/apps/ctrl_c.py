"""Ctrl-C in a command that runs plans: stop now, whichever run is open, and say so.

In a session bluesky's own handler is right: the first Ctrl-C asks for a pause at the next checkpoint, the
operator then chooses resume or abort. A command has no operator prompt, and a deferred pause is lost
there: a short run (the darks) can end before it reaches a checkpoint, and starting the next plan clears the
request, so the scan that follows ran to its end with the user's Ctrl-C forgotten. Here the first Ctrl-C
pauses the RunEngine at once (the command then aborts the open run) and is remembered between runs, so
the command stops before its next plan whenever it came.
"""

from __future__ import annotations

import signal
import threading


class StopOnCtrlC:
    """Give ``RunEngine(context_managers=[handler.for_engine])``; call :meth:`raise_if_pressed` before and
    after each ``RE(...)``. A Ctrl-C outside a plan raises ``KeyboardInterrupt`` as usual."""

    def __init__(self) -> None:
        self.pressed = threading.Event()

    def for_engine(self, RE) -> _Installed:
        return _Installed(self, RE)

    def raise_if_pressed(self) -> None:
        if self.pressed.is_set():
            raise KeyboardInterrupt


class _Installed:
    """SIGINT while a plan runs: remember it and ask for an immediate pause from a thread of its own (the
    signal handler itself must only set flags, as bluesky's does)."""

    def __init__(self, owner: StopOnCtrlC, RE) -> None:
        self._owner, self._RE = owner, RE
        self._previous = None

    def __enter__(self) -> _Installed:
        self._previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum, frame) -> None:
        self._owner.pressed.set()
        threading.Thread(target=self._pause_now, name="ctrl-c", daemon=True).start()

    def _pause_now(self) -> None:
        from bluesky.utils import TransitionError

        try:
            self._RE.request_pause(defer=False)
        except TransitionError:  # already pausing or past the plan's end: the flag stops the command
            pass
