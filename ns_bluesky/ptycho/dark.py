"""Dark statistics from a stream of dark frames, and the bad-pixel and bad-channel maps they give.

Welford's streaming mean and variance (Chan et al.'s batch merge), so darks can be
folded in as they arrive and never need to sit in memory together. Works on raw
readout frames, so channels are known; maps use CXI mask bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..instrument.detector import DetectorGeometry, channel_series

MASK_HOT = 0x4
MASK_DEAD = 0x8
MASK_NOISY = 0x400


class DarkStatistics:
    """Per-pixel running mean and variance; ``update`` takes one frame or a batch."""

    def __init__(self, shape: tuple[int, ...], xp=np):
        self.xp = xp
        self.count = 0
        self.mean = xp.zeros(shape, dtype=xp.float64)
        self._m2 = xp.zeros(shape, dtype=xp.float64)

    def update(self, frames) -> None:
        xp = self.xp
        batch = xp.asarray(frames, dtype=xp.float64)
        if batch.shape == self.mean.shape:
            batch = batch[None]
        if batch.shape[1:] != self.mean.shape:
            raise ValueError(f"dark frames of shape {batch.shape[1:]} do not match {self.mean.shape}")
        n_b = batch.shape[0]
        if n_b == 0:
            return
        mean_b = batch.mean(axis=0)
        m2_b = ((batch - mean_b) ** 2).sum(axis=0)
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / n)
        self._m2 += m2_b + delta**2 * (self.count * n_b / n)
        self.count = n

    @property
    def variance(self):
        """Unbiased per-pixel variance (needs two frames)."""
        if self.count < 2:
            raise ValueError(f"variance needs at least 2 dark frames, got {self.count}")
        return self._m2 / (self.count - 1)


@dataclass
class BadMaps:
    pixels: np.ndarray  # uint32 CXI mask bits, raw layout
    channels: np.ndarray  # bool (channels,): True for an unusable ADC channel


def bad_maps(
    stats: DarkStatistics,
    geom: DetectorGeometry,
    *,
    dead_below_adu: float = 1.0,
    hot_sigma: float = 8.0,
    noisy_factor: float = 4.0,
    channel_fraction: float = 0.5,
) -> BadMaps:
    """Dead (mean below ``dead_below_adu``), hot (mean far above its channel's) and noisy pixels;
    a channel is bad when more than ``channel_fraction`` of its samples are."""
    xp = stats.xp
    mean, var = stats.mean, stats.variance
    # compare each pixel with its own channel: offsets differ by hundreds of ADU between channels
    series_mean = channel_series(mean, geom)  # (channels, clock)
    ch_median = xp.median(series_mean, axis=1, keepdims=True)
    spread = xp.median(xp.abs(series_mean - ch_median), axis=1, keepdims=True) * 1.4826 + 1e-3
    series_var = channel_series(var, geom)
    var_median = xp.median(series_var, axis=1, keepdims=True) + 1e-6
    bits = xp.zeros(series_mean.shape, dtype=xp.uint32)
    bits |= xp.where(series_mean < dead_below_adu, MASK_DEAD, 0).astype(xp.uint32)
    bits |= xp.where(series_mean > ch_median + hot_sigma * spread, MASK_HOT, 0).astype(xp.uint32)
    bits |= xp.where(series_var > noisy_factor * var_median, MASK_NOISY, 0).astype(xp.uint32)
    channels = (bits != 0).mean(axis=1) > channel_fraction
    pixels = xp.ascontiguousarray(bits.T).reshape(geom.raw_shape)
    return BadMaps(pixels=pixels, channels=channels)
