"""Shared-memory slots between the handler and local workers: contents intact, segments never left behind."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ns_bluesky.stream.protocol import Message, ProtocolError, decode, encode
from ns_bluesky.stream.shm import IN, OUT, Placer, SlotArena, segment_prefix


def _segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("ns-bluesky-*")}


def _has_segment(pid: int) -> bool:
    return any(name.startswith(segment_prefix(pid)) for name in _segments())


@pytest.fixture
def arena():
    a = SlotArena.create(3, 1 << 20)  # named as this process's segment, as a worker names its own
    yield a
    a.unlink()
    a.close()


def test_arrays_travel_as_offsets_and_come_back_equal(arena):
    peer = SlotArena.attach(arena.name, 3, 1 << 20, os.getpid())
    frame = np.arange(300 * 300, dtype=np.float32).reshape(300, 300)
    small = np.arange(5, dtype=np.int32)
    frames = encode(Message("frame", run="r", seq=1, arrays={"raw": frame, "pos": small}), Placer(arena, 2, IN))
    assert len(frames) == 2  # the header and the small array; the frame went into the slot
    msg = decode(frames, shm=peer.buf)
    np.testing.assert_array_equal(msg.arrays["raw"], frame)
    np.testing.assert_array_equal(msg.arrays["pos"], small)
    assert not msg.arrays["raw"].flags.writeable  # a module cannot scribble on the handler's copy
    # a result that is the input itself is passed by reference; a new array is copied into the output half
    out = Placer(peer, 2, OUT, reuse_half=IN)
    assert out(msg.arrays["raw"]) == arena.offset(2, IN)
    doubled = np.ascontiguousarray(msg.arrays["raw"] * 2)
    assert out(doubled) == arena.offset(2, OUT)
    del msg
    peer.close()


def test_offsets_outside_the_segment_and_oversized_arrays_are_refused(arena):
    header = b'{"v": 1, "kind": "result", "run": "r", "seq": 1, "stage": "s", "arrays": [{"name": "a", "dtype": "<f8", "shape": [8], "shm": %d}]}'
    with pytest.raises(ProtocolError) as info:
        decode([header % (len(arena.buf) - 8)], shm=arena.buf)
    assert info.value.reason == "bad-shm-offset"
    huge = np.zeros((1 << 20) + 8, np.uint8)
    assert Placer(arena, 0, IN)(huge) is None  # does not fit: travels inline instead


def test_large_frames_use_shared_memory_and_every_one_comes_back_intact(make_pipeline):
    from tests.support.pipeline import send_run

    pipe = make_pipeline()
    client = pipe.ingest()
    send_run(client, "big", 200, shape=(520, 576))  # 0.6 MB each: 2 workers x 10 slots are reused many times
    client.flush()
    msgs = pipe.results.collect(lambda ms: pipe.results.ended("big"), timeout_s=60)
    results = [m for m in msgs if m.kind == "result" and m.run == "big"]
    assert sorted(m.seq for m in results) == list(range(200))
    for m in results:  # a slot rewritten before its result was published would show another frame's value
        assert m.arrays["image"].min() == m.arrays["image"].max() == m.seq
    status = pipe.control.status()["modules"]["echo"]
    assert status["shared_memory"] == 200


def test_a_killed_workers_segment_is_removed_and_its_frames_done_once(make_pipeline):
    from tests.support.pipeline import ECHO

    pipe = make_pipeline(ECHO.format(workers=2, delay=0.01))
    client = pipe.ingest()
    client.send(Message("start", run="kill"))
    for seq in range(100):
        client.send(Message("frame", run="kill", seq=seq, arrays={"image": np.full((256, 256), seq, np.uint16)}))
    time.sleep(0.3)
    victim = pipe.control.status()["modules"]["echo"]["workers"][0]["pid"]
    assert _has_segment(victim)
    os.kill(victim, signal.SIGKILL)
    for seq in range(100, 200):
        client.send(Message("frame", run="kill", seq=seq, arrays={"image": np.full((256, 256), seq, np.uint16)}))
    client.send(Message("stop", run="kill"))
    client.flush()
    msgs = pipe.results.collect(lambda ms: pipe.results.ended("kill"), timeout_s=60)
    results = [m for m in msgs if m.kind == "result" and m.run == "kill"]
    assert set(Counter(m.seq for m in results).values()) == {1} and len(results) == 200
    assert all(m.arrays["image"][0, 0] == m.seq for m in results)
    assert not _has_segment(victim)


def test_stopping_the_handler_leaves_no_segment_and_no_worker(make_pipeline):
    pipe = make_pipeline()
    pids = [w["pid"] for w in pipe.control.status()["modules"]["echo"]["workers"]]
    assert all(_has_segment(p) for p in pids)
    pipe.proc.terminate()  # SIGTERM: closes like 'pipeline stop'
    pipe.proc.wait(15)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
    assert not any(_has_segment(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().find("zombie") < 0
