"""The beamline IPython profile in a real, non-interactive IPython: the short scan of issue 21 with the
pipeline running, then the raw run at cat[-1] and its derived run beside it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SESSION = """
(dark,) = RE(dark_frames(fccd, shutter, 3))
uid, = RE(ptycho_scan(fccd, stage, shutter, shape=(3, 3)))
view = pipeline.finish(uid, 120)
catalog_writer.flush()
start = cat[-1].metadata["start"]
print("LATEST", start["plan_name"], start["uid"] == uid, start["scan_id"] == RE.md["scan_id"],
      cat[start["scan_id"]].metadata["start"]["uid"] == uid, [r.metadata["start"]["uid"] == uid for r in cat.values()[-1:-3:-1]])
print("DEFAULTS", start["dark_uid"] == dark, start["energy_eV"] == optics.energy.get(), sorted(start["session_defaults"]))
print("SCAN", cat[uid]["primary"]["fccd_image"].shape)
d = derived(uid)[-1]
print("DERIVED", d.metadata["start"]["dark_uid"] == dark, d.metadata["stop"]["exit_status"], sorted(d),
      parent(d).metadata["start"]["uid"] == uid, processed[-1].metadata["start"]["uid"] == d.metadata["start"]["uid"])
(auid,) = RE(adaptive_ptycho(fccd, stage, shutter, feedback=feedback, shape=(4, 4), overlap=0.7, drift_check=False))
catalog_writer.flush()
print("ADAPTIVE", [str(a) for a in cat[auid]["adaptive"]["adaptive_action"].read()], cat[auid].metadata["start"]["dark_uid"] == dark)
plans_help()
"""


def test_the_profile_loads_scans_and_finds_the_derived_run(tmp_path):
    ns = [sys.executable, "-m", "ns_bluesky.apps.cli"]
    install = subprocess.run([*ns, "profile", "install", "--ipython-dir", str(tmp_path / "ipy")], capture_output=True, text=True, timeout=60)
    assert install.returncode == 0, install.stderr
    assert (tmp_path / "ipy" / "profile_nanosurveyor" / "startup" / "30-plans.py").exists()
    env = {**os.environ, "NS_BLUESKY_CATALOG": str(tmp_path / "cat")}
    out = subprocess.run(
        [sys.executable, "-m", "IPython", f"--ipython-dir={tmp_path / 'ipy'}", "--profile=nanosurveyor", "--no-banner", "-c", SESSION],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    for ready in ("[00-base]", "[10-devices]", "[20-pipeline]", "[30-plans]"):
        assert ready in out.stdout, text[-3000:]
    loaded = float(out.stdout.split("(loaded in ")[1].split(" s)")[0])
    assert loaded > 0  # the session says how long it took to load (speed is for benchmarks, not timed asserts)
    # the user's scan, with the RunEngine's scan_id, is cat[-1] and cat[scan_id] though its derived run came later
    assert "LATEST ptycho_scan True True True [True, False]" in out.stdout, text[-3000:]
    assert "DEFAULTS True True ['dark_uid', 'optics']" in out.stdout, text[-3000:]
    assert "SCAN (9, 1040, 1152)" in out.stdout
    assert "DERIVED True success ['cxi', 'frames_qc', 'reconstruction', 'run_qc', 'stxm'] True True" in out.stdout, text[-3000:]
    assert "ADAPTIVE ['coarse_pass', " in out.stdout and "] True" in out.stdout.split("ADAPTIVE")[1], text[-3000:]
    assert "RE(ptycho_scan(fccd, stage, shutter, shape=(10, 10)))" in out.stdout  # plans_help() shows the short form
    assert "failed" not in out.stderr, out.stderr[-3000:]  # the session's end closed everything cleanly
