"""The project's EPICS beamline against the simulated IOC: the plans unchanged, a real RunEngine, the real catalog.

The IOC runs in a subprocess on loopback (tests/support/epics.py); the frames it files are read back from the
catalog (bluesky's TiledWriter, the session's embedded tiled server) and compared with the IOC's HDF5 files
and with what the simulator renders for the same frame numbers, exposures and stage positions.
"""

from __future__ import annotations

import re
import time

import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd.utils import LimitError

from ns_bluesky.errors import DeviceError, ParameterError
from ns_bluesky.instrument.beamline import BeamlineDescription
from ns_bluesky.io.catalog import detector_dir, last_scan_id, make_tiled_writer
from ns_bluesky.ophyd_devices import EpicsBeamline, make_beamline
from ns_bluesky.plans import dark_frames, ptycho_scan
from ns_bluesky.sim import PtychoSimulation
from ns_bluesky.sim.settings import SimConfig

EXPOSURE_S = 0.02


@pytest.fixture(scope="module")
def module_beamline(module_ioc, catalog_dir) -> EpicsBeamline:
    return make_beamline(BeamlineDescription(prefix=module_ioc.prefix), detector_dir(catalog_dir))


def test_plans_run_unchanged_and_the_catalog_holds_the_iocs_frames(start_ioc, cat, catalog_dir):
    ioc = start_ioc(rate_hz=0.0)  # a fresh IOC: its frames are numbered from 0
    description = BeamlineDescription(prefix=ioc.prefix)
    bl = make_beamline(description, detector_dir(catalog_dir))
    assert isinstance(bl, EpicsBeamline)
    bl.fccd.acquire_time.put(EXPOSURE_S, wait=True)
    RE = RunEngine({"scan_id": last_scan_id(cat)}, call_returns_result=False)
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(make_tiled_writer(cat))
    (dark,) = RE(dark_frames(bl.fccd, bl.shutter, 2))
    (scan,) = RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, shape=(3, 3), overlap=0.7, optics=bl.optics,
                             sample="star-over-epics", dark_uid=dark))

    assert [doc["exit_status"] for name, doc in docs if name == "stop"] == ["success", "success"]
    start = cat[scan].metadata["start"]
    assert start["dark_uid"] == dark and start["motors"] == ["stage_y", "stage_x"]
    assert start["energy_eV"] == 800.0 and start["detector_distance_m"] == description.detector.geometry.distance_m
    assert start["exposure_s"] == EXPOSURE_S
    names = [name for name, _ in docs]
    assert names.count("stream_resource") == 2 and names.count("stream_datum") == 11
    assert "resource" not in names and "datum" not in names  # one way to frames, for the bridge and the catalog

    raw = {uid: np.asarray(cat[uid]["primary"]["fccd_image"].read()) for uid in (dark, scan)}
    assert raw[dark].shape == (2, 1040, 1152) and raw[scan].shape == (9, 1040, 1152)
    assert raw[scan].dtype == np.uint16
    for (name, res), uid in zip([d for d in docs if d[0] == "stream_resource"], (dark, scan), strict=True):
        with h5py.File(res["uri"].removeprefix("file://localhost"), "r") as f:  # what the IOC wrote
            np.testing.assert_array_equal(f[res["parameters"]["dataset"]][()], raw[uid])

    # and what it wrote is the simulator's frame at the stage's position, dark while the shutter was closed
    ioc_cfg = description.ioc
    sim = PtychoSimulation(SimConfig(energy_eV=ioc_cfg.energy_eV, exposure_s=ioc_cfg.exposure_s, seed=0,
                                     detector=description.detector.geometry, optics=ioc_cfg.zone_plate))
    y = np.asarray(cat[scan]["primary"]["stage_y"].read())
    x = np.asarray(cat[scan]["primary"]["stage_x"].read())
    np.testing.assert_allclose(np.stack([y, x], axis=1), start["planned_positions_m"], atol=1e-12)
    for i in range(2):
        np.testing.assert_array_equal(raw[dark][i], sim.raw_frame(None, i, EXPOSURE_S))
    for k in range(9):
        np.testing.assert_array_equal(raw[scan][k], sim.raw_frame(np.array([y[k], x[k]]), 2 + k, EXPOSURE_S))
    assert raw[scan].astype(float).sum(axis=(1, 2)).min() > raw[dark].astype(float).sum(axis=(1, 2)).max()
    ioc.stop()  # the IOC drew the scan's frames while the stage moved to them (prerender.py), the same frames
    taken = re.search(r"stopped after 11 frames; \d+ drawn ahead, (\d+) of them taken", ioc.log_path.read_text())
    assert taken, ioc.log_path.read_text()[-1500:]
    # how many were drawn ahead depends on the CPU the renderer got (test_prerender.py checks the mechanism)
    print(f"{taken[1]} of the scan's 9 frames were drawn ahead while the stage moved")
    gaps = re.search(r"the next trigger came [0-9.]+ ms \(median\).* (\d+) of (\d+) too late", ioc.log_path.read_text())
    assert gaps and 8 <= int(gaps[2]) <= 10 and int(gaps[1]) <= int(gaps[2]), ioc.log_path.read_text()[-1500:]


