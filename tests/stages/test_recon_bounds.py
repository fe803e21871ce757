"""The reconstruction worker's memory is bounded: at most ``max_live_runs`` runs hold their frames at once (one
more wraps up the oldest, which still gets its final image, marked cut short with the reason), and a run that
ends, is cut or is aborted lets go of its frames and engine at once, not at some later garbage collection.

Memory is checked by what is kept (the stage's per-run dicts, weak references to each run's frame stack), never
by RSS or time: ``benchmarks/soak.py`` measures the RSS."""

from __future__ import annotations

import gc
import uuid
import weakref

import numpy as np
import pytest

from ns_bluesky.stages.recon import ReconStage
from ns_bluesky.stream.protocol import Message
from tests.stages.test_recon_positions import _clean
from tests.support.scan import SimScan

FAST = {"publish_every_s": 0.1, "final_seconds": 0.2, "refine_seconds": 0}


@pytest.fixture(scope="module")
def scan():
    s = SimScan(shape=(4, 4), seed=0)
    return s, _clean(s)


class _Run:
    """The scan again under a run uid of its own: several runs of one stage, overlapping as a starved worker's do."""

    def __init__(self, scan):
        self.sim, self.cleaned = scan
        self.uid = str(uuid.uuid4())

    def start(self) -> Message:
        return Message("start", run=self.uid, meta={"start": {**self.sim.doc, "uid": self.uid}})

    def frames(self, lo: int, hi: int) -> list[Message]:
        return [Message(m.kind, run=self.uid, seq=m.seq, stage=m.stage, meta=m.meta, arrays=m.arrays) for m in self.cleaned[lo:hi]]


def _frame_stacks(stage: ReconStage) -> dict[str, weakref.ref]:
    """Weak references to each open run's frame stack (the largest thing a run holds), once it exists."""
    out = {}
    for run, session in stage.sessions.items():
        for _ in range(200):
            if getattr(session, "patterns", None) is not None:
                break
            session.finishing.wait(0.02)
        out[run] = weakref.ref(session.patterns)
    return out


def _kept(stage: ReconStage) -> dict[str, int]:
    return {name: len(getattr(stage, name)) for name in ("sessions", "published", "lateness", "progress", "cut")}


def test_a_third_run_wraps_up_the_oldest_and_every_run_still_gets_its_final_image(scan):
    stage = ReconStage(ReconStage.Params(max_live_runs=2, **FAST))
    a, b, c, d = (_Run(scan) for _ in range(4))
    results: dict[str, list[Message]] = {r.uid: [] for r in (a, b, c, d)}
    most = 0

    def feed(run: _Run, lo: int, hi: int) -> None:
        nonlocal most
        for msg in run.frames(lo, hi):
            out = stage.process(msg)
            if out is not None:
                results[out.run].append(out)
            most = max(most, len(stage.sessions))

    stage.start_run(a.start())
    feed(a, 0, 6)
    stage.start_run(b.start())
    feed(b, 0, 6)
    stacks = _frame_stacks(stage)
    stage.start_run(c.start())  # a third: a, the oldest, is wrapped up now
    most = max(most, len(stage.sessions))
    assert list(stage.sessions) == [b.uid, c.uid]
    assert stacks[a.uid]() is None  # its frames let go at once
    feed(a, 6, 16)  # its next frame takes its final image out; the rest are not reconstructed (they are in the catalog)
    feed(c, 0, 16)
    stage.start_run(d.start())  # b wrapped up; its final image waits for its end
    feed(d, 0, 16)
    for run in (c, d, a, b):
        out = stage.end_run(run.uid)
        if out is not None:
            results[out.run].append(out)

    assert most <= 2
    finals = {run: [m for m in msgs if m.meta["scalars"]["final"]] for run, msgs in results.items()}
    assert all(len(f) == 1 for f in finals.values()), {r[:8]: len(f) for r, f in finals.items()}
    for run in (a, b):
        (final,) = finals[run.uid]
        assert final.meta["scalars"]["cut_short"] == 1
        reason = final.meta["cut_short"]
        assert "max_live_runs=2" in reason and f"ns-bluesky replay {run.uid[:8]}" in reason, reason
        assert 0 < final.meta["scalars"]["frames"] < 16 and np.isfinite(final.arrays["object_phase"]).all()
    assert finals[a.uid][0] is results[a.uid][-1] and results[a.uid][-1].seq == len(results[a.uid])
    for run in (c, d):
        (final,) = finals[run.uid]
        assert final.meta["scalars"]["cut_short"] == 0 and "cut_short" not in final.meta
        assert final.meta["scalars"]["frames"] == 16
    # every result of the stream has the same keys (one table in the derived run)
    assert len({frozenset(m.meta["scalars"]) for msgs in results.values() for m in msgs}) == 1
    assert _kept(stage) == dict.fromkeys(("sessions", "published", "lateness", "progress", "cut"), 0)


