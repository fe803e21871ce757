"""The simulated ptychography experiment: sample, probe, geometry and detector in one model.

One instance is shared by the stage and the detector devices (the stage says where
the sample is, the detector asks this model what it sees there), the way ophyd-async's
sim devices share one pattern generator.

Conventions, stated once: positions are sample translations (y, x) in metres, as the
stage reads them; the probe's position on the sample is minus the translation. The
detector image is the far field |FFT(exit wave)|^2 with the zero frequency at the
image centre (row n/2, column n/2), rows along +y.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from ..instrument.detector import beamstop_transmission
from ..instrument.probe import zone_plate_probe
from ..instrument.scan import positions as _positions
from . import sample as _sample
from .fccd import FCCDModel
from .settings import SimConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Truth:
    """What a reconstruction should find: kept next to every simulated data set."""

    object: np.ndarray  # complex64, object grid
    probe: np.ndarray  # complex64 (n, n), normalised to sum |P|^2 = 1 (multiply by sqrt(photons))
    planned_translations_m: np.ndarray  # (N, 2) y, x
    object_pixel_size_m: float
    probe_photons_per_frame: float
    config: SimConfig


class PtychoSimulation:
    """Far-field ptychography of an image-defined sample through a zone-plate probe onto an FCCD."""

    def __init__(self, config: SimConfig | None = None, image: np.ndarray | None = None):
        self.config = cfg = config or SimConfig()
        self.geom = cfg.detector
        self.n = cfg.recon_shape
        self.det_n = self.geom.image_shape[0]
        self.dx = cfg.object_pixel_size_m
        beam = cfg.optics.beam_diameter_m(cfg.energy_eV)
        self.planned = _positions(cfg.scan, beam, seed=cfg.seed)
        extent = np.ptp(self.planned, axis=0) if len(self.planned) > 1 else np.zeros(2)
        shape = tuple(int(np.ceil(e / self.dx)) + self.n + 32 for e in extent)
        if image is None:
            image = _sample.test_pattern((512, 512))
        thick = _sample.resample(image, shape)
        s = cfg.sample
        self.object = _sample.transmission(
            thick, energy_eV=cfg.energy_eV, delta=s.delta, beta=s.beta, thickness_m=s.thickness_m
        )
        self._center_m = self.planned.mean(axis=0) if len(self.planned) else np.zeros(2)
        self.probe = zone_plate_probe(self.n, self.dx, cfg.energy_eV, cfg.optics)
        self._probe_ft = sfft.fft2(self.probe)
        self._freq = sfft.fftfreq(self.n).astype(np.float32)
        # (-1)^(y+x) on the exit wave puts the zero frequency at the centre of the far field,
        # which saves an fftshift of every 960 x 960 pattern
        self._checker = np.where(np.add.outer(np.arange(self.n), np.arange(self.n)) % 2, -1, 1).astype(np.complex64)
        self.fccd = FCCDModel(self.geom, cfg.noise, cfg.energy_eV, seed=cfg.seed)
        self._static_image = self._beamstop_and_background()
        self._warned_outside = False

    @property
    def truth(self) -> Truth:
        cfg = self.config
        return Truth(
            object=self.object,
            probe=self.probe,
            planned_translations_m=self.planned,
            object_pixel_size_m=self.dx,
            probe_photons_per_frame=cfg.photon_flux_per_s * cfg.exposure_s,
            config=cfg,
        )

    def _beamstop_and_background(self) -> tuple[np.ndarray, np.ndarray]:
        g, nz = self.geom, self.config.noise
        c = self.det_n // 2
        yy, xx = np.ogrid[: self.det_n, : self.det_n]
        r = np.hypot(yy - c, xx - c)
        trans = beamstop_transmission(g)
        bg = nz.background_photons + nz.background_center_photons * np.exp(-r / nz.background_radius_px)
        return trans.astype(np.float32), (bg * trans).astype(np.float32)

    @property
    def beamstop_transmission_map(self) -> np.ndarray:
        return self._static_image[0]

    def probe_origin_px(self, translation_m: np.ndarray) -> np.ndarray:
        """Object-pixel coordinate (y, x) of the probe window's first pixel for a sample translation."""
        center = (np.asarray(self.object.shape) - self.n) / 2
        probe_on_sample = -(np.asarray(translation_m, dtype=float) - self._center_m)
        return center + probe_on_sample / self.dx

    def object_on_grid(self, translation_m, origin_px, pixel_m: float, shape: tuple[int, int], window: int) -> np.ndarray:
        """The true object seen on a reconstruction's grid, to score it against.

        The grid has pixels of ``pixel_m`` and puts the ``window``-pixel probe window of
        ``translation_m`` at ``origin_px``; the truth is averaged over each grid pixel
        (a box of its size) and sampled there. Outside the simulated object: free space.
        """
        from scipy import ndimage

        s = pixel_m / self.dx
        a = self.probe_origin_px(translation_m) + self.n / 2 - (np.asarray(origin_px, float) + window / 2) * s
        coords = a[:, None, None] + s * np.indices(shape, dtype=float)
        size = max(1, int(round(s)))
        out = np.empty(shape, np.complex64)
        for part, put in ((self.object.real, 1.0), (self.object.imag, 0.0)):
            smooth = ndimage.uniform_filter(part.astype(np.float64), size=size, mode="nearest")
            sampled = ndimage.map_coordinates(smooth, coords, order=1, mode="constant", cval=put)
            if put:
                out.real = sampled
            else:
                out.imag = sampled
        return out

    def exit_wave(self, translation_m: np.ndarray) -> np.ndarray:
        """Probe (sub-pixel shifted) times the object patch under it; free space outside the object."""
        origin = self.probe_origin_px(translation_m)
        iy, ix = np.floor(origin).astype(int)
        fy, fx = origin - (iy, ix)
        ramp_y = np.exp(-2j * np.pi * self._freq * fy).astype(np.complex64)
        ramp_x = np.exp(-2j * np.pi * self._freq * fx).astype(np.complex64)
        probe = sfft.ifft2(self._probe_ft * ramp_y[:, None] * ramp_x[None, :])
        patch = np.ones((self.n, self.n), dtype=np.complex64)
        oy, ox = self.object.shape
        y0, y1, x0, x1 = max(iy, 0), min(iy + self.n, oy), max(ix, 0), min(ix + self.n, ox)
        if (y0, y1, x0, x1) != (iy, iy + self.n, ix, ix + self.n) and not self._warned_outside:
            self._warned_outside = True
            log.warning(
                "translation %s m puts the probe outside the simulated object (sized for config.scan); "
                "the sample is empty space there: make SimConfig.scan cover the plan's positions",
                np.asarray(translation_m).tolist(),
            )
        if y1 > y0 and x1 > x0:
            patch[y0 - iy : y1 - iy, x0 - ix : x1 - ix] = self.object[y0:y1, x0:x1]
        return probe * patch

    def expected_photons(self, translation_m: np.ndarray, exposure_s: float | None = None) -> np.ndarray:
        """Mean photons per detector pixel (960 x 960) for a sample translation, beamstop and background included."""
        cfg = self.config
        exposure = cfg.exposure_s if exposure_s is None else exposure_s
        psi = self.exit_wave(translation_m) * self._checker
        # zero-padded far field, pruned: only the probe window's rows are transformed first
        f = sfft.fft(psi, n=self.det_n, axis=1, norm="ortho")
        f = sfft.fft(f, n=self.det_n, axis=0, norm="ortho", overwrite_x=True)
        intensity = np.multiply(f.real, f.real)
        intensity += f.imag * f.imag
        trans, background = self._static_image
        intensity *= trans
        intensity *= np.float32(cfg.photon_flux_per_s * exposure)
        intensity += background if exposure == cfg.exposure_s else background * np.float32(exposure / cfg.exposure_s)
        return intensity

    def raw_frame(
        self, translation_m: np.ndarray | None, frame_index: int, exposure_s: float | None = None
    ) -> np.ndarray:
        """One raw FCCD frame (1040 x 1152 uint16); ``translation_m=None`` is a dark frame (shutter closed)."""
        exposure = self.config.exposure_s if exposure_s is None else exposure_s
        lam = None if translation_m is None else self.expected_photons(translation_m, exposure)
        raw, _ = self.fccd.read(lam, exposure, frame_index, seed=self.config.seed)
        return raw


