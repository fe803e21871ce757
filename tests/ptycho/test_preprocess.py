"""Each pre-processing step recovers a known answer injected into a frame."""

import numpy as np
import pytest
import scipy.fft as sfft

from ns_bluesky.instrument.detector import DetectorGeometry, assemble, channel_series, overscan
from ns_bluesky.ptycho import preprocess as pp
from ns_bluesky.sim.fccd import FCCDModel
from ns_bluesky.sim.settings import DetectorNoise


@pytest.fixture(scope="module")
def geom():
    return DetectorGeometry()


def test_center_of_mass_finds_an_offset_pattern():
    y, x = np.mgrid[:960, :960]
    truth = [(500.3, 470.7), (470.0, 489.5)]
    imgs = np.stack([1000 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 15.0**2)) + 0.5 for cy, cx in truth])
    np.testing.assert_allclose(pp.center_of_mass(imgs, threshold=1.0), truth, atol=0.01)


def test_dark_subtraction_and_masking():
    raw = np.full((2, 4, 4), 1100, np.uint16)
    raw[:, 1, 1] = 1300
    dark = np.full((4, 4), 1000.0)
    bad = np.zeros((4, 4), np.uint32)
    bad[2, 2] = 0x4
    out = pp.subtract_dark(raw, dark, bad)
    assert out.dtype == np.float32 and out[0, 1, 1] == 300 and out[1, 0, 0] == 100 and out[0, 2, 2] == 0


@pytest.mark.parametrize("order", [1, 2])
def test_overscan_correction_removes_injected_channel_offsets(geom, order):
    noise = DetectorNoise(spike_amplitude_adu=0.0, read_noise_adu=2.0, dark_current_adu_per_s=0.0, hot_pixel_fraction=0)
    model = FCCDModel(geom, noise, energy_eV=800.0, seed=2)
    raw = model.read(None, 0.1, 700)[0]
    corrected = pp.overscan_correct(raw, geom, order=order)
    residual = channel_series(corrected, geom).mean(axis=-1)  # per channel, data and overscan
    assert np.abs(channel_series(raw.astype(float), geom).mean(axis=-1)).min() > 500  # offsets were there
    assert np.abs(residual).max() < 0.5  # and are gone (2 ADU noise over 6240 samples)
    assert np.abs(overscan(corrected, geom)).mean() < 2.5


def test_spike_removal_recovers_a_clean_frame(geom):
    clean_noise = DetectorNoise(spike_amplitude_adu=0.0, read_noise_adu=3.0, dark_current_adu_per_s=0.0, hot_pixel_fraction=0, offset_slope_adu=0.0)
    spiky_noise = clean_noise.model_copy(update={"spike_amplitude_adu": 40.0})
    y, x = np.mgrid[:960, :960]
    light = np.where(np.hypot(y - 480, x - 480) < 150, 3.0, 0.01).astype(np.float32)  # signal on many channels
    clean = FCCDModel(geom, clean_noise, 800.0, seed=1).read(light, 0.1, 0)[0].astype(np.float32)
    spiky = FCCDModel(geom, spiky_noise, 800.0, seed=1).read(light, 0.1, 0)[0].astype(np.float32)
    base = pp.overscan_correct(clean, geom)
    before = pp.overscan_correct(spiky, geom) - base
    after = pp.remove_spikes(pp.overscan_correct(spiky, geom), geom) - base
    assert np.abs(before).max() > 35
    assert np.sqrt((after**2).mean()) < np.sqrt((before**2).mean()) / 5
    signal = assemble(base, geom)[380:580, 380:580]
    assert signal.mean() > 30  # photons were there, and the removal left them alone:
    assert np.abs(assemble(after, geom)[380:580, 380:580]).mean() < 1.0


def test_background_and_photon_thresholds():
    adu = np.array([0.0, 3.0, 7.0, 15.0, 30.0, 46.0], np.float32)
    assert list(pp.background_threshold(adu, 5.0)) == [0, 0, 7, 15, 30, 46]
    # 15 ADU per photon: 7 ADU is below half a photon, 46 ADU is three photons
    assert list(pp.to_photons(adu, 15.0)) == [0, 0, 0, 1, 2, 3]


