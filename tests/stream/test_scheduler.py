"""The scheduler alone: queues, credits, dispatch order, liveness, abort; a recording transport, no sockets."""

from __future__ import annotations

from ns_bluesky.stream.broker.scheduler import ModuleState, Scheduler, module_class
from ns_bluesky.stream.broker.slots import Slots
from ns_bluesky.stream.config import ModuleSpec
from ns_bluesky.stream.protocol import Message, decode


class Wire:
    """What the scheduler sends: items to workers, control messages and heartbeats, lost broadcasts."""

    def __init__(self):
        self.items, self.posts, self.lost = [], [], []

    def send_item(self, worker, item):
        self.items.append((worker.identity, item.id))

    def post(self, identity, frames):
        msg = decode(frames)
        self.posts.append((identity, msg.meta.get("command", msg.kind)))


def make(*modules):
    """A scheduler over echo-type modules named ``modules`` (or one called "echo")."""
    mods = {name: ModuleState(ModuleSpec(name=name, module="echo"), ("frame",)) for name in modules or ("echo",)}
    wire = Wire()
    return Scheduler(mods, send_item=wire.send_item, post=wire.post, slots=Slots(False), lost=wire.lost.append), wire


def frames(s, n, run="r", module="echo"):
    ids = []
    for seq in range(n):
        item = s.new_item(module, Message("frame", run=run, seq=seq))
        s.modules[module].queue.append(item.id)
        ids.append(item.id)
    return ids


def test_the_module_class_is_looked_up_once_and_its_declarations_kept():
    spec = ModuleSpec(name="f", module="frame")
    mod = ModuleState(spec, ("frame", "dark"))
    cls = module_class(spec)
    assert cls.name == "frame"
    assert (mod.purposes, mod.waits_for, mod.shared_outputs) == (cls.purposes, cls.waits_for, cls.shared_outputs)
    assert ModuleState(ModuleSpec(name="d", module="dark"), ("frame",)).shared_outputs == ("dark",)


def test_consumers_map_each_input_to_its_modules():
    s, _ = make("a", "b")
    assert [m.spec.name for m in s.consumers["frame"]] == ["a", "b"]


def test_items_go_to_the_most_credits_then_the_least_recently_served():
    s, wire = make()
    s.add(b"A", "echo", 1, 2, 0.0)
    s.add(b"B", "echo", 2, 3, 0.0)
    ids = frames(s, 6)
    s.dispatch()
    # B (3) A (2) -> tie 2:2, B served last -> A, then B, A (each 1:1 after) ... until no credits
    assert [w for w, _ in wire.items] == [b"B", b"A", b"B", b"A", b"B"]
    assert [i for _, i in wire.items] == ids[:5]  # in queue order
    assert list(s.modules["echo"].queue) == ids[5:]  # no credit left for the sixth
    a, b = s.worker(b"A"), s.worker(b"B")
    assert (a.credits, b.credits) == (0, 0) and a.in_flight == {ids[1], ids[3]}
    assert s.items[ids[0]].worker == b"B"


def test_an_answer_returns_the_credit_and_counts_the_outcome():
    s, wire = make()
    w = s.add(b"A", "echo", 1, 3, 0.0)
    ids = frames(s, 4)
    s.dispatch()
    items = [s.items[i] for i in ids[:3]]
    s.finish(w, items[0], 5.0, error=False, aborted=False)
    s.finish(w, items[1], 6.0, error=True, aborted=False)
    s.finish(w, items[2], 7.0, error=False, aborted=True)
    counts = s.modules["echo"].counts
    assert (counts["processed"], counts["errors"], counts["aborted"]) == (1, 1, 1)
    assert w.credits == 3 and w.in_flight == set() and w.processed == 1 and list(s.modules["echo"].done_times) == [5.0]
    assert set(s.items) == {ids[3]}
    s.dispatch()
    assert wire.items[-1] == (b"A", ids[3])
    start = s.new_item("echo", Message("start", run="r"), broadcast=True)
    s.send(w, start)
    s.finish(w, start, 8.0, error=False, aborted=False)
    assert w.credits == 2 and counts["processed"] == 1  # a start, stop or shared item holds no credit


