"""STXM and DPC images and the first probe, against the simulator's truth."""

import numpy as np
import pytest

from ns_bluesky.instrument.scan import ScanPattern
from ns_bluesky.instrument.units import wavelength_m
from ns_bluesky.ptycho.stxm import bright_field_mask, grid_image, probe_from_patterns, stxm_signals
from ns_bluesky.sim import PtychoSimulation
from ns_bluesky.sim.settings import SampleModel, SimConfig


@pytest.fixture(scope="module")
def half_empty():
    """A sample that is full thickness on the left half and empty on the right."""
    img = np.zeros((64, 64))
    img[:, :32] = 1.0
    cfg = SimConfig(scan=ScanPattern(shape=(5, 9), step_m=2e-7), sample=SampleModel(delta=0, beta=2e-3, thickness_m=100e-9))
    return PtychoSimulation(cfg, image=img)


def test_transmission_image_shows_the_absorber(half_empty):
    sim = half_empty
    patterns = np.stack([sim.expected_photons(t) / sim.beamstop_transmission_map for t in sim.planned])
    bf = bright_field_mask(patterns.shape[-2:], 30)
    sig = stxm_signals(patterns, bf)
    img, origin = grid_image(sim.planned, sig["transmission"], 2e-7)
    assert img.shape == (5, 9)
    k = 2 * np.pi / wavelength_m(800.0)
    expected = np.exp(-2 * k * 2e-3 * 100e-9)  # intensity transmission of the absorber
    # the stage moves the sample: large x puts the probe on the sample's left (absorbing) half
    ratio = np.nanmean(img[:, -2:]) / np.nanmean(img[:, :2])
    assert ratio == pytest.approx(expected, rel=0.05)


def test_dpc_is_zero_on_a_uniform_sample():
    sim = PtychoSimulation(SimConfig(scan=ScanPattern(shape=(2, 2), step_m=1e-7)), image=np.zeros((16, 16)))
    pats = np.stack([sim.expected_photons(t) / sim.beamstop_transmission_map for t in sim.planned])
    dpc = stxm_signals(pats, bright_field_mask(pats.shape[-2:], 30))["dpc"]
    assert np.abs(dpc).max() < 0.05


def test_probe_from_the_mean_pattern_has_the_probes_modulus_spectrum():
    sim = PtychoSimulation(SimConfig(scan=ScanPattern(shape=(2, 2), step_m=1e-7)), image=np.zeros((16, 16)))
    ft = np.fft.fftshift(np.fft.fft2(sim.probe))
    probe = probe_from_patterns(np.abs(ft) ** 2, support_fraction=1e-6)
    assert np.sum(np.abs(probe) ** 2) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(np.abs(np.fft.fft2(probe)), np.abs(np.fft.fft2(sim.probe)), atol=2e-3 * np.abs(ft).max())
