"""The FCCD raw-frame model against answers known by construction."""

import numpy as np
import pytest
from scipy import stats

from ns_bluesky.instrument import detector
from ns_bluesky.instrument.detector import DetectorGeometry
from ns_bluesky.sim import fccd
from ns_bluesky.sim.settings import DetectorNoise


@pytest.fixture(scope="module")
def geom():
    return DetectorGeometry()


def test_cosmic_layout(geom):
    assert geom.raw_shape == (1040, 1152)
    assert geom.image_shape == (960, 960)
    assert geom.saturation_adu == 8191
    assert geom.edge_rows == 5


def test_geometry_round_trip_image_raw_image(geom):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 8000, geom.image_shape, dtype=np.uint16)
    raw = detector.disassemble(image, geom)
    assert raw.shape == (1040, 1152) and raw.dtype == np.uint16
    np.testing.assert_array_equal(detector.assemble(raw, geom), image)


def test_geometry_round_trip_raw_image_raw_keeps_every_image_pixel(geom):
    rng = np.random.default_rng(2)
    raw = rng.integers(1, 8000, geom.raw_shape, dtype=np.uint16)
    again = detector.disassemble(detector.assemble(raw, geom), geom)
    imaged = detector.disassemble(np.ones(geom.image_shape, np.uint8), geom).astype(bool)
    assert imaged.sum() == 960 * 960
    np.testing.assert_array_equal(again[imaged], raw[imaged])
    assert np.all(again[~imaged] == 0)


def test_batches_assemble_like_single_frames(geom):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 8000, (3, *geom.raw_shape), dtype=np.uint16)
    batch = detector.assemble(raw, geom)
    assert batch.shape == (3, 960, 960)
    np.testing.assert_array_equal(batch[1], detector.assemble(raw[1], geom))


def test_top_half_is_rotated_and_channels_are_clock_interleaved(geom):
    """A marked sample of channel 0 (top half) lands rotated; channel 96 (bottom) does not."""
    buf = np.zeros((geom.rows_per_half, geom.cols_per_channel, geom.channels), np.uint16)
    buf[35, 0, 0] = 7  # first image row of the top half, first column of its first supercolumn
    buf[35, 0, 96] = 9  # same for the bottom half
    img = detector.assemble(buf.reshape(geom.raw_shape), geom)
    assert img[479, 959] == 7  # rotated: ends up at the bottom-right of the top half, next to the gap
    assert img[480, 0] == 9
    series = detector.channel_series(buf.reshape(geom.raw_shape), geom)
    assert series.shape == (192, 520 * 12)
    assert series[0, 35 * 12] == 7


def test_overscan_mean_equals_injected_offset(geom):
    noise = DetectorNoise(spike_amplitude_adu=0.0)
    model = fccd.FCCDModel(geom, noise, energy_eV=800.0, seed=5)
    raw = model.read(None, 0.1, frame_index=300)[0].astype(float)
    over = detector.overscan(raw, geom)  # (channel, row, col)
    truth = detector.overscan(model.baseline(300), geom)
    diff = (over - truth).mean(axis=(1, 2))
    # 520 x 2 samples per channel, read noise 5 ADU: standard error 0.16 ADU
    assert np.abs(diff).max() < 0.8
    assert abs(diff.mean()) < 0.05  # no bias: the ADC rounds, it does not truncate
    assert np.std(over - truth) == pytest.approx(noise.read_noise_adu, rel=0.1)
    assert np.ptp(model.offsets_at(300) - model.offsets_at(0)) > 0  # the baseline drifts


def test_photon_statistics_are_poisson():
    rng = np.random.default_rng(7)
    lam = np.full((200, 200), 0.05, np.float32)
    lam[:100] = 3.0
    counts = np.stack([fccd.sample_photons(lam, rng) for _ in range(40)])
    dim, bright = counts[:, 100:].ravel(), counts[:, :100].ravel()
    for sample, mean in ((dim, 0.05), (bright, 3.0)):
        assert sample.mean() == pytest.approx(mean, rel=0.05)
        assert sample.var() == pytest.approx(mean, rel=0.08)  # Poisson: variance = mean
    ks = np.bincount(bright, minlength=12)[:12] / bright.size
    np.testing.assert_allclose(ks, stats.poisson.pmf(np.arange(12), 3.0), atol=0.005)


def test_sample_photons_rejects_nan():
    with pytest.raises(ValueError, match="finite and non-negative"):
        fccd.sample_photons(np.array([[1.0, np.nan]]), np.random.default_rng(0))


def test_dead_channel_hot_pixels_and_saturation(geom):
    noise = DetectorNoise(dead_channel=17, hot_pixel_fraction=1e-3)
    model = fccd.FCCDModel(geom, noise, energy_eV=800.0, seed=1)
    lam = np.zeros(geom.image_shape, np.float32)
    lam[100, 100] = 5000.0  # far beyond 13 bits
    raw, photons = model.read(lam, 1.0, frame_index=0)
    assert np.all(detector.channel_series(raw, geom)[17] == 0)
    assert raw.max() == geom.saturation_adu
    assert detector.assemble(raw, geom)[100, 100] == geom.saturation_adu
    img = detector.assemble(raw, geom).astype(float)
    hot = model.hot_mask & (img > 0)
    assert np.median(img[hot]) > np.median(img[~model.hot_mask & (img > 0)]) + 1000


def test_spikes_are_periodic_in_clock_time(geom):
    noise = DetectorNoise(read_noise_adu=0.0, offset_slope_adu=0.0, offset_drift_adu=0.0, spike_amplitude_adu=30)
    model = fccd.FCCDModel(geom, noise, energy_eV=800.0)
    series = detector.channel_series(model.read(None, 0.0, 0)[0].astype(float), geom)[5]
    peaks = np.flatnonzero(series - np.median(series) > 15)
    assert set(np.diff(peaks)) == {noise.spike_period_clocks}


def test_frames_are_reproducible_and_distinct(geom):
    model = fccd.FCCDModel(geom, DetectorNoise(), energy_eV=800.0, seed=3)
    a = model.read(None, 0.1, 10)[0]
    np.testing.assert_array_equal(a, model.read(None, 0.1, 10)[0])
    assert not np.array_equal(a, model.read(None, 0.1, 11)[0])
