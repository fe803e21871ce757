"""Scan patterns in metres, centred on zero: (y, x) per point, in acquisition order."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ..errors import ParameterError
from .model import Model


class ScanPattern(Model):
    """Where the sample goes: a raster (optionally jittered) or a Fermat spiral.

    Give either ``step_m`` or ``overlap`` (fraction of the beam diameter shared by
    neighbouring points, as ptychographers quote it).
    """

    kind: Literal["raster", "fermat"] = "raster"
    shape: tuple[int, int] = Field((40, 40), description="raster points (rows=y, columns=x)")
    num_points: int | None = Field(None, description="Fermat spiral points; default rows*columns")
    step_m: float | None = Field(None, description="raster step or spiral radial step")
    overlap: float | None = Field(None, ge=0, lt=1)
    jitter_m: float = Field(0.0, ge=0, description="rms random offset added to raster points")
    center_m: tuple[float, float] = Field((0.0, 0.0), description="scan centre (y, x)")

    @model_validator(mode="after")
    def _check(self) -> ScanPattern:
        if self.shape[0] < 1 or self.shape[1] < 1:
            raise ValueError(f"shape must have at least one point per axis, got {self.shape}")
        if self.num_points is not None and self.num_points < 1:
            raise ValueError(f"num_points must be at least 1, got {self.num_points}")
        if self.step_m is not None and not (self.step_m > 0 and math.isfinite(self.step_m)):
            raise ValueError(f"step_m must be a positive length in metres, got {self.step_m}")
        if self.step_m is not None and self.overlap is not None:
            raise ValueError("give step_m or overlap, not both")
        return self

    @property
    def point_count(self) -> int:
        if self.kind == "fermat":
            return self.num_points or self.shape[0] * self.shape[1]
        return self.shape[0] * self.shape[1]


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
