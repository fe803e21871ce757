"""The shared-memory slot books alone: a segment of our own, fake zmq trackers, no sockets."""

from __future__ import annotations

import os
from multiprocessing import resource_tracker

import numpy as np
import pytest

from ns_bluesky.stream.broker.scheduler import Item, WorkerState
from ns_bluesky.stream.broker.slots import Slots
from ns_bluesky.stream.protocol import Message
from ns_bluesky.stream.shm import IN, MIN_SHM_BYTES, SlotArena


class _Tracker:  # what zmq's MessageTracker tells: has the frame been sent
    def __init__(self, done=False):
        self.done = done


@pytest.fixture
def segment():
    """A segment as a local worker makes it; each test attaches it once, as the handler does."""
    a = SlotArena.create(2, 1 << 20, name=f"ns-bluesky-test-slots-{os.getpid()}")
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
    slots, w = Slots(True), WorkerState(b"w", "m", 1, 2, 0.0)
    slots.attach(w, _offer(segment))
    assert w.arena is not None and w.free_slots == [0, 1]
    for off in (Slots(False), Slots(True)):  # shared memory off, or no offer: TCP
        other = WorkerState(b"x", "m", 2, 2, 0.0)
        off.attach(other, _offer(segment) if not off.enabled else None)
        assert other.arena is None and other.free_slots == []
    gone = WorkerState(b"y", "m", 3, 2, 0.0)
    slots.attach(gone, {"name": "ns-bluesky-no-such-segment", "slots": 2, "slot_bytes": 1 << 20})
    assert gone.arena is None  # a segment that is not there: TCP, no error
    w.arena.close()


def test_only_large_balanced_items_take_a_slot_and_the_slot_comes_back_once_sent(segment):
    slots, w = Slots(True), WorkerState(b"w", "m", 1, 2, 0.0)
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
    slots, w = Slots(True), WorkerState(b"w", "m", 1, 2, 0.0)
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
    slots, w = Slots(True), WorkerState(b"w", "m", 1, 2, 0.0)
    slots.attach(w, _offer(segment))
    arena = w.arena
    w.releasing = [(0, [_Tracker()])]
    slots.retire(w)
    slots.close()
    assert arena.buf is None
