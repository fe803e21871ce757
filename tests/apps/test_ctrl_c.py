"""Ctrl-C in a command that runs plans (``StopOnCtrlC``), with a real RunEngine and a real SIGINT.

Bluesky's session handler turns the first Ctrl-C into a pause deferred to the next checkpoint; a plan
without one (a short dark run) ends first, the next plan clears the request, and the command's scan ran to
its end. These tests send SIGINT to this process while a plan runs and fail on that behaviour.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.utils import RunEngineInterrupted

from ns_bluesky.apps.ctrl_c import StopOnCtrlC


def _sigint_after(seconds: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), os.kill(os.getpid(), signal.SIGINT)), daemon=True)
    thread.start()
    return thread


@bpp.run_decorator()
def _run_without_checkpoints(seconds: float):
    yield from bps.sleep(seconds)


@bpp.run_decorator()
def _points(n: int, seconds: float, done: list):
    for i in range(n):
        yield from bps.checkpoint()
        yield from bps.sleep(seconds)
        done.append(i)


def test_ctrl_c_in_a_run_without_checkpoints_stops_the_next_plan():
    ctrl_c = StopOnCtrlC()
    RE = RunEngine({}, context_managers=[ctrl_c.for_engine])
    done: list = []
    _sigint_after(0.3)
    with pytest.raises(KeyboardInterrupt):  # the demo's order: darks, check, scan, check
        try:
            RE(_run_without_checkpoints(1.0))
            ctrl_c.raise_if_pressed()
            RE(_points(5, 0.05, done))
            ctrl_c.raise_if_pressed()
        except RunEngineInterrupted:
            RE.abort("interrupted by the test")
            raise KeyboardInterrupt from None
    assert RE.state == "idle"
    assert done == []  # the scan that follows never ran a point


def test_ctrl_c_mid_scan_pauses_at_once_not_at_the_end():
    before = signal.getsignal(signal.SIGINT)
    ctrl_c = StopOnCtrlC()
    RE = RunEngine({}, context_managers=[ctrl_c.for_engine])
    done: list = []
    _sigint_after(0.5)
    with pytest.raises(RunEngineInterrupted):
        RE(_points(40, 0.1, done))
    assert len(done) < 20, f"{len(done)} of 40 points ran after Ctrl-C"
    RE.abort("interrupted by the test")
    assert RE.state == "idle"
    assert signal.getsignal(signal.SIGINT) is before  # put back after the plan


def test_stock_handler_forgets_it_which_is_why_commands_use_this_one():
    """The behaviour this module exists for, shown on bluesky's own handler: if this starts to fail,
    bluesky changed and ``StopOnCtrlC`` may no longer be needed."""
    RE = RunEngine({})
    done: list = []
    _sigint_after(0.3)
    RE(_run_without_checkpoints(1.0))
    RE(_points(5, 0.05, done))
    assert done == [0, 1, 2, 3, 4]
