"""Beam energy and zone-plate optics as a readable device, so plans record what was used."""

from __future__ import annotations

from ophyd import Component as Cpt
from ophyd import Device, Signal

from ns_bluesky.instrument.optics import ZonePlateOptics as ZonePlateModel


class ZonePlateOptics(Device):
    """Photon energy (eV) and Fresnel zone plate geometry (m); the sample sits ``defocus`` past focus."""

    energy = Cpt(Signal, value=800.0, kind="config", doc="photon energy, eV")
    diameter = Cpt(Signal, value=240e-6, kind="config", doc="m")
    outer_zone_width = Cpt(Signal, value=100e-9, kind="config", doc="m")
    central_stop_diameter = Cpt(Signal, value=90e-6, kind="config", doc="m")
    defocus = Cpt(Signal, value=30e-6, kind="config", doc="m, sample past focus")

    @classmethod
    def from_model(cls, model: ZonePlateModel, energy_eV: float, *, name: str = "optics") -> "ZonePlateOptics":
        dev = cls(name=name)
        dev.energy.put(energy_eV)
        dev.diameter.put(model.diameter_m)
        dev.outer_zone_width.put(model.outer_zone_width_m)
        dev.central_stop_diameter.put(model.central_stop_diameter_m)
        dev.defocus.put(model.defocus_m)
        return dev
