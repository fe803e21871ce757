"""Assembled FCCD frames in ADU to photon counts, for files that bring them uncalibrated."""

from __future__ import annotations

import numpy as np

from ..instrument.detector import DetectorGeometry
from ..instrument.units import ELECTRON_VOLT_J
from .preprocess import background_threshold, to_photons

READ_NOISE_ADU = 5.0  # the FCCD's, when a file brings no dark frames to measure it


def fccd_photons(frames: np.ndarray, geom: DetectorGeometry, energy_J: float, noise_adu: float) -> np.ndarray:
    """Dark-subtracted assembled FCCD frames (ADU) to photon counts, in place.

    The overscan is gone from assembled frames, so each ADC channel's residual offset is
    taken as the median of each column of each half (the diffraction covers few of its
    480 rows); values within 3 sigma of the read noise are zeroed (at 0.5 photon alone a
    5 ADU noise would pass 7 % of the pixels as photons), then ADU to photons.
    """
    half = frames.shape[-2] // 2
    for part in (frames[:, :half], frames[:, half:]):
        part -= np.median(part, axis=1, keepdims=True)
    background_threshold(frames, 3 * noise_adu, xp=np, inplace=True)
    return to_photons(frames, geom.adu_per_eV * energy_J / ELECTRON_VOLT_J, xp=np, inplace=True)
