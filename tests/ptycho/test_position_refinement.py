"""LSQ-ML's position refinement finds the simulated stage's encoder noise: positions recorded a few nm (here
0.6 px) off where the frames were measured come back closer to the truth, as benchmarks/positions.py reports
at the demo's scale."""

from __future__ import annotations

import numpy as np
import pytest

from ns_bluesky.ptycho.engines import PtychoData, engine
from ns_bluesky.sim.farfield import farfield_set

SETTLE_PX = 0.4  # where the stage settled, off its lattice: the frames are simulated there
ENCODER_PX = 0.6  # what the encoder read, off where it settled: what the engine is given


def rms_error_px(estimate: np.ndarray, truth: np.ndarray) -> float:
    """rms position error after removing the common shift, which the data cannot see."""
    d = estimate - truth
    d -= d.mean(axis=0)
    return float(np.sqrt((d**2).sum(axis=1).mean()))


@pytest.fixture(scope="module")
def jittered():
    s = farfield_set(grid=8, frame=64, photons=1e6, probe_diameter_px=24.0, jitter_px=SETTLE_PX, seed=3)
    recorded = s.origins + np.random.default_rng(7).normal(0.0, ENCODER_PX, s.origins.shape)
    return s, recorded


def _reconstruct(s, recorded, refine: bool) -> np.ndarray:
    eng = engine("lsqml", position_correction=refine, position_every=5, threads=1)
    eng.prepare(PtychoData(s.patterns, recorded.copy()), s.probe_start)
    eng.iterate(60)
    return eng.origins


@pytest.mark.parametrize("refine", [True, False])
def test_refinement_brings_the_recorded_positions_towards_the_true_ones(jittered, refine):
    s, recorded = jittered
    before = rms_error_px(recorded, s.origins)
    after = rms_error_px(_reconstruct(s, recorded, refine), s.origins)
    assert before == pytest.approx(ENCODER_PX * np.sqrt(2), rel=0.25)  # both axes' noise
    if refine:
        assert after < 0.7 * before, (before, after)
    else:  # the positions as recorded: the error stays (the test above is not passed by doing nothing)
        assert after == pytest.approx(before)
