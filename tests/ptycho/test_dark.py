"""Dark statistics and bad maps against the simulator's injected faults."""

import numpy as np
import pytest

from ns_bluesky.instrument.detector import DetectorGeometry, assemble
from ns_bluesky.ptycho.dark import MASK_HOT, DarkStatistics, bad_maps
from ns_bluesky.sim.fccd import FCCDModel
from ns_bluesky.sim.settings import DetectorNoise


def test_streaming_statistics_equal_numpy_on_all_frames():
    rng = np.random.default_rng(0)
    frames = rng.normal(100, 5, (23, 8, 9))
    stats = DarkStatistics((8, 9))
    for chunk in (frames[:1], frames[1:10], frames[10:11][0], frames[11:]):
        stats.update(chunk)
    assert stats.count == 23
    np.testing.assert_allclose(stats.mean, frames.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.variance, frames.var(axis=0, ddof=1), rtol=1e-10)
    with pytest.raises(ValueError, match="do not match"):
        stats.update(np.zeros((2, 3)))


def test_bad_maps_find_the_injected_hot_pixels_and_dead_channel():
    geom = DetectorGeometry()
    model = FCCDModel(geom, DetectorNoise(dead_channel=42, hot_pixel_fraction=5e-4), energy_eV=800.0, seed=4)
    stats = DarkStatistics(geom.raw_shape)
    for i in range(12):
        stats.update(model.read(None, 0.1, i)[0])
    maps = bad_maps(stats, geom)
    assert maps.channels[42] and maps.channels.sum() == 1
    hot = assemble(maps.pixels, geom) & MASK_HOT != 0
    truth = model.hot_mask
    found = (hot & truth).sum() / truth.sum()
    false = (hot & ~truth).sum() / truth.sum()
    assert found > 0.95 and false < 0.05
