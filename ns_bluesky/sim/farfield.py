"""Far-field ptychography sets at the reconstruction size: the engines' known-answer input.

The FCCD simulation (``experiment``) makes raw detector frames for the whole chain;
engine tests and benchmarks need the step after it: photon counts at 128² (or any
size), sub-pixel positions, the true object and probe, and a starting probe that is
wrong the way a beamline's is (a defocus off by some fraction). One seeded builder
serves both, so a test's figure and a benchmark's mean the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from ..instrument.optics import ZonePlateOptics
from ..instrument.probe import zone_plate_probe
from ..instrument.scan import raster
from .sample import resample, test_pattern, transmission


@dataclass
class FarFieldSet:
    patterns: np.ndarray  # (N, n, n) float32 photon counts, zero frequency centred
    origins: np.ndarray  # (N, 2) probe-window top-left corners in object pixels (row, col), sub-pixel
    obj: np.ndarray  # truth on the engines' object grid, complex64
    mask: np.ndarray  # the scanned region, where NRMSE is measured
    probe: np.ndarray  # truth, in sqrt(photons)
    probe_start: np.ndarray  # defocus-wrong zone-plate probe scaled to the measured counts
    info: dict = field(default_factory=dict)


def shifted_probes(fprobe: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """The probe (given as its FFT) shifted by each origin's fractional part: (B, n, n)."""
    n = fprobe.shape[-1]
    k = np.fft.fftfreq(n)
    frac = origins - np.floor(origins)
    ramps = np.exp(-2j * np.pi * (frac[:, 0, None, None] * k[None, :, None] + frac[:, 1, None, None] * k[None, None, :]))
    return sfft.ifft2(fprobe[None] * ramps)


def farfield_set(
    *,
    grid: int = 32,
    frame: int = 128,
    overlap: float = 0.7,
    photons: float = 1e6,
    probe_diameter_px: float = 40.0,
    jitter_px: float = 1.0,
    defocus_error: float = 0.2,
    pixel_m: float = 40e-9,
    energy_eV: float = 800.0,
    seed: int = 0,
) -> FarFieldSet:
    """A ``grid`` x ``grid`` jittered raster at ``overlap`` of a zone-plate beam ``probe_diameter_px`` wide,
    ``photons`` per frame with Poisson noise, over a Siemens star (phase) with absorbing particles
    (amplitude), so phase and amplitude differ."""
    n, dx, e = frame, pixel_m, energy_eV
    optics = ZonePlateOptics()
    na = optics.numerical_aperture(e)
    defocus = probe_diameter_px * dx / (2 * na)  # geometric beam diameter at the sample = 2 NA z
    probe = zone_plate_probe(n, dx, e, optics.model_copy(update={"defocus_m": defocus})) * np.sqrt(photons)
    step = (1 - overlap) * probe_diameter_px
    pos = raster((grid, grid), step, jitter_m=jitter_px, seed=seed)  # pixels here, not metres
    origins = pos - pos.min(axis=0) + 4.0
    shape = tuple(int(np.ceil(v)) + n + 1 for v in origins.max(axis=0))  # the grid the engines allocate
    rng = np.random.default_rng(seed)
    star = transmission(resample(test_pattern((512, 512)), shape), energy_eV=e, delta=2e-3, beta=1e-3, thickness_m=50e-9)
    blobs = ndimage.gaussian_filter(rng.normal(size=shape), 6)
    particles = ndimage.gaussian_filter((blobs > 1.5 * blobs.std()).astype(np.float32), 1.0)
    absorber = transmission(particles, energy_eV=e, delta=0.5e-3, beta=2e-3, thickness_m=50e-9)
    obj = (star * absorber).astype(np.complex64)
    noise = np.random.default_rng([seed, 1])
    fprobe = sfft.fft2(probe)
    iy, ix = np.floor(origins).astype(int).T
    rows, cols = np.arange(n)[:, None], np.arange(n)[None, :]
    patterns = np.empty((len(origins), n, n), np.float32)
    for b in range(0, len(origins), 64):
        sl = slice(b, b + 64)
        exit_wave = shifted_probes(fprobe, origins[sl]) * obj[iy[sl, None, None] + rows, ix[sl, None, None] + cols]
        expected = np.abs(sfft.fftshift(sfft.fft2(exit_wave, norm="ortho"), axes=(-2, -1))) ** 2
        patterns[sl] = noise.poisson(expected)
    centre = origins + n / 2  # the scanned region: between the outermost probe centres
    lo, hi = np.ceil(centre.min(axis=0)).astype(int), np.floor(centre.max(axis=0)).astype(int)
    mask = np.zeros(shape, bool)
    mask[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1] = True
    wrong = optics.model_copy(update={"defocus_m": defocus * (1 + defocus_error)})
    start = zone_plate_probe(n, dx, e, wrong)
    start = (start * np.sqrt(patterns.sum(axis=(-2, -1)).mean() / (np.abs(start) ** 2).sum())).astype(np.complex64)
    info = {
        "defocus_m": defocus, "defocus_start_m": defocus * (1 + defocus_error), "step_px": step, "shape": shape,
        "counts": float(patterns.sum(axis=(-2, -1)).mean()), "mask_px": int(mask.sum()),
    }
    return FarFieldSet(patterns, origins, obj, mask, probe.astype(np.complex64), start, info)
