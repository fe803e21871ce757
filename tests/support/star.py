"""The measured Siemens star (tests/data/PROVENANCE.md) as engine input and as CXI files in any convention."""

from __future__ import annotations

import bz2
import io
from functools import lru_cache
from pathlib import Path

import numpy as np

from ns_bluesky.instrument.units import ELECTRON_VOLT_J, wavelength_m
from ns_bluesky.io.cxi import CXIData, write_cxi
from ns_bluesky.ptycho.layout import with_counts

DATA = Path(__file__).parents[1] / "data" / "siemens-star-small.npz.bz2"
# not in the file (PROVENANCE.md): plausible Velociprobe values, so the CXI file is complete; only their product matters
ENERGY_EV, DISTANCE_M, PIXEL_M = 8800.0, 2.0, 75e-6


@lru_cache(maxsize=1)
def star() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(patterns (516, 128, 128) zero frequency centred, probe positions (row, col) in object pixels, start probe)."""
    d = np.load(io.BytesIO(bz2.decompress(DATA.read_bytes())))
    patterns = np.fft.fftshift(d["data"][0], axes=(-2, -1)).astype(np.float32)  # stored in FFT order
    scan = d["scan"][0].astype(float)
    probe = with_counts(d["probe"][0, 0, 0, 0].astype(np.complex64), patterns).astype(np.complex64)
    return patterns, scan, probe


def object_pixel_m() -> float:
    return DISTANCE_M * wavelength_m(ENERGY_EV) / (128 * PIXEL_M)


def central(frames: int) -> np.ndarray:
    """Indices of the ``frames`` positions nearest the scan's middle."""
    _, scan, _ = star()
    return np.argsort(np.hypot(*(scan - np.median(scan, axis=0)).T), kind="stable")[:frames]


def star_cxi(path, convention: str = "probe", frames: np.ndarray | None = None) -> Path:
    """The star as a CXI file whose translations (x, y, z) hold the probe's position (``probe``), the sample's
    translation (``sample``: minus it) or the probe's with x and y swapped (``swapped``)."""
    patterns, scan, probe = star()
    idx = np.arange(len(scan)) if frames is None else np.asarray(frames)
    yx = scan[idx] * object_pixel_m()
    xy = {"probe": yx[:, ::-1], "sample": -yx[:, ::-1], "swapped": yx}[convention]
    translations = np.concatenate([xy, np.zeros((len(idx), 1))], axis=1)
    return write_cxi(path, CXIData(frames=patterns[idx], translations_m=translations, energy_J=ENERGY_EV * ELECTRON_VOLT_J,
                                   distance_m=DISTANCE_M, pixel_size_m=(PIXEL_M, PIXEL_M), probe=probe))
