"""The run book alone: ingest of a run, the barrier before shared state, the end level by level, abort.

Real scheduler and shared items over a recording transport, a clock the test moves; no sockets.
"""

from __future__ import annotations

from collections import Counter

from ns_bluesky.stream.broker.runbook import MAX_RUNS, RunBook
from ns_bluesky.stream.broker.scheduler import ModuleState, Scheduler
from ns_bluesky.stream.broker.shared import SharedItems
from ns_bluesky.stream.broker.slots import Slots
from ns_bluesky.stream.config import ModuleSpec
from ns_bluesky.stream.protocol import Message, decode


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Bench:
    """A run book over ``modules`` ({name: (type, inputs)}) in ``levels``, recording what goes out."""

    def __init__(self, modules, levels, wait_timeout_s=30.0):
        self.sent, self.posts, self.published = [], [], []
        mods = {name: ModuleState(ModuleSpec(name=name, module=kind), inputs) for name, (kind, inputs) in modules.items()}
        self.scheduler = Scheduler(
            mods, send_item=lambda w, it: self.sent.append((w.identity, it)),
            post=lambda ident, frames: self.posts.append((ident, decode(frames).meta.get("command"))),
            slots=Slots(False), lost=lambda item: self.book.broadcast_done(item),
        )
        self.shared = SharedItems(self.scheduler)
        self.counts, self.clock = Counter(), Clock()
        self.book = RunBook(
            self.scheduler, self.shared, levels=[[mods[n] for n in level] for level in levels],
            wait_timeout_s=wait_timeout_s, publish=lambda msg, topic: self.published.append((topic, msg)),
            counts=self.counts, clock=self.clock,
        )

    def worker(self, identity, module, credits=4):
        return self.scheduler.add(identity, module, 1, credits, self.clock())

    def ingest(self, msg):
        """What the handler does with an ingested message."""
        run = self.book.accept(msg)
        if run is not None:
            for mod in self.scheduler.consumers.get(msg.kind, ()):
                self.book.enqueue(mod, run, msg)
        return run

    def sent_kinds(self, identity=None):
        return [(w, it.msg.kind) for w, it in self.sent if identity in (None, w)]

    def answer(self, identity, kind="done"):
        """The worker answers every item it holds, as the handler passes answers on."""
        w = self.scheduler.worker(identity)
        for item_id in sorted(w.in_flight):
            item = self.scheduler.items[item_id]
            self.scheduler.finish(w, item, self.clock(), error=False, aborted=False)
            if item.broadcast:
                self.book.broadcast_done(item)
            else:
                self.book.item_done(self.book.runs[item.run])


def frame(run, seq):
    return Message("frame", run=run, seq=seq)


ECHO_TALLY = ({"echo": ("echo", ("frame",)), "tally": ("tally", ("echo",))}, [["echo"], ["tally"]])


def test_a_start_is_published_and_reaches_every_worker_once():
    b = Bench(*ECHO_TALLY)
    b.worker(b"E", "echo")
    b.worker(b"T", "tally")
    b.ingest(Message("start", run="r", meta={"purpose": "test"}))
    b.ingest(Message("start", run="r"))  # resent after a silence
    assert [t for t, _ in b.published] == ["start"]
    assert b.sent_kinds() == [(b"E", "start"), (b"T", "start")]
    assert b.counts["duplicate_ingest"] == 1 and b.book.runs["r"].doc == {"purpose": "test"}


def test_data_is_counted_once_and_queued_for_its_consumers_only():
    b = Bench(*ECHO_TALLY)
    b.ingest(Message("start", run="r"))
    for seq in (1, 2, 2, 3):
        b.ingest(frame("r", seq))
    run = b.book.runs["r"]
    assert (run.frames, run.pending, run.duplicates, b.counts["duplicate_ingest"]) == (3, 3, 1, 1)
    assert len(b.scheduler.modules["echo"].queue) == 3 and not b.scheduler.modules["tally"].queue


