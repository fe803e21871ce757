"""Faults of a real beamline, injected into the simulated one: what adaptive acquisition must survive.

A :class:`Faults` schedule is counted in *light frames* (frames taken with the shutter
open, from 0), so a frame taken again after a fault is clean unless the schedule says
otherwise, as on a beamline where a dropped packet or a beam dump does not repeat at
the same point. Each fault is a pure function of the raw frame (or of the position)
and is applied by the detector's frame source:

- dropped packets: a band of rows read out as zeros (what a lost UDP packet leaves);
- beam loss: no photons reach the sample for a few frames (the frame is a dark frame);
- saturation burst: a band of pixels pinned at the ADC's full scale;
- stage drift: the sample moves on the stage without the encoders seeing it, so the
  sample sits at ``readback + drift`` while the readback is recorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..instrument.detector import DetectorGeometry

#: rows of a raw frame lost with one dropped packet burst (about 5 % of the 1040 rows: flagged as ``zeros``)
DROPPED_ROWS = 56
#: rows pinned at full scale by one saturation burst
SATURATED_ROWS = 8


def drop_packets(raw: np.ndarray, first_row: int = 300, rows: int = DROPPED_ROWS) -> np.ndarray:
    """A copy of ``raw`` with ``rows`` rows from ``first_row`` read as zeros, as a lost packet leaves them."""
    out = np.array(raw, copy=True)
    out[first_row : first_row + rows] = 0
    return out


def saturate(raw: np.ndarray, geometry: DetectorGeometry, first_row: int = 500, rows: int = SATURATED_ROWS) -> np.ndarray:
    """A copy of ``raw`` with a band of pixels at the ADC's full scale (a burst of scattered beam)."""
    out = np.array(raw, copy=True)
    out[first_row : first_row + rows] = geometry.saturation_adu
    return out


@dataclass(frozen=True)
class StageDrift:
    """The sample's slip on the stage from light frame ``start`` on: a jump plus a steady rate, (y, x) metres."""

    start: int = 0
    jump_m: tuple[float, float] = (0.0, 0.0)
    rate_m_per_frame: tuple[float, float] = (0.0, 0.0)

    def at(self, light_frame: int) -> np.ndarray:
        """Drift (y, x) in metres at a light frame."""
        if light_frame < self.start:
            return np.zeros(2)
        return np.asarray(self.jump_m, float) + np.asarray(self.rate_m_per_frame, float) * (light_frame - self.start)


@dataclass(frozen=True)
class Faults:
    """Which light frames go wrong and how; empty by default (a fault-free beamline)."""

    dropped_packets: frozenset[int] = field(default_factory=frozenset)
    beam_loss: frozenset[int] = field(default_factory=frozenset)
    saturation: frozenset[int] = field(default_factory=frozenset)
    drift: StageDrift | None = None

    @classmethod
    def make(
        cls,
        *,
        dropped_packets: Iterable[int] = (),
        beam_loss: Iterable[int] = (),
        saturation: Iterable[int] = (),
        drift: StageDrift | None = None,
    ) -> Faults:
        """Faults from any iterables of light-frame numbers (``range(10, 13)`` for three frames of beam loss)."""
        return cls(frozenset(dropped_packets), frozenset(beam_loss), frozenset(saturation), drift)

    @property
    def bad_frames(self) -> frozenset[int]:
        """Light frames that come out unusable."""
        return self.dropped_packets | self.beam_loss | self.saturation

    def drift_m(self, light_frame: int) -> np.ndarray:
        return np.zeros(2) if self.drift is None else self.drift.at(light_frame)

    def spoil(self, raw: np.ndarray, light_frame: int, geometry: DetectorGeometry) -> np.ndarray:
        """The frame as the faults of ``light_frame`` leave it (beam loss is applied before rendering)."""
        if light_frame in self.dropped_packets:
            raw = drop_packets(raw)
        if light_frame in self.saturation:
            raw = saturate(raw, geometry)
        return raw

