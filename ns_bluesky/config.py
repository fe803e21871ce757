"""Validated configuration: the one place where units, defaults and bounds are stated.

Every field carries its unit in its name (``distance_m``, ``energy_eV``) so that nothing
downstream has to guess; defaults follow COSMIC at the ALS (see
``shared/reference/fccd-cosmic.md``). The models double as the JSON schema of the
start document's ``ptycho`` metadata.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PLANCK_EV_S = 4.135667696e-15
SPEED_OF_LIGHT_M_S = 299792458.0
ELECTRON_VOLT_J = 1.602176634e-19


def wavelength_m(energy_eV: float) -> float:
    """Photon wavelength for an energy; 800 eV gives 1.55 nm."""
    return PLANCK_EV_S * SPEED_OF_LIGHT_M_S / energy_eV


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class DetectorGeometry(_Model):
    """The FCCD as COSMIC runs it: raw readout layout, pixel pitch and beamstop."""

    distance_m: float = Field(0.07955, gt=0, description="sample to detector distance")
    pixel_size_m: float = Field(30e-6, gt=0, description="physical pixel pitch (square)")
    rows_per_half: int = Field(520, gt=0, description="rows read out per sensor half")
    channels: int = Field(192, gt=0, description="ADC channels (supercolumns), both halves")
    data_cols_per_channel: int = Field(10, gt=0)
    overscan_cols_per_channel: int = Field(2, ge=1)
    gap_rows: int = Field(70, ge=0, description="rows removed around the middle (half each side)")
    image_rows_per_half: int = Field(480, gt=0)
    adc_bits: int = Field(13, ge=8, le=16, description="ADC value bits; saturation at 2**bits - 1")
    adu_per_eV: float = Field(
        0.0185, gt=0, description="gain: ADU per eV deposited (x8 stage: about 15 ADU per 800 eV photon)"
    )
    beamstop_radius_m: float = Field(1.83e-3, ge=0)
    beamstop_transmission: float = Field(0.015, gt=0, le=1)

    @property
    def cols_per_channel(self) -> int:
        return self.data_cols_per_channel + self.overscan_cols_per_channel

    @property
    def raw_shape(self) -> tuple[int, int]:
        """Raw frame as streamed: 1040 x 1152 for the COSMIC FCCD."""
        total = self.rows_per_half * self.channels * self.cols_per_channel
        rows = 2 * self.rows_per_half
        return rows, total // rows

    @property
    def image_shape(self) -> tuple[int, int]:
        """Assembled image: 960 x 960 for the COSMIC FCCD."""
        return 2 * self.image_rows_per_half, self.channels // 2 * self.data_cols_per_channel

    @property
    def saturation_adu(self) -> int:
        return 2**self.adc_bits - 1

    @model_validator(mode="after")
    def _check_layout(self) -> DetectorGeometry:
        if self.channels % 2:
            raise ValueError(f"channels must be even (two sensor halves), got {self.channels}")
        edge = self.rows_per_half - self.gap_rows // 2 - self.image_rows_per_half
        if edge < 0:
            raise ValueError(
                f"image_rows_per_half={self.image_rows_per_half} + gap_rows/2={self.gap_rows // 2} "
                f"exceed rows_per_half={self.rows_per_half}"
            )
        return self

    @property
    def edge_rows(self) -> int:
        """Rows at the outer edge of each half that carry no image (readout settling)."""
        return self.rows_per_half - self.gap_rows // 2 - self.image_rows_per_half


class ZonePlateOptics(_Model):
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


class ScanPattern(_Model):
    """Where the sample goes: a raster (optionally jittered) or a Fermat spiral.

    Give either ``step_m`` or ``overlap`` (fraction of the beam diameter shared by
    neighbouring points, as ptychographers quote it).
    """

    kind: Literal["raster", "fermat"] = "raster"
    shape: tuple[int, int] = Field((40, 40), description="raster points (rows=y, columns=x)")
    num_points: int | None = Field(None, description="Fermat spiral points; default rows*columns")
    step_m: float | None = Field(None, description="raster step or spiral radial step")
    overlap: float | None = Field(None, ge=0, lt=1)
    jitter_m: float = Field(0.0, ge=0, description="rms random offset added to raster points")
    center_m: tuple[float, float] = Field((0.0, 0.0), description="scan centre (y, x)")

    @model_validator(mode="after")
    def _check(self) -> ScanPattern:
        if self.shape[0] < 1 or self.shape[1] < 1:
            raise ValueError(f"shape must have at least one point per axis, got {self.shape}")
        if self.num_points is not None and self.num_points < 1:
            raise ValueError(f"num_points must be at least 1, got {self.num_points}")
        if self.step_m is not None and not (self.step_m > 0 and math.isfinite(self.step_m)):
            raise ValueError(f"step_m must be a positive length in metres, got {self.step_m}")
        if self.step_m is not None and self.overlap is not None:
            raise ValueError("give step_m or overlap, not both")
        return self

    @property
    def point_count(self) -> int:
        if self.kind == "fermat":
            return self.num_points or self.shape[0] * self.shape[1]
        return self.shape[0] * self.shape[1]


class SampleModel(_Model):
    """A sample made from a grey-scale image: 1 = full thickness, 0 = empty."""

    image: str = Field("test-pattern", description="'test-pattern' or a PNG/TIFF path")
    name: str = "siemens-star"
    delta: float = Field(2.0e-3, ge=0, description="refractive index decrement at the energy")
    beta: float = Field(1.0e-3, ge=0, description="absorption index at the energy")
    thickness_m: float = Field(50e-9, gt=0)


class DetectorNoise(_Model):
    """The FCCD's imperfections, from the COSMIC simulator and pre-processing code."""

    offset_adu: float = Field(1200.0, ge=0, description="mean per-channel baseline")
    offset_spread_adu: float = Field(150.0, ge=0)
    offset_slope_adu: float = Field(40.0, description="baseline change over one readout (clock time)")
    offset_drift_adu: float = Field(8.0, ge=0, description="amplitude of the slow baseline drift")
    offset_drift_period_frames: float = Field(2000.0, gt=0, description="period of that drift, in frames")
    read_noise_adu: float = Field(5.0, ge=0)
    dark_current_adu_per_s: float = Field(20.0, ge=0)
    hot_pixel_fraction: float = Field(2e-4, ge=0, lt=0.1)
    dead_pixel_fraction: float = Field(2e-4, ge=0, lt=0.1)
    dead_channel: int | None = Field(None, ge=0, description="ADC channel that reads zero")
    spike_period_clocks: int = Field(97, gt=1, description="period of the crosstalk ripple")
    spike_amplitude_adu: float = Field(25.0, ge=0)
    background_photons: float = Field(0.002, ge=0, description="diffuse background per pixel")
    background_center_photons: float = Field(2.0, ge=0, description="extra diffuse scatter at the centre")
    background_radius_px: float = Field(60.0, gt=0)