def test_a_run_that_ends_or_is_aborted_lets_go_of_its_frames_at_once(scan):
    """Without a garbage collection: the engine's per-batch hook was the session's method, a cycle that kept every
    ended run's frames (N x n x n float32) until the collector happened to run."""
    stage = ReconStage(ReconStage.Params(**FAST))
    ended, aborted = _Run(scan), _Run(scan)
    gc.disable()
    try:
        for run in (ended, aborted):
            stage.start_run(run.start())
            for msg in run.frames(0, 16):
                stage.process(msg)
        stacks = _frame_stacks(stage)
        sessions = {run: weakref.ref(s) for run, s in stage.sessions.items()}
        assert stage.end_run(ended.uid).meta["scalars"]["final"] == 1
        stage.abort_run(aborted.uid)
        assert {run: ref() is None for run, ref in stacks.items()} == {ended.uid: True, aborted.uid: True}
        assert {run: ref() is None for run, ref in sessions.items()} == {ended.uid: True, aborted.uid: True}
    finally:
        gc.enable()
    assert _kept(stage) == dict.fromkeys(("sessions", "published", "lateness", "progress", "cut"), 0)


def test_max_live_runs_is_checked_and_reaches_the_pipelines_reconstruction():
    from pydantic import ValidationError

    from ns_bluesky.stages.pipeline import ptycho_pipeline

    with pytest.raises(ValidationError, match="max_live_runs"):
        ReconStage.Params(max_live_runs=0)
    assert ReconStage.Params().max_live_runs == 2
    recon = next(m for m in ptycho_pipeline(free_ports=False, max_live_runs=3).modules if m.name == "recon")
    assert recon.params["max_live_runs"] == 3


PIPELINE = """
[[modules]]
name = "dark"
module = "dark"
[[modules]]
name = "frame"
module = "frame"
[[modules]]
name = "recon"
module = "recon"
credits = 8
params = { min_frames = 4, final_seconds = 0.5, publish_every_s = 0.2, refine_seconds = 0, max_live_runs = 1 }
"""


@pytest.mark.slow
def test_in_a_real_pipeline_the_run_cut_short_gets_its_final_image_with_its_own_items(make_pipeline, sim_scan):
    """The handler takes a result only with an item of its own run: the final image of a run wrapped up when
    another starts goes out with that run's next frame, and both runs end with one final image each."""
    pipe = make_pipeline(PIPELINE)
    client = pipe.ingest()
    client.send(sim_scan.start(dark=True))
    for seq in range(1, 5):
        client.send(sim_scan.dark_frame(seq))
    client.send(Message("stop", run=sim_scan.dark_uid))
    first, second, n = sim_scan.uid, "second-scan", len(sim_scan.sim.planned)
    frames = [sim_scan.frame(seq) for seq in range(1, n + 1)]
    client.send(sim_scan.start())
    for msg in frames[: n // 2]:
        client.send(msg)
    pipe.results.collect(lambda ms: any(m.stage == "recon" and m.run == first for m in ms), timeout_s=120)
    client.send(Message("start", run=second, meta={"start": {**sim_scan.doc, "uid": second}}))  # cuts the first
    for msg in frames[n // 2:]:
        client.send(msg)
    client.send(Message("stop", run=first, meta={"num_frames": n}))
    for msg in frames:
        client.send(Message(msg.kind, run=second, seq=msg.seq, meta=msg.meta, arrays=msg.arrays))
    client.send(Message("stop", run=second, meta={"num_frames": n}))
    pipe.results.collect(lambda ms: pipe.results.ended(first) and pipe.results.ended(second), timeout_s=180)
    finals = {run: [m for m in pipe.results.messages if m.stage == "recon" and m.run == run and m.meta["scalars"]["final"]]
              for run in (first, second)}
    assert [m.meta["scalars"]["cut_short"] for m in finals[first]] == [1], finals
    assert "max_live_runs=1" in finals[first][0].meta["cut_short"]
    assert [(m.meta["scalars"]["cut_short"], m.meta["scalars"]["frames"]) for m in finals[second]] == [(0, n)]
