"""FCCD frame pre-processing: the Nanosurveyor paper's nine steps, each a function, vectorised over frames.

All take a batch ``(..., rows, cols)`` (or one frame) and return new arrays unless told
``inplace``; raw-layout steps (dark, overscan, spikes) work on readout frames, the rest on
assembled images. ``xp`` is numpy or cupy (see :mod:`.backend`); facts from
``shared/reference/fccd-cosmic.md``.

Everything stays float32: one float64 operand silently promotes a whole step and doubles
its memory traffic. :class:`Preprocessor` chains the steps on buffers it reuses, one frame at a
time on the CPU (measured 1.5x faster than eight at once: a frame's working set stays in
cache), and gives the patterns the separate steps give, bit for bit, up to the last step.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..instrument.detector import DetectorGeometry, blocks
from .backend import fft_module, fft_workers


def center_of_mass(images, threshold: float = 0.0, xp=np):
    """Centre (row, col) of each pattern from pixels above ``threshold``: step 1, centre finding.

    The weights stay in the input's float precision (float32 for counts); only the row and
    column sums, which add up to a million pixels, accumulate in float64.
    """
    img = xp.asarray(images)
    if img.dtype.kind != "f":
        img = img.astype(xp.float32)
    w = img * (img > threshold)  # branch-free: where() runs 3x slower on a noisy mask
    by_row = w.sum(axis=-1, dtype=xp.float64)  # [..., rows]
    by_col = w.sum(axis=-2, dtype=xp.float64)  # [..., cols]
    rows = xp.arange(img.shape[-2], dtype=xp.float64)
    cols = xp.arange(img.shape[-1], dtype=xp.float64)
    total = by_row.sum(axis=-1)
    total = xp.where(total > 0, total, xp.nan)
    cy = (by_row * rows).sum(axis=-1) / total
    cx = (by_col * cols).sum(axis=-1) / total
    return xp.stack([cy, cx], axis=-1)


def _bad_index(bad_pixels, xp):
    # few pixels: zeroing them by flat index beats a full masked pass over every frame
    return None if bad_pixels is None else xp.flatnonzero(xp.asarray(bad_pixels) != 0)  # bool: 5x faster


def _zero_bad(frames, bad_index):
    if bad_index is not None and bad_index.size:
        frames.reshape(*frames.shape[: frames.ndim - 2], -1)[..., bad_index] = 0


def _dark_into(raw, dark32, bad_index, out, xp):
    out = xp.subtract(raw, dark32, dtype=xp.float32, out=out)  # one pass: converts and subtracts
    _zero_bad(out, bad_index)
    return out


def subtract_dark(raw, dark_mean, bad_pixels=None, xp=np, out=None):
    """Step 2: raw minus the mean dark, as float32; masked pixels (nonzero ``bad_pixels``) become 0.

    ``out``: a float32 buffer of the frames' shape to write into (no new allocation).
    """
    return _dark_into(xp.asarray(raw), xp.asarray(dark_mean, dtype=xp.float32), _bad_index(bad_pixels, xp), out, xp)


@lru_cache(maxsize=8)
def _overscan_design(rows_per_half: int, order: int):
    rows = np.arange(rows_per_half, dtype=np.float64)
    t = (rows - rows.mean()) / rows.std()
    design = np.stack([t**k for k in range(order + 1)], axis=1)  # (rows, order+1)
    # the fit is done in float64 once; the per-frame products run in float32
    arrays = design.astype(np.float32), np.linalg.pinv(design).astype(np.float32)
    for a in arrays:
        a.setflags(write=False)  # shared by every call
    return arrays


def _overscan_fit(frames, geom: DetectorGeometry, order: int, xp):
    """The fitted per-channel baseline ``[..., half, row, supercolumn]`` of float32 ``frames``."""
    if order not in (1, 2):
        raise ValueError(f"overscan fit order must be 1 (linear) or 2 (quadratic), got {order}")
    design, pinv = (xp.asarray(a) for a in _overscan_design(geom.rows_per_half, order))
    b = blocks(frames, geom)
    d, k = geom.data_cols_per_channel, geom.overscan_cols_per_channel
    if k <= 2:  # what mean(axis=-1) computes, without its k-long inner loop (3x slower)
        over = b[..., d] + b[..., d + 1] if k == 2 else b[..., d].copy()  # [..., half, row, supercolumn]
        over /= xp.float32(k)
    else:
        over = b[..., d:].mean(axis=-1)
    coeffs = xp.einsum("kr,...hrs->...hks", pinv, over)
    return xp.einsum("rk,...hks->...hrs", design, coeffs)


def overscan_correct(raw, geom: DetectorGeometry, order: int = 1, xp=np, inplace: bool = False):
    """Step 3: per channel, fit the overscan samples against readout row (``order`` 1 or 2) and
    subtract the fitted baseline from every sample of that channel (``inplace``: in a float32 ``raw``)."""
    frames = xp.asarray(raw, dtype=xp.float32)
    fitted = _overscan_fit(frames, geom, order, xp)  # [..., half, row, supercolumn]
    corrected = frames if inplace and frames is raw else frames.copy()
    # subtract in memory order, [..., row, column, half, supercolumn]: through the blocks()
    # view numpy's inner loop would stride by columns, three times slower
    by_row = corrected.reshape(*corrected.shape[:-2], geom.rows_per_half, geom.cols_per_channel, 2, -1)
    by_row -= xp.swapaxes(fitted, -3, -2)[..., :, None, :, :]
    return corrected


def background_threshold(images, threshold: float, xp=np, inplace: bool = False):
    """Step 4: values at or below ``threshold`` (ADU) become 0."""
    img = xp.asarray(images, dtype=xp.float32)
    keep = img > threshold
    # a product with the mask: where() and copyto(where=) branch per pixel, 3-5x slower on noise
    return xp.multiply(img, keep, out=img) if inplace and img is images else img * keep


def spike_ripple(raw, geom: DetectorGeometry, *, sigma: float = 6.0, low_bins: int = 20, xp=np, scratch: bool = False):
    """The periodic readout ripple ``[..., clock]`` that :func:`remove_spikes` takes out.

    Apart from the subtraction so that :func:`preprocess` can subtract it from the image's
    samples only. ``scratch``: ``raw`` is a float32 buffer the caller no longer needs; the
    median then sorts it in place instead of a 4.8 MB copy per frame.
    """
    fft = fft_module(xp)
    frames = xp.asarray(raw, dtype=xp.float32)
    if frames is raw and not scratch:  # (a converted copy is ours to sort)
        frames = frames.copy()
    # median over channels, on the contiguous [clock, channel] layout. A full sort of 192
    # values beats a partition there (vectorised sorting network) and picks the same element.
    by_clock = frames.reshape(*frames.shape[:-2], -1, geom.channels)
    by_clock.sort(axis=-1)
    common = by_clock[..., geom.channels // 2]  # [..., clock]
    spectrum = fft.rfft(common, axis=-1, **fft_workers(xp))
    power = xp.abs(spectrum)
    med = xp.median(power[..., low_bins:], axis=-1, keepdims=True)
    mad = xp.median(xp.abs(power[..., low_bins:] - med), axis=-1, keepdims=True) * xp.float32(1.4826) + xp.float32(1e-6)
    peaks = power > med + xp.float32(sigma) * mad
    # a period that does not divide the readout leaks into neighbouring bins: take them too
    # (COSMIC's 5-tap dilation)
    peaks = peaks | xp.roll(peaks, 1, axis=-1) | xp.roll(peaks, -1, axis=-1) | xp.roll(peaks, 2, axis=-1) | xp.roll(peaks, -2, axis=-1)
    peaks[..., :low_bins] = False
    n = geom.rows_per_half * geom.cols_per_channel
    return fft.irfft(xp.where(peaks, spectrum, 0), n=n, axis=-1, **fft_workers(xp)).astype(xp.float32, copy=False)


def remove_spikes(raw, geom: DetectorGeometry, *, sigma: float = 6.0, low_bins: int = 20, xp=np, inplace: bool = False):
    """Step 5: periodic readout spikes (crosstalk ripple) out, in readout-clock order.

    The ripple is common to all channels, photons are not: the median over channels at
    each clock tick estimates it without the signal. Its FFT bins far above the median
    power (``sigma`` robust deviations) and above the lowest ``low_bins`` frequencies are
    the ripple; their inverse FFT is subtracted from every channel. Run it after the dark
    and overscan subtraction, so channels share one zero.
    """
    frames = xp.asarray(raw, dtype=xp.float32)
    ripple = spike_ripple(frames, geom, sigma=sigma, low_bins=low_bins, xp=xp)
    cleaned = frames if inplace and frames is raw else frames.copy()
    by_clock = cleaned.reshape(*cleaned.shape[:-2], -1, geom.channels)  # channel_series in memory order
    by_clock -= ripple[..., :, None]
    return cleaned


def _image_blocks(images, geom: DetectorGeometry):
    """An assembled image as ``[..., half, row, supercolumn, column]``, both halves in readout order."""
    n, s, d = geom.image_rows_per_half, geom.channels // 2, geom.data_cols_per_channel
    v = images.reshape(*images.shape[:-2], 2, n, s, d)
    return v[..., 0, ::-1, ::-1, ::-1], v[..., 1, :, :, :]  # the top half is rotated by 180 degrees


def _image_rows(geom: DetectorGeometry) -> slice:
    g = geom.gap_rows // 2
    return slice(g, g + geom.image_rows_per_half)


def _assemble_into(raw, geom: DetectorGeometry, out):
    """:func:`ns_bluesky.instrument.detector.assemble`, written straight into ``out`` (no concatenate copy)."""
    b = blocks(raw, geom)[..., _image_rows(geom), :, : geom.data_cols_per_channel]
    top, bottom = _image_blocks(out, geom)
    top[...] = b[..., 0, :, :, :]
    bottom[...] = b[..., 1, :, :, :]
    return out


def _subtract_ripple_image(images, ripple, geom: DetectorGeometry, xp):
    """:func:`remove_spikes`' subtraction, on the assembled image: the same float32 operation per pixel.

    Every supercolumn of an image row gets the same ``data_cols`` ripple samples; repeated
    over a few supercolumns first, they broadcast in runs long enough for SIMD (a 10-sample
    inner loop costs three times as much as the pass itself).
    """
    n, s, d = geom.image_rows_per_half, geom.channels // 2, geom.data_cols_per_channel
    per_sample = ripple.reshape(*ripple.shape[:-1], geom.rows_per_half, geom.cols_per_channel)
    r = per_sample[..., _image_rows(geom), :d]  # [..., row, column], readout order
    m = next((k for k in range(1, s + 1) if s % k == 0 and k * d >= 128), s)  # supercolumns per run
    halves = images.reshape(*images.shape[:-2], 2, n, s // m, m * d)
    for half, rows in ((halves[..., 0, :, :, :], r[..., ::-1, ::-1]), (halves[..., 1, :, :, :], r)):  # top rotated
        half -= xp.tile(rows, m)[..., None, :]


def to_photons(images, adu_per_photon: float, threshold_photons: float = 0.5, xp=np, inplace: bool = False):
    """Step 6: ADU to photons; below ``threshold_photons`` is noise and becomes 0 (sub-photon threshold)."""
    img = xp.asarray(images, dtype=xp.float32)
    scale = xp.float32(1.0 / adu_per_photon)
    ph = xp.multiply(img, scale, out=img) if inplace and img is images else img * scale
    if threshold_photons == 0.5:  # rounding already zeroes everything below half a photon
        xp.rint(ph, out=ph)
        return xp.maximum(ph, xp.float32(0), out=ph)
    keep = ph >= threshold_photons
    xp.rint(ph, out=ph)
    return xp.multiply(ph, keep, out=ph)  # branch-free, see background_threshold


def _inverse_window(transmission_map, xp):
    """``1 / transmission`` and the slices of its bounding box where it is not 1 (pixels outside
    it are multiplied by exactly 1, so skipping them changes nothing)."""
    inverse = xp.float32(1) / xp.asarray(transmission_map, dtype=xp.float32)
    if inverse.ndim != 2:
        return inverse, (slice(None), slice(None))
    shaded = inverse != 1
    rows = xp.flatnonzero(shaded.any(axis=-1))
    if rows.size == 0:
        return inverse, (slice(0, 0), slice(0, 0))
    ys = slice(int(rows[0]), int(rows[-1]) + 1)
    cols = xp.flatnonzero(shaded[ys].any(axis=-2))  # a column reduction is slow: only over the shaded rows
    return inverse, (ys, slice(int(cols[0]), int(cols[-1]) + 1))


def _divide_transmission(images, inverse, window):
    ys, xs = window
    shaded = images[..., ys, xs]  # a view: multiplying into it writes images
    shaded *= inverse[ys, xs]
    return images


def beamstop_correct(images, transmission_map, xp=np, inplace: bool = False):
    """Step 7: divide the beamstop's shadow by its transmission (1 outside the beamstop)."""
    inverse, window = _inverse_window(transmission_map, xp)
    img = images if inplace else xp.array(images, dtype=xp.float32)  # a copy: the caller's stays as it was
    return _divide_transmission(img, inverse, window)