@dataclass(frozen=True)
class SimulatedScan:
    """Raw frames of a whole scan with their truth: the offline twin of a catalog run."""

    raw: np.ndarray  # (N, 1040, 1152) uint16, light frames in scan order
    dark: np.ndarray  # (D, 1040, 1152) uint16
    translations_m: np.ndarray  # (N, 2) y, x where the stage really was: the frames are rendered there
    truth: Truth
    recorded_m: np.ndarray | None = None  # (N, 2) what its encoder read (the translations plus the encoder noise)


def simulate_scan(
    config: SimConfig | None = None, *, dark_frames: int = 0, jitter_m: float = 0.0, encoder_noise_m: float = 0.0
) -> SimulatedScan:
    """Every frame of ``config.scan`` without devices or files, for tests and offline benchmarks.

    ``jitter_m``: the stage's settling error, rms: where it really was is off the planned positions by this (seeded),
    and the frames are rendered there. ``encoder_noise_m``: the encoder's error, rms: ``recorded_m`` (what a run
    would record) is off where the stage really was by this, as :class:`~ns_bluesky.ophyd_devices.motors.SimMotor`'s
    readback is.
    """
    sim = PtychoSimulation(config)
    rng = np.random.default_rng([sim.config.seed, 0x5CA7])
    translations = sim.planned + (rng.normal(0.0, jitter_m, sim.planned.shape) if jitter_m > 0 else 0.0)
    noise = np.random.default_rng([sim.config.seed, 0xE1C0])
    recorded = translations + (noise.normal(0.0, encoder_noise_m, translations.shape) if encoder_noise_m > 0 else 0.0)
    dark = np.stack([sim.raw_frame(None, i) for i in range(dark_frames)]) if dark_frames else np.empty((0, *sim.geom.raw_shape), np.uint16)
    raw = np.stack([sim.raw_frame(t, dark_frames + i) for i, t in enumerate(translations)])
    return SimulatedScan(raw=raw, dark=dark, translations_m=translations, truth=sim.truth, recorded_m=recorded)
