"""Reconstruction quality: NRMSE after sub-pixel registration and a global complex scale, and FRC.

A ptychographic object is only defined up to a global phase (and, with probe
retrieval, a complex scale) and a sub-pixel shift; comparing without removing those
measures the ambiguity, not the reconstruction.
"""

from __future__ import annotations

import numpy as np


def register_shift(moving: np.ndarray, reference: np.ndarray, upsample: int = 20) -> tuple[float, float]:
    """Shift (rows, cols) that best aligns ``moving`` onto ``reference``: cross-correlation peak,
    refined on an upsampled neighbourhood (a local matrix DFT, Guizar-Sicairos et al. 2008)."""
    f_ref, f_mov = np.fft.fft2(reference), np.fft.fft2(moving)
    xc = f_ref * np.conj(f_mov)
    cc = np.fft.ifft2(xc)
    peak = np.array(np.unravel_index(np.argmax(np.abs(cc)), cc.shape), dtype=float)
    n = np.array(cc.shape)
    peak[peak > n / 2] -= n[peak > n / 2]
    # refine within +-1 pixel on an upsampled grid
    span = np.arange(-1.5, 1.5, 1.0 / upsample)
    ky = np.fft.fftfreq(n[0])[:, None]
    kx = np.fft.fftfreq(n[1])[None, :]
    rows = np.exp(2j * np.pi * ky.T * (peak[0] + span)[:, None])  # (S, ny)
    cols = np.exp(2j * np.pi * kx * (peak[1] + span)[:, None])  # (S, nx)
    vals = np.abs(rows @ xc @ cols.T)  # (S, S)
    i, j = np.unravel_index(np.argmax(vals), vals.shape)
    return float(peak[0] + span[i]), float(peak[1] + span[j])


def shift_image(img: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """Fourier (sub-pixel, periodic) shift by (rows, cols)."""
    ky = np.fft.fftfreq(img.shape[0])[:, None]
    kx = np.fft.fftfreq(img.shape[1])[None, :]
    return np.fft.ifft2(np.fft.fft2(img) * np.exp(-2j * np.pi * (ky * shift[0] + kx * shift[1])))


def nrmse(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, register: bool = True) -> float:
    """||c * shifted(estimate) - truth|| / ||truth|| over ``mask``, with the best complex c."""
    est = np.asarray(estimate, dtype=np.complex128)
    ref = np.asarray(truth, dtype=np.complex128)
    m = np.ones(ref.shape, bool) if mask is None else np.asarray(mask, bool)
    if register:
        # register on the mean-removed fields inside the mask, where the object is defined
        a = np.where(m, est - est[m].mean(), 0)
        b = np.where(m, ref - ref[m].mean(), 0)
        est = shift_image(est, register_shift(a, b))
    c = np.vdot(est[m], ref[m]) / max(np.vdot(est[m], est[m]).real, 1e-30)
    return float(np.linalg.norm(c * est[m] - ref[m]) / max(np.linalg.norm(ref[m]), 1e-30))


def frc(a: np.ndarray, b: np.ndarray, rings: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation of two square images: (spatial frequency in Nyquist units, FRC)."""
    n = a.shape[0]
    rings = rings or n // 2
    fa, fb = np.fft.fftshift(np.fft.fft2(a)), np.fft.fftshift(np.fft.fft2(b))
    y, x = np.indices(a.shape) - n // 2
    r = np.minimum((np.hypot(y, x) / (n / 2) * rings).astype(int), rings)
    num = np.bincount(r.ravel(), (fa * np.conj(fb)).real.ravel(), rings + 1)
    den = np.sqrt(np.bincount(r.ravel(), (np.abs(fa) ** 2).ravel(), rings + 1) * np.bincount(r.ravel(), (np.abs(fb) ** 2).ravel(), rings + 1))
    curve = num[:rings] / np.maximum(den[:rings], 1e-30)
    return (np.arange(rings) + 0.5) / rings, curve