class SimConfig(_Model):
    """Everything the simulated beamline needs; seeded so every run is reproducible."""

    energy_eV: float = Field(800.0, gt=0)
    exposure_s: float = Field(0.1, gt=0)
    photon_flux_per_s: float = Field(1e8, gt=0, description="photons per second onto the sample")
    recon_shape: int = Field(256, ge=16, description="side of the exit-wave/reconstruction grid")
    seed: int = 0
    detector: DetectorGeometry = Field(default_factory=DetectorGeometry)
    optics: ZonePlateOptics = Field(default_factory=ZonePlateOptics)
    sample: SampleModel = Field(default_factory=SampleModel)
    noise: DetectorNoise = Field(default_factory=DetectorNoise)
    scan: ScanPattern = Field(default_factory=lambda: ScanPattern(overlap=0.7))

    @property
    def wavelength_m(self) -> float:
        return wavelength_m(self.energy_eV)

    @property
    def object_pixel_size_m(self) -> float:
        """Real-space pixel of the far-field geometry: z lambda / (N p) over the full detector."""
        n = self.detector.image_shape[0]
        return self.detector.distance_m * self.wavelength_m / (n * self.detector.pixel_size_m)

    @model_validator(mode="after")
    def _check(self) -> SimConfig:
        n = self.detector.image_shape[0]
        if self.recon_shape > n:
            raise ValueError(f"recon_shape={self.recon_shape} exceeds the detector image side {n}")
        if self.noise.dead_channel is not None and self.noise.dead_channel >= self.detector.channels:
            raise ValueError(
                f"noise.dead_channel={self.noise.dead_channel} is beyond the {self.detector.channels} ADC channels"
            )
        return self
