"""The simulated stage as real ones are: it settles a few nm off its setpoint and its encoder reads a few nm off
where it settled; the detector renders the frame where the axis really is, the run records the readback."""

from __future__ import annotations

import numpy as np
import pytest

from ns_bluesky.ophyd_devices import SampleStage
from ns_bluesky.ophyd_devices.fccd import SimulationSource
from ns_bluesky.sim import PtychoSimulation
from ns_bluesky.sim.experiment import simulate_scan
from ns_bluesky.sim.settings import SimConfig


def _visit(stage, targets):
    """(readback, true position) of the x axis at each target."""
    out = []
    for t in targets:
        stage.x.set(t).wait(2)
        out.append((stage.x.position, stage.x.true_position))
    return np.array(out)


def test_the_readback_differs_from_where_the_axis_is_by_the_encoder_noise():
    stage = SampleStage(name="stage", seed=4)
    stage.x.settle_time.put(0.0)
    stage.x.velocity.put(1.0)  # moves finish at once
    targets = np.arange(200) * 50e-9
    read, true = _visit(stage, targets).T
    settle, encoder = stage.x.jitter.get(), stage.x.encoder_noise.get()
    assert 1e-9 <= encoder <= 10e-9 and 1e-9 <= settle <= 10e-9  # a few nm, as real stages
    # where the axis came to rest is no lattice, and the record is not where it came to rest
    assert np.std(true - targets) == pytest.approx(settle, rel=0.25)
    assert np.std(read - true) == pytest.approx(encoder, rel=0.25)
    assert np.std(read - targets) == pytest.approx(np.hypot(settle, encoder), rel=0.25)


def test_a_user_offset_moves_the_reading_and_the_true_user_position_not_the_axis():
    stage = SampleStage(name="stage", seed=5)
    stage.x.set(100e-9).wait(2)
    dial = stage.x.true_dial_position
    stage.x.user_offset.put(15e-9)
    assert stage.x.true_dial_position == dial and stage.x.true_position == pytest.approx(dial + 15e-9)
    assert stage.x.position - stage.x.true_position == pytest.approx(stage.x.dial_position - dial)


def test_the_detector_renders_the_frame_where_the_axis_really_is():
    cfg = SimConfig()
    sim = PtychoSimulation(cfg)
    stage = SampleStage(name="stage", seed=6)
    stage.x.encoder_noise.put(20e-9)  # large, so that the two places give clearly different frames
    stage.x.set(30e-9).wait(2)
    stage.y.set(-20e-9).wait(2)
    true = np.array([stage.y.true_dial_position, stage.x.true_dial_position])
    read = np.array([stage.y.position, stage.x.position])
    assert np.abs(true - read).max() > 1e-9
    frame = SimulationSource(sim, stage).render(0, cfg.exposure_s, light=True)
    assert np.array_equal(frame, sim.raw_frame(true, 0))
    assert not np.array_equal(frame, sim.raw_frame(read, 0))


def test_an_offline_scan_records_the_encoder_reading_and_renders_the_truth():
    from ns_bluesky.instrument.scan import ScanPattern

    cfg = SimConfig(scan=ScanPattern(shape=(2, 2), overlap=0.7))
    scan = simulate_scan(cfg, jitter_m=3e-9, encoder_noise_m=5e-9)
    sim = PtychoSimulation(cfg)
    assert np.abs(scan.translations_m - sim.planned).max() > 0  # settled off the lattice
    assert 0 < np.abs(scan.recorded_m - scan.translations_m).max() < 30e-9  # read off where it settled
    assert np.array_equal(scan.raw[1], sim.raw_frame(scan.translations_m[1], 1))
