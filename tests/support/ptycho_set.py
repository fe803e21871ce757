"""A small noise-free ptychography set made here, for tests that need engine input without the simulator."""

from __future__ import annotations

import numpy as np

from ns_bluesky.ptycho.engines import PtychoData


def small_set(n=32, step=6, grid=8, seed=0):
    """(data, object, probe, well-covered mask): an 8 x 8 grid of sub-pixel positions, 32² patterns."""
    rng = np.random.default_rng(seed)
    size = step * (grid - 1) + n + 2
    yy, xx = np.mgrid[:size, :size]
    phase = 0.6 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + 0.3 * rng.random((size, size))
    obj = (np.exp(1j * phase) * (0.8 + 0.2 * np.cos(xx / 4.0))).astype(np.complex64)
    y, x = np.mgrid[:n, :n] - n / 2
    probe = (np.exp(-(x**2 + y**2) / (2 * 5.0**2)) * np.exp(1j * 0.02 * (x**2 + y**2))).astype(np.complex64)
    origins = np.array([(i * step, j * step) for i in range(grid) for j in range(grid)], float)
    origins += rng.uniform(0, 1, origins.shape)  # sub-pixel positions, honoured
    k = np.fft.fftfreq(n)
    pats = []
    for oy, ox in origins:
        iy, ix = int(oy), int(ox)
        ramp = np.exp(-2j * np.pi * ((oy - iy) * k[:, None] + (ox - ix) * k[None, :]))
        p = np.fft.ifft2(np.fft.fft2(probe) * ramp)
        pats.append(np.abs(np.fft.fftshift(np.fft.fft2(p * obj[iy : iy + n, ix : ix + n], norm="ortho"))) ** 2)
    mask = np.zeros(obj.shape, bool)
    mask[n // 2 : -n // 2, n // 2 : -n // 2] = True  # well-covered region
    return PtychoData(np.stack(pats).astype(np.float32), origins), obj, probe, mask
