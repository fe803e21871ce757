"""Run bookkeeping: what each run has sent, the barrier before shared state, its end, abort.

A run's data items wait behind a barrier until the shared result their module waits
for (``waits_for``: the run's dark) has been handed out, or ``wait_timeout_s`` has
passed. Its end goes stage by stage (the pipeline's topological levels): once every
balanced item of the run is done, each module of the first level gets a stop; when
the last of those is done, the next level's modules get theirs (so what a module
flushes at the end of a run still reaches the modules it feeds); after the last
level ``end_of_run`` is published. Abort drops a run's waiting items and ends it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..protocol import Message, ProtocolError, start_document

log = logging.getLogger(__name__)

MAX_FRAMES = 1_000_000_000  # frames a run may announce in its stop
MAX_RUNS = 200  # runs whose state is kept; older ended runs are forgotten (their ids still refuse late frames)


@dataclass
class RunState:
    run: str
    start: Message | None = None
    pending: int = 0  # balanced items not yet done, all modules
    stopping: bool = False
    stop_level: int = -1  # the stage of the pipeline (topological level) whose end-of-run is under way
    stop_pending: int = 0  # stop items of that level not yet done
    ended: bool = False
    aborted: bool = False
    frames: int = 0
    expected: int | None = None  # frames the sender says the run has (from its stop message)
    seen: set = field(default_factory=set)
    published: set = field(default_factory=set)
    doc: dict = field(default_factory=dict)  # the start document, read once from the start message
    started_at: float = 0.0  # monotonic time its start arrived: waits for shared state count from here
    duplicates: int = 0  # repeated sequence numbers dropped
    first_seen: float = 0.0  # monotonic time of its first message (a run that never starts expires from here)
    last_seen: float = 0.0  # monotonic time of its latest message (a run that never ends expires from here)
    expired: str = ""  # why it expired, if it did


class RunBook:
    """Every run's state; items and workers through ``scheduler``, shared state from ``shared``.

    ``levels`` are the modules in pipeline order (``PipelineConfig.levels``); ``publish(msg,
    topic)`` tells subscribers a run started or ended; ``counts`` are the handler's counters
    (late, repeated and aborted data are counted there).
    """

    def __init__(self, scheduler, shared, *, levels: list, wait_timeout_s: float, publish: Callable,
                 counts: Counter, clock: Callable[[], float] = time.monotonic, max_open_runs: int = 64,
                 start_timeout_s: float = 60.0, idle_timeout_s: float = 6 * 3600.0):
        self.scheduler, self.shared, self.levels = scheduler, shared, levels
        self.wait_timeout_s, self.publish, self.counts, self.clock = wait_timeout_s, publish, counts, clock
        self.max_open_runs, self.start_timeout_s, self.idle_timeout_s = max_open_runs, start_timeout_s, idle_timeout_s
        self.runs: dict[str, RunState] = {}
        self._ended_ids: deque[str] = deque(maxlen=100_000)
        self._ended_set: set[str] = set()

    def _run(self, run: str) -> RunState:
        if run not in self.runs:
            self.runs[run] = RunState(run)
        return self.runs[run]

    # ---------------------------------------------------------------- ingest
    def accept(self, msg: Message) -> RunState | None:
        """An ingested message; returns its run when it is new data for the modules to work on.

        Raises :class:`ProtocolError` (answered with a nack) for a number out of range, one run
        more than ``max_open_runs``, or data of a run that expired."""
        if msg.run in self._ended_set:  # ended long ago and forgotten: still refused
            self.counts["after_end"] += 1
            return None
        if msg.kind == "stop":
            expected = msg.meta.get("num_frames")
            if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int) or not 0 <= expected <= MAX_FRAMES):
                raise ProtocolError("out-of-range", f"num_frames must be an integer 0..{MAX_FRAMES}, got {expected!r}"[:120])
        now = self.clock()
        run = self.runs.get(msg.run)
        if run is None:
            open_runs = [r for r in self.runs.values() if not r.ended]
            if len(open_runs) >= self.max_open_runs:
                self.counts["runs_refused"] += 1
                oldest = min(open_runs, key=lambda r: r.last_seen)
                raise ProtocolError("too-many-runs", f"{len(open_runs)} runs are open (max_open_runs); the most silent, {oldest.run[:8]}, "
                                    f"for {now - oldest.last_seen:.0f} s: 'ns-bluesky pipeline abort --run' it or raise max_open_runs")
            run = self._run(msg.run)
            run.first_seen = now
        if run.expired:
            self.counts["after_expiry"] += 1
            raise ProtocolError("run-expired", f"run {msg.run[:8]} expired: {run.expired}")
        run.last_seen = now
        if msg.kind == "start":
            if run.start is not None:  # a client resending after a silence: already known
                self.counts["duplicate_ingest"] += 1
                return None
            run.start, run.doc, run.started_at = msg, start_document(msg), self.clock()
            self.publish(msg, topic="start")  # subscribers (the recorder, screens) learn what the run is
            self.scheduler.broadcast(self.scheduler.modules.values(), msg)
            return None
        if msg.kind == "stop":
            run.stopping = True
            run.expected = msg.meta.get("num_frames")  # checked above
            self.check_end(run)
            return None
        if run.ended:  # the run already ended: a late frame is refused, not half-processed
            self.counts["after_end"] += 1
            return None
        key = (msg.kind, msg.seq)
        if key in run.seen:
            self.counts["duplicate_ingest"] += 1
            run.duplicates += 1
            return None
        run.seen.add(key)
        if run.aborted:
            self.counts["aborted"] += 1
            return None
        run.frames += 1
        return run

    def enqueue(self, mod, run: RunState, msg: Message):
        """A data item of the run for ``mod``, queued or held behind the barrier; None if ``mod`` skips the run."""
        if mod.purposes and run.start is not None and run.doc.get("purpose") not in mod.purposes:
            return None  # not a run this module works on (a frame worker and the dark run)
        item = self.scheduler.new_item(mod.spec.name, msg)
        mod.counts["received"] += 1
        run.pending += 1
        if self.missing(mod, run) and not self.wait_over(run):
            mod.held.setdefault(run.run, []).append(item.id)
            mod.counts["held"] += 1
        else:
            mod.queue.append(item.id)
        return item

    # ---------------------------------------------------------------- the barrier
    def missing(self, mod, run: RunState) -> list[str]:
        """The shared results the run's items need in this module and that have not come ("dark abc123")."""
        doc = run.doc
        return [f"{stage} {doc[key]}" for stage, key in mod.waits_for.items() if doc.get(key) and (stage, doc[key]) not in self.shared]

    def wait_over(self, run: RunState) -> bool:
        return self.clock() - run.started_at > self.wait_timeout_s

    def release_held(self) -> None:
        """Items whose shared state arrived, or whose wait timed out, join their module's queue."""
        for mod in self.scheduler.modules.values():
            for run_id in list(mod.held):
                run = self.runs.get(run_id)
                missing = self.missing(mod, run) if run is not None else []
                if missing and not self.wait_over(run):
                    continue
                if missing:
                    mod.counts["wait_timeouts"] += 1
                    log.warning("run %s: %s waited %.0f s for %s; going on without it",
                                run_id[:8], mod.spec.name, self.wait_timeout_s, ", ".join(missing))
                mod.queue.extend(mod.held.pop(run_id))

    def replay(self, worker, mod) -> None:
        """A worker that just registered learns of the runs under way."""
        for run in self.runs.values():
            if run.start is not None and not run.aborted and not run.ended:
                self.scheduler.send(worker, self.scheduler.new_item(mod.spec.name, run.start, broadcast=True))

    # ---------------------------------------------------------------- the end
    def item_done(self, run: RunState) -> None:
        run.pending -= 1
        self.check_end(run)

    def broadcast_done(self, item) -> None:
        """A start or stop item is finished (or its worker is gone); the last stop of a level moves the end on."""
        run = self.runs.get(item.run)
        if run is not None and item.msg.kind == "stop" and run.stop_pending > 0:
            run.stop_pending -= 1
            self.check_end(run)

    def check_end(self, run: RunState) -> None:
        """End a run level by level: a module's end-of-run results reach the modules after it first."""
        if run.ended or not run.stopping or run.pending > 0 or run.stop_pending > 0 or run.aborted:
            return
        if run.expected is not None and run.frames < run.expected:
            return  # frames still on their way (a sender resending after a silence)
        stop = Message("stop", run=run.run)
        while run.stop_pending == 0 and run.pending == 0:
            run.stop_level += 1
            if run.stop_level >= len(self.levels):
                self._end_of_run(run)
                return
            run.stop_pending = self.scheduler.broadcast(self.levels[run.stop_level], stop)

    def _end_of_run(self, run: RunState) -> None:
        run.ended, run.stop_pending = True, 0
        meta = {"frames": run.frames, "results": len(run.published), "aborted": run.aborted, "duplicates": run.duplicates}
        if run.expired:
            meta["expired"] = run.expired
        planned = run.doc.get("num_points")
        if isinstance(planned, int) and not isinstance(planned, bool) and 0 < planned <= 10_000_000:
            seqs = {seq for _, seq in run.seen}
            missing = [s for s in range(1, planned + 1) if s not in seqs]  # event numbers start at 1
            meta.update(planned=planned, missing=len(missing), missing_seqs=missing[:1000])
        self.publish(Message("end_of_run", run=run.run, meta=meta), topic="end_of_run")
        log.info("run %s ended: %d frames, %d results, aborted=%s", run.run, run.frames, len(run.published), run.aborted)
        # what an ended run no longer needs goes now, not when it is pruned (the last MAX_RUNS runs are kept): the
        # numbers of its frames and results and its start document (a 10 000-point scan's positions: about 1 MB)
        run.seen, run.published, run.doc = set(), set(), {}
        run.start = Message("start", run=run.run)  # a start resent after the end is still known, and not replayed

    def abort(self, run_id: str | None = None) -> list:
        """Abort one run (or every one under way): its waiting items are dropped (returned), it ends now."""
        targets = [r for r in self.runs.values() if run_id in (None, r.run) and not r.aborted and not r.ended]
        dropped = []
        for run in targets:
            run.aborted = True
            dropped += self.scheduler.drop_run(run.run)
            run.pending = self.scheduler.pending(run.run)
            self._end_of_run(run)
        return dropped

    def expired(self) -> list[RunState]:
        """Runs to expire now: no start this long after their first data, or silent this long without an end.

        Each is marked (``expired`` says why) and counted; the caller aborts it, which ends it."""
        now, out = self.clock(), []
        for run in self.runs.values():
            if run.ended:
                continue
            if run.start is None and now - run.first_seen > self.start_timeout_s:
                run.expired = f"no start within {self.start_timeout_s:g} s of its first data"
            elif now - run.last_seen > self.idle_timeout_s:
                run.expired = f"silent for {self.idle_timeout_s:g} s without {'its end' if run.stopping else 'a stop'}"
            else:
                continue
            self.counts["expired_runs"] += 1
            log.warning("run %s expired (%s): %d frames, its queued items dropped", run.run[:8], run.expired, run.frames)
            out.append(run)
        return out

    def prune(self) -> None:
        """Forget the oldest ended runs beyond ``MAX_RUNS``: a beamtime has thousands of runs."""
        excess = len(self.runs) - MAX_RUNS
        if excess <= 0:
            return
        for run_id in [r.run for r in self.runs.values() if r.ended][:excess]:
            del self.runs[run_id]
            self._ended_ids.append(run_id)
            self._ended_set.add(run_id)
        while len(self._ended_set) > len(self._ended_ids):  # the deque dropped its oldest
            self._ended_set = set(self._ended_ids)
