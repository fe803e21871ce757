"""A reconstruction scored against the simulation's truth: what the demo, the tests and the benchmarks report.

Only a simulated world has a truth; scoring lives beside it so that the real-data path
never needs the simulator.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..ptycho.layout import MARGIN_PX, grid_origins
from ..ptycho.metrics import nrmse


def truth_and_swept(sim, planned_m, shape, dx: float, window: int, margin_px: float = MARGIN_PX,
                    region=None) -> tuple[np.ndarray, np.ndarray]:
    """The simulation's object on a reconstruction's grid (laid out from the planned positions, as the
    live reconstruction's is) and the box the probe centres of ``region`` (indices; default all) swept."""
    planned = np.asarray(planned_m, float)
    origins = grid_origins(-planned, dx, margin_px=margin_px)
    truth = sim.object_on_grid(planned[0], origins[0], dx, shape, window)
    inside = origins if region is None else origins[np.asarray(region, int)]
    lo, hi = np.floor(inside.min(axis=0) + window / 2).astype(int), np.ceil(inside.max(axis=0) + window / 2).astype(int)
    swept = np.zeros(shape, bool)
    swept[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1] = True
    return truth, swept


def score(sim, start: dict, obj: np.ndarray, dx: float, window: int, margin_px: float = MARGIN_PX) -> float:
    """NRMSE of a reconstructed object against the simulation's truth over the scanned region."""

    truth, swept = truth_and_swept(sim, start["planned_positions_m"], obj.shape, dx, window, margin_px)
    return nrmse(obj, truth, swept)


def score_recon(sim, start: dict, recon: dict) -> float:
    """``score`` of a reconstruction result as the pipeline publishes it (amplitude and phase)."""
    arrays, meta = recon["arrays"], recon["meta"]
    obj = arrays["object_amplitude"] * np.exp(1j * arrays["object_phase"])
    return score(sim, start, obj, float(meta["object_pixel_size_m"]), arrays["probe_amplitude"].shape[-1], float(meta["margin_px"]))


def occupied_nrmse(sim, grid_m: np.ndarray, obj: np.ndarray, dx: float, window: int, region: np.ndarray | None = None) -> float:
    """NRMSE of an object from :func:`ns_bluesky.ptycho.adaptive.audit_reconstruction` against the simulation's truth, where there is
    sample: inside the box the probe centres of ``region`` (grid indices, default all) sweep, on pixels
    within 3 of the sample. Empty space is left out, so a scan that skipped it is judged on what it kept."""
    truth, swept = truth_and_swept(sim, grid_m, obj.shape, dx, window, region=region)
    occupied = ndimage.binary_dilation(np.abs(truth - 1) > 1e-3, iterations=3) & swept
    return nrmse(obj, truth, occupied)
