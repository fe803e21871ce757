"""The shared-memory slot books alone: a segment of our own, fake zmq trackers, no sockets."""

from __future__ import annotations

import os
from multiprocessing import resource_tracker

import numpy as np
import pytest

from ns_bluesky.stream.broker.scheduler import Item, WorkerState
from ns_bluesky.stream.broker.slots import Slots
from ns_bluesky.stream.protocol import Message
from ns_bluesky.stream.shm import IN, MIN_SHM_BYTES, SlotArena, segment_name

PID = os.getpid()  # the segments here are this process's, as a worker's are its own


class _Tracker:  # what zmq's MessageTracker tells: has the frame been sent
    def __init__(self, done=False):
        self.done = done


@pytest.fixture
def segment():
    """A segment as a local worker makes it; each test attaches it once, as the handler does."""
    a = SlotArena.create(2, 1 << 20, name=segment_name(PID))
    yield a
    # attaching took this process's tracker claim off (the owner is elsewhere, normally): put it back to unlink
    resource_tracker.register(a.shm._name, "shared_memory")
    a.shm.unlink()
    a.close()


def _offer(a):
    return {"name": a.name, "slots": a.slots, "slot_bytes": a.slot_bytes}


def _frame(n_bytes):
    return Message("frame", run="r", seq=1, arrays={"raw": np.ones(n_bytes // 2, np.uint16)})


def test_a_worker_offering_a_segment_gets_its_slots(segment):
    slots, w = Slots(True), WorkerState(b"w", "m", PID, 2, 0.0)
    slots.attach(w, _offer(segment))
    assert w.arena is not None and w.free_slots == [0, 1]
    for off in (Slots(False), Slots(True)):  # shared memory off, or no offer: TCP
        other = WorkerState(b"x", "m", 2, 2, 0.0)
        off.attach(other, _offer(segment) if not off.enabled else None)
        assert other.arena is None and other.free_slots == []
    gone = WorkerState(b"y", "m", 3, 2, 0.0)
    slots.attach(gone, {"name": segment_name(3), "slots": 2, "slot_bytes": 1 << 20})
    assert gone.arena is None and slots.refused == 0  # a segment that is not there (on another machine): TCP, no error
    w.arena.close()


def test_only_large_balanced_items_take_a_slot_and_the_slot_comes_back_once_sent(segment):
    slots, w = Slots(True), WorkerState(b"w", "m", PID, 2, 0.0)
    slots.attach(w, _offer(segment))
    small, start = _frame(MIN_SHM_BYTES - 2), Message("start", run="r", arrays={"raw": np.ones(MIN_SHM_BYTES, np.uint8)})
    assert slots.place(w, Item(1, "m", small), small) is None
    assert slots.place(w, Item(2, "m", start, broadcast=True), start) is None
    big = _frame(MIN_SHM_BYTES)
    item = Item(3, "m", big)
    placer = slots.place(w, item, big)
    assert placer is not None and placer.half == IN and item.slot == big.meta["slot"] == 1 and w.free_slots == [0]
    tracker = _Tracker()
    item.trackers.append(tracker)
    slots.release(w, item)
    slots.reclaim([w])
    assert w.free_slots == [0]  # its results are still being published
    tracker.done = True
    slots.reclaim([w])
    assert w.free_slots == [0, 1] and w.releasing == []
    slots.release(w, Item(4, "m", small))  # held no slot: nothing to give back
    assert w.releasing == []
    w.arena.close()


def test_a_gone_workers_segment_is_unmapped_once_zmq_no_longer_reads_it(segment):
    slots, w = Slots(True), WorkerState(b"w", "m", PID, 2, 0.0)
    slots.attach(w, _offer(segment))
    arena, tracker = w.arena, _Tracker()
    w.releasing = [(0, [tracker])]
    slots.retire(w)
    assert (w.arena, w.free_slots, w.releasing) == (None, [], []) and slots.retired == [(arena, [tracker])]
    slots.reclaim([])
    assert slots.retired  # a frame still points into it
    tracker.done = True
    slots.reclaim([])
    assert slots.retired == [] and arena.buf is None
    slots.retire(w)  # already gone: nothing twice
    assert slots.retired == []


def test_close_unmaps_every_retired_segment(segment):
    slots, w = Slots(True), WorkerState(b"w", "m", PID, 2, 0.0)
    slots.attach(w, _offer(segment))
    arena = w.arena
    w.releasing = [(0, [_Tracker()])]
    slots.retire(w)
    slots.close()
    assert arena.buf is None


def test_a_segment_that_is_not_the_workers_own_is_never_attached(segment, tmp_path):
    """Named as another process's, not named as a worker's, someone else's, open to others, offered twice, or absurd: refused."""
    slots = Slots(True)
    first = WorkerState(b"w", "m", PID, 2, 0.0)
    slots.attach(first, _offer(segment))
    assert first.arena is not None
    offers = {
        "offered twice": (PID, _offer(segment)),
        "another pid's name": (PID + 1, _offer(segment)),
        "not a worker segment": (PID, {**_offer(segment), "name": "psm_deadbeef"}),
        "a path": (PID, {**_offer(segment), "name": f"../../{tmp_path.name}/x"}),
        "absurd sizes": (PID, {**_offer(segment), "slots": 10**9}),
        "not numbers": (PID, {**_offer(segment), "slot_bytes": "1"}),
    }
    for why, (pid, offer) in offers.items():
        w = WorkerState(why.encode(), "m", pid, 2, 0.0)
        slots.attach(w, offer)
        assert w.arena is None and w.free_slots == [], why
    assert slots.refused == len(offers)
    first.arena.close()


def test_a_segment_open_to_others_or_of_another_user_is_refused(segment):
    os.chmod(f"/dev/shm/{segment.name}", 0o644)
    slots, w = Slots(True), WorkerState(b"w", "m", PID, 2, 0.0)
    slots.attach(w, _offer(segment))
    assert w.arena is None and slots.refused == 1
    os.chmod(f"/dev/shm/{segment.name}", 0o600)
    if os.geteuid() == 0:  # a segment another user made under a worker's name
        os.chown(f"/dev/shm/{segment.name}", 65534, 65534)
        slots.attach(w, _offer(segment))
        assert w.arena is None and slots.refused == 2
        os.chown(f"/dev/shm/{segment.name}", 0, 0)
    slots.attach(w, _offer(segment))
    assert w.arena is not None
    w.arena.close()
