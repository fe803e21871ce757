"""The motion clock that finishes simulated moves: on time, in order, without a thread per move."""

import threading
import time

from ns_bluesky.ophyd_devices import SampleStage, clock


def test_moves_finish_on_time_in_order_without_a_thread_each(monkeypatch):
    stage = SampleStage(name="stage", seed=1)
    stage.x.jitter.put(0.0)
    stage.x.encoder_noise.put(0.0)
    stage.x.settle_time.put(0.002)
    stage.x.set(0.0).wait(1)  # the clock thread exists from here on
    started = []
    start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self.name), start(self))[1])
    t0 = time.monotonic()
    for k in range(1, 51):
        stage.x.set(k * 1e-8).wait(1)
    assert time.monotonic() - t0 >= 50 * 0.002  # every move took its settle time
    assert stage.x.position == 50e-8
    assert started == []  # a Timer per move would have started 50 threads

    done = []
    late = clock.after(0.05, lambda: done.append("late"))
    clock.after(0.01, lambda: done.append("early"))  # due first although asked for second
    cancelled = clock.after(0.02, lambda: done.append("cancelled"))
    cancelled.cancel()
    deadline = time.monotonic() + 2
    while len(done) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert done == ["early", "late"] and not late.cancelled


def test_a_failing_completion_does_not_stop_the_others(caplog):
    ran = threading.Event()

    def broken():
        raise RuntimeError("device fault")

    clock.after(0.0, broken)
    clock.after(0.01, ran.set)
    assert ran.wait(2)
    assert "device fault" in caplog.text
