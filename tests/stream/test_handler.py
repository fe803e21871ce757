"""Handler and workers as real processes over loopback: exactly once, faults, malformed input."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import numpy as np

from ns_bluesky.stream.protocol import Message


def _results(pipe, run):
    msgs = pipe.results.collect(lambda ms: pipe.results.ended(run), timeout_s=60)
    return [m for m in msgs if m.kind == "result" and m.run == run]


def test_every_frame_comes_back_exactly_once(make_pipeline):
    from tests.support.pipeline import send_run

    pipe = make_pipeline()
    client = pipe.ingest()
    send_run(client, "run-a", 300)
    client.flush()
    results = _results(pipe, "run-a")
    assert sorted(m.seq for m in results) == list(range(300))
    np.testing.assert_array_equal(results[5].arrays["image"], np.full((32, 32), results[5].seq, np.uint16))
    end = next(m for m in pipe.results.messages if m.kind == "end_of_run")
    assert end.meta["frames"] == 300 and end.meta["aborted"] is False
    status = pipe.control.status()["modules"]["echo"]
    assert status["processed"] == 300 and status["received"] == 300 and len(status["workers"]) == 2


def test_sigkill_a_worker_mid_run_every_frame_once(make_pipeline):
    from tests.support.pipeline import ECHO

    pipe = make_pipeline(ECHO.format(workers=3, delay=0.01))
    client = pipe.ingest()
    client.send(Message("start", run="kill"))
    for seq in range(150):
        client.send(Message("frame", run="kill", seq=seq, arrays={"image": np.zeros((16, 16), np.uint16)}))
    time.sleep(0.3)
    victim = pipe.control.status()["modules"]["echo"]["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    for seq in range(150, 300):
        client.send(Message("frame", run="kill", seq=seq, arrays={"image": np.zeros((16, 16), np.uint16)}))
    client.send(Message("stop", run="kill"))
    client.flush()
    results = _results(pipe, "kill")
    counts = Counter(m.seq for m in results)
    assert sorted(counts) == list(range(300)) and set(counts.values()) == {1}
    status = pipe.control.status()["modules"]["echo"]
    assert status["processed"] >= 300
    assert victim not in [w["pid"] for w in status["workers"]]
    assert len(status["workers"]) == 3  # a replacement was started


def test_a_slow_worker_gets_less(make_pipeline, tmp_path):
    import subprocess
    import sys

    pipe = make_pipeline(
        '[[modules]]\nname = "echo"\nmodule = "echo"\nworkers = 2\ncredits = 1\nparams = { delay_s = 0.005 }\n'
    )
    slow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ns_bluesky.stream.worker",
            "--module",
            "echo",
            "--name",
            "echo",
            "--credits",
            "1",
            "--address",
            pipe.cfg.address(pipe.cfg.worker_port, connect=True),
            "--params",
            '{"delay_s": 0.05}',
            "--log-dir",
            str(tmp_path / "logs"),
        ]
    )
    try:
        deadline = time.monotonic() + 60
        while len(pipe.control.status()["modules"]["echo"]["workers"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        client = pipe.ingest()
        from tests.support.pipeline import send_run

        send_run(client, "slow", 200, shape=(8, 8))
        client.flush()
        assert sorted(m.seq for m in _results(pipe, "slow")) == list(range(200))
        workers = {w["pid"]: w["processed"] for w in pipe.control.status()["modules"]["echo"]["workers"]}
        fast = [n for pid, n in workers.items() if pid != slow.pid]
        assert workers[slow.pid] * 3 < min(fast), workers
    finally:
        slow.kill()


MALFORMED = {
    "bad-json": [b"{not json"],
    "bad-header": [b"[1, 2]"],
    "bad-version": [b'{"v": 99, "kind": "frame", "run": "r", "seq": 1, "arrays": []}'],
    "unknown-kind": [b'{"v": 1, "kind": "teleport", "run": "r", "seq": 1, "arrays": []}'],
    "missing-field": [b'{"v": 1, "kind": "frame", "run": "r", "arrays": []}'],
    "bad-field": [b'{"v": 1, "kind": "frame", "run": "r", "seq": "one", "arrays": []}'],
    "size-mismatch": [
        b'{"v": 1, "kind": "frame", "run": "r", "seq": 1, "arrays": [{"name": "a", "dtype": "<u2", "shape": [4, 4]}]}',
        b"x" * 31,
    ],
    "bad-dtype": [
        b'{"v": 1, "kind": "frame", "run": "r", "seq": 1, "arrays": [{"name": "a", "dtype": "|O", "shape": [1]}]}',
        b"x" * 8,
    ],
    "bad-shape": [
        b'{"v": 1, "kind": "frame", "run": "r", "seq": 1, "arrays": [{"name": "a", "dtype": "<u2", "shape": [-1]}]}',
        b"",
    ],
    "buffer-count": [b'{"v": 1, "kind": "frame", "run": "r", "seq": 1, "arrays": []}', b"extra"],
    "huge-header": [b'{"v": 1, "pad": "' + b"x" * 70000 + b'"}'],
    "wrong-port": [b'{"v": 1, "kind": "result", "run": "r", "seq": 1, "stage": "s", "arrays": []}'],
    "bad-array-spec": [b'{"v": 1, "kind": "frame", "run": "r", "seq": 1, "arrays": [7]}', b""],
    "shm-not-allowed": [b'{"v": 1, "kind": "frame", "run": "r", "seq": 1, "arrays": [{"name": "a", "dtype": "<u2", "shape": [4], "shm": 0}]}'],
}


def test_malformed_messages_are_counted_answered_and_survived(make_pipeline):
    import zmq

    from ns_bluesky.stream.protocol import decode

    pipe = make_pipeline()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(pipe.cfg.address(pipe.cfg.ingest_port, connect=True))
    for reason, frames in MALFORMED.items():
        sock.send_multipart(frames)
        assert sock.poll(5000), reason
        reply = decode(sock.recv_multipart())
        assert reply.kind == "nack" and reply.meta["reason"] == reason
    assert pipe.control.status()["malformed"] == {reason: 1 for reason in MALFORMED}
    from tests.support.pipeline import send_run

    client = pipe.ingest()
    send_run(client, "after", 10)
    client.flush()
    assert len(_results(pipe, "after")) == 10  # still up and working
    sock.close(linger=0)


def test_abort_drops_queued_work_fast_and_reset_makes_it_ready(make_pipeline):
    from tests.support.pipeline import ECHO, send_run

    pipe = make_pipeline(ECHO.format(workers=2, delay=0.05))
    client = pipe.ingest()
    send_run(client, "long", 400, shape=(8, 8))
    client.flush()
    time.sleep(0.5)
    t0 = time.monotonic()
    reply = pipe.control("abort", run="long")
    assert time.monotonic() - t0 < 1.0
    assert reply["dropped"] > 300
    pipe.results.collect(lambda ms: pipe.results.ended("long"), timeout_s=5)
    end = next(m for m in pipe.results.messages if m.kind == "end_of_run" and m.run == "long")
    assert end.meta["aborted"] is True
    status = pipe.control.status()["modules"]["echo"]
    assert status["aborted"] >= 300 and status["queue"] == 0
    assert status["processed"] + status["aborted"] <= 400
    t0 = time.monotonic()
    pipe.control("reset")
    assert time.monotonic() - t0 < 2.0
    send_run(client, "next", 20, shape=(8, 8))
    client.flush()
    assert sorted(m.seq for m in _results(pipe, "next")) == list(range(20))
    # every credit came back: items dropped by the abort were answered, not forgotten
    workers = pipe.control.status()["modules"]["echo"]["workers"]
    assert [w["credits"] for w in workers] == [2, 2] and all(w["in_flight"] == 0 for w in workers)


def test_scale_up_and_down_mid_run_without_loss(make_pipeline):
    from tests.support.pipeline import ECHO

    pipe = make_pipeline(ECHO.format(workers=1, delay=0.01))
    client = pipe.ingest()
    client.send(Message("start", run="scale"))
    for seq in range(100):
        client.send(Message("frame", run="scale", seq=seq, arrays={"image": np.zeros((8, 8), np.uint16)}))
    pipe.control("scale", counts={"echo": 3})
    pipe.control.wait_ready(60)
    for seq in range(100, 200):
        client.send(Message("frame", run="scale", seq=seq, arrays={"image": np.zeros((8, 8), np.uint16)}))
    pipe.control("scale", counts={"echo": 1})
    for seq in range(200, 300):
        client.send(Message("frame", run="scale", seq=seq, arrays={"image": np.zeros((8, 8), np.uint16)}))
    client.send(Message("stop", run="scale"))
    client.flush()
    counts = Counter(m.seq for m in _results(pipe, "scale"))
    assert sorted(counts) == list(range(300)) and set(counts.values()) == {1}
    deadline = time.monotonic() + 10
    while len(pipe.control.status()["modules"]["echo"]["workers"]) != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(pipe.control.status()["modules"]["echo"]["workers"]) == 1


def test_module_errors_are_reported_and_the_worker_goes_on(make_pipeline):
    from tests.support.pipeline import send_run

    pipe = make_pipeline('[[modules]]\nname = "echo"\nmodule = "echo"\nworkers = 1\nparams = { fail_every = 10 }\n')
    client = pipe.ingest()
    send_run(client, "err", 50, shape=(4, 4))
    client.flush()
    results = _results(pipe, "err")
    assert sorted(m.seq for m in results) == [s for s in range(50) if s % 10]
    errors = [m for m in pipe.results.messages if m.kind == "error"]
    assert sorted(m.seq for m in errors) == [0, 10, 20, 30, 40]
    assert "injected failure" in errors[0].meta["traceback"]
    assert pipe.control.status()["modules"]["echo"]["errors"] == 5


def test_repeated_frames_are_counted_not_processed_twice(make_pipeline):
    pipe = make_pipeline()
    client = pipe.ingest()
    client.send(Message("start", run="dup"))
    for seq in (0, 1, 1, 2):
        client.sock.send_multipart(
            __import__("ns_bluesky.stream.protocol", fromlist=["encode"]).encode(
                Message("frame", run="dup", seq=seq, arrays={"image": np.zeros((4, 4), np.uint16)})
            )
        )
    client.send(Message("stop", run="dup"))
    client.flush()
    assert sorted(m.seq for m in _results(pipe, "dup")) == [0, 1, 2]
    assert pipe.control.status()["counts"]["duplicate_ingest"] == 1


def test_backlog_spills_to_disk_and_loses_nothing(make_pipeline):
    from tests.support.pipeline import ECHO, send_run

    pipe = make_pipeline(ECHO.format(workers=1, delay=0.002), backlog_items=10)
    client = pipe.ingest()
    send_run(client, "spill", 200, shape=(64, 64))
    client.flush()
    results = _results(pipe, "spill")
    assert sorted(m.seq for m in results) == list(range(200))
    assert results[150].arrays["image"][0, 0] == 150
    assert pipe.control.status()["modules"]["echo"]["spilled"] > 0


def test_malformed_worker_messages_are_counted_and_survived(make_pipeline):
    import zmq

    from ns_bluesky.stream.protocol import encode

    pipe = make_pipeline()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(pipe.cfg.address(pipe.cfg.worker_port, connect=True))
    bad = [
        Message("ready", meta={"module": ["echo"], "credits": 2}),
        Message("ready", meta={"module": "echo", "credits": "lots"}),
        Message("done", meta={"item": "abc"}),
        Message("result", run="r", seq=1, stage="s", meta={"item": [1]}),
    ]
    for msg in bad:
        sock.send_multipart(encode(msg))
    sock.send_multipart([b'{"v": 1, "kind": "done", "item": 1e999}'])
    time.sleep(0.5)
    malformed = pipe.control.status()["malformed"]
    # 1e999 is beyond a float: refused as bad JSON rather than read as infinity
    assert malformed == {"worker:bad-ready": 2, "worker:bad-item": 2, "worker:bad-json": 1}
    from tests.support.pipeline import send_run

    client = pipe.ingest()
    send_run(client, "still-up", 10)
    client.flush()
    assert len(_results(pipe, "still-up")) == 10
    sock.close(linger=0)


def test_an_unsendable_module_result_is_an_error_and_the_run_still_ends(make_pipeline):
    from tests.support.pipeline import send_run

    pipe = make_pipeline('[[modules]]\nname = "echo"\nmodule = "echo"\nworkers = 1\nparams = { unsendable_every = 5 }\n')
    client = pipe.ingest()
    send_run(client, "f16", 20, shape=(4, 4))
    client.flush()
    results = _results(pipe, "f16")  # waits for end_of_run: the worker did not stall
    assert sorted(m.seq for m in results) == [s for s in range(20) if s % 5]
    assert pipe.control.status()["modules"]["echo"]["errors"] == 4


def test_reset_does_not_end_a_finished_run_twice_and_late_frames_are_refused(make_pipeline):
    from tests.support.pipeline import send_run

    pipe = make_pipeline()
    client = pipe.ingest()
    send_run(client, "done-run", 5, shape=(4, 4))
    client.flush()
    _results(pipe, "done-run")
    client.send(Message("frame", run="done-run", seq=99, arrays={"image": np.zeros((4, 4), np.uint16)}))
    client.flush()
    assert pipe.control.status()["counts"]["after_end"] == 1  # refused, not half-processed
    pipe.control("reset")
    time.sleep(0.5)
    pipe.results.collect(lambda ms: False, timeout_s=0.5)
    assert not [m for m in pipe.results.messages if m.kind == "result" and m.seq == 99]
    ends = [m for m in pipe.results.messages if m.kind == "end_of_run" and m.run == "done-run"]
    assert len(ends) == 1 and ends[0].meta["aborted"] is False


def test_end_of_run_waits_for_frames_still_on_their_way(make_pipeline):
    pipe = make_pipeline()
    client = pipe.ingest()
    client.send(Message("start", run="late"))
    client.send(Message("frame", run="late", seq=1, arrays={"image": np.zeros((4, 4), np.uint16)}))
    client.send(Message("stop", run="late", meta={"num_frames": 3}))  # frames 2 and 3 overtaken by the stop
    time.sleep(0.5)
    assert not pipe.results.ended("late")
    for seq in (2, 3):
        client.send(Message("frame", run="late", seq=seq, arrays={"image": np.zeros((4, 4), np.uint16)}))
    client.flush()
    assert sorted(m.seq for m in _results(pipe, "late")) == [1, 2, 3]


def test_ended_runs_are_forgotten_beyond_a_bound_but_still_refuse_late_frames():
    from ns_bluesky.stream import handler as h
    from ns_bluesky.stream.broker.runbook import MAX_RUNS
    from ns_bluesky.stream.config import PipelineConfig

    cfg = PipelineConfig(control_port=0, ingest_port=0, worker_port=0, results_port=0)
    hd = h.Handler(cfg, spawn=False)
    try:
        for i in range(MAX_RUNS + 50):
            hd._accept(Message("start", run=f"r{i}"))
            hd._accept(Message("stop", run=f"r{i}"))  # no workers: ends at once
        hd._housekeeping(time.monotonic())
        assert len(hd.book.runs) == MAX_RUNS and "r0" not in hd.book.runs
        hd._accept(Message("frame", run="r0", seq=1, arrays={"image": np.zeros((2, 2), np.uint16)}))
        assert hd.counts["after_end"] == 1 and "r0" not in hd.book.runs
    finally:
        hd.close()


def test_results_feed_the_next_module_and_the_end_follows_them(make_pipeline):
    from tests.support.pipeline import send_run

    pipe = make_pipeline(
        '[[modules]]\nname = "echo"\nmodule = "echo"\nworkers = 2\nparams = { delay_s = 0.002 }\n'
        '[[modules]]\nname = "count"\nmodule = "tally"\nworkers = 1\n'
    )
    client = pipe.ingest()
    send_run(client, "chain", 120, shape=(300, 300))  # large enough for shared memory on the first hop
    client.flush()
    msgs = pipe.results.collect(lambda ms: pipe.results.ended("chain"), timeout_s=60)
    tally = [m for m in msgs if m.stage == "tally" and m.run == "chain"]
    assert len(tally) == 1
    assert tally[0].meta["seqs"] == list(range(120))  # every echo result, once, before the tally's end of run
    assert tally[0].meta["checksum"] == sum(seq * 300 * 300 for seq in range(120))
    assert [m.kind for m in msgs if m.run == "chain"][-1] == "end_of_run"
    status = pipe.control.status()["modules"]
    assert status["count"]["received"] == status["count"]["processed"] == 120


def test_abort_stops_a_long_computation_within_a_second(make_pipeline):
    from tests.support.pipeline import ECHO, send_run

    pipe = make_pipeline(ECHO.format(workers=2, delay=30.0))  # each item would take 30 s
    client = pipe.ingest()
    send_run(client, "stuck", 10, shape=(8, 8))
    client.flush()
    deadline = time.monotonic() + 10
    while pipe.control.status()["modules"]["echo"]["in_flight"] < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    pipe.control("abort", run="stuck")
    while pipe.control.status()["modules"]["echo"]["in_flight"] and time.monotonic() - t0 < 5:
        time.sleep(0.02)
    stopped_s = time.monotonic() - t0
    assert stopped_s < 1.0, f"workers still busy {stopped_s:.2f} s after the abort"
    status = pipe.control.status()["modules"]["echo"]
    assert status["aborted"] == 10 and status["processed"] == 0
