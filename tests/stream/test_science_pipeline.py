"""The science modules in a real pipeline: shared darks, held frames, faults. Real processes on loopback."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from ns_bluesky.stream.protocol import Message

DARK_FRAME = """
[[modules]]
name = "dark"
module = "dark"
[[modules]]
name = "frame"
module = "frame"
workers = {frame_workers}
"""

RECON = """
[[modules]]
name = "recon"
module = "recon"
credits = 8
params = { min_frames = 4, final_seconds = 1.0, publish_every_s = 0.2, refine_seconds = 2.0 }
"""

pytestmark = pytest.mark.slow


def _send_dark(client, scan):
    client.send(scan.start(dark=True))
    for seq in range(1, 5):
        client.send(scan.dark_frame(seq))
    client.send(Message("stop", run=scan.dark_uid))


def _clean(results, run):
    return [m for m in results.messages if m.kind == "result" and m.stage == "clean" and m.run == run]


def test_light_frames_wait_for_their_dark_and_a_late_worker_gets_it_too(make_pipeline, sim_scan):
    pipe = make_pipeline(DARK_FRAME.format(frame_workers=1))
    client = pipe.ingest()
    client.send(sim_scan.start())  # the scan first: its frames must wait for the dark it names
    for seq in range(1, 5):
        client.send(sim_scan.frame(seq))
    time.sleep(1.0)
    status = pipe.control.status()["modules"]["frame"]
    assert status["held"] == 4 and status["processed"] == 0
    _send_dark(client, sim_scan)
    client.send(Message("stop", run=sim_scan.uid, meta={"num_frames": 4}))
    pipe.results.collect(lambda ms: pipe.results.ended(sim_scan.uid))
    flags = [m.meta["scalars"]["flags"] for m in _clean(pipe.results, sim_scan.uid)]
    assert flags == ["", "", "", ""]
    # a worker that starts after the dark was handed out gets it on registering
    pipe.control("scale", counts={"frame": 2})
    pipe.control.wait_ready(60)
    run2 = "second-scan"
    client.send(Message("start", run=run2, meta={"start": {**sim_scan.doc, "uid": run2}}))
    for seq in range(1, 9):
        msg = sim_scan.frame(seq)
        msg.run = run2
        client.send(msg)
    client.send(Message("stop", run=run2, meta={"num_frames": 8}))
    pipe.results.collect(lambda ms: pipe.results.ended(run2), timeout_s=60)
    assert [m.meta["scalars"]["flags"] for m in _clean(pipe.results, run2)] == [""] * 8
    workers = pipe.control.status()["modules"]["frame"]["workers"]
    assert len(workers) == 2 and all(w["processed"] > 0 for w in workers), workers


def test_a_dark_that_never_comes_lets_the_frames_go_on_flagged(make_pipeline, sim_scan):
    pipe = make_pipeline(DARK_FRAME.format(frame_workers=1), wait_timeout_s=1.0)
    client = pipe.ingest()
    client.send(sim_scan.start())
    for seq in (1, 2):
        client.send(sim_scan.frame(seq))
    client.send(Message("stop", run=sim_scan.uid, meta={"num_frames": 2}))
    pipe.results.collect(lambda ms: pipe.results.ended(sim_scan.uid), timeout_s=30)
    clean = _clean(pipe.results, sim_scan.uid)
    assert [m.meta["scalars"]["flags"] for m in clean] == ["no_dark", "no_dark"]
    assert all(m.meta["scalars"]["usable"] for m in clean)
    assert pipe.control.status()["modules"]["frame"]["wait_timeouts"] == 1


def test_bad_missing_and_repeated_frames_are_flagged_counted_and_the_run_goes_on(make_pipeline, sim_scan):
    pipe = make_pipeline(DARK_FRAME.format(frame_workers=2))
    client = pipe.ingest()
    _send_dark(client, sim_scan)
    client.send(sim_scan.start())
    for seq in range(1, 9):
        if seq == 5:
            continue  # never arrives
        msg = sim_scan.frame(seq)
        if seq == 2:
            msg.arrays["raw"] = msg.arrays["raw"].astype(np.float32)
            msg.arrays["raw"][100, 100] = np.nan
        if seq == 3:
            msg.arrays["raw"] = msg.arrays["raw"][:500]
        client.send(msg)
        if seq == 4:
            client.send(sim_scan.frame(4))  # sent twice
    client.send(Message("stop", run=sim_scan.uid, meta={"num_frames": 7}))
    pipe.results.collect(lambda ms: pipe.results.ended(sim_scan.uid), timeout_s=60)
    qc = {m.seq: m.meta["scalars"] for m in _clean(pipe.results, sim_scan.uid)}
    assert sorted(qc) == [1, 2, 3, 4, 6, 7, 8]
    assert qc[2]["flags"] == "nan" and qc[3]["flags"] == "shape" and qc[2]["usable"] == qc[3]["usable"] == 0
    assert all(qc[s]["usable"] == 1 for s in (1, 4, 6, 7, 8))
    end = next(m for m in pipe.results.messages if m.kind == "end_of_run" and m.run == sim_scan.uid)
    missing = [5, *range(9, len(sim_scan.sim.planned) + 1)]  # the scan stopped early too: planned, never sent
    assert (end.meta["missing"], end.meta["missing_seqs"], end.meta["duplicates"]) == (len(missing), missing, 1)


def test_a_frame_worker_killed_mid_scan_costs_the_reconstruction_no_frame(make_pipeline, sim_scan):
    pipe = make_pipeline(DARK_FRAME.format(frame_workers=2) + RECON)
    client = pipe.ingest()
    _send_dark(client, sim_scan)
    client.send(sim_scan.start())
    n = len(sim_scan.sim.planned)
    frames = [sim_scan.frame(seq) for seq in range(1, n + 1)]
    for msg in frames[:6]:
        client.send(msg)
    victim = pipe.control.status()["modules"]["frame"]["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    for msg in frames[6:]:
        client.send(msg)
    client.send(Message("stop", run=sim_scan.uid, meta={"num_frames": n}))
    pipe.results.collect(lambda ms: pipe.results.ended(sim_scan.uid), timeout_s=120)
    assert sorted(m.seq for m in _clean(pipe.results, sim_scan.uid)) == list(range(1, n + 1))
    recon = [m for m in pipe.results.messages if m.stage == "recon" and m.run == sim_scan.uid]
    first, refined = recon[-2].meta["scalars"], recon[-1].meta["scalars"]
    assert (first["final"], first["refined"], refined["final"], refined["refined"]) == (1, 0, 1, 1)
    assert refined["frames"] == n and refined["iteration"] > first["iteration"]
    # the first live update may come before its first iteration has a residual (null: NaN in JSON)
    earliest = next(m.meta["scalars"]["residual"] for m in recon if m.meta["scalars"].get("residual") is not None)
    assert refined["residual"] < earliest
    assert recon[-1].arrays["object_phase"].ndim == 2


def test_the_documented_pipeline_file_is_the_demos_pipeline():
    from pathlib import Path

    from ns_bluesky.stages.pipeline import ptycho_pipeline
    from ns_bluesky.stream.config import load_config

    documented = load_config(Path(__file__).parents[2] / "docs" / "pipeline-ptycho.toml")
    built = ptycho_pipeline(free_ports=False, out_dir="cxi-output")
    assert documented.levels() == built.levels() == [["dark"], ["frame"], ["image", "recon"], ["cxiwrite"]]
    for doc_spec, spec in zip(documented.modules, built.modules, strict=True):
        assert (doc_spec.module, doc_spec.workers, doc_spec.nice, doc_spec.idle) == (spec.module, spec.workers, spec.nice, spec.idle)
        assert {k: v for k, v in doc_spec.params.items() if k in spec.params} == spec.params


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux only")
def test_the_reconstruction_worker_runs_only_on_idle_cpu(tmp_path):
    """At --rate 0 the frames must not lose CPU to the live reconstruction (nice 10 still cost 8 %); its
    compute thread alone is SCHED_IDLE, so that on a busy host the worker still joins and keeps its heartbeats."""
    import subprocess

    from ns_bluesky.stages.pipeline import ptycho_pipeline
    from ns_bluesky.stream.launcher import LocalPool

    cfg = ptycho_pipeline(free_ports=True, out_dir=str(tmp_path))
    pool = LocalPool(cfg, cfg.worker_port)
    assert "--idle" in pool.command("recon") and "--idle" not in pool.command("frame")
    proc = subprocess.Popen(pool.command("recon"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def policies() -> dict[int, int]:  # thread id -> scheduling policy (Python leaves every thread's name "python")
        out = {}
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            try:
                out[int(task.name)] = os.sched_getscheduler(int(task.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
        return out

    try:
        deadline = time.monotonic() + 30
        while os.SCHED_IDLE not in policies().values() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        seen = policies()
        assert list(seen.values()).count(os.SCHED_IDLE) == 1, seen  # the compute thread
        assert seen[proc.pid] == os.SCHED_OTHER, seen  # the main thread: registration, heartbeats
    finally:
        proc.kill()
        proc.wait()


def test_the_frame_stage_takes_its_fft_threads_from_its_params():
    """Several frame workers share the cores: the pipeline asks each for one FFT thread, the stage sets it."""
    import numpy as np

    from ns_bluesky.ptycho.backend import fft_workers, set_fft_threads
    from ns_bluesky.stages.frame import FrameStage
    from ns_bluesky.stages.pipeline import ptycho_pipeline

    spec = next(m for m in ptycho_pipeline(free_ports=False).modules if m.name == "frame")
    try:
        FrameStage(FrameStage.Params(**spec.params))
        assert fft_workers(np) == {"workers": 1}
    finally:
        set_fft_threads(None)
