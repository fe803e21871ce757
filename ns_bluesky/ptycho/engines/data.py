"""The measured data an engine fits: intensities, where they were measured, and which have arrived."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ParameterError


@dataclass
class PtychoData:
    """Measured intensities ``(N, n, n)`` (zero frequency centred), probe-window origins
    ``(N, 2)`` in object pixels (row, col, may be fractional) and per-frame weights."""

    patterns: np.ndarray
    origins_px: np.ndarray
    weights: np.ndarray | None = None

    def __post_init__(self):
        p = np.asarray(self.patterns)
        if p.ndim != 3 or p.shape[1] != p.shape[2]:
            raise ParameterError(f"patterns must be (N, n, n), got {p.shape}")
        if np.asarray(self.origins_px).shape != (p.shape[0], 2):
            raise ParameterError(f"origins_px must be ({p.shape[0]}, 2), got {np.asarray(self.origins_px).shape}")
        if self.weights is None:
            self.weights = np.ones(p.shape[0], np.float32)