def test_a_draining_worker_gets_nothing_new_and_is_let_go_once_idle():
    s, wire = make()
    w = s.add(b"A", "echo", 7, 2, 0.0)
    frames(s, 1)
    s.dispatch()
    s.drain("echo", 7)
    frames(s, 1)
    s.dispatch()
    assert len(wire.items) == 1
    s.check_liveness(0.5, 10.0)
    assert s.worker(b"A") is w  # an item still in flight
    s.finish(w, s.items[next(iter(w.in_flight))], 0.6, error=False, aborted=False)
    s.check_liveness(0.7, 10.0)
    assert s.worker(b"A") is None and wire.posts == [(b"A", "shutdown")]
    assert len(s.modules["echo"].queue) == 1  # waits for another worker


def test_a_silent_worker_is_purged_and_its_items_go_back_to_the_front_in_order():
    s, wire = make()
    dead = s.add(b"D", "echo", 1, 3, 0.0)
    ids = frames(s, 5)
    s.dispatch()
    stop = s.new_item("echo", Message("stop", run="r"), broadcast=True)
    s.send(dead, stop)
    live = s.add(b"L", "echo", 2, 5, 1.0)
    s.check_liveness(1.5, 1.0)  # D last heard at 0.0: expired; L at 1.0: fine
    assert s.worker(b"D") is None and s.worker(b"L") is live
    assert list(s.modules["echo"].queue) == ids  # the three in flight before the two never sent
    assert s.modules["echo"].counts["redispatched"] == 3
    assert wire.lost == [stop] and stop.id not in s.items  # the run book counts its stop as done
    assert all(s.items[i].worker is None for i in ids[:3])
    s.dispatch()
    assert [i for w, i in wire.items if w == b"L"] == ids


def test_saying_ready_again_starts_afresh():
    s, _ = make()
    old = s.add(b"A", "echo", 1, 2, 0.0)
    ids = frames(s, 2)
    s.dispatch()
    new = s.add(b"A", "echo", 1, 2, 1.0, draining=True)
    assert s.worker(b"A") is new and new is not old and new.draining
    assert list(s.modules["echo"].queue) == ids and old.in_flight == set()


def test_heartbeats_at_most_every_period():
    s, wire = make("a", "b")
    s.add(b"A", "a", 1, 1, 0.0)
    s.add(b"B", "b", 2, 1, 0.0)
    for now in (1.0, 1.1, 1.2, 1.3):
        s.heartbeat(now, 0.25)
    assert wire.posts == [(b"A", "heartbeat"), (b"B", "heartbeat"), (b"A", "heartbeat"), (b"B", "heartbeat")]


def test_broadcast_reaches_every_worker_of_the_modules_given_each_as_its_own_item():
    s, wire = make("a", "b")
    s.add(b"A1", "a", 1, 1, 0.0)
    s.add(b"A2", "a", 2, 1, 0.0)
    s.add(b"B1", "b", 3, 1, 0.0)
    assert s.broadcast(s.modules.values(), Message("start", run="r")) == 3
    assert [w for w, _ in wire.items] == [b"A1", b"A2", b"B1"]
    assert all(s.items[i].broadcast and s.items[i].module == m for (_, i), m in zip(wire.items, "aab", strict=True))
    assert s.worker(b"A1").credits == 1  # no credit spent
    assert s.broadcast([s.modules["b"]], Message("stop", run="r")) == 1


def test_dropping_a_run_takes_its_queued_and_held_items_and_tells_every_worker():
    s, wire = make("a", "b")
    s.add(b"A", "a", 1, 1, 0.0)
    s.add(b"B", "b", 2, 1, 0.0)
    x = frames(s, 3, run="x", module="a")
    y = frames(s, 2, run="y", module="a")
    s.dispatch()  # x[0] goes to A
    held = s.new_item("b", Message("frame", run="x", seq=9))
    s.modules["b"].held["x"] = [held.id]
    assert s.pending("x") == 4 and s.pending("y") == 2
    dropped = s.drop_run("x")
    assert [it.id for it in dropped] == [*x[1:], held.id]
    assert list(s.modules["a"].queue) == y and s.modules["b"].held == {}
    assert s.modules["a"].counts["aborted"] == 2 and s.modules["b"].counts["aborted"] == 1
    assert wire.posts == [(b"A", "abort"), (b"B", "abort")]
    assert s.pending("x") == 1  # the one in flight: its worker answers for it
