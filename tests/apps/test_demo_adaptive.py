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


def test_the_adaptive_demos_picture_draws_the_decisions_over_a_fermat_spirals_stxm_map(tmp_path):
    from scipy.spatial import cKDTree

    from ns_bluesky.apps.demo_adaptive import figure
    from ns_bluesky.instrument.scan import fermat_spiral

    grid = fermat_spiral(144, 60e-9)
    empty = grid[:, 1] > 60e-9  # sample translations: the probe sits at minus these
    stxm = np.where(empty, np.nan, 900.0 - 300.0 * (grid[:, 0] > 0))
    stxm[[9, 18]] = 1000.0  # coarse points on the empty side
    patch = cKDTree(grid).query(grid[np.argmin(np.hypot(*(grid - [0, -200e-9]).T))], k=25)[1]

    def decision(action, points, **detail):
        return {"action": action, "positions": grid[points], "seqs": list(range(len(points))), "detail": detail}

    decisions = [decision("coarse_pass", np.arange(0, 144, 9)), decision("region_of_interest", np.nonzero(~empty)[0],
                                                                       empty_coarse_points=[9, 18]),
                 decision("remeasure", [3, 40]), decision("drift_reference", patch),
                 decision("drift_detected", patch[:9], drift_m=[20e-9, -10e-9])]
    png = figure(tmp_path / "fermat.png", grid=grid, shape=(12, 12), stxm=stxm, decisions=decisions, view=None,
                 text="a spiral", title="adaptive on a Fermat spiral", pattern="fermat")
    assert png.stat().st_size > 20_000


def test_a_fermat_demo_too_small_for_the_plan_is_refused_before_anything_is_made(tmp_path):
    from ns_bluesky.apps.demo_adaptive import coarse_count, run_adaptive_demo
    from ns_bluesky.errors import ParameterError

    for kwargs, message in (({"pattern": "fermat", "scan": (6, 6)}, "needs at least 49 points"),
                            ({"pattern": "spiral"}, "--pattern must be 'raster' or 'fermat'")):
        with pytest.raises(ParameterError, match=message):
            run_adaptive_demo(out=tmp_path / "out", catalog=tmp_path / "cat", progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []
    assert coarse_count("fermat", (12, 12)) == 18 and coarse_count("raster", (20, 20)) == 49  # as the plan chooses
