"""FCCD frame pre-processing: the Nanosurveyor paper's nine steps, each a function, vectorised over frames.

All take a batch ``(..., rows, cols)`` (or one frame) and return new arrays; raw-layout
steps (dark, overscan, spikes) work on readout frames, the rest on assembled images.
``xp`` is numpy or cupy (see :mod:`.backend`); facts from ``shared/reference/fccd-cosmic.md``.
"""

from __future__ import annotations

import numpy as np

from ..config import DetectorGeometry
from ..sim.fccd import blocks, channel_series
from .backend import fft_module, fft_workers


def center_of_mass(images, threshold: float = 0.0, xp=np):
    """Centre (row, col) of each pattern from pixels above ``threshold``: step 1, centre finding."""
    img = xp.asarray(images, dtype=xp.float64)
    w = xp.where(img > threshold, img, 0.0)
    rows = xp.arange(img.shape[-2], dtype=xp.float64)
    cols = xp.arange(img.shape[-1], dtype=xp.float64)
    total = w.sum(axis=(-2, -1))
    total = xp.where(total > 0, total, xp.nan)
    cy = (w.sum(axis=-1) * rows).sum(axis=-1) / total
    cx = (w.sum(axis=-2) * cols).sum(axis=-1) / total
    return xp.stack([cy, cx], axis=-1)


def subtract_dark(raw, dark_mean, bad_pixels=None, xp=np):
    """Step 2: raw minus the mean dark, as float32; masked pixels (nonzero ``bad_pixels``) become 0."""
    out = xp.subtract(raw, xp.asarray(dark_mean, dtype=xp.float32), dtype=xp.float32)
    if bad_pixels is not None:
        bad = xp.flatnonzero(xp.asarray(bad_pixels).ravel())  # few: zero them by index, not a full pass
        out.reshape(*out.shape[: out.ndim - 2], -1)[..., bad] = 0
    return out


def overscan_correct(raw, geom: DetectorGeometry, order: int = 1, xp=np, inplace: bool = False):
    """Step 3: per channel, fit the overscan samples against readout row (``order`` 1 or 2) and
    subtract the fitted baseline from every sample of that channel (``inplace``: in a float32 ``raw``)."""
    if order not in (1, 2):
        raise ValueError(f"overscan fit order must be 1 (linear) or 2 (quadratic), got {order}")
    frames = xp.asarray(raw, dtype=xp.float32)
    b = blocks(frames, geom)  # [..., half, row, supercolumn, column]
    over = b[..., geom.data_cols_per_channel :].mean(axis=-1)  # [..., half, row, supercolumn]
    rows = xp.arange(geom.rows_per_half, dtype=xp.float64)
    t = (rows - rows.mean()) / rows.std()
    design = xp.stack([t**k for k in range(order + 1)], axis=1)  # (rows, order+1)
    pinv = xp.linalg.pinv(design)  # (order+1, rows)
    coeffs = xp.einsum("kr,...hrs->...hks", pinv.astype(xp.float32), over)
    fitted = xp.einsum("rk,...hks->...hrs", design.astype(xp.float32), coeffs)
    corrected = frames if inplace and frames is raw else frames.copy()
    cb = blocks(corrected, geom)
    cb -= fitted[..., None]
    return corrected


def background_threshold(images, threshold: float, xp=np):
    """Step 4: values at or below ``threshold`` (ADU) become 0."""
    img = xp.asarray(images, dtype=xp.float32)
    return xp.where(img > threshold, img, xp.float32(0))


