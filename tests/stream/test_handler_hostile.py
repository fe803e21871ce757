"""A running handler against peers that break the rules: forged results, greedy credits, oversized and malformed
messages on every socket, runs that never start or end. Real handler process, real workers, raw zmq peers."""

from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest
import zmq

from ns_bluesky.errors import ParameterError
from ns_bluesky.stream.protocol import Message, decode, encode
from tests.stream.test_handler import MALFORMED
from tests.support.pipeline import ECHO, send_run


def _raw(pipe, port: int, kind: int = zmq.DEALER) -> zmq.Socket:
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(pipe.cfg.address(port, connect=True))
    return sock


def _wait(until, timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_forged_results_are_dropped_and_greedy_credits_capped(make_pipeline):
    """A peer answering items it was not given is dropped and counted; one claiming 64 credits gets the module's 2."""
    pipe = make_pipeline(ECHO.format(workers=1, delay=0.05))
    forger = _raw(pipe, pipe.cfg.worker_port)
    client = pipe.ingest()
    send_run(client, "real", 20, shape=(8, 8))
    forged = 0
    deadline = time.monotonic() + 30
    while not pipe.results.ended("real") and time.monotonic() < deadline:
        for item in range(1, 40):  # item ids are small integers: guess them all, for the real run
            forger.send_multipart(encode(Message("result", run="real", seq=item, stage="echo", meta={"item": item, "done": True, "forged": True},
                                                 arrays={"image": np.zeros((8, 8), np.uint16)})))
            forged += 1
        pipe.results.collect(lambda ms: pipe.results.ended("real"), timeout_s=0.05)
    msgs = pipe.results.collect(lambda ms: pipe.results.ended("real"), timeout_s=30)
    results = [m for m in msgs if m.kind == "result" and m.run == "real"]
    assert not [m for m in results if m.meta.get("forged")]
    assert sorted(m.seq for m in results) == list(range(20))  # every frame once, from the real worker
    end = next(m for m in msgs if m.kind == "end_of_run" and m.run == "real")
    assert end.meta["frames"] == 20 and end.meta["results"] == 20
    status = pipe.control.status()
    assert status["counts"]["foreign_results"] > 0 and status["modules"]["echo"]["processed"] == 20

    # a registered peer claiming many credits: capped, so it cannot take the run (it never answers: purged, re-queued)
    greedy = _raw(pipe, pipe.cfg.worker_port)
    greedy.send_multipart(encode(Message("ready", meta={"module": "echo", "credits": 64, "pid": 1})))
    _wait(lambda: len(pipe.control.status()["modules"]["echo"]["workers"]) == 2, what="the greedy peer's registration")
    status = pipe.control.status()
    assert max(w["credits"] for w in status["modules"]["echo"]["workers"]) <= 2
    assert status["counts"]["credits_capped"] == 1
    send_run(client, "second", 20, shape=(8, 8))
    msgs = pipe.results.collect(lambda ms: pipe.results.ended("second"), timeout_s=60)
    assert sorted(m.seq for m in msgs if m.kind == "result" and m.run == "second") == list(range(20))
    taken = 0
    while greedy.poll(0):
        taken += decode(greedy.recv_multipart()[:]).kind == "frame"
    assert taken <= 2  # what its capped credits allowed, re-queued to the real worker when it was purged
    client.close()
    for s in (forger, greedy):
        s.close(linger=0)


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def test_a_message_over_max_array_mb_is_refused_without_being_buffered(make_pipeline):
    """One 1 GiB part: libzmq drops the sender before buffering it (the handler's peak RSS does not grow by it); the
    handler goes on; an IngestClient refuses such a frame itself, with the reason."""
    pipe = make_pipeline(ECHO.format(workers=1, delay=0), max_array_mb=8)
    before = _peak_rss_mb(pipe.proc.pid)
    huge = np.zeros(2**30, np.uint8)  # calloc'ed: untouched pages cost this process nothing either
    for port in (pipe.cfg.ingest_port, pipe.cfg.worker_port):
        sock = _raw(pipe, port)
        sock.send_multipart([json.dumps({"v": 1, "kind": "frame", "run": "big", "seq": 1, "arrays": [
            {"name": "raw", "dtype": "|u1", "shape": [2**30]}]}).encode(), memoryview(huge)], copy=False)
        time.sleep(1.0)
        sock.close(linger=0)
    assert pipe.control.status()["counts"].get("ingested", 0) == 0
    grown = _peak_rss_mb(pipe.proc.pid) - before
    assert grown < 256, f"the handler's peak RSS grew by {grown:.0f} MB"
    client = pipe.ingest()
    with pytest.raises(ParameterError, match="array 'raw' of 16777216 bytes is over the pipeline's max_array_mb = 8"):
        client.send(Message("frame", run="r", seq=1, arrays={"raw": np.zeros(2**24, np.uint8)}))
    send_run(client, "after", 3)
    client.flush(30)
    msgs = pipe.results.collect(lambda ms: pipe.results.ended("after"), timeout_s=30)
    assert sorted(m.seq for m in msgs if m.kind == "result" and m.run == "after") == [0, 1, 2]
    client.close()


def _garbage(rng: random.Random, n: int) -> list[list[bytes]]:
    """``n`` malformed messages: the known kinds, random bytes, and headers with wrong or out-of-range fields."""
    known = list(MALFORMED.values())
    heads = [
        b'{"v": 1, "kind": "frame", "run": "r", "seq": 18446744073709551616, "arrays": []}',
        b'{"v": 1, "kind": "frame", "run": "r", "seq": 1, "arrays": [{"name": "a", "dtype": "|u1", "shape": [1]}, '
        b'{"name": "a", "dtype": "|u1", "shape": [1]}]}',
        b'{"v": 1, "kind": "ready", "module": "echo", "credits": 99999999999999999999, "arrays": []}',
        b'{"v": 1, "kind": "result", "run": "r", "seq": 1, "stage": "echo", "item": 1e300, "arrays": []}',
        b'{"v": 1, "kind": "command", "command": "scale", "args": {"counts": {"echo": 1e9}}, "arrays": []}',
        b'{"v": 1, "kind": "command", "command": ["stop"], "args": [], "arrays": []}',
        b'{"v": 1, "kind": "frame", "run": "r", "seq": 1, "arrays": [{"name": "a", "dtype": "<u2", "shape": [4294967296, 4294967296]}]}',
        b"[" * 5000,
    ]
    out = []
    for i in range(n):
        pick = i % 3
        if pick == 0:
            out.append(list(known[i % len(known)]))
        elif pick == 1:
            out.append([rng.randbytes(rng.randrange(0, 200)) for _ in range(rng.randrange(1, 4))])
        else:
            out.append([heads[i % len(heads)]])
    return [[f for f in frames if len(f) < 60000] or [b"x"] for frames in out]


def test_a_thousand_malformed_messages_per_socket_leave_the_handler_answering(make_pipeline):
    pipe = make_pipeline(ECHO.format(workers=1, delay=0))
    rng = random.Random(22)
    ingest, workers, control = _raw(pipe, pipe.cfg.ingest_port), _raw(pipe, pipe.cfg.worker_port), _raw(pipe, pipe.cfg.control_port)
    results = _raw(pipe, pipe.cfg.results_port, zmq.XSUB)  # what a subscriber may send the PUB: anything
    for frames in _garbage(rng, 1000):
        ingest.send_multipart(frames)
        workers.send_multipart(frames)
        control.send_multipart([b"", *frames])  # a REQ's envelope, then the request
        results.send_multipart(frames)
    answered = {"ingest": 0, "control": 0}
    deadline = time.monotonic() + 60
    while (answered["ingest"] < 1000 or answered["control"] < 1000) and time.monotonic() < deadline:
        for name, sock in (("ingest", ingest), ("control", control)):
            while sock.poll(10):
                reply = decode(sock.recv_multipart()[1 if name == "control" else 0:])
                assert reply.kind in ("nack", "reply"), reply
                answered[name] += 1
    assert answered == {"ingest": 1000, "control": 1000}  # every refusal answered with its reason
    status = pipe.control.status()
    assert len(status["modules"]["echo"]["workers"]) == 1 and status["counts"].get("ingested", 0) == 0
    assert pipe.proc.poll() is None and sum(status["malformed"].values()) >= 1000
    assert sum(n for k, n in status["malformed"].items() if k.startswith("worker:")) > 0
    client = pipe.ingest()
    send_run(client, "after", 5)
    client.flush(30)
    msgs = pipe.results.collect(lambda ms: pipe.results.ended("after"), timeout_s=30)
    assert sorted(m.seq for m in msgs if m.kind == "result" and m.run == "after") == list(range(5))
    client.close()
    for s in (ingest, workers, control, results):
        s.close(linger=0)


def test_a_run_that_never_starts_or_never_ends_expires_and_is_counted(make_pipeline):
    pipe = make_pipeline(ECHO.format(workers=1, delay=0), run_start_timeout_s=0.5, run_idle_timeout_s=1.0, max_open_runs=4)
    client = pipe.ingest()
    client.send(Message("frame", run="orphan", seq=1, arrays={"image": np.zeros((4, 4), np.uint16)}))
    client.send(Message("start", run="endless"))
    client.send(Message("frame", run="endless", seq=1, arrays={"image": np.zeros((4, 4), np.uint16)}))
    client.flush(10)
    msgs = pipe.results.collect(lambda ms: pipe.results.ended("orphan") and pipe.results.ended("endless"), timeout_s=30)
    ends = {m.run: m.meta for m in msgs if m.kind == "end_of_run"}
    assert "no start within 0.5 s" in ends["orphan"]["expired"] and "silent for 1 s without a stop" in ends["endless"]["expired"]
    assert pipe.control.status()["counts"]["expired_runs"] == 2
    client.send(Message("frame", run="endless", seq=2, arrays={"image": np.zeros((4, 4), np.uint16)}))
    client.flush(10)
    assert client.nacks[-1]["reason"] == "run-expired"
    client.close()


def test_a_peer_naming_another_workers_segment_gets_its_items_over_the_socket(make_pipeline):
    """The handler never writes frames into a segment it did not verify: a peer offering a real worker's segment
    (under that worker's pid or its own) is refused it, counted, and served over the socket."""
    from pathlib import Path

    pipe = make_pipeline(ECHO.format(workers=1, delay=0))
    (real,) = pipe.control.status()["modules"]["echo"]["workers"]
    (segment,) = [p.name for p in Path("/dev/shm").glob(f"ns-bluesky-{real['pid']}-*")]
    peers = []
    for pid in (real["pid"], 4242):
        peer = _raw(pipe, pipe.cfg.worker_port)
        peer.send_multipart(encode(Message("ready", meta={"module": "echo", "credits": 2, "pid": pid,
                                                         "shm": {"name": segment, "slots": 2, "slot_bytes": 1 << 20}})))
        peers.append(peer)
    _wait(lambda: pipe.control.status()["counts"].get("shm_refused", 0) == 2, what="both offers refused")
    client = pipe.ingest()
    client.send(Message("start", run="shm"))
    for seq in range(6):
        client.send(Message("frame", run="shm", seq=seq, arrays={"raw": np.full((512, 512), seq, np.uint16)}))
    client.flush(10)
    inline = 0
    deadline = time.monotonic() + 10
    while inline < 2 and time.monotonic() < deadline:
        for peer in peers:
            while peer.poll(50):
                msg = decode(peer.recv_multipart())  # an offset into shared memory would be refused here
                inline += msg.kind == "frame" and msg.arrays["raw"].shape == (512, 512)
    assert inline >= 2  # items reached the peers over the socket, their arrays inline
    client.close()
    for peer in peers:
        peer.close(linger=0)