def crop_center(images, center, size: int, xp=np, fill=0):
    """Step 8: a ``size`` x ``size`` window centred on ``center`` (row, col, rounded), padded with ``fill`` at edges."""
    img = xp.asarray(images)
    ny, nx = img.shape[-2:]
    cy, cx = (int(round(float(c))) for c in center)
    out = xp.full((*img.shape[:-2], size, size), fill, dtype=img.dtype)
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
    ``size``/2 object pixels, as the probe does. Only the lowest ``size`` frequencies per
    axis survive the crop, so after the real FFT along rows only ``size``/2 + 1 columns go
    on to the FFT along columns (the column pass of a full 2-D FFT would transform all
    n/2 + 1, strided). The centring needs no shift: moving the pattern's centre from
    n/2 to the corner multiplies the spectrum by (-1)^(ky+kx), and moving the output's
    corner to size/2 multiplies it by the same signs again.
    """
    fft = fft_module(xp)
    img = xp.asarray(images, dtype=xp.float32)
    n = img.shape[-1]
    if img.shape[-2] != n or size > n or n % 2 or size % 2:
        raise ValueError(f"fft_downsample needs square patterns of even side >= {size}, got {img.shape[-2:]}")
    h = size // 2
    by_row = fft.rfft(img, axis=-1, **fft_workers(xp))[..., : h + 1]  # kx = 0 .. h
    spectrum = fft.fft(xp.ascontiguousarray(by_row), axis=-2, overwrite_x=True, **fft_workers(xp))
    kept = xp.concatenate([spectrum[..., : h + 1, :], spectrum[..., n - h + 1 :, :]], axis=-2)  # ky = 0..h, -h+1..-1
    # FFT2 of the pattern = N^2 conj(autocorrelation); irfft2 of the raw spectrum already
    # carries the (n / size)^2 that keeps counts
    return fft.irfft2(kept, s=(size, size), **fft_workers(xp)).astype(xp.float32, copy=False)


class Settings(BaseModel):
    """Which steps run, and their parameters (defaults: COSMIC's). The frame stage's parameters extend these."""

    model_config = ConfigDict(extra="forbid")

    dark: bool = Field(True, description="subtract the dark, when the run has one")
    overscan_order: int | None = Field(1, ge=0, le=2, description="per-channel offset fit from the overscan (None: off)")
    spikes: bool = Field(True, description="remove the periodic readout spikes per channel")
    background_adu: float | None = Field(None, ge=0, description="zero values below this many ADU (None: off)")
    photon_threshold: float | None = Field(0.5, ge=0, description="sub-photon threshold, photons (None: off)")
    beamstop: bool = Field(True, description="divide the beamstop's shadow by its transmission")
    crop: int | None = Field(960, ge=16, description="detector pixels kept around the centre, which sets the object pixel size (None: all)")
    out_size: int = Field(256, ge=16, description="side of the cleaned pattern (FFT downsampling of the crop)")


class Preprocessor:
    """The nine steps with everything that does not change from frame to frame worked out once.

    A frame worker cleans thousands of frames against one dark and one beamstop: the
    bad-pixel index, the beamstop's inverse window and the working buffers are made
    here, not per frame (per frame they cost about 2 ms of a 9 ms frame, and the fresh
    buffers' page faults more). One is good for frames that share this dark, beamstop,
    centre and settings; not thread-safe (the buffers are reused).

    The order differs from the step list where that changes no value: the spike ripple is
    subtracted after assembly (only the image's samples need it), and the crop comes before
    the photon and beamstop steps (both map the zero padding to zero).
    """

    def __init__(self, geom: DetectorGeometry, *, dark_mean=None, bad_pixels=None, adu_per_photon: float,
                 transmission_map=None, center=None, settings: Settings | None = None, xp=np):
        s = self.settings = settings or Settings()
        self.geom, self.adu_per_photon, self.xp = geom, adu_per_photon, xp
        self.dark = xp.asarray(dark_mean, dtype=xp.float32) if s.dark and dark_mean is not None else None
        #: flat indices of the masked pixels (None without a dark): also what QC leaves out
        self.bad_index = _bad_index(bad_pixels, xp) if self.dark is not None else None
        self.inverse, self.window = None, None
        if s.beamstop and transmission_map is not None:
            self.inverse, self.window = _inverse_window(transmission_map, xp)
        img_shape = geom.image_shape
        middle = (img_shape[0] // 2, img_shape[1] // 2)
        self.center = middle if center is None else tuple(int(round(float(v))) for v in center)
        self.crop = bool(s.crop) and (s.crop != img_shape[-1] or self.center != middle)
        if self.crop and self.inverse is not None:  # padding of 1: the zeros the crop adds stay zero
            self.inverse = crop_center(self.inverse, self.center, s.crop, xp=xp, fill=1)
            self.window = (slice(None), slice(None))
        self._buffers: tuple | None = None

    def _scratch(self, step: int):
        if self._buffers is None or self._buffers[0].shape[0] < step:
            xp, g = self.xp, self.geom
            self._buffers = (xp.empty((step, *g.raw_shape), dtype=xp.float32), xp.empty((step, *g.image_shape), dtype=xp.float32))
        x, img = self._buffers
        return x[:step], img[:step]

    def __call__(self, raw, frames_per_pass: int | None = None):
        """Raw readout frames ``(..., 1040, 1152)`` to photon patterns ``(..., out_size, out_size)``.

        ``frames_per_pass``: frames that go through the steps together. On the CPU one (default)
        keeps a frame's working set in cache; on a GPU the whole batch (default) fills the device.
        """
        xp, s, geom = self.xp, self.settings, self.geom
        raw = xp.asarray(raw)
        lead = raw.shape[:-2]
        frames = raw.reshape(-1, *raw.shape[-2:])
        count = frames.shape[0]
        step = max(1, min(frames_per_pass or (1 if xp is np else count), count))
        x, img = self._scratch(step)
        out = xp.empty((count, s.out_size, s.out_size), dtype=xp.float32)
        for i in range(0, count, step):
            chunk = frames[i : i + step]
            xb, ib = x[: len(chunk)], img[: len(chunk)]
            if self.dark is not None:
                _dark_into(chunk, self.dark, self.bad_index, xb, xp)
            else:
                xb[...] = chunk  # the caller's frames stay as they were
            if s.overscan_order:
                overscan_correct(xb, geom, order=s.overscan_order, xp=xp, inplace=True)
            _assemble_into(xb, geom, ib)
            if s.spikes:  # the median sorts xb in place: the image already has its copy
                _subtract_ripple_image(ib, spike_ripple(xb, geom, xp=xp, scratch=True), geom, xp)
            pattern = crop_center(ib, self.center, s.crop, xp=xp) if self.crop else ib
            if s.background_adu is not None:
                background_threshold(pattern, s.background_adu, xp=xp, inplace=True)
            if s.photon_threshold is not None:
                to_photons(pattern, self.adu_per_photon, s.photon_threshold, xp=xp, inplace=True)
            if self.inverse is not None:
                _divide_transmission(pattern, self.inverse, self.window)
            out[i : i + len(chunk)] = fft_downsample(pattern, s.out_size, xp=xp)
        return out.reshape(*lead, s.out_size, s.out_size)


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
    frames_per_pass: int | None = None,
):
    """Raw readout frames ``(N, 1040, 1152)`` to photon patterns ``(N, out_size, out_size)``, centred:
    a :class:`Preprocessor` for one call (streams of frames keep theirs instead)."""
    cleaner = Preprocessor(geom, dark_mean=dark_mean, bad_pixels=bad_pixels, adu_per_photon=adu_per_photon,
                           transmission_map=transmission_map, center=center, settings=settings, xp=xp)
    return cleaner(raw, frames_per_pass)
