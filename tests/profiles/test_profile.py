"""The beamline IPython profile in a real, non-interactive IPython: scan, then the raw and derived runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SESSION = """
(dark,) = RE(dark_frames(fccd, shutter, 3))
(uid,) = RE(ptycho_scan(fccd, stage, shutter, shape=(3, 3), overlap=0.7, optics=optics, dark_uid=dark))
view = pipeline.finish(uid, 120)
from tiled.queries import Key
latest = cat[-1].metadata["start"]
print("LATEST", latest.get("purpose"), latest.get("parent_uid") == uid)
print("SCAN", cat[uid]["primary"]["fccd_image"].shape)
derived = cat.search(Key("parent_uid") == uid).values().last()
print("DERIVED", derived.metadata["start"]["dark_uid"] == dark, derived.metadata["stop"]["exit_status"], sorted(derived))
(auid,) = RE(adaptive_ptycho(fccd, stage, shutter, feedback=feedback, shape=(4, 4), overlap=0.7, optics=optics,
                             dark_uid=dark, drift_check=False))
catalog_writer.flush()
print("ADAPTIVE", [str(a) for a in cat[auid]["adaptive"]["adaptive_action"].read()])
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
    assert "SCAN (9, 1040, 1152)" in out.stdout
    assert "DERIVED True success ['cxi', 'frames_qc', 'reconstruction', 'run_qc', 'stxm']" in out.stdout, text[-3000:]
    assert "ADAPTIVE ['coarse_pass', " in out.stdout, text[-3000:]
    assert "failed" not in out.stderr, out.stderr[-3000:]  # the session's end closed everything cleanly
