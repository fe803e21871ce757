"""Low-resolution images from the diffraction patterns alone: STXM transmission, DPC, and a first probe.

Each scan point gives one pixel: the transmitted bright-field counts (absorption
contrast) and the shift of the pattern's centre of mass (differential phase contrast,
proportional to the phase gradient). The probe's first guess comes from the mean
pattern (its Fourier modulus) or from the zone-plate optics.
"""

from __future__ import annotations

import numpy as np

from .backend import fft_module
from .preprocess import center_of_mass


def bright_field_mask(shape: tuple[int, int], radius_px: float, center=None, xp=np):
    """The disc of the direct beam on the (centred) pattern."""
    cy, cx = center if center is not None else (shape[0] // 2, shape[1] // 2)
    y, x = xp.ogrid[: shape[0], : shape[1]]
    return (y - cy) ** 2 + (x - cx) ** 2 <= radius_px**2


def stxm_signals(patterns, bright_field, xp=np) -> dict:
    """Per frame: transmitted counts in the bright field, and the centre-of-mass shift (rows, cols)."""
    p = xp.asarray(patterns, dtype=xp.float64)
    trans = (p * bright_field).sum(axis=(-2, -1))
    com = center_of_mass(p, xp=xp)
    ref = xp.asarray([p.shape[-2] // 2, p.shape[-1] // 2], dtype=xp.float64)
    return {"transmission": trans, "dpc": com - ref}


def grid_image(positions_m, values, pixel_m: float, xp=np):
    """Put per-point values on a regular grid (mean of the points in each pixel; NaN where none).

    Positions are (y, x) in metres; returns the image and the (y, x) of its first pixel.
    """
    pos = xp.asarray(positions_m, dtype=xp.float64)
    vals = xp.asarray(values, dtype=xp.float64)
    origin = pos.min(axis=0)
    idx = xp.rint((pos - origin) / pixel_m).astype(xp.int64)
    shape = tuple(int(v) + 1 for v in idx.max(axis=0))
    flat = idx[:, 0] * shape[1] + idx[:, 1]
    total = xp.bincount(flat, weights=vals, minlength=shape[0] * shape[1])
    count = xp.bincount(flat, minlength=shape[0] * shape[1])
    img = xp.where(count > 0, total / xp.maximum(count, 1), xp.nan).reshape(shape)
    return img, origin


def probe_from_patterns(mean_pattern, support_fraction: float = 0.1, xp=np):
    """First probe guess (COSMIC): inverse FFT of sqrt(mean pattern) inside its bright region.

    ``mean_pattern`` is centred (zero frequency in the middle); the probe comes back
    centred too, normalised to sum |P|^2 = 1.
    """
    fft = fft_module(xp)
    avg = xp.asarray(mean_pattern, dtype=xp.float64)
    mask = avg > support_fraction * avg.max()
    field = fft.fftshift(fft.ifft2(fft.ifftshift(xp.sqrt(xp.maximum(avg, 0)) * mask)))
    return (field / xp.sqrt((xp.abs(field) ** 2).sum())).astype(xp.complex64)
