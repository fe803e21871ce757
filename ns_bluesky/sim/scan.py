"""Scan patterns in metres, centred on zero: (y, x) per point, in acquisition order."""

from __future__ import annotations

import numpy as np

from ..config import ScanPattern
from ..errors import ParameterError

GOLDEN_ANGLE = np.pi * (3 - np.sqrt(5))
#: median nearest-neighbour distance of r = c sqrt(n) points at the golden angle, in units of c
FERMAT_NEIGHBOUR = 1.685


def raster(shape: tuple[int, int], step_m: float, *, jitter_m: float = 0.0, seed: int = 0) -> np.ndarray:
    """Row-by-row raster (x fastest), optionally with Gaussian jitter against raster artefacts."""
    ny, nx = shape
    y = (np.arange(ny) - (ny - 1) / 2) * step_m
    x = (np.arange(nx) - (nx - 1) / 2) * step_m
    yy, xx = np.meshgrid(y, x, indexing="ij")
    pos = np.stack([yy.ravel(), xx.ravel()], axis=1)
    if jitter_m > 0:
        pos = pos + np.random.default_rng(seed).normal(0.0, jitter_m, pos.shape)
    return pos


def fermat_spiral(num_points: int, step_m: float) -> np.ndarray:
    """Fermat spiral (Huang et al., Opt. Express 22, 2014) whose neighbours are ``step_m`` apart.

    Even coverage without the raster grid's periodic artefacts; the step is the median
    nearest-neighbour distance, so overlap means the same thing as for a raster.
    """
    n = np.arange(num_points)
    r = step_m / FERMAT_NEIGHBOUR * np.sqrt(n)
    theta = n * GOLDEN_ANGLE
    return np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1)


def step_from_overlap(beam_diameter_m: float, overlap: float) -> float:
    """Step that makes neighbouring beam footprints share ``overlap`` of their diameter."""
    if not 0 <= overlap < 1:
        raise ParameterError(f"overlap must be in [0, 1), got {overlap}")
    return beam_diameter_m * (1 - overlap)


def positions(pattern: ScanPattern, beam_diameter_m: float, *, seed: int = 0) -> np.ndarray:
    """Planned positions of a pattern; the step comes from ``overlap`` when no step is given."""
    if pattern.step_m is not None:
        step = pattern.step_m
    else:
        step = step_from_overlap(beam_diameter_m, 0.7 if pattern.overlap is None else pattern.overlap)
    if pattern.kind == "raster":
        pos = raster(pattern.shape, step, jitter_m=pattern.jitter_m, seed=seed)
    else:
        pos = fermat_spiral(pattern.point_count, step)
    return pos + np.asarray(pattern.center_m)