def test_a_module_skips_runs_of_other_purposes():
    b = Bench({"dark": ("dark", ("frame",)), "echo": ("echo", ("frame",))}, [["dark", "echo"]])
    b.ingest(Message("start", run="p", meta={"purpose": "ptychography"}))
    b.ingest(frame("p", 1))
    b.ingest(Message("start", run="d", meta={"purpose": "dark"}))
    b.ingest(frame("d", 1))
    dark, echo = b.scheduler.modules["dark"], b.scheduler.modules["echo"]
    assert [b.scheduler.items[i].run for i in dark.queue] == ["d"]
    assert [b.scheduler.items[i].run for i in echo.queue] == ["p", "d"]
    assert b.book.runs["p"].pending == 1 and b.book.runs["d"].pending == 2


DARK_FRAME = ({"dark": ("dark", ("frame",)), "frame": ("frame", ("frame", "dark"))}, [["dark"], ["frame"]])


def _dark_result(dark_run):
    return Message("result", run=dark_run, seq=0, stage="dark", meta={"mean": 1})


def test_the_barrier_holds_a_runs_items_until_its_shared_result_is_handed_out():
    b = Bench(*DARK_FRAME)
    b.worker(b"F", "frame")
    b.ingest(Message("start", run="scan", meta={"purpose": "ptychography", "dark_uid": "dk"}))
    for seq in (1, 2):
        b.ingest(frame("scan", seq))
    mod = b.scheduler.modules["frame"]
    assert not mod.queue and len(mod.held["scan"]) == 2 and mod.counts["held"] == 2
    assert b.book.missing(mod, b.book.runs["scan"]) == ["dark dk"]
    b.book.release_held()
    assert not mod.queue  # nothing came yet
    b.shared.share(_dark_result("other"))  # another run's dark does not open it
    b.book.release_held()
    assert not mod.queue
    b.shared.share(_dark_result("dk"))
    assert b.sent_kinds(b"F")[-1] == (b"F", "result")  # the shared result went to the worker first
    b.book.release_held()
    assert len(mod.queue) == 2 and mod.held == {} and mod.counts["wait_timeouts"] == 0
    b.ingest(frame("scan", 3))  # later items of the run pass straight through
    assert len(mod.queue) == 3


def test_the_barrier_gives_up_after_the_timeout_and_says_so():
    b = Bench(*DARK_FRAME, wait_timeout_s=5.0)
    b.ingest(Message("start", run="scan", meta={"purpose": "ptychography", "dark_uid": "gone"}))
    b.ingest(frame("scan", 1))
    mod = b.scheduler.modules["frame"]
    b.clock.now += 4.9
    b.book.release_held()
    assert not mod.queue
    b.clock.now += 0.2
    b.book.release_held()
    assert len(mod.queue) == 1 and mod.counts["wait_timeouts"] == 1
    b.ingest(frame("scan", 2))  # the wait is over: no more holding
    assert len(mod.queue) == 2 and mod.counts["held"] == 1


def test_a_run_without_a_dark_named_is_not_held():
    b = Bench(*DARK_FRAME)
    b.ingest(Message("start", run="scan", meta={"purpose": "ptychography"}))
    b.ingest(frame("scan", 1))
    assert len(b.scheduler.modules["frame"].queue) == 1


def test_the_end_goes_level_by_level_after_every_item_is_done():
    b = Bench(*ECHO_TALLY)
    b.worker(b"E1", "echo")
    b.worker(b"E2", "echo")
    b.worker(b"T", "tally")
    b.ingest(Message("start", run="r"))
    b.ingest(frame("r", 1))
    b.ingest(Message("stop", run="r"))
    b.scheduler.dispatch()  # the frame goes to E1
    b.answer(b"E2")
    assert not [k for _, k in b.sent_kinds() if k == "stop"]  # the frame is still being processed
    b.answer(b"E1")
    assert [w for w, k in b.sent_kinds() if k == "stop"] == [b"E1", b"E2"]  # the first level only
    b.answer(b"E1")
    assert [w for w, k in b.sent_kinds() if k == "stop"] == [b"E1", b"E2"]  # one stop of the level still out
    b.answer(b"E2")
    assert [w for w, k in b.sent_kinds() if k == "stop"] == [b"E1", b"E2", b"T"]
    assert not b.book.runs["r"].ended
    b.answer(b"T")
    run = b.book.runs["r"]
    assert run.ended and [t for t, _ in b.published] == ["start", "end_of_run"]
    end = b.published[-1][1]
    assert end.meta == {"frames": 1, "results": 0, "aborted": False, "duplicates": 0}


