"""Sample, probe and scan patterns: physics with answers known in closed form."""

import numpy as np
import pytest
from PIL import Image

from ns_bluesky.errors import ParameterError
from ns_bluesky.instrument.optics import ZonePlateOptics
from ns_bluesky.instrument.probe import zone_plate_probe
from ns_bluesky.instrument.scan import ScanPattern, fermat_spiral, positions, raster, step_from_overlap
from ns_bluesky.instrument.units import wavelength_m
from ns_bluesky.io.images import read_grayscale
from ns_bluesky.sim import PtychoSimulation, transmission
from ns_bluesky.sim.sample import test_pattern as make_test_pattern
from ns_bluesky.sim.settings import SimConfig


def test_wavelength_at_800_eV():
    assert wavelength_m(800.0) == pytest.approx(1.5498e-9, rel=1e-4)


def test_transmission_phase_and_absorption():
    img = np.array([[0.0, 1.0]])
    t = transmission(img, energy_eV=800.0, delta=2e-3, beta=1e-3, thickness_m=50e-9)
    k = 2 * np.pi / wavelength_m(800.0)
    assert t[0, 0] == pytest.approx(1.0)
    assert np.angle(t[0, 1]) == pytest.approx(-k * 2e-3 * 50e-9, rel=1e-5)
    assert np.abs(t[0, 1]) == pytest.approx(np.exp(-k * 1e-3 * 50e-9), rel=1e-5)


def test_test_pattern_has_empty_corners_and_full_star():
    p = make_test_pattern((256, 256))
    assert p.min() == 0 and p.max() == 1
    assert p[:10, :10].max() == 0


def test_sample_from_png_and_tiff(tmp_path):
    ramp = (np.arange(64)[None, :] * np.ones((32, 1)) * 4).astype(np.uint8)
    Image.fromarray(ramp).save(tmp_path / "s.png")
    Image.fromarray(ramp.astype(np.uint16) * 100).save(tmp_path / "s.tif")
    for name in ("s.png", "s.tif"):
        img = read_grayscale(tmp_path / name)
        assert img.shape == (32, 64) and img.min() == 0 and img.max() == 1
    with pytest.raises(ParameterError, match="not found"):
        read_grayscale(tmp_path / "missing.png")


def test_zone_plate_probe_focus_size_and_normalisation():
    optics = ZonePlateOptics(defocus_m=0.0, central_stop_diameter_m=0.0)
    dx = 4.28e-9
    p = zone_plate_probe(256, dx, 800.0, optics)
    assert np.sum(np.abs(p) ** 2) == pytest.approx(1.0, rel=1e-5)
    row = np.abs(p[128]) ** 2
    # Airy disc: first zero at 1.22 dr from the centre
    half = row[128:]
    first_zero = np.flatnonzero((half[1:-1] < half[:-2]) & (half[1:-1] < half[2:]))[0] + 1
    first_zero *= dx
    assert first_zero == pytest.approx(1.22 * optics.outer_zone_width_m, rel=0.15)
    assert optics.focal_length_m(800.0) == pytest.approx(240e-6 * 100e-9 / wavelength_m(800.0))


def test_defocus_widens_the_probe_as_the_geometric_cone():
    dx = 4.28e-9
    optics = ZonePlateOptics(defocus_m=30e-6)
    p = np.abs(zone_plate_probe(256, dx, 800.0, optics)) ** 2
    y, x = np.indices(p.shape) - 128
    r = np.hypot(y, x) * dx
    radius = r[p > 0.1 * p.max()].max()
    assert radius == pytest.approx(optics.beam_diameter_m(800.0) / 2, rel=0.25)


def test_raster_and_spiral_geometry():
    r = raster((3, 4), 1e-7)
    assert r.shape == (12, 2)
    np.testing.assert_allclose(r.mean(axis=0), 0, atol=1e-20)
    np.testing.assert_allclose(np.diff(r[:4, 1]), 1e-7)
    j = raster((3, 4), 1e-7, jitter_m=5e-9, seed=1)
    assert 0 < np.abs(j - r).max() < 5e-8
    f = fermat_spiral(200, 5e-8)
    d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1)) + np.eye(200)
    assert np.median(d.min(axis=1)) == pytest.approx(5e-8, rel=0.03)  # the step is the neighbour distance
    assert step_from_overlap(1e-6, 0.7) == pytest.approx(3e-7)
    with pytest.raises(ParameterError):
        step_from_overlap(1e-6, 1.0)


def test_positions_from_pattern_model():
    pos = positions(ScanPattern(kind="fermat", num_points=30, step_m=4e-8, center_m=(1e-6, 0)), 5e-7)
    assert pos.shape == (30, 2) and pos[0, 0] == pytest.approx(1e-6)


def test_simulation_truth_and_dark_frames():
    cfg = SimConfig(scan=ScanPattern(shape=(3, 3), overlap=0.7))
    sim = PtychoSimulation(cfg)
    truth = sim.truth
    assert truth.probe.shape == (256, 256)
    assert truth.object.shape[0] >= 256 and truth.planned_translations_m.shape == (9, 2)
    assert truth.object_pixel_size_m == pytest.approx(4.28e-9, rel=1e-2)
    lam = sim.expected_photons(truth.planned_translations_m[4])
    assert lam.shape == (960, 960)
    c = 480
    # the bright-field annulus (zone plate with central stop) shines through the beamstop
    assert lam[c - 25 : c + 26, c - 25 : c + 26].max() > lam[c + 200, c + 200] * 10
    inside = sim.beamstop_transmission_map < 1
    assert inside[c, c] and not inside[c + 100, c]
    light = sim.raw_frame(truth.planned_translations_m[4], 0)
    dark = sim.raw_frame(None, 0)
    assert light.shape == (1040, 1152) and light.dtype == np.uint16
    assert light.astype(float).sum() > dark.astype(float).sum()


def test_probe_follows_minus_the_translation():
    sim = PtychoSimulation(SimConfig(scan=ScanPattern(shape=(3, 3), step_m=1e-7)))
    a = sim.probe_origin_px(np.array([0.0, 0.0]))
    b = sim.probe_origin_px(np.array([0.0, 1e-7]))
    assert b[1] - a[1] == pytest.approx(-1e-7 / sim.dx)


def test_simulate_scan_returns_frames_with_their_truth():
    from ns_bluesky.sim import simulate_scan

    cfg = SimConfig(scan=ScanPattern(kind="fermat", num_points=6, step_m=5e-8))
    out = simulate_scan(cfg, dark_frames=2, jitter_m=2e-9)
    assert out.raw.shape == (6, 1040, 1152) and out.dark.shape == (2, 1040, 1152)
    assert 0 < np.abs(out.translations_m - out.truth.planned_translations_m).max() < 2e-8
    again = simulate_scan(cfg, dark_frames=2, jitter_m=2e-9)
    np.testing.assert_array_equal(out.raw, again.raw)  # seeded: the same scan twice


def test_probe_outside_the_object_is_warned_about(caplog):
    sim = PtychoSimulation(SimConfig(scan=ScanPattern(shape=(2, 2), step_m=1e-7)))
    with caplog.at_level("WARNING"):
        sim.exit_wave(np.array([5e-6, 5e-6]))
        sim.exit_wave(np.array([6e-6, 6e-6]))
    assert sum("outside the simulated object" in r.message for r in caplog.records) == 1
