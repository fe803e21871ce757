"""The simulated beamline's Ophyd devices, driven for real (no RunEngine needed here)."""

import time

import h5py
import numpy as np
import pytest
from ns_bluesky.ophyd_devices import SampleStage, Shutter
from ophyd.utils import LimitError

from ns_bluesky.errors import DeviceError, ParameterError


def test_motor_limits_jitter_and_settle():
    stage = SampleStage(name="stage", seed=3)
    stage.x.jitter.put(3e-9)
    stage.x.settle_time.put(0.05)
    t0 = time.monotonic()
    stage.x.set(1e-6).wait(2)
    assert time.monotonic() - t0 >= 0.05
    assert stage.x.setpoint.get() == 1e-6
    assert stage.x.position != 1e-6
    assert abs(stage.x.position - 1e-6) < 2e-8
    with pytest.raises(LimitError, match="stage_x.*outside the limits"):
        stage.x.set(1.0)
    with pytest.raises(LimitError, match="point 1"):
        stage.check_positions(np.array([[0.0, 0.0], [0.0, 60e-6]]))


def test_shutter_opens_and_rejects_nonsense():
    sh = Shutter(name="shutter")
    sh.actuation_time.put(0.01)
    sh.set("open").wait(1)
    assert sh.is_open
    sh.set("close").wait(1)
    assert not sh.is_open
    with pytest.raises(ParameterError, match="unknown shutter command"):
        sh.set("half")


def test_fccd_follows_shutter_and_honours_the_rate(beamline):
    fccd = beamline.fccd
    fccd.acquire_period.put(0.2)
    fccd.stage()
    try:
        t0 = time.monotonic()
        fccd.trigger().wait(5)
        assert time.monotonic() - t0 >= 0.2
        assert fccd.mode.get() == "dark"
        beamline.shutter.set("open").wait(1)
        fccd.acquire_period.put(0.0)
        fccd.trigger().wait(5)
        assert fccd.mode.get() == "light"
        docs = list(fccd.collect_asset_docs())
        assert [n for n, _ in docs] == ["stream_resource", "stream_datum", "stream_datum"]
        path = docs[0][1]["uri"].removeprefix("file://localhost")
    finally:
        fccd.unstage()
    with h5py.File(path, "r") as f:
        data = f["/entry/data/data"]
        assert data.shape == (2, 1040, 1152) and data.dtype == np.uint16
        assert data[1].astype(float).sum() > data[0].astype(float).sum()


def test_fccd_rejects_bad_settings(beamline):
    beamline.fccd.acquire_time.put(-0.1)
    with pytest.raises(ParameterError, match="acquire_time .*must be > 0"):
        beamline.fccd.stage()
    beamline.fccd.acquire_time.put(0.1)
    beamline.fccd.acquire_period.put(0.05)
    with pytest.raises(ParameterError, match="shorter than the exposure"):
        beamline.fccd.validate_settings()


def test_failed_render_fails_the_trigger_instead_of_hanging(beamline):
    class Broken:
        geometry = beamline.fccd.geometry

        def render(self, *args):
            raise RuntimeError("sensor on fire")

    beamline.fccd.source = Broken()
    beamline.fccd.stage()
    try:
        with pytest.raises(DeviceError, match="sensor on fire"):
            beamline.fccd.trigger().wait(5)
    finally:
        beamline.fccd.unstage()


def test_a_newer_shutter_command_wins():
    sh = Shutter(name="shutter")
    sh.actuation_time.put(0.05)
    first = sh.set("open")
    sh.set("close").wait(1)
    first.wait(1)  # superseded, not left hanging
    time.sleep(0.1)
    assert not sh.is_open
