"""The simulated FCCD: photons sampled and the electronics' offsets, noise, spikes and faults added.

Frames come out in the instrument's raw readout layout, which
:mod:`ns_bluesky.instrument.detector` describes (1040 x 1152 uint16, ADC clock order).
"""

from __future__ import annotations

import numpy as np

from ..instrument.detector import DetectorGeometry, add_image
from .settings import DetectorNoise


def sample_photons(expected: np.ndarray, rng: np.random.Generator, dense_above: float = 0.1) -> np.ndarray:
    """Poisson counts for an expected-photon image, exactly, at a fraction of ``rng.poisson``'s cost.

    Bright pixels (above ``dense_above``) are drawn one by one. The many dim ones come
    from a thinned Poisson process: candidate photons land uniformly on the frame at
    ``dense_above`` per pixel and one landing on a dim pixel is kept with probability
    expected / ``dense_above``, which gives each dim pixel exactly a Poisson(expected)
    count, independently (Lewis & Shedler thinning).
    """
    flat = np.ascontiguousarray(expected, dtype=np.float32).ravel()
    if not (flat.min() >= 0 and np.isfinite(flat.sum())):
        raise ValueError("expected photon counts must be finite and non-negative")
    out = np.zeros(flat.size, dtype=np.int32)
    dense = np.flatnonzero(flat > dense_above)
    out[dense] = rng.poisson(flat[dense])
    candidates = rng.integers(0, flat.size, rng.poisson(dense_above * flat.size))
    lam = flat[candidates]
    keep = candidates[(lam <= dense_above) & (rng.random(candidates.size, dtype=np.float32) * dense_above < lam)]
    np.add.at(out, keep, 1)
    return out.reshape(np.shape(expected))


class FCCDModel:
    """The detector's electronics: baselines, noise, spikes, bad pixels, saturation.

    Fixed-pattern properties (per-channel offsets and their slope in clock time, hot
    and dead pixels, the dead channel) are drawn once from ``seed``; each frame then
    draws its own noise from ``(seed, frame_index)`` so frames are reproducible in any
    order and from any thread.
    """

    NOISE_POOL_FRAMES = 4

    def __init__(self, geom: DetectorGeometry, noise: DetectorNoise, energy_eV: float, seed: int = 0):
        self.geom, self.noise, self.energy_eV = geom, noise, energy_eV
        rng = np.random.default_rng([seed, 0xFCCD])
        r, j, ch = geom.rows_per_half, geom.cols_per_channel, geom.channels
        clock = (np.arange(r)[:, None] * j + np.arange(j)[None, :]).astype(np.float32)  # (r, j)
        t = clock / clock.max()
        self.offset_adu = (noise.offset_adu + noise.offset_spread_adu * rng.standard_normal(ch)).astype(np.float32)
        self.slope_adu = (noise.offset_slope_adu * (0.5 + rng.random(ch))).astype(np.float32)
        self.drift_phase = rng.uniform(0, 2 * np.pi, ch).astype(np.float32)
        self.drift_period = (noise.offset_drift_period_frames * rng.uniform(0.7, 1.3, ch)).astype(np.float32)
        spikes = ((clock.astype(np.int64) % noise.spike_period_clocks) == 0) * noise.spike_amplitude_adu
        self.spike_adu = spikes.astype(np.float32)  # (r, j): crosstalk common to all channels
        # static part of the baseline, as a raw-shaped [row, col, channel] array
        base = self.offset_adu[None, None, :] + self.slope_adu[None, None, :] * t[:, :, None] + self.spike_adu[:, :, None]
        self._base = base.astype(np.float32)
        shape = geom.image_shape
        u = rng.random(shape)
        self.hot_mask = u < noise.hot_pixel_fraction
        self.dead_mask = (u >= noise.hot_pixel_fraction) & (u < noise.hot_pixel_fraction + noise.dead_pixel_fraction)
        dark = np.full(shape, noise.dark_current_adu_per_s, dtype=np.float32)
        dark[self.hot_mask] *= 200.0
        dark[self.dead_mask] = 0.0
        self.dark_current_adu_per_s = dark
        self._dead_pixels = np.flatnonzero(self.dead_mask)
        pool = rng.standard_normal(self.NOISE_POOL_FRAMES * r * j * ch) * noise.read_noise_adu
        self._noise_pool = np.round(pool).astype(np.int16)

    @property
    def adu_per_photon(self) -> float:
        return self.geom.adu_per_eV * self.energy_eV

    def offsets_at(self, frame_index: int) -> np.ndarray:
        """True per-channel baseline (ADU, at the start of readout) for a frame: what the overscan measures."""
        drift = self.noise.offset_drift_adu * np.sin(2 * np.pi * frame_index / self.drift_period + self.drift_phase)
        return self.offset_adu + drift.astype(np.float32)

    def baseline(self, frame_index: int) -> np.ndarray:
        """Noise-free raw frame with no light and no dark current: offsets, slope, drift, spikes."""
        drift = self.offsets_at(frame_index) - self.offset_adu
        return (self._base + drift).reshape(self.geom.raw_shape)

    def read(
        self, expected_photons: np.ndarray | None, exposure_s: float, frame_index: int, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One raw frame (uint16) and the photon counts that went into it (None for a dark frame)."""
        geom = self.geom
        rng = np.random.default_rng([seed, frame_index])
        photons = None
        if expected_photons is not None:
            photons = sample_photons(expected_photons, rng)
            photons.ravel()[self._dead_pixels] = 0  # dead pixels do not respond
            signal = photons.astype(np.float32)
            signal *= np.float32(self.adu_per_photon)
            signal += self.dark_current_adu_per_s * np.float32(exposure_s)
        else:
            signal = self.dark_current_adu_per_s * np.float32(exposure_s)
        drift = self.offsets_at(frame_index) - self.offset_adu
        # start from the baseline (+0.5: the truncating cast below then rounds, as the ADC does)
        view = self._base + (drift + np.float32(0.5))
        raw = view.reshape(geom.raw_shape)
        add_image(raw, signal, geom)
        n = raw.size
        start = int(rng.integers(0, self._noise_pool.size - n))
        raw += self._noise_pool[start : start + n].reshape(raw.shape)
        np.clip(raw, 0, geom.saturation_adu, out=raw)
        if self.noise.dead_channel is not None:
            view[:, :, self.noise.dead_channel] = 0
        return raw.astype(np.uint16), photons
