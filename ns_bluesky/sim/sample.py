"""Sample model: a complex transmission function made from a grey-scale image.

The projection approximation: a sample of thickness t(x, y) and refractive index
n = 1 - delta + i beta multiplies the wave by exp(-i k delta t) exp(-k beta t).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import ParameterError
from ..instrument.units import wavelength_m


def test_pattern(shape: tuple[int, int] = (512, 512), spokes: int = 36) -> np.ndarray:
    """A Siemens star with rings and dots, values in [0, 1]: sharp edges at every scale.

    Resolution tests at beamlines use exactly this; the rings and the dots give the
    reconstruction features away from the centre, and the corners stay empty so the
    object has a region of known zero thickness.
    """
    ny, nx = shape
    y, x = np.mgrid[-1 : 1 : ny * 1j, -1 : 1 : nx * 1j]
    r = np.hypot(y, x)
    theta = np.arctan2(y, x)
    star = (np.sin(spokes / 2 * theta) > 0) & (r < 0.62) & (r > 0.04)
    rings = (np.abs(r - 0.72) < 0.03) | (np.abs(r - 0.82) < 0.015)
    img = (star | rings).astype(np.float32)
    rng = np.random.default_rng(12345)
    for cy, cx, rad in zip(rng.uniform(-0.9, 0.9, 24), rng.uniform(-0.9, 0.9, 24), rng.uniform(0.01, 0.04, 24), strict=True):
        d = np.hypot(y - cy, x - cx)
        if np.hypot(cy, cx) > 0.88:
            img[d < rad] = 0.6
    return img


def transmission(
    image: np.ndarray, *, energy_eV: float, delta: float, beta: float, thickness_m: float
) -> np.ndarray:
    """Complex transmission of an image read as thickness (1 = ``thickness_m``)."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ParameterError(f"sample image must be 2-D grey scale, got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise ParameterError("sample image contains NaN or infinite values")
    lo, hi = img.min(), img.max()
    thick = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    k = 2 * np.pi / wavelength_m(energy_eV)
    t = thick * thickness_m
    return np.exp(-1j * k * delta * t - k * beta * t).astype(np.complex64)


def resample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Stretch an image to the object grid (bilinear), so any picture fills the scan field."""
    img = np.asarray(image, dtype=np.float32)
    zoom = (shape[0] / img.shape[0], shape[1] / img.shape[1])
    out = ndimage.zoom(img, zoom, order=1, grid_mode=True, mode="nearest")
    return out[: shape[0], : shape[1]]


def with_empty_region(image: np.ndarray, side: str = "right", fraction: float = 0.5) -> np.ndarray:
    """A copy of ``image`` with ``fraction`` of it, from ``side``, emptied (zero thickness): a sample
    that does not fill the field, the case adaptive acquisition skips."""
    if side not in ("left", "right", "top", "bottom"):
        raise ParameterError(f"side must be 'left', 'right', 'top' or 'bottom', got {side!r}")
    if not 0 <= fraction <= 1:
        raise ParameterError(f"fraction must be in [0, 1], got {fraction!r}")
    out = np.array(image, dtype=np.float32, copy=True)
    axis = 1 if side in ("left", "right") else 0
    n = round(fraction * out.shape[axis])
    index = [slice(None), slice(None)]
    index[axis] = slice(out.shape[axis] - n, None) if side in ("right", "bottom") else slice(0, n)
    out[tuple(index)] = out.min() if out.size else 0
    return out
