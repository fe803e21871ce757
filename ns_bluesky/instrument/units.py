"""Physical constants and unit conversions the instrument's descriptions share."""

from __future__ import annotations

PLANCK_EV_S = 4.135667696e-15
SPEED_OF_LIGHT_M_S = 299792458.0
ELECTRON_VOLT_J = 1.602176634e-19


def wavelength_m(energy_eV: float) -> float:
    """Photon wavelength for an energy; 800 eV gives 1.55 nm."""
    return PLANCK_EV_S * SPEED_OF_LIGHT_M_S / energy_eV
