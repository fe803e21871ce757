"""The main job end to end, and reprocessing from history after a scan the pipeline missed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from ns_bluesky.apps.replay import replay
from ns_bluesky.callbacks.bridge import PipelineBridge
from ns_bluesky.io.catalog import make_tiled_writer
from ns_bluesky.io.catalog_layout import derived_runs
from ns_bluesky.plans import dark_frames, ptycho_scan
from ns_bluesky.stages.pipeline import ptycho_pipeline
from tests.support.processes import process_running

pytestmark = pytest.mark.slow


def _derived(cat, raw_uid):
    found = derived_runs(cat, raw_uid)  # in the processed node beside the raw runs
    assert len(found) >= 1, f"no derived run of {raw_uid}"
    assert cat[-1].metadata["start"].get("parent_uid") is None  # the raw runs hold no derived run
    return found[-1]


def test_demo_streams_the_scan_through_the_pipeline_into_a_derived_run(tmp_path, cat, catalog_dir):
    from ns_bluesky.apps.demo import run_demo

    # the session's catalog: one embedded tiled server per process (a second would void the first's key)
    out = tmp_path / "out"
    r = run_demo(scan=(5, 5), rate_hz=0, darks=3, out=out, catalog=catalog_dir, progress=False, end_timeout_s=180, refine_s=3)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("frames", "acquisition_s", "last_frame_to_final_s", "frames_per_s", "nrmse", "raw_uid", "derived_uid", "cxi", "png"):
        assert summary.get(key) is not None, key
    assert summary["frames"] == 25 and r.exit_status == "success" and r.frames_flagged == {}
    assert 0 < summary["nrmse"] < 0.6 and summary["last_frame_to_final_s"] < 60
    derived = _derived(cat, r.raw_uid)
    start = derived.metadata["start"]
    assert start["uid"] == r.derived_uid and start["dark_uid"] == r.dark_uid
    assert derived.metadata["stop"]["exit_status"] == "success"
    assert {"frames_qc", "reconstruction", "stxm", "run_qc"} <= set(derived)
    qc = derived["frames_qc"].read()
    assert sorted(np.asarray(qc["seq"])) == list(range(1, 26)) and int(np.asarray(qc["usable"]).sum()) == 25
    rec = derived["reconstruction"]
    assert np.asarray(rec["final"].read())[-1] == 1
    phase = rec["object_phase"]
    assert phase.shape[0] == len(np.asarray(rec["iteration"].read())) and np.isfinite(np.asarray(phase[-1])).all()
    with h5py.File(r.cxi) as f:
        assert f["entry_1/data_1/data"].shape == (25, 128, 128)
        assert f["entry_1/image_1/data_type"][()] == b"probe" and f["entry_1/image_2/data_type"][()] == b"object"
    assert Path(r.png).stat().st_size > 10_000


def test_a_scan_taken_while_the_pipeline_is_down_is_kept_told_and_replayed(tmp_path, RE, beamline, cat, catalog_dir, caplog):
    cfg = ptycho_pipeline(frame_workers=1, out_dir=tmp_path)  # free ports: nobody answers there
    bridge = PipelineBridge(cfg, warn_after_s=0.5)
    RE.subscribe(bridge)
    RE.subscribe(make_tiled_writer(cat))
    with caplog.at_level(logging.ERROR, logger="ns_bluesky.callbacks.bridge"):
        (dark_uid,) = RE(dark_frames(beamline.fccd, beamline.shutter, 3))
        (raw_uid,) = RE(ptycho_scan(beamline.fccd, beamline.stage, beamline.shutter, optics=beamline.optics,
                                     shape=(3, 3), overlap=0.7, dark_uid=dark_uid))
        deadline = __import__("time").monotonic() + 10
        while raw_uid not in bridge.unprocessed and __import__("time").monotonic() < deadline:
            __import__("time").sleep(0.1)
    bridge.close()
    assert raw_uid in bridge.unprocessed
    assert any("ns-bluesky replay" in r.getMessage() and raw_uid in r.getMessage() for r in caplog.records)
    raw = cat[raw_uid]
    assert raw.metadata["stop"]["exit_status"] == "success"
    assert raw["primary"]["fccd_image"].shape == (9, 1040, 1152)  # the raw data is whole

    result = replay(raw_uid, catalog=catalog_dir, out=tmp_path / "replay", workers=1, progress=False, end_timeout_s=120, refine_s=2)
    assert result["frames"] == 9 and result["usable"] == 9 and result["flags"] == {}
    derived = _derived(cat, raw_uid)
    assert derived.metadata["start"]["uid"] == result["derived_uid"]
    assert derived.metadata["start"]["dark_uid"] == dark_uid
    assert len(np.asarray(derived["frames_qc"]["seq"].read())) == 9


def test_ctrl_c_stops_everything_the_demo_started(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from ns_bluesky.stream.client import ControlClient
    from ns_bluesky.stream.config import load_config

    out, log = tmp_path / "out", tmp_path / "demo.log"
    proc = subprocess.Popen([sys.executable, "-m", "ns_bluesky.apps.cli", "demo", "--scan", "10x10", "--rate", "5", "--darks", "3",
                             "--out", str(out), "--catalog", str(tmp_path / "cat"), "--quiet"],
                            env={**os.environ, "NS_BLUESKY_LOG": str(log)})
    try:
        pids: list[int] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not pids and proc.poll() is None:
            time.sleep(0.5)
            try:
                status = ControlClient(load_config(out / "pipeline" / "pipeline.json"), timeout_s=1).status()
                if status["runs"] and all(m["workers"] for m in status["modules"].values()):
                    server = json.loads((tmp_path / "cat" / "server.json").read_text())["pid"]  # the catalog's
                    pids = [server, status["pid"], *(w["pid"] for m in status["modules"].values() for w in m["workers"])]
            except Exception:
                continue
        assert pids, "the demo's pipeline never came up"
        time.sleep(2)  # mid-scan
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(60) != 0
        except subprocess.TimeoutExpired:  # where it waits: every thread's stack, appended to its log (guard.py)
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            raise AssertionError("still running 60 s after Ctrl-C; its log:\n" + log.read_text()[-6000:]) from None
        deadline = time.monotonic() + 15
        while (alive := [pid for pid in pids if process_running(pid)]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not alive, f"still running after Ctrl-C: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