def test_results_of_a_level_count_before_its_stop_is_done():
    b = Bench(*ECHO_TALLY)
    b.worker(b"E", "echo")
    b.worker(b"T", "tally")
    b.ingest(Message("start", run="r"))
    b.ingest(Message("stop", run="r"))  # no frames: the echo level gets its stop at once
    assert [w for w, k in b.sent_kinds() if k == "stop"] == [b"E"]
    run = b.book.runs["r"]
    b.book.enqueue(b.scheduler.modules["tally"], run, Message("result", run="r", stage="echo"))  # flushed at its end
    b.answer(b"E")
    assert [w for w, k in b.sent_kinds() if k == "stop"] == [b"E"]  # the tally has an item of the run to do first
    b.scheduler.dispatch()
    b.answer(b"T")
    assert [w for w, k in b.sent_kinds() if k == "stop"] == [b"E", b"T"]
    b.answer(b"T")
    assert run.ended


def test_levels_without_workers_pass_and_a_dead_workers_stop_counts_as_done():
    b = Bench(*ECHO_TALLY)
    b.ingest(Message("start", run="quiet"))
    b.ingest(Message("stop", run="quiet"))
    assert b.book.runs["quiet"].ended  # nobody to tell
    b.worker(b"E", "echo")
    b.ingest(Message("start", run="r"))
    b.ingest(Message("stop", run="r"))
    assert not b.book.runs["r"].ended
    b.scheduler.check_liveness(b.clock.now + 60, 1.0)  # E dies holding its stop
    assert b.book.runs["r"].ended


def test_the_end_waits_for_frames_the_stop_overtook():
    b = Bench(*ECHO_TALLY)
    b.ingest(Message("start", run="r"))
    b.ingest(frame("r", 1))
    b.ingest(Message("stop", run="r", meta={"num_frames": 2}))
    b.book.item_done(b.book.runs["r"])
    assert not b.book.runs["r"].ended
    b.ingest(frame("r", 2))
    b.book.item_done(b.book.runs["r"])
    assert b.book.runs["r"].ended


def test_the_end_counts_events_missing_from_the_plan():
    b = Bench(*ECHO_TALLY)
    b.ingest(Message("start", run="r", meta={"num_points": 4}))
    for seq in (1, 3):
        b.ingest(frame("r", seq))
        b.book.item_done(b.book.runs["r"])
    b.ingest(Message("stop", run="r"))
    meta = b.published[-1][1].meta
    assert (meta["planned"], meta["missing"], meta["missing_seqs"]) == (4, 2, [2, 4])


def test_abort_drops_waiting_items_ends_the_run_and_refuses_what_follows():
    b = Bench(*DARK_FRAME)
    b.worker(b"F", "frame", credits=1)
    b.ingest(Message("start", run="a", meta={"purpose": "ptychography"}))
    b.ingest(Message("start", run="h", meta={"purpose": "ptychography", "dark_uid": "dk"}))
    for seq in (1, 2, 3):
        b.ingest(frame("a", seq))
    b.ingest(frame("h", 1))  # held
    b.scheduler.dispatch()  # a/1 in flight
    dropped = b.book.abort("a")
    assert [it.msg.seq for it in dropped] == [2, 3]
    run = b.book.runs["a"]
    assert run.aborted and run.ended and run.pending == 1  # the one in flight is answered by its worker
    assert b.published[-1][1].kind == "end_of_run" and b.published[-1][1].meta["aborted"] is True
    assert (b"F", "abort") in b.posts
    b.ingest(frame("a", 4))
    assert b.counts["after_end"] == 1
    assert [it.run for it in b.book.abort()] == ["h"]  # everything under way
    assert b.book.abort() == [] and b.scheduler.modules["frame"].held == {}


def test_a_new_worker_learns_of_the_runs_under_way_only():
    b = Bench(*ECHO_TALLY)
    for run in ("ended", "aborted", "live"):
        b.ingest(Message("start", run=run))
    b.ingest(Message("stop", run="ended"))
    b.book.abort("aborted")
    w = b.worker(b"E", "echo")
    b.shared.replay(w, b.scheduler.modules["echo"])
    b.book.replay(w, b.scheduler.modules["echo"])
    assert [(it.msg.kind, it.run) for _, it in b.sent] == [("start", "live")]


