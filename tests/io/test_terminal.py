"""A command's waits count from its last printed byte (``ns_bluesky.io.terminal``), so no silence spans two waits."""

from __future__ import annotations

import io
import sys
import time

from ns_bluesky.io import terminal
from ns_bluesky.io.terminal import Ticker


def test_watching_stamps_every_write_to_either_stream_once(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(terminal, "_watching", False)  # and back to it after the test
    assert not terminal.watching() and terminal.last_output(123.0) == 123.0  # not watching: the caller's own time
    terminal.watch()
    terminal.watch()  # a second call adds no second layer
    assert terminal.watching() and not isinstance(sys.stdout._stream, terminal._Stamped)
    monkeypatch.setattr(terminal, "_last", [0.0])
    print("a line")
    printed = terminal.last_output(0.0)
    assert printed > 0.0
    sys.stderr.write("")  # nothing written, nothing stamped
    assert terminal.last_output(0.0) == printed
    sys.stderr.write("a warning\n")
    assert terminal.last_output(0.0) >= printed
    assert sys.stdout.getvalue() == "a line\n"  # the stream underneath got every byte

    class Outer:  # what colorama's init() (on importing bluesky or caproto) puts over ours
        def __init__(self, wrapped):
            self.wrapped = wrapped

        def write(self, text):
            return self.wrapped.write(text)

    monkeypatch.setattr(sys, "stdout", Outer(sys.stdout))
    monkeypatch.setattr(terminal, "_last", [0.0])
    print("through another layer")
    assert terminal.watching() and terminal.last_output(0.0) > 0.0


def test_a_wait_after_a_quiet_stretch_speaks_at_once_not_a_period_later(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(terminal, "_watching", False)  # and back to it after the test
    terminal.watch()
    monkeypatch.setattr(terminal, "_last", [time.monotonic() - 5 * terminal.TELL_S])  # nothing printed for a while
    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)
        print(line)

    ticker = Ticker(say, "drawing").start()
    deadline = time.monotonic() + 10
    while not said and time.monotonic() < deadline:
        time.sleep(0.01)
    ticker.stop()
    # counted from its own start it would have waited TELL_S; counted from the last byte it speaks at once
    assert said and said[0] == "drawing (0 s)", said
