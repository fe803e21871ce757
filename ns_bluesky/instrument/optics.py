"""The zone plate that focuses the beam: what the probe model and a reconstruction need of the optics."""

from __future__ import annotations

from pydantic import Field, model_validator

from .model import Model
from .units import wavelength_m


class ZonePlateOptics(Model):
    """Fresnel zone plate that focuses the beam; the sample sits ``defocus_m`` past focus."""

    diameter_m: float = Field(240e-6, gt=0)
    outer_zone_width_m: float = Field(100e-9, gt=0)
    central_stop_diameter_m: float = Field(90e-6, ge=0)
    defocus_m: float = Field(30e-6, description="sample distance past the focus (negative: before)")

    @model_validator(mode="after")
    def _check_stop(self) -> ZonePlateOptics:
        if self.central_stop_diameter_m >= self.diameter_m:
            raise ValueError(
                f"central_stop_diameter_m={self.central_stop_diameter_m} must be smaller than "
                f"diameter_m={self.diameter_m}"
            )
        return self

    def focal_length_m(self, energy_eV: float) -> float:
        return self.diameter_m * self.outer_zone_width_m / wavelength_m(energy_eV)

    def numerical_aperture(self, energy_eV: float) -> float:
        return wavelength_m(energy_eV) / (2 * self.outer_zone_width_m)

    def beam_diameter_m(self, energy_eV: float) -> float:
        """Geometric beam diameter at the sample, never below the focal spot (1.22 dr x 2)."""
        return max(2 * self.numerical_aperture(energy_eV) * abs(self.defocus_m), 2.44 * self.outer_zone_width_m)
