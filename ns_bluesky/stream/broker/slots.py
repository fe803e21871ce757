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

MAX_SLOTS = 1024
MAX_SLOT_BYTES = 1 << 30


class Slots:
    """The slot books of every worker (kept on its record) and the segments of gone workers."""

    def __init__(self, enabled: bool):
        self.enabled = enabled  # the pipeline shares memory with local workers at all
        self.retired: list[tuple[SlotArena, list]] = []  # arenas of gone workers, unmapped once unread
        self.attached: set[str] = set()  # segment names mapped for a registered worker: one worker each
        self.refused = 0  # offers of a segment that failed verification

    def attach(self, worker, offer) -> None:
        """Map the segment a worker offers; a worker without one (or on another machine) gets TCP."""
        if not self.enabled or not isinstance(offer, dict):
            return
        try:
            name, slots, slot_bytes = offer["name"], offer["slots"], offer["slot_bytes"]
            if not isinstance(name, str) or not all(isinstance(v, int) and not isinstance(v, bool) for v in (slots, slot_bytes)):
                raise ValueError(f"a segment offer needs a name and two integers, got {offer!r}"[:200])
            if not (0 < slots <= MAX_SLOTS and 0 < slot_bytes <= MAX_SLOT_BYTES):
                raise ValueError(f"{slots} slots of {slot_bytes} bytes is out of range")
            if name in self.attached:
                raise ValueError(f"segment {name} is already another worker's")
            worker.arena = SlotArena.attach(name, slots, slot_bytes, worker.pid)
        except FileNotFoundError as exc:  # a worker on another machine, or a segment gone: TCP it is
            log.info("worker %s pid %d: no shared memory (%s); frames go over TCP", worker.module, worker.pid, exc)
            return
        except Exception as exc:  # a segment that is not the worker's own: never written to
            self.refused += 1
            log.warning("worker %s pid %d: shared-memory segment refused (%s); frames go over TCP", worker.module, worker.pid, exc)
            return
        self.attached.add(name)
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
            self.attached.discard(worker.arena.name)
            self.retired.append((worker.arena, [t for _, ts in worker.releasing for t in ts]))
            worker.arena, worker.free_slots, worker.releasing = None, [], []

    def close(self) -> None:
        """Unmap every retired segment (the handler stops)."""
        for arena, _ in self.retired:
            arena.close()