def test_a_scan_past_the_limits_is_refused_before_a_run_opens(module_beamline):
    bl = module_beamline
    docs: list = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append(name))
    with pytest.raises(ParameterError, match=r"stage_x: point 2 at 5\.100e-05 m .* outside the stage limits"):
        RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, shape=(3, 3), step=1e-6, center=(0.0, 50e-6), optics=bl.optics))
    assert docs == []  # refused before the run opened
    with pytest.raises(LimitError, match=r"stage_y: target 0\.001 m is outside the limits \[-5e-05, 5e-05\]"):
        bl.stage.y.set(1e-3)


def test_an_unreachable_ioc_is_one_clear_line_within_seconds(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(DeviceError) as err:
        make_beamline(BeamlineDescription(prefix="NOBODY:"), tmp_path / "detector", connect_timeout_s=2.0)
    elapsed = time.monotonic() - t0
    message = str(err.value)
    assert elapsed < 6.0
    assert "\n" not in message and message.startswith("the beamline's IOC does not answer: ")
    assert "NOBODY:" in message and "did not connect within 2 s" in message and "ns-bluesky ioc" in message


def test_the_epics_devices_keep_the_simulated_devices_interface(module_beamline):
    bl = module_beamline
    assert bl.fccd.image_key == "fccd_image" and bl.fccd.geometry.raw_shape == (1040, 1152)
    bl.shutter.set("open").wait(5)
    assert bl.shutter.is_open
    bl.shutter.set("close").wait(5)
    assert not bl.shutter.is_open
    with pytest.raises(ParameterError, match="unknown shutter command 'half'"):
        bl.shutter.set("half")
    # the drift correction's knob: the user offset moves the readback, not the axis
    bl.stage.y.set(3e-6).wait(5)
    bl.stage.y.user_offset.put(1e-6, wait=True)
    time.sleep(0.1)
    try:
        assert bl.stage.y.position == pytest.approx(4e-6) and bl.stage.y.dial_position == pytest.approx(3e-6)
        assert bl.stage.y.limits == pytest.approx((-49e-6, 51e-6))
    finally:
        bl.stage.y.user_offset.put(0.0, wait=True)
    # geometry follows the detector-distance PV; a combination the zone-plate model refuses is refused at the IOC
    distance = bl.fccd.distance.get()
    pv = bl.description.pv(bl.description.optics.detector_distance)
    from ophyd import EpicsSignal

    dist = EpicsSignal(pv, name="dist")
    dist.put(0.1, wait=True)
    time.sleep(0.1)
    try:
        assert bl.fccd.geometry.distance_m == pytest.approx(0.1)
    finally:
        dist.put(distance, wait=True)
    diameter = bl.optics.diameter.get()
    bl.optics.central_stop_diameter.put(2 * diameter, wait=True)
    time.sleep(0.1)
    assert bl.optics.central_stop_diameter.get(use_monitor=False) < diameter
    bl.fccd.acquire_period.put(0.01, wait=True)
    bl.fccd.acquire_time.put(0.05, wait=True)
    try:
        with pytest.raises(ParameterError, match="shorter than the exposure"):
            bl.fccd.validate_settings()
    finally:
        bl.fccd.acquire_period.put(0.0, wait=True)


def test_the_profile_takes_the_epics_beamline_that_the_environment_names(module_ioc, tmp_path, monkeypatch, capsys):
    from importlib.resources import files

    description = tmp_path / "beamline.yaml"
    description.write_text(f"prefix: '{module_ioc.prefix}'\n")
    startup = files("ns_bluesky.profiles") / "profile_nanosurveyor" / "startup" / "10-devices.py"
    monkeypatch.setenv("NS_BLUESKY_BEAMLINE", str(description))
    RE = RunEngine({})
    ns: dict = {"CATALOG_DIR": tmp_path / "catalog", "RE": RE}
    exec(compile(startup.read_text(), str(startup), "exec"), ns)
    assert isinstance(ns["beamline"], EpicsBeamline) and ns["stage"].y.prefix == module_ioc.pv("SS:Y")
    out = capsys.readouterr().out
    assert f"EPICS, as {description} names them" in out and "RE suspends while the beam" in out
    assert set(ns["suspenders"]) <= set(RE.suspenders) and len(ns["suspenders"]) == 4
    for suspender in ns["suspenders"]:
        RE.remove_suspender(suspender)
    monkeypatch.delenv("NS_BLUESKY_BEAMLINE")
    ns = {"CATALOG_DIR": tmp_path / "catalog"}
    exec(compile(startup.read_text(), str(startup), "exec"), ns)
    assert not isinstance(ns["beamline"], EpicsBeamline)


def test_a_frame_the_ioc_did_not_file_fails_the_read_naming_the_file(module_beamline, tmp_path):
    fccd = module_beamline.fccd
    fccd.acquire_time.put(EXPOSURE_S, wait=True)
    fccd.stage()
    try:
        fccd.trigger().wait(10)
        assert fccd.image_key not in fccd.read()  # frames travel as stream_datum, never in the event
        fccd.hdf5.enable.put(0, wait=True)  # the file plugin stops taking frames: the next one is not filed
        fccd.trigger().wait(10)
        with pytest.raises(DeviceError, match=r"fccd: the IOC filed 1 of 2 frames in /.*\.h5"):
            fccd.read()
        docs = [name for name, _ in fccd.collect_asset_docs()]
        assert docs == ["stream_resource", "stream_datum", "stream_datum"]
    finally:
        fccd.unstage()


def test_an_axis_at_rest_on_its_target_is_not_sent_there_again(module_beamline):
    """A raster moves y once a row: the other points' y 'moves' cost no put, no record processing, no DMOV pulse."""
    y = module_beamline.stage.y
    y.set(2e-6).wait(10)
    time.sleep(0.1)
    pulses = []
    cid = y.motor_done_move.subscribe(lambda value, **kw: pulses.append(value), run=False)
    try:
        status = y.set(2e-6)
        assert status.done and status.success  # at once
        time.sleep(0.3)
        assert pulses == []  # the record never processed a move
        y.set(3e-6).wait(10)  # elsewhere: a real move, DMOV falls and rises
        time.sleep(0.1)
        assert 0 in pulses and pulses[-1] == 1 and y.position == pytest.approx(3e-6)
        with pytest.raises(LimitError):
            y.set(1.0)  # refused as before, never 'already there'
    finally:
        y.motor_done_move.unsubscribe(cid)