def test_beamstop_division_restores_the_shadowed_intensity():
    truth = np.full((3, 5, 5), 200.0)
    trans = np.ones((5, 5))
    trans[1:4, 1:4] = 0.015
    np.testing.assert_allclose(pp.beamstop_correct(truth * trans, trans), truth, rtol=1e-5)


def test_crop_center_with_padding():
    img = np.arange(100).reshape(10, 10)
    np.testing.assert_array_equal(pp.crop_center(img, (5, 5), 4), img[3:7, 3:7])
    edge = pp.crop_center(img, (0.4, 9), 4)
    assert edge.shape == (4, 4) and edge[0, 0] == 0 and edge[2, 0] == img[0, 7]


def test_fft_downsampling_is_exact_for_a_probe_sized_exit_wave():
    rng = np.random.default_rng(3)
    n, big = 64, 240
    psi = np.zeros((n, n), complex)
    psi[16:48, 16:48] = rng.normal(size=(32, 32)) + 1j * rng.normal(size=(32, 32))  # support n/2
    fine = np.abs(sfft.fftshift(sfft.fft2(psi, s=(big, big)))) ** 2  # the detector's fine sampling
    coarse = np.abs(sfft.fftshift(sfft.fft2(psi))) ** 2  # what the reconstruction grid sees
    down = pp.fft_downsample(fine[None], n)[0]
    np.testing.assert_allclose(down / down.sum(), coarse / coarse.sum(), atol=1e-6 * coarse.max() / coarse.sum())
    assert down.sum() == pytest.approx(fine.sum(), rel=1e-4)


def test_the_nine_steps_together_recover_the_photons_behind_a_raw_frame(geom):
    """Noise-free electronics (offsets, slope, drift, spikes stay): raw in, the true photon pattern out."""
    from ns_bluesky.instrument.scan import ScanPattern
    from ns_bluesky.ptycho.dark import DarkStatistics
    from ns_bluesky.sim import PtychoSimulation
    from ns_bluesky.sim.settings import SimConfig

    noise = DetectorNoise(read_noise_adu=0.0, hot_pixel_fraction=0.0, dead_pixel_fraction=0.0, dark_current_adu_per_s=0.0, offset_drift_adu=0.0)
    sim = PtychoSimulation(SimConfig(noise=noise, scan=ScanPattern(shape=(2, 2), step_m=1e-7)))
    stats = DarkStatistics(geom.raw_shape)
    stats.update(np.stack([sim.raw_frame(None, i) for i in range(2)]))
    lam = sim.expected_photons(sim.planned[0])
    raw, photons = sim.fccd.read(lam, sim.config.exposure_s, frame_index=5)
    out = pp.preprocess(raw[None], geom, dark_mean=stats.mean, adu_per_photon=sim.fccd.adu_per_photon,
                        transmission_map=sim.beamstop_transmission_map)[0]
    want = pp.fft_downsample((photons / sim.beamstop_transmission_map)[None], 256)[0]
    assert out.shape == (256, 256)
    assert out.sum() == pytest.approx(want.sum(), rel=0.01)
    np.testing.assert_allclose(out, want, atol=0.02 * want.max())
    # the scrambled readout was undone: the brightest pixel is the bright field at the centre
    assert np.unravel_index(out.argmax(), out.shape) in [(r, c) for r in range(118, 139) for c in range(118, 139)]


def _full_fft_crop(images, size):
    """The straightforward downsampling, in float64: the whole 2-D spectrum, its lowest ``size``
    frequencies (half spectrum, as a real pattern needs), the centring shifts done explicitly."""
    n, h = images.shape[-1], size // 2
    spectrum = sfft.rfft2(images.astype(np.float64))
    rows = np.r_[0 : h + 1, n - h + 1 : n]  # ky = 0..h, -h+1..-1
    ky, kx = np.r_[0 : h + 1, -h + 1 : 0], np.arange(h + 1)
    sign = np.where((ky[:, None] + kx[None, :]) % 2 == 0, 1.0, -1.0)  # the pattern's centre from n/2 to 0
    out = sfft.irfft2(spectrum[..., rows, : h + 1] * sign, s=(size, size))
    return np.roll(out, (h, h), axis=(-2, -1))  # and the output's from 0 to size/2


