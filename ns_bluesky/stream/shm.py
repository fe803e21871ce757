"""Shared-memory slots between the handler and a worker on the same machine.

Over TCP loopback a 2.4 MB raw frame is copied into and out of the kernel on every
hop, and the handler sits on two hops per item (to the worker, back from it). A
local worker therefore owns one shared-memory segment: ``slots`` input regions the
handler fills, and as many output regions the worker fills with its results; the
messages themselves carry only their JSON header with each array's offset. An
item holds the same slot index in both halves from dispatch until the handler has
published its results (zmq's zero-copy send of the output region is tracked), so a
region is never rewritten while anyone reads it. Remote workers, small messages and
items that find no free slot travel over TCP as before: shared memory is a fast
path, never a requirement.

Python before 3.13 registers every attached segment with the resource tracker,
which unlinks it when the attaching process exits; ``attach`` undoes that, so only
the owner (the worker, or the pool that saw it die) removes the segment.
"""

from __future__ import annotations

import os
import re
import secrets
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np

IN, OUT = 0, 1
SHM_DIR = Path("/dev/shm")  # where POSIX shared memory lives on Linux
MIN_SHM_BYTES = 64 * 1024  # below this a TCP copy is as cheap as the bookkeeping
SEGMENT_NAME = re.compile(r"ns-bluesky-[0-9]{1,10}-[0-9a-f]{12}")  # what segment_name makes, nothing else


def segment_prefix(pid: int) -> str:
    """What the segments of the worker with this pid are called (found again when it dies)."""
    return f"ns-bluesky-{pid}-"


def segment_name(pid: int) -> str:
    """A new segment's name: the pid, then a random part, so a handler can never attach a
    segment that merely shares a name with one a worker elsewhere announced."""
    return segment_prefix(pid) + secrets.token_hex(6)


class SlotArena:
    """``slots`` input and ``slots`` output regions of ``slot_bytes`` each, in one segment."""

    def __init__(self, shm: shared_memory.SharedMemory, slots: int, slot_bytes: int):
        self.shm, self.slots, self.slot_bytes = shm, slots, slot_bytes
        self.name = shm.name
        self.buf = shm.buf
        self.base = np.frombuffer(shm.buf, np.uint8).ctypes.data

    @classmethod
    def create(cls, slots: int, slot_bytes: int, name: str | None = None) -> SlotArena:
        """Create and reserve the pages (so a full /dev/shm fails here, not as SIGBUS mid-run)."""
        size = 2 * slots * slot_bytes
        shm = shared_memory.SharedMemory(name=name or segment_name(os.getpid()), create=True, size=size)
        try:
            os.posix_fallocate(shm._fd, 0, size)
        except (OSError, AttributeError):
            shm.close()
            shm.unlink()
            raise
        return cls(shm, slots, slot_bytes)

    @classmethod
    def attach(cls, name: str, slots: int, slot_bytes: int, pid: int) -> SlotArena:
        """Map a segment a worker with ``pid`` offers, once verified: named as that worker's
        (``ns-bluesky-PID-RANDOM``), owned by this user, open to no one else, large enough. Any other
        name (another user's segment, a file the handler would write frames into) is refused."""
        if not SEGMENT_NAME.fullmatch(name) or name.split("-")[2] != str(pid):
            raise ValueError(f"segment name {name!r} is not a worker segment of pid {pid} ({segment_prefix(pid)}<12 hex digits>)")
        shm = _open_untracked(name)
        try:
            st = os.fstat(shm._fd)  # the open file itself: no swap between a check and the mapping
            if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                raise ValueError(f"segment {name} belongs to uid {st.st_uid} with mode {st.st_mode & 0o777:o}: not this user's private segment")
            if shm.size < 2 * slots * slot_bytes:
                raise ValueError(f"segment {name} holds {shm.size} bytes, fewer than {slots} x 2 x {slot_bytes}")
        except BaseException:
            shm.close()
            raise
        return cls(shm, slots, slot_bytes)

    def offset(self, slot: int, half: int) -> int:
        return (2 * slot + half) * self.slot_bytes

    def locate(self, arr: np.ndarray) -> int | None:
        """The offset of a C-contiguous array that lies inside this segment, else None."""
        if not arr.flags.c_contiguous:
            return None
        start = arr.__array_interface__["data"][0] - self.base
        if 0 <= start and start + arr.nbytes <= len(self.buf):
            return start
        return None

    def close(self) -> bool:
        """Unmap; False while arrays or zmq frames still point into it (try again later)."""
        try:
            self.buf = None
            self.shm.close()
        except BufferError:
            self.buf = self.shm.buf
            return False
        return True

    def unlink(self) -> None:
        unlink_segment(self.name)


def _open_untracked(name: str) -> shared_memory.SharedMemory:
    """Open an existing segment without the resource tracker's claim on it (it would unlink it at our exit)."""
    shm = shared_memory.SharedMemory(name=name, create=False)
    try:
        resource_tracker.unregister(shm._name, "shared_memory")
    except Exception:
        pass
    return shm


def unlink_worker_segments(pid: int) -> None:
    """Remove every segment a (dead) worker left behind."""
    for path in SHM_DIR.glob(segment_prefix(pid) + "*"):
        unlink_segment(path.name)


def unlink_segment(name: str) -> None:
    """Remove a segment's name (its memory goes when the last mapping does); gone already is fine."""
    try:
        shm = _open_untracked(name)
    except FileNotFoundError:
        return
    shm.close()
    try:
        shm.unlink()  # also unregisters; a warning-free no-op when the tracker never knew it
    except FileNotFoundError:
        pass


class Placer:
    """Lays out the arrays of one message in a region: in place when already there, else copied."""

    def __init__(self, arena: SlotArena, slot: int, half: int, reuse_half: int | None = None):
        self.arena, self.slot, self.half, self.reuse_half = arena, slot, half, reuse_half
        self.start = arena.offset(slot, half)
        self.used = 0

    def __call__(self, arr: np.ndarray) -> int | None:
        if arr.nbytes < MIN_SHM_BYTES // 4:
            return None
        if self.reuse_half is not None:  # a result that is a view of the item's own input: no copy at all
            where = self.arena.locate(arr)
            lo = self.arena.offset(self.slot, self.reuse_half)
            if where is not None and lo <= where and where + arr.nbytes <= lo + self.arena.slot_bytes:
                return where
        aligned = -(-self.used // 64) * 64
        if aligned + arr.nbytes > self.arena.slot_bytes:
            return None
        off = self.start + aligned
        dst = np.frombuffer(self.arena.buf, np.uint8, arr.nbytes, off)
        dst[:] = np.frombuffer(memoryview(arr).cast("B"), np.uint8)
        self.used = aligned + arr.nbytes
        return off
