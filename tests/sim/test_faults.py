"""Injected faults: each spoils the frame the way the pipeline's QC must catch, drift moves the sample."""

from __future__ import annotations

import numpy as np
import pytest
from ns_bluesky.ophyd_devices import SampleStage, SimulationSource

from ns_bluesky.errors import ParameterError
from ns_bluesky.instrument.scan import ScanPattern
from ns_bluesky.sim import PtychoSimulation
from ns_bluesky.sim import sample as sim_sample
from ns_bluesky.sim.faults import Faults, StageDrift, drop_packets, saturate
from ns_bluesky.sim.settings import SimConfig
from ns_bluesky.stages.frame import FrameParams


@pytest.fixture(scope="module")
def sim():
    return PtychoSimulation(SimConfig(scan=ScanPattern(shape=(3, 3), overlap=0.7)))


def test_dropped_packets_and_saturation_exceed_what_the_frame_qc_tolerates(sim):
    raw = sim.raw_frame(sim.planned[4], 0)
    dropped = drop_packets(raw)
    assert np.count_nonzero(dropped == 0) > FrameParams().zeros_fraction * raw.size
    assert np.count_nonzero(raw == 0) < FrameParams().zeros_fraction * raw.size  # the clean frame would pass
    burst = saturate(raw, sim.geom)
    assert np.count_nonzero(burst >= sim.geom.saturation_adu) > np.count_nonzero(raw >= sim.geom.saturation_adu)
    assert raw is not dropped and raw is not burst and not np.array_equal(raw, dropped)  # the input is kept


def test_the_source_spoils_the_scheduled_light_frames_only(sim):
    stage = SampleStage(name="stage")
    faults = Faults.make(dropped_packets=[1], beam_loss=range(2, 4), saturation=[4])
    source = SimulationSource(sim, stage, faults)
    dark = source.render(0, sim.config.exposure_s, light=False)  # darks do not count as light frames
    frames = [source.render(1 + k, sim.config.exposure_s, light=True) for k in range(6)]
    assert source.light_frames == 6 and faults.bad_frames == {1, 2, 3, 4}
    assert np.array_equal(frames[0], sim.raw_frame(np.zeros(2), 1))
    assert np.count_nonzero(frames[1] == 0) > np.count_nonzero(frames[0] == 0) + 10_000
    for lost in frames[2:4]:  # beam loss: a dark frame's level, not the bright frame's
        assert abs(float(lost.mean()) - float(dark.mean())) < 0.1 * abs(float(frames[0].mean()) - float(dark.mean()))
    assert np.count_nonzero(frames[4] >= sim.geom.saturation_adu) > 1000
    assert np.array_equal(frames[5], sim.raw_frame(np.zeros(2), 6))


def test_drift_renders_the_sample_where_it_slipped_while_the_stage_reads_the_setpoint(sim):
    stage = SampleStage(name="stage")
    stage.x.jitter.put(0.0)
    stage.y.jitter.put(0.0)
    stage.x.encoder_noise.put(0.0)
    stage.y.encoder_noise.put(0.0)
    drift = StageDrift(start=1, jump_m=(20e-9, -10e-9), rate_m_per_frame=(1e-9, 0.0))
    source = SimulationSource(sim, stage, Faults.make(drift=drift))
    stage.x.set(30e-9).wait()
    before = source.render(0, sim.config.exposure_s, light=True)
    after = source.render(1, sim.config.exposure_s, light=True)
    assert np.array_equal(before, sim.raw_frame(np.array([0.0, 30e-9]), 0))
    assert np.array_equal(after, sim.raw_frame(np.array([20e-9, 20e-9]), 1))
    assert stage.x.position == pytest.approx(30e-9)
    assert drift.at(3) == pytest.approx([22e-9, -10e-9]) and drift.at(0) == pytest.approx([0.0, 0.0])


def test_a_user_offset_moves_the_readback_not_the_axis():
    stage = SampleStage(name="stage")
    stage.x.jitter.put(0.0)
    stage.x.encoder_noise.put(0.0)
    stage.x.set(100e-9).wait()
    stage.x.user_offset.put(15e-9)  # what a drift correction does
    assert stage.x.position == pytest.approx(115e-9) and stage.x.dial_position == pytest.approx(100e-9)
    stage.x.set(100e-9).wait()
    assert stage.x.position == pytest.approx(100e-9) and stage.x.dial_position == pytest.approx(85e-9)


def test_an_empty_region_is_zero_thickness_and_its_side_is_checked():
    image = sim_sample.test_pattern((64, 64))
    half = sim_sample.with_empty_region(image, "right")
    assert np.all(half[:, 32:] == image.min()) and np.array_equal(half[:, :32], image[:, :32])
    top = sim_sample.with_empty_region(image, "top", 0.25)
    assert np.all(top[:16] == image.min()) and np.array_equal(top[16:], image[16:])
    with pytest.raises(ParameterError, match="side"):
        sim_sample.with_empty_region(image, "middle")
