"""``ns-bluesky demo --adaptive`` on a small scan: the adaptive plan end to end with injected faults, and what
it decided in the summary, the PNG and the catalog."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ns_bluesky.apps.demo_adaptive import DRIFT_CHECKS, fault_schedule
from ns_bluesky.io.catalog_layout import derived_runs

pytestmark = pytest.mark.slow


def test_the_adaptive_demo_skips_the_empty_half_retakes_spoiled_frames_and_corrects_the_drift(tmp_path, cat, catalog_dir):
    from ns_bluesky.apps.demo_adaptive import run_adaptive_demo

    out = tmp_path / "out"
    r = run_adaptive_demo(scan=(10, 10), rate_hz=0, darks=3, out=out, catalog=catalog_dir, progress=False, refine_s=2,
                          end_timeout_s=180)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["raw_uid"] == r.raw_uid and summary["exit_status"] == "success"
    actions = [d["action"] for d in summary["decisions"]]
    assert actions[:2] == ["coarse_pass", "region_of_interest"] or actions[:3] == ["coarse_pass", "remeasure",
                                                                                    "region_of_interest"], actions
    assert 0.2 * 100 < r.frames_saved < 0.7 * 100  # the empty half, less the beam's reach into it
    assert {"zeros", "saturated", "no_flux"} <= set(r.flags)  # every injected fault was seen by the pipeline...
    assert r.frames_remeasured >= 1 and "remeasure" in actions  # ...and what it spoiled was taken again
    assert "drift_detected" in actions and "drift_verified" in actions[actions.index("drift_detected"):], actions
    assert r.drift_checks == sum(a in DRIFT_CHECKS for a in actions) >= 2
    assert np.hypot(*r.drift_corrected_m) > 0.5 * np.hypot(*r.drift_injected_m)  # the stage offsets followed the slip
    assert r.frames == len(cat[r.raw_uid]["primary"]["fccd_image"])  # every frame taken is in the raw run
    assert Path(r.png).stat().st_size > 20_000
    # the raw run is the scan (cat[-1]); its derived run sits beside it
    assert cat[-1].metadata["start"]["uid"] == r.raw_uid and cat[-1].metadata["start"]["plan_name"] == "adaptive_ptycho"
    assert cat[-1].metadata["start"]["simulation"]["faults"] == r.faults
    assert [d.metadata["start"]["uid"] for d in derived_runs(cat, r.raw_uid)] == [r.derived_uid]


def test_the_fault_schedule_fits_the_scan():
    faults, schedule = fault_schedule((20, 20), 100e-9)
    coarse = 49  # every 3rd row and column of 20
    assert schedule["dropped_packets"] == [1] and coarse < schedule["saturation"][0] < coarse + 25  # coarse; reference
    assert coarse + 25 <= schedule["beam_loss"][0] < schedule["drift"]["start"] < coarse + 25 + schedule["drift_every"]
    assert faults.bad_frames == {1, *schedule["saturation"], *schedule["beam_loss"]}
    assert faults.drift_m(schedule["drift"]["start"]) == pytest.approx([30e-9, -20e-9])
