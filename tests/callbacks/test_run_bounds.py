"""What the command keeps per run over a long session is bounded: the live monitor's views and the plan's
feedback keep the runs under way and the last few ended ones; the recorder's table of finished runs is bounded;
a reconstruction cut short is told to the user and written in its derived run's stop document.

Checked by what is kept (counts of runs), not by RSS: ``benchmarks/soak.py`` measures the RSS."""

from __future__ import annotations

import numpy as np
import pytest

from ns_bluesky.callbacks import recorder as recorder_module
from ns_bluesky.callbacks.feedback import AdaptiveFeedback
from ns_bluesky.callbacks.live import LiveMonitor
from ns_bluesky.callbacks.recorder import ResultsRecorder
from ns_bluesky.callbacks.run_bounds import KEEP_ENDED, MAX_RUNS, forget_old_runs
from ns_bluesky.stages.pipeline import ptycho_pipeline
from ns_bluesky.stream.protocol import Message

ARRAYS = {"object_amplitude": np.ones((64, 64), np.float32), "object_phase": np.zeros((64, 64), np.float32)}


def _recon(run: str, seq: int = 1, **meta) -> Message:
    return Message("result", run=run, seq=seq, stage="recon", arrays=ARRAYS,
                   meta={"scalars": {"iteration": 3, "residual": 0.5, "frames": 4, "final": 1, "cut_short": int(bool(meta))},
                         "object_pixel_size_m": 1e-8, **meta})


@pytest.fixture
def cfg(tmp_path):
    return ptycho_pipeline(out_dir=tmp_path)


def test_forget_old_runs_keeps_the_runs_under_way_and_the_last_ended():
    runs = {"live": False, **{f"e{i}": True for i in range(5)}, "new": False}
    assert forget_old_runs(runs, bool, keep_ended=2, max_runs=10) == ["e0", "e1", "e2"]
    assert list(runs) == ["live", "e3", "e4", "new"]
    assert forget_old_runs(runs, bool, keep_ended=2, max_runs=3) == ["live"]


def test_the_live_monitor_keeps_the_runs_under_way_and_the_last_ended_ones(cfg):
    said = []
    monitor = LiveMonitor(cfg, progress=False, say=said.append)
    try:
        monitor._on_message(_recon("under-way"))
        for i in range(3 * KEEP_ENDED):
            monitor._on_message(_recon(f"r{i}"))
            monitor._on_message(Message("end_of_run", run=f"r{i}", meta={"frames": 4}))
        ended = [f"r{i}" for i in range(2 * KEEP_ENDED, 3 * KEEP_ENDED)]
        assert list(monitor.runs) == ["under-way", *ended]
        assert monitor.view(ended[-1]).recon["scalars"]["iteration"] == 3  # a command reads it just after the end
        for i in range(2 * MAX_RUNS):  # asked about, never seen: bounded too
            monitor.view(f"unknown{i}")
        assert len(monitor.runs) == MAX_RUNS
        cut = "reconstruction cut short: run abcdef12 started while 2 runs were being reconstructed"
        monitor._on_message(_recon("cut", cut_short=cut))
        monitor._on_message(_recon("cut", seq=2, cut_short=cut))
        assert monitor.view("cut").cut_short == cut and said == [f"pipeline: run cut: {cut}"]  # told once
    finally:
        monitor.close()


def test_the_feedback_keeps_the_runs_under_way_and_the_last_ended_ones_patterns_included(cfg):
    feedback = AdaptiveFeedback(cfg, keep_patterns=True)
    try:
        feedback.keep("planned", [1, 2])  # asked before the run starts: kept while it is under way
        for i in range(3 * KEEP_ENDED):
            for seq in (1, 2):
                feedback._on_message(Message("result", run=f"r{i}", seq=seq, stage="clean",
                                             arrays={"pattern": np.ones((32, 32), np.float32)}, meta={"scalars": {"usable": 1}}))
            feedback._on_message(Message("end_of_run", run=f"r{i}", meta={}))
        kept = [f"r{i}" for i in range(2 * KEEP_ENDED, 3 * KEEP_ENDED)]
        assert list(feedback._runs) == ["planned", *kept] and list(feedback._wanted) == ["planned"]
        assert sorted(feedback.patterns(kept[-1])[0]) == [1, 2]
    finally:
        feedback.close()


def test_the_recorder_forgets_old_finished_runs_and_writes_why_a_reconstruction_was_cut(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(recorder_module, "KEEP_FINISHED", 5)
    docs = []
    recorder = ResultsRecorder(cfg, lambda name, doc: docs.append((name, doc)), tmp_path)
    cut = "reconstruction cut short: ... 'ns-bluesky replay cut' reconstructs it again"
    try:
        for i in range(12):
            recorder._on_message(_recon(f"r{i}"))
            recorder._on_message(Message("end_of_run", run=f"r{i}", meta={}))
        recorder._on_message(_recon("cut", cut_short=cut))
        recorder._on_message(Message("end_of_run", run="cut", meta={}))
    finally:
        recorder.close()
    assert list(recorder.finished) == ["r8", "r9", "r10", "r11", "cut"] and not recorder.runs and not recorder.notes
    stops = [d for n, d in docs if n == "stop"]
    assert [s["exit_status"] for s in stops] == ["success"] * 13
    assert [s["reason"] for s in stops] == [""] * 12 + [cut]
