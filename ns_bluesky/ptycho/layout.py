"""Where frames sit on the object's pixel grid, and the start probe's scale.

One layout for every consumer (the live reconstruction, an offline one, the viewer, the
adaptive plan and the demo's score), so their objects share pixels.
"""

from __future__ import annotations

import numpy as np

MARGIN_PX = 2.0  # object pixels between the outermost probe window and the object's edge


def grid_origins(probe_yx_m: np.ndarray, dx: float, lowest_yx_m: np.ndarray | None = None, margin_px: float = MARGIN_PX) -> np.ndarray:
    """Probe-window corners (row, col) in object pixels for probe positions on the sample (y, x, metres):
    the lowest position (``lowest_yx_m``, default the lowest of these) sits ``margin_px`` in from the edge."""
    probe = np.asarray(probe_yx_m, dtype=float)
    lowest = probe.min(axis=0) if lowest_yx_m is None else np.asarray(lowest_yx_m, dtype=float)
    return (probe - lowest) / dx + margin_px


def with_counts(probe: np.ndarray, patterns: np.ndarray) -> np.ndarray:
    """The start probe scaled to the measured counts (sum |P|^2 = mean photons per frame): a guess from
    optics or from the mean pattern knows the shape of the beam, not its flux."""
    return probe * np.sqrt(patterns.sum(axis=(-2, -1)).mean() / max(float((np.abs(probe) ** 2).sum()), 1e-30))


def central_patch(positions_px: np.ndarray, frames: int) -> np.ndarray:
    """Indices of the ``frames`` positions nearest the scan's median: a compact, well-overlapped patch."""
    centre = np.median(positions_px, axis=0)
    return np.argsort(np.hypot(*(positions_px - centre).T), kind="stable")[:frames]
