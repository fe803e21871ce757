"""What the processing modules need from a run's start document, read once and checked.

The plans write it (``ptycho_metadata``): detector geometry, energy, distance, the
motors and the planned positions. A run without them (a test stream, a foreign
plan) gives a clear error naming the missing key, not a KeyError deep in a module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..instrument.detector import DetectorGeometry
from ..instrument.optics import ZonePlateOptics
from ..instrument.units import ELECTRON_VOLT_J, wavelength_m
from ..stream.protocol import Message, start_document


@dataclass
class ScanInfo:
    uid: str
    purpose: str
    scan_id: int | None
    geometry: DetectorGeometry
    energy_J: float | None
    motors: tuple[str, str] | None  # (y, x) data keys of the stage readings
    planned_m: np.ndarray | None  # (N, 2) sample translations (y, x)
    step_m: float | None
    optics: ZonePlateOptics | None
    dark_uid: str | None
    sample_name: str

    @property
    def wavelength_m(self) -> float:
        return wavelength_m(self.energy_eV)

    @property
    def energy_eV(self) -> float:
        if self.energy_J is None:
            raise ValueError(f"run {self.uid[:8]}: the start document has no energy_J")
        return self.energy_J / ELECTRON_VOLT_J

    @property
    def adu_per_photon(self) -> float:
        return self.geometry.adu_per_eV * self.energy_eV

    def position(self, data: dict, seq: int) -> np.ndarray:
        """The stage (y, x) of one event: its readings, else the planned point of ``seq`` (from 1)."""
        if self.motors is not None and all(isinstance(data.get(m), (int, float)) for m in self.motors):
            return np.array([float(data[m]) for m in self.motors])
        if self.planned_m is not None and 1 <= seq <= len(self.planned_m):
            return self.planned_m[seq - 1].copy()
        return np.full(2, np.nan)


def scan_info(msg: Message) -> ScanInfo:
    doc = start_document(msg)
    geometry = DetectorGeometry(**doc["detector_geometry"]) if isinstance(doc.get("detector_geometry"), dict) else DetectorGeometry()
    motors = doc.get("motors")
    planned = doc.get("planned_positions_m")
    optics = doc.get("probe_optics")
    zp = None
    if isinstance(optics, dict) and optics.get("kind") == "fresnel_zone_plate":
        zp = ZonePlateOptics(
            diameter_m=optics["diameter_m"], outer_zone_width_m=optics["outer_zone_width_m"],
            central_stop_diameter_m=optics["central_stop_diameter_m"], defocus_m=optics["defocus_m"],
        )
    scan = doc.get("scan") if isinstance(doc.get("scan"), dict) else {}
    return ScanInfo(
        uid=str(doc.get("uid", msg.run)),
        purpose=str(doc.get("purpose", "")),
        scan_id=doc.get("scan_id"),
        geometry=geometry,
        energy_J=float(doc["energy_J"]) if isinstance(doc.get("energy_J"), (int, float)) else None,
        motors=tuple(motors) if isinstance(motors, list) and len(motors) == 2 else None,
        planned_m=np.asarray(planned, dtype=float).reshape(-1, 2) if planned is not None and len(planned) else None,
        step_m=float(scan["step_m"]) if isinstance(scan.get("step_m"), (int, float)) else None,
        optics=zp,
        dark_uid=doc.get("dark_uid"),
        sample_name=str(doc.get("sample_name", "")),
    )
