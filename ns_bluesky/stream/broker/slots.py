"""Shared-memory slots of local workers: which are free, which results still read one, unmapping.

A worker on this machine offers a segment of slots when it says READY. A large item
goes to it in a free slot instead of over TCP; the slot comes back when the item is
done and zmq has finished publishing any results that still point into it.
"""

from __future__ import annotations

import logging

from ..protocol import Message
from ..shm import IN, MIN_SHM_BYTES, Placer, SlotArena

log = logging.getLogger(__name__)


class Slots:
    """The slot books of every worker (kept on its record) and the segments of gone workers."""

    def __init__(self, enabled: bool):
        self.enabled = enabled  # the pipeline shares memory with local workers at all
        self.retired: list[tuple[SlotArena, list]] = []  # arenas of gone workers, unmapped once unread

    def attach(self, worker, offer) -> None:
        """Map the segment a worker offers; a worker without one (or on another machine) gets TCP."""
        if not self.enabled or not isinstance(offer, dict):
            return
        try:
            worker.arena = SlotArena.attach(str(offer["name"]), int(offer["slots"]), int(offer["slot_bytes"]))
        except Exception as exc:  # a worker on another machine, or a segment gone: TCP it is
            log.info("worker %s pid %d: no shared memory (%s); frames go over TCP", worker.module, worker.pid, exc)
            return
        worker.free_slots = list(range(worker.arena.slots))

    def place(self, worker, item, msg: Message) -> Placer | None:
        """A free slot for a large item's arrays (noted in the item and the message), or None: TCP."""
        if worker.free_slots and not item.broadcast and sum(a.nbytes for a in msg.arrays.values()) >= MIN_SHM_BYTES:
            item.slot = msg.meta["slot"] = worker.free_slots.pop()
            return Placer(worker.arena, item.slot, IN)
        return None

    @staticmethod
    def release(worker, item) -> None:
        """The item is done: its slot is free once zmq has sent the results that point into it."""
        if item.slot is not None:
            worker.releasing.append((item.slot, item.trackers))

    def reclaim(self, workers) -> None:
        """Slots whose published results zmq has finished sending take new items again."""
        for worker in workers:
            if worker.releasing:
                still = []
                for slot, trackers in worker.releasing:
                    if all(t.done for t in trackers):
                        worker.free_slots.append(slot)
                    else:
                        still.append((slot, trackers))
                worker.releasing = still
        self.retired = [(arena, ts) for arena, ts in self.retired if not (all(t.done for t in ts) and arena.close())]

    def retire(self, worker) -> None:
        """The worker is gone from our books: its segment is unmapped once zmq no longer reads it."""
        if worker.arena is not None:
            self.retired.append((worker.arena, [t for _, ts in worker.releasing for t in ts]))
            worker.arena, worker.free_slots, worker.releasing = None, [], []

    def close(self) -> None:
        """Unmap every retired segment (the handler stops)."""
        for arena, _ in self.retired:
            arena.close()