@pytest.mark.parametrize(("shape", "size"), [((2, 960, 960), 256), ((2, 3, 48, 48), 16), ((960, 960), 128)])
def test_fast_downsampling_equals_the_full_fft_crop(shape, size):
    rng = np.random.default_rng(7)
    y, x = np.indices(shape[-2:]) - shape[-1] / 2
    # a speckled pattern with a bright centre and noise up to the highest frequencies
    bright = 1000 * np.exp(-(x**2 + y**2) / (2 * (shape[-1] / 12) ** 2))
    images = rng.poisson(bright + 2, size=shape).astype(np.float32)
    got = pp.fft_downsample(images, size)
    want = _full_fft_crop(images, size)
    assert got.dtype == np.float32 and got.shape == (*shape[:-2], size, size)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())  # float32 rounding
    assert got.sum() == pytest.approx(images.sum(), rel=1e-5)  # counts kept


def test_preprocess_gives_what_the_steps_one_after_another_give(geom):
    """The fused pass (ripple after assembly, crop before the photon and beamstop steps,
    a frame at a time) changes no value, whatever the settings and batch split."""
    from ns_bluesky.ptycho.dark import DarkStatistics, bad_maps
    from ns_bluesky.sim import PtychoSimulation

    sim = PtychoSimulation()
    stats = DarkStatistics(geom.raw_shape)
    stats.update(np.stack([sim.raw_frame(None, i) for i in range(3)]))
    bad = bad_maps(stats, geom).pixels
    raw = np.stack([sim.raw_frame(sim.planned[i], 10 + i) for i in range(3)])
    kept = raw.copy()
    adu, trans = sim.fccd.adu_per_photon, sim.beamstop_transmission_map
    cases = [
        (pp.Settings(), None),
        (pp.Settings(overscan_order=2, background_adu=4.0, photon_threshold=0.8, crop=800), (470.4, 505)),
    ]
    for settings, center in cases:
        x = pp.subtract_dark(raw, stats.mean, bad)
        x = pp.remove_spikes(pp.overscan_correct(x, geom, order=settings.overscan_order), geom)
        img = assemble(x, geom)
        if settings.background_adu is not None:
            img = pp.background_threshold(img, settings.background_adu)
        img = pp.beamstop_correct(pp.to_photons(img, adu, settings.photon_threshold), trans)
        c = (480, 480) if center is None else center
        want = pp.fft_downsample(pp.crop_center(img, c, settings.crop), settings.out_size)
        for per_pass in (None, 2):
            got = pp.preprocess(
                raw, geom, dark_mean=stats.mean, bad_pixels=bad, adu_per_photon=adu, transmission_map=trans,
                center=center, settings=settings, frames_per_pass=per_pass,
            )
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
    np.testing.assert_array_equal(raw, kept)  # the caller's frames stay as they were


def test_a_prepared_cleaner_reused_frame_after_frame_gives_what_fresh_calls_give(geom):
    from ns_bluesky.ptycho.dark import DarkStatistics, bad_maps
    from ns_bluesky.sim import PtychoSimulation

    sim = PtychoSimulation()
    stats = DarkStatistics(geom.raw_shape)
    stats.update(np.stack([sim.raw_frame(None, i) for i in range(3)]))
    bad = bad_maps(stats, geom).pixels
    raw = np.stack([sim.raw_frame(sim.planned[i], 20 + i) for i in range(4)])
    kw = {"dark_mean": stats.mean, "bad_pixels": bad, "adu_per_photon": sim.fccd.adu_per_photon,
          "transmission_map": sim.beamstop_transmission_map, "settings": pp.Settings(crop=480, out_size=128)}
    cleaner = pp.Preprocessor(geom, **kw)
    # frames one at a time, then two at once, through the same buffers: no frame leaks into the next
    got = [cleaner(frame) for frame in raw] + list(cleaner(raw[:2], frames_per_pass=2))
    want = [pp.preprocess(frame[None], geom, **kw)[0] for frame in raw] + [pp.preprocess(raw[k : k + 1], geom, **kw)[0] for k in (0, 1)]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert got[0] is not got[1] and not np.shares_memory(got[0], got[1])  # each call hands out its own array