def test_ended_runs_beyond_the_bound_are_forgotten_and_still_refused():
    b = Bench(*ECHO_TALLY)
    b.ingest(Message("start", run="open"))
    for i in range(MAX_RUNS + 10):
        b.ingest(Message("start", run=f"r{i}"))
        b.ingest(Message("stop", run=f"r{i}"))
    b.book.prune()
    assert len(b.book.runs) == MAX_RUNS and "open" in b.book.runs and "r0" not in b.book.runs
    b.ingest(frame("r0", 1))
    b.ingest(Message("start", run="r0"))
    assert b.counts["after_end"] == 2 and "r0" not in b.book.runs


def test_an_ended_run_keeps_only_its_small_state_and_still_refuses_what_follows():
    """The last MAX_RUNS ended runs are kept; each kept its frames' numbers and its start document (a large scan's
    positions) until pruned. An ended run now keeps neither, and a late frame or a resent start is still refused."""
    b = Bench(*ECHO_TALLY)
    b.worker(b"E", "echo")
    b.worker(b"T", "tally")
    planned = [[float(i), 0.0] for i in range(20)]
    b.ingest(Message("start", run="r", meta={"start": {"num_points": 20, "planned_positions_m": planned}}))
    for seq in range(1, 21):
        b.ingest(frame("r", seq))
    b.ingest(Message("stop", run="r"))
    run = b.book.runs["r"]
    for _ in range(20):  # the start and the frames, then the stops level by level
        b.scheduler.dispatch()
        for identity in (b"E", b"T"):
            b.answer(identity)
    assert run.ended and b.published[-1][1].meta["frames"] == 20 and b.published[-1][1].meta["missing"] == 0
    assert (len(run.seen), len(run.published), run.doc, run.start.meta) == (0, 0, {}, {})
    b.ingest(frame("r", 3))
    b.ingest(Message("start", run="r"))
    assert (b.counts["after_end"], b.counts["duplicate_ingest"]) == (1, 1)
    assert [t for t, _ in b.published].count("start") == 1


def test_one_run_more_than_max_open_runs_is_refused_with_the_reason():
    import pytest

    from ns_bluesky.stream.protocol import ProtocolError

    b = Bench(*ECHO_TALLY)
    b.book.max_open_runs = 2
    b.ingest(Message("start", run="a"))
    b.ingest(frame("b", 1))  # data of a run that has not started yet is a run too
    with pytest.raises(ProtocolError, match="too-many-runs: 2 runs are open"):
        b.ingest(frame("c", 1))
    assert "c" not in b.book.runs and b.counts["runs_refused"] == 1
    b.ingest(frame("a", 1))  # the open ones go on


def test_runs_that_never_start_or_never_end_expire_and_are_counted():
    import pytest

    from ns_bluesky.stream.protocol import ProtocolError

    b = Bench(*ECHO_TALLY)
    b.book.start_timeout_s, b.book.idle_timeout_s = 10.0, 100.0
    b.ingest(frame("orphan", 1))  # no start, ever
    b.ingest(Message("start", run="endless"))
    b.ingest(frame("endless", 1))  # no stop, ever
    b.clock.now += 11
    assert [r.run for r in b.book.expired()] == ["orphan"] and b.counts["expired_runs"] == 1
    b.book.abort("orphan")  # what the handler does with an expired run
    b.clock.now += 90
    b.ingest(frame("endless", 2))  # still talking: not silent
    b.clock.now += 99
    assert b.book.expired() == []
    b.clock.now += 2
    (run,) = b.book.expired()
    assert run.run == "endless" and "silent for 100 s without a stop" in run.expired and b.counts["expired_runs"] == 2
    b.book.abort("endless")
    end = [m for t, m in b.published if t == "end_of_run" and m.run == "endless"][0]
    assert end.meta["expired"] == run.expired and end.meta["aborted"]
    with pytest.raises(ProtocolError, match="run-expired"):
        b.ingest(frame("endless", 3))
    assert b.counts["after_expiry"] == 1 and b.book.expired() == []


def test_a_stop_announcing_an_impossible_frame_count_is_refused():
    import pytest

    from ns_bluesky.stream.protocol import ProtocolError

    b = Bench(*ECHO_TALLY)
    for bad in (-1, 10**12, 1.5, "3", True):
        with pytest.raises(ProtocolError, match="out-of-range: num_frames"):
            b.ingest(Message("stop", run="r", meta={"num_frames": bad}))
    assert "r" not in b.book.runs