def remove_spikes(raw, geom: DetectorGeometry, *, sigma: float = 6.0, low_bins: int = 20, xp=np, inplace: bool = False):
    """Step 5: periodic readout spikes (crosstalk ripple) out, in readout-clock order.

    The ripple is common to all channels, photons are not: the median over channels at
    each clock tick estimates it without the signal. Its FFT bins far above the median
    power (``sigma`` robust deviations) and above the lowest ``low_bins`` frequencies are
    the ripple; their inverse FFT is subtracted from every channel. Run it after the dark
    and overscan subtraction, so channels share one zero.
    """
    fft = fft_module(xp)
    frames = xp.asarray(raw, dtype=xp.float32)
    series = channel_series(frames, geom)  # [..., channel, clock] (view)
    # median over channels, on the contiguous [clock, channel] layout: a partition, not a sort
    by_clock = frames.reshape(*frames.shape[:-2], -1, geom.channels)
    common = xp.partition(by_clock, geom.channels // 2, axis=-1)[..., geom.channels // 2]  # [..., clock]
    spectrum = fft.rfft(common, axis=-1, **fft_workers(xp))
    power = xp.abs(spectrum)
    med = xp.median(power[..., low_bins:], axis=-1, keepdims=True)
    mad = xp.median(xp.abs(power[..., low_bins:] - med), axis=-1, keepdims=True) * 1.4826 + 1e-6
    peaks = power > med + sigma * mad
    # a period that does not divide the readout leaks into neighbouring bins: take them too
    # (COSMIC's 5-tap dilation)
    peaks = peaks | xp.roll(peaks, 1, axis=-1) | xp.roll(peaks, -1, axis=-1) | xp.roll(peaks, 2, axis=-1) | xp.roll(peaks, -2, axis=-1)
    peaks[..., :low_bins] = False
    ripple = fft.irfft(xp.where(peaks, spectrum, 0), n=series.shape[-1], axis=-1, **fft_workers(xp))
    cleaned = frames if inplace and frames is raw else frames.copy()
    channel_series(cleaned, geom)[...] -= ripple[..., None, :].astype(xp.float32)
    return cleaned


def to_photons(images, adu_per_photon: float, threshold_photons: float = 0.5, xp=np):
    """Step 6: ADU to photons; below ``threshold_photons`` is noise and becomes 0 (sub-photon threshold)."""
    ph = xp.asarray(images, dtype=xp.float32) * xp.float32(1.0 / adu_per_photon)
    if threshold_photons == 0.5:  # rounding already zeroes everything below half a photon
        xp.rint(ph, out=ph)
        return xp.maximum(ph, xp.float32(0), out=ph)
    return xp.where(ph >= threshold_photons, xp.rint(ph), xp.float32(0))


def beamstop_correct(images, transmission_map, xp=np, inplace: bool = False):
    """Step 7: divide the beamstop's shadow by its transmission (1 outside the beamstop)."""
    inverse = xp.float32(1) / xp.asarray(transmission_map, dtype=xp.float32)
    if inplace:
        images *= inverse
        return images
    return xp.asarray(images, dtype=xp.float32) * inverse


def crop_center(images, center, size: int, xp=np):
    """Step 8: a ``size`` x ``size`` window centred on ``center`` (row, col, rounded), zero-padded at edges."""
    img = xp.asarray(images)
    ny, nx = img.shape[-2:]
    cy, cx = (int(round(float(c))) for c in center)
    out = xp.zeros((*img.shape[:-2], size, size), dtype=img.dtype)
    y0, x0 = cy - size // 2, cx - size // 2
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + size, ny), min(x0 + size, nx)
    if sy1 > sy0 and sx1 > sx0:
        out[..., sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[..., sy0:sy1, sx0:sx1]
    return out


def fft_downsample(images, size: int, xp=np):
    """Step 9: a centred pattern to ``size`` x ``size`` with the same q range, counts preserved.

    Cropping the autocorrelation (the inverse FFT of the intensity) keeps the whole
    scattering angle and coarsens the sampling; exact when the exit wave fits in
    ``size``/2 object pixels, as the probe does. The intensity is real, so one real FFT
    of the big pattern and a small inverse real FFT do it; the centring shifts are
    sign flips on the small array.
    """
    fft = fft_module(xp)
    img = xp.asarray(images, dtype=xp.float32)
    n = img.shape[-1]
    if img.shape[-2] != n or size > n or n % 2 or size % 2:
        raise ValueError(f"fft_downsample needs square patterns of even side >= {size}, got {img.shape[-2:]}")
    h = size // 2
    spectrum = fft.rfft2(img, **fft_workers(xp))  # FFT2 of the pattern = N^2 conj(autocorrelation)
    rows = xp.concatenate([xp.arange(h + 1), xp.arange(n - h + 1, n)])  # frequencies 0..h, -h+1..-1
    half = spectrum[..., rows, : h + 1]
    ky = xp.concatenate([xp.arange(h + 1), xp.arange(-h + 1, 0)])
    sign = xp.where((ky[:, None] + xp.arange(h + 1)[None, :]) % 2 == 0, 1.0, -1.0)  # input centred at n/2
    out = fft.irfft2(half * sign, s=(size, size), **fft_workers(xp))
    # output centred at size/2: one more roll by h in both axes
    out = xp.roll(out, (h, h), axis=(-2, -1))
    return out.astype(xp.float32)  # irfft2 of the raw spectrum already carries the (n / size)^2 that keeps counts


class Settings:
    """Which steps run, and their parameters (defaults: COSMIC's)."""

    def __init__(
        self,
        *,
        dark: bool = True,
        overscan_order: int | None = 1,
        spikes: bool = True,
        background_adu: float | None = None,
        photon_threshold: float | None = 0.5,
        beamstop: bool = True,
        crop: int | None = 960,
        out_size: int = 256,
    ):
        self.dark, self.overscan_order, self.spikes = dark, overscan_order, spikes
        self.background_adu, self.photon_threshold, self.beamstop = background_adu, photon_threshold, beamstop
        self.crop, self.out_size = crop, out_size


def preprocess(
    raw,
    geom: DetectorGeometry,
    *,
    dark_mean=None,
    bad_pixels=None,
    adu_per_photon: float,
    transmission_map=None,
    center=None,
    settings: Settings | None = None,
    xp=np,
):
    """Raw readout frames ``(N, 1040, 1152)`` to photon patterns ``(N, out_size, out_size)``, centred."""
    from ..sim.fccd import assemble

    s = settings or Settings()
    raw = xp.asarray(raw)
    if s.dark and dark_mean is not None:
        x = subtract_dark(raw, dark_mean, bad_pixels, xp=xp)  # one pass: converts and subtracts
    else:
        x = raw.astype(xp.float32)  # always a new array: the caller's frames stay as they were
    if s.overscan_order:
        x = overscan_correct(x, geom, order=s.overscan_order, xp=xp, inplace=True)
    if s.spikes:
        x = remove_spikes(x, geom, xp=xp, inplace=True)
    img = assemble(x, geom)
    if s.background_adu is not None:
        img = background_threshold(img, s.background_adu, xp=xp)
    if s.photon_threshold is not None:
        img = to_photons(img, adu_per_photon, s.photon_threshold, xp=xp)
    if s.beamstop and transmission_map is not None:
        img = beamstop_correct(img, transmission_map, xp=xp, inplace=True)  # img is ours: no copy
    middle = (img.shape[-2] // 2, img.shape[-1] // 2)
    c = middle if center is None else tuple(int(round(float(v))) for v in center)
    if s.crop and (s.crop != img.shape[-1] or c != middle):
        img = crop_center(img, c, s.crop, xp=xp)
    return fft_downsample(img, s.out_size, xp=xp)
