"""Module queues and worker records: credits, dispatch order, liveness.

The zguide's Majordomo broker keeps, per service, its queue of requests and its
workers, and per worker its identity and expiry; so does this: a
:class:`ModuleState` per configured module (queue, items held for shared state,
workers, counts) and a :class:`WorkerState` per connected worker (credits, items in
flight, last heard, shared-memory slots). The :class:`Scheduler` hands queued items
to the worker with the most credits (ties: the one served least recently), takes
back a worker's credit when it answers, and re-queues the items of a worker that
stopped answering. It sends through the two functions it is given.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..protocol import Message, encode
from ..shm import SlotArena
from ..stage import Stage, load_stage

log = logging.getLogger(__name__)


def module_class(spec) -> type[Stage]:
    """The stage class a configured module runs: the one place the broker looks one up."""
    return load_stage(spec.module)


@dataclass
class WorkerState:
    identity: bytes
    module: str
    pid: int
    credits: int
    last_seen: float
    in_flight: set = field(default_factory=set)
    draining: bool = False
    processed: int = 0
    arena: SlotArena | None = None  # shared memory with a worker on this machine
    free_slots: list = field(default_factory=list)
    releasing: list = field(default_factory=list)  # (slot, zmq trackers of its published results)
    last_dispatch: float = 0.0  # ties in credits go to the worker served least recently (zguide's LRU)
    job: str | None = None  # the SLURM job it runs in (None: started here)
    host: str = ""


@dataclass
class Item:
    id: int
    module: str
    msg: Message | None
    broadcast: bool = False  # a start, stop or shared result for one worker: no credit, never re-queued
    run: str = ""
    worker: bytes | None = None
    spill: Path | None = None
    slot: int | None = None
    trackers: list = field(default_factory=list)


class ModuleState:
    """One configured module: what its class declares, its queue, its held items, its workers."""

    def __init__(self, spec, inputs: tuple[str, ...]):
        self.spec, self.inputs = spec, inputs
        cls = module_class(spec)
        self.purposes, self.waits_for, self.shared_outputs = cls.purposes, cls.waits_for, cls.shared_outputs
        self.outputs = tuple(cls.outputs)  # the only stages its workers' results may carry
        self.queue: deque[int] = deque()
        self.held: dict[str, list[int]] = {}  # run -> items waiting for the shared state the run needs
        self.workers: dict[bytes, WorkerState] = {}
        self.counts: Counter = Counter()
        self.done_times: deque[float] = deque(maxlen=2000)

    def rate(self, now: float, window: float = 5.0) -> float:
        recent = [t for t in self.done_times if now - t <= window]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)

    def backlog(self) -> int:
        """Items waiting here, queued or held."""
        return len(self.queue) + sum(map(len, self.held.values()))


class Scheduler:
    """Every module's queue and workers, and every item not yet done.

    ``send_item(worker, item)`` puts an item on the wire (the item is already on the
    worker's books); ``post(identity, frames)`` sends a control message or heartbeat;
    ``lost(item)`` hears of a start or stop item that died with its worker (it counts as
    done); ``slots`` keeps the workers' shared memory.
    """

    def __init__(self, modules: dict[str, ModuleState], *, send_item: Callable, post: Callable, slots, lost: Callable):
        self.modules = modules
        self.send_item, self.post, self.slots, self.lost = send_item, post, slots, lost
        self.consumers: dict[str, list[ModuleState]] = {}  # ingest kind or result stage -> the modules fed by it
        for mod in modules.values():
            for kind in mod.inputs:
                self.consumers.setdefault(kind, []).append(mod)
        self.items: dict[int, Item] = {}
        self._next_id = 0
        self._last_beat = 0.0

    def workers(self) -> Iterator[WorkerState]:
        return (w for mod in self.modules.values() for w in mod.workers.values())

    def worker(self, identity: bytes) -> WorkerState | None:
        for mod in self.modules.values():
            if identity in mod.workers:
                return mod.workers[identity]
        return None

    # ---------------------------------------------------------------- items
    def new_item(self, module: str, msg: Message, broadcast: bool = False) -> Item:
        self._next_id += 1
        item = Item(self._next_id, module, msg, broadcast, run=msg.run)
        self.items[item.id] = item
        return item

    def send(self, worker: WorkerState, item: Item) -> None:
        item.worker = worker.identity
        worker.in_flight.add(item.id)
        self.send_item(worker, item)

    def broadcast(self, mods: Iterable[ModuleState], msg: Message) -> int:
        """``msg`` to every worker of ``mods``, each as its own item; how many were sent."""
        sent = 0
        for mod in mods:
            for worker in mod.workers.values():
                self.send(worker, self.new_item(mod.spec.name, msg, broadcast=True))
                sent += 1
        return sent

    def dispatch(self) -> None:
        self.slots.reclaim(self.workers())
        for mod in self.modules.values():
            while mod.queue:
                # a local worker whose slots are all still being published waits for one rather than
                # take the item over TCP: the copies saved are what keeps the pipeline fast
                ready = [w for w in mod.workers.values() if w.credits > 0 and not w.draining and (w.arena is None or w.free_slots)]
                if not ready:
                    break
                worker = max(ready, key=lambda w: (w.credits, -w.last_dispatch))
                item = self.items[mod.queue.popleft()]
                worker.credits -= 1
                worker.last_dispatch = time.monotonic()
                self.send(worker, item)

    def finish(self, worker: WorkerState, item: Item, now: float, *, error: bool, aborted: bool) -> None:
        """The worker answered for ``item``: off the books, its slot released; a balanced item returns its credit."""
        del self.items[item.id]
        mod = self.modules[item.module]
        worker.in_flight.discard(item.id)
        self.slots.release(worker, item)
        if error:
            mod.counts["errors"] += 1
        if item.broadcast:
            return
        worker.credits += 1
        if aborted:
            mod.counts["aborted"] += 1
        elif not error:
            mod.counts["processed"] += 1
            worker.processed += 1
            mod.done_times.append(now)

    def drop_run(self, run: str) -> list[Item]:
        """The run is aborted: its queued and held items go (returned), every worker is told."""
        dropped = []
        for mod in self.modules.values():
            keep = deque()
            for item_id in mod.queue:
                item = self.items[item_id]
                if item.run == run:
                    del self.items[item_id]
                    dropped.append(item)
                    mod.counts["aborted"] += 1
                else:
                    keep.append(item_id)
            mod.queue = keep
            for item_id in mod.held.pop(run, []):
                dropped.append(self.items.pop(item_id))
                mod.counts["aborted"] += 1
            for worker in mod.workers.values():
                self.post(worker.identity, encode(Message("control", run=run, meta={"command": "abort"})))
        return dropped

    def pending(self, run: str) -> int:
        """Balanced items of the run not yet done, wherever they are."""
        return sum(1 for it in self.items.values() if not it.broadcast and it.run == run)

    # ---------------------------------------------------------------- workers
    def add(self, identity: bytes, module: str, pid: int, credits: int, now: float, *, shm=None, draining=False,
            job: str | None = None, host: str = "") -> WorkerState:
        """A worker said READY (again: its old record and items go first)."""
        old = self.worker(identity)
        if old is not None:
            self.purge(old, "re-registered")
        worker = WorkerState(identity, module, pid, credits, now, job=job, host=host)
        self.slots.attach(worker, shm)
        worker.draining = draining
        self.modules[module].workers[identity] = worker
        log.info("worker %s pid %d ready with %d credits", module, worker.pid, worker.credits)
        return worker

    def purge(self, worker: WorkerState, why: str) -> None:
        """The worker is gone: its balanced items go back to the front of the queue."""
        mod = self.modules[worker.module]
        mod.workers.pop(worker.identity, None)
        self.slots.retire(worker)
        log.warning("worker %s pid %d removed (%s); re-queueing %d items", worker.module, worker.pid, why, len(worker.in_flight))
        for item_id in sorted(worker.in_flight, reverse=True):
            item = self.items.get(item_id)
            if item is None:
                continue
            item.worker, item.slot, item.trackers = None, None, []
            if item.broadcast:
                del self.items[item_id]
                self.lost(item)  # a dead worker's end-of-run share counts as done
                continue
            mod.queue.appendleft(item_id)
            mod.counts["redispatched"] += 1
        worker.in_flight.clear()

    def check_liveness(self, now: float, expiry_s: float) -> None:
        """Purge workers silent beyond ``expiry_s``; let go of draining workers with nothing in flight."""
        for mod in self.modules.values():
            for worker in list(mod.workers.values()):
                if now - worker.last_seen > expiry_s:
                    self.purge(worker, f"no heartbeat for {now - worker.last_seen:.1f} s")
                elif worker.draining and not worker.in_flight:
                    self.post(worker.identity, encode(Message("control", meta={"command": "shutdown"})))
                    mod.workers.pop(worker.identity)
                    self.slots.retire(worker)

    def heartbeat(self, now: float, every_s: float) -> None:
        """A heartbeat to every worker, at most every ``every_s``."""
        if now - self._last_beat >= every_s:
            beat = encode(Message("heartbeat"))
            for worker in self.workers():
                self.post(worker.identity, beat)
            self._last_beat = now

    def drain(self, module: str, pid: int | None = None, *, job: str | None = None) -> None:
        """Scaled down: the worker (by local pid, or by SLURM job) takes nothing new and is let go once idle."""
        for worker in self.modules[module].workers.values():
            if (job is not None and worker.job == job) or (job is None and worker.job is None and worker.pid == pid):
                worker.draining = True
