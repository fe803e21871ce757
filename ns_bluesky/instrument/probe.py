"""Zone-plate probe: the focused beam at the sample plane, from the optics alone.

The zone plate fills a disc of numerical aperture NA = lambda / (2 dr) in angular
space, minus its central stop; the field at ``defocus`` from the focus is that pupil
propagated with the angular-spectrum (exact scalar) transfer function.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from .optics import ZonePlateOptics
from .units import wavelength_m


def zone_plate_probe(
    shape: int, pixel_size_m: float, energy_eV: float, optics: ZonePlateOptics
) -> np.ndarray:
    """Complex probe (shape x shape) at the sample, centred, normalised to sum |P|^2 = 1."""
    lam = wavelength_m(energy_eV)
    f = sfft.fftfreq(shape, d=pixel_size_m)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    fr = np.hypot(fy, fx)
    na = optics.numerical_aperture(energy_eV)
    stop_fraction = optics.central_stop_diameter_m / optics.diameter_m
    pupil = (fr <= na / lam) & (fr >= stop_fraction * na / lam)
    kz = np.sqrt(np.maximum(1.0 / lam**2 - fr**2, 0.0))
    transfer = np.exp(2j * np.pi * optics.defocus_m * (kz - 1.0 / lam))
    field = sfft.fftshift(sfft.ifft2(pupil * transfer))
    field /= np.sqrt(np.sum(np.abs(field) ** 2))
    return field.astype(np.complex64)
