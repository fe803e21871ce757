"""Control alone: commands and status over a scheduler and run book of their own; no sockets."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

from ns_bluesky.stream.broker.control import Control
from ns_bluesky.stream.broker.ingest import Ingest
from ns_bluesky.stream.broker.runbook import RunBook
from ns_bluesky.stream.broker.scheduler import ModuleState, Scheduler
from ns_bluesky.stream.broker.shared import SharedItems
from ns_bluesky.stream.broker.slots import Slots
from ns_bluesky.stream.config import ModuleSpec
from ns_bluesky.stream.protocol import Message, decode, encode


class FakeHandler:
    """What Control reads and calls of a handler."""

    def __init__(self, pool=None):
        mods = {"echo": ModuleState(ModuleSpec(name="echo", module="echo", workers=2), ("frame",))}
        self.scheduler = Scheduler(mods, send_item=lambda w, it: None, post=lambda i, f: None, slots=Slots(False), lost=lambda it: None)
        self.malformed, self.counts, self.published = Counter(), Counter(), []
        self.book = RunBook(self.scheduler, SharedItems(self.scheduler), levels=[list(mods.values())], wait_timeout_s=30,
                            publish=lambda m, topic: self.published.append(topic), counts=self.counts)
        self.intake = Ingest(lambda f: None, self.accept, self.malformed, self.counts)
        self.ports, self.pool, self.stopped, self.aborts = {"control": 1}, pool, False, []

    def accept(self, msg):
        run = self.book.accept(msg)
        for mod in self.scheduler.consumers.get(msg.kind, ()) if run else ():
            self.book.enqueue(mod, run, msg)

    def abort(self, run=None):
        self.aborts.append(run)
        return len(self.book.abort(run))

    def stop(self):
        self.stopped = True


def ask(control, command, **args):
    frames = control.answer([b"client", b"", *encode(Message("control", meta={"command": command, "args": args}))])
    assert frames[:2] == [b"client", b""]  # the ROUTER identity and the REQ envelope come back
    return decode(frames[2:]).meta["reply"]


def test_status_shows_modules_workers_runs_and_counters():
    h = FakeHandler()
    w = h.scheduler.add(b"W", "echo", 42, 2, 0.0)
    h.intake.receive([b"C", *encode(Message("start", run="r", meta={"lag": 3}))])
    for seq in (1, 2):
        h.intake.receive([b"C", *encode(Message("frame", run="r", seq=seq))])
    h.scheduler.dispatch()
    status = ask(Control(h), "status")["status"]
    echo = status["modules"]["echo"]
    assert echo["workers"][0]["pid"] == w.pid and echo["workers"][0]["in_flight"] == 3  # the start and two frames
    assert (echo["received"], echo["queue"], echo["held"], echo["wanted_workers"]) == (2, 0, 0, 2)
    assert status["runs"] == {"r": {"frames": 2, "pending": 2, "stopping": False, "ended": False, "aborted": False}}
    assert status["counts"] == {"ingested": 3} and status["client_lag"] == {b"C".hex(): 3} and status["ports"] == {"control": 1}


def test_abort_reset_and_stop_reach_the_handler():
    h = FakeHandler()
    control = Control(h)
    h.book.accept(Message("start", run="r"))
    reply = ask(control, "abort", run="r")
    assert reply["ok"] and reply["dropped"] == 0 and h.aborts == ["r"] and h.book.runs["r"].aborted
    h.counts["x"] += 1
    h.malformed["y"] += 1
    h.scheduler.modules["echo"].counts["processed"] += 5
    assert ask(control, "reset") == {"ok": True}
    assert h.aborts == ["r", None] and not h.book.runs and not h.counts and not h.malformed
    assert not h.scheduler.modules["echo"].counts
    assert ask(control, "stop") == {"ok": True} and h.stopped


def test_scale_is_checked_whole_before_any_change():
    h = FakeHandler(pool=SimpleNamespace())
    control = Control(h)
    assert ask(control, "scale", counts={"echo": 3}) == {"ok": True}
    assert h.scheduler.modules["echo"].spec.workers == 3
    for bad, error in (({"nosuch": 1}, "no module"), ({"echo": 300}, "0..256"), ({"echo": True}, "0..256")):
        reply = ask(control, "scale", counts=bad)
        assert not reply["ok"] and error in reply["error"]
    assert h.scheduler.modules["echo"].spec.workers == 3
    assert "does not manage" in ask(Control(FakeHandler()), "scale", counts={"echo": 1})["error"]


def test_bad_requests_are_answered_never_raised():
    h = FakeHandler()
    control = Control(h)
    assert "unknown command 'fly'" in ask(control, "fly")["error"]
    reply = decode(control.answer([b"c", b"", b"{not json"])[2:]).meta["reply"]
    assert reply["ok"] is False and h.malformed == {"control:bad-json": 1}
    h.abort = None  # a command that fails inside
    reply = ask(control, "abort", run="r")
    assert reply["ok"] is False and reply["error"].startswith("TypeError")
