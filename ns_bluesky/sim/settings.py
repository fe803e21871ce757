"""What the simulated beamline is set to: sample, detector noise and the whole simulated experiment; seeded."""

from __future__ import annotations

from pydantic import Field, model_validator

from ..instrument.detector import DetectorGeometry
from ..instrument.model import Model
from ..instrument.optics import ZonePlateOptics
from ..instrument.scan import ScanPattern
from ..instrument.units import wavelength_m


class SampleModel(Model):
    """A sample made from a grey-scale image: 1 = full thickness, 0 = empty."""

    image: str = Field("test-pattern", description="'test-pattern' or a PNG/TIFF path")
    name: str = "siemens-star"
    delta: float = Field(2.0e-3, ge=0, description="refractive index decrement at the energy")
    beta: float = Field(1.0e-3, ge=0, description="absorption index at the energy")
    thickness_m: float = Field(50e-9, gt=0)


class DetectorNoise(Model):
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


class SimConfig(Model):
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
