"""Faults over EPICS: fault PVs of the simulated IOC, a FilePath the IOC cannot write, an IOC killed or
restarted mid-scan, a beam dump, each on a real RunEngine over Channel Access on loopback (the IOC in a
subprocess, tests/support/epics.py), never a hang: every wait below has a deadline.
"""

from __future__ import annotations

import threading
import time

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd import EpicsSignal

from ns_bluesky.errors import DeviceError
from ns_bluesky.instrument.beamline import BeamlineDescription
from ns_bluesky.io.catalog import detector_dir, last_scan_id, make_tiled_writer
from ns_bluesky.ophyd_devices import make_beamline
from ns_bluesky.plans import ptycho_scan
from ns_bluesky.sim import PtychoSimulation
from ns_bluesky.sim.faults import DROPPED_ROWS, Faults, StageDrift
from ns_bluesky.sim.settings import SimConfig
from tests.support.epics import release_channels

EXPOSURE_S = 0.02


_made: list = []  # the channels a test opened, released after it


@pytest.fixture(autouse=True)
def _release_channels():
    """Release every channel a test opened: the channels of the IOCs these tests kill stay in libca's search
    list otherwise and keep searching, and the next module's new IOC did not connect within its timeout."""
    yield
    release_channels(_made)
    _made.clear()


def _beamline(ioc, catalog_dir):
    bl = make_beamline(BeamlineDescription(prefix=ioc.prefix), detector_dir(catalog_dir))
    _made.extend(d for d in [*bl.devices.values(), bl.beam] if d is not None)
    bl.fccd.acquire_time.put(EXPOSURE_S, wait=True)
    return bl


def _fault(bl, attr: str) -> EpicsSignal:
    d = bl.description
    sig = EpicsSignal(d.pv(getattr(d.faults, attr)), name=attr)
    _made.append(sig)
    sig.wait_for_connection(timeout=5)
    return sig


def _in_files(docs) -> dict[str, np.ndarray]:
    """Every frame in each file the run's stream_resources name, by stream_resource uid."""
    out = {}
    for name, doc in docs:
        if name == "stream_resource":
            with h5py.File(doc["uri"].removeprefix("file://localhost"), "r", swmr=True) as f:  # SWMR: as the bridge and tiled read
                out[doc["uid"]] = f[doc["parameters"]["dataset"]][()]
    return out


def _frames_of(docs) -> np.ndarray:
    """The frames the run's stream_datums point at, read from the IOC's files, in event order."""
    files = _in_files(docs)
    return np.concatenate([files[doc["stream_resource"]][doc["indices"]["start"]:doc["indices"]["stop"]]
                           for name, doc in docs if name == "stream_datum"])


def _light_frames(bl, n: int):
    """Open the shutter and take ``n`` frames at the stage's position, in one run."""

    @bpp.stage_decorator([bl.fccd])
    @bpp.run_decorator()
    def plan():
        yield from bps.mv(bl.shutter, "open")
        for _ in range(n):
            yield from bps.trigger_and_read([bl.fccd, bl.stage])
        yield from bps.mv(bl.shutter, "close")

    return plan()


def test_fault_pvs_spoil_the_frames_the_simulator_would_and_count_down(start_ioc, catalog_dir):
    ioc = start_ioc(rate_hz=0.0)  # fresh: its frames are numbered from 0
    bl = _beamline(ioc, catalog_dir)
    beam_loss, dropped, drift_x = _fault(bl, "beam_loss"), _fault(bl, "dropped_packets"), _fault(bl, "drift_x")
    beam_loss.put(1, wait=True)
    dropped.put(2, wait=True)
    drift_x.put(2e-6, wait=True)
    docs: list = []
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    try:
        RE(_light_frames(bl, 3))
        assert beam_loss.get(use_monitor=False) == 0 and dropped.get(use_monitor=False) == 0  # counted down
    finally:
        drift_x.put(0.0, wait=True)
    frames = _frames_of(docs)
    assert frames.shape == (3, 1040, 1152)
    # exactly what the in-process simulator renders with the same faults at the motor records' positions
    d = bl.description
    sim = PtychoSimulation(SimConfig(energy_eV=d.ioc.energy_eV, exposure_s=d.ioc.exposure_s, seed=0,
                                     detector=d.detector.geometry, optics=d.ioc.zone_plate))
    faults = Faults.make(beam_loss=[0], dropped_packets=[0, 1], drift=StageDrift(jump_m=(0.0, 2e-6)))
    for k in range(3):
        lit = None if k in faults.beam_loss else faults.drift_m(k)  # the stage sits at 0, 0
        expected = faults.spoil(sim.raw_frame(lit, k, EXPOSURE_S), k, d.detector.geometry)
        np.testing.assert_array_equal(frames[k], expected)
    assert not frames[1][300:300 + DROPPED_ROWS].any() and frames[2][300:300 + DROPPED_ROWS].any()


def test_a_file_path_the_ioc_cannot_write_is_refused_before_a_run_opens(start_ioc, catalog_dir, tmp_path):
    ioc = start_ioc(rate_hz=0.0)
    bl = _beamline(ioc, catalog_dir)
    docs: list = []
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(lambda name, doc: docs.append(name))
    scan = dict(shape=(2, 2), overlap=0.7, optics=bl.optics)
    good = bl.fccd.hdf5.write_path_template
    (tmp_path / "a-file").write_text("not a directory")
    bl.fccd.hdf5.write_path_template = str(tmp_path / "a-file" / "frames") + "/"
    try:
        with pytest.raises(DeviceError) as err:
            RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, **scan))
    finally:
        bl.fccd.hdf5.write_path_template = good
    message = str(err.value)
    assert "\n" not in message and "FilePathExists_RBV No" in message and "no run was opened" in message
    assert "a-file/frames/ is not a writable directory" in message  # the IOC's own WriteMessage
    assert docs == []

    disk_full = _fault(bl, "disk_full")
    disk_full.put("On", wait=True)
    try:
        assert bl.fccd.hdf5.file_path_exists.get(use_monitor=False) == 0
        with pytest.raises(DeviceError, match=r"cannot write frames under .*: no space left on the device .*disk full"):
            RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, **scan))
        assert docs == []
    finally:
        disk_full.put("Off", wait=True)
    (uid,) = RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, **scan))  # the path is writable again: the scan runs
    assert docs.count("event") == 4 and docs[-1] == "stop"


def _when_events(docs_seen: list, n: int, action) -> threading.Thread:
    """Run ``action`` in a thread once ``n`` primary events went out (within 60 s)."""

    def watch():
        deadline = time.monotonic() + 60
        while sum(1 for name in docs_seen if name == "event") < n and time.monotonic() < deadline:
            time.sleep(0.005)
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _abort_after(RE, seconds: float) -> threading.Event:
    """A deadline for a RunEngine that may wait for a suspender: paused and aborted after ``seconds``
    unless the returned event is set first (a suspension is meant to wait for hours; a test is not)."""
    done = threading.Event()

    def watchdog():
        if done.wait(seconds) or RE.state == "idle":
            return
        RE.request_pause(defer=False)
        deadline = time.monotonic() + 10
        while RE.state != "paused" and time.monotonic() < deadline:
            time.sleep(0.05)
        RE.abort(f"the test's deadline of {seconds:g} s")

    threading.Thread(target=watchdog, daemon=True).start()
    return done


def test_an_ioc_killed_mid_scan_fails_the_run_in_one_line_and_keeps_its_frames(start_ioc, catalog_dir, cat):
    ioc = start_ioc(rate_hz=10.0)
    bl = _beamline(ioc, catalog_dir)
    names: list = []
    docs: list = []
    RE = RunEngine({"scan_id": last_scan_id(cat)}, call_returns_result=False)
    RE.subscribe(lambda name, doc: (names.append(name), docs.append((name, doc))))
    RE.subscribe(make_tiled_writer(cat))
    killer = _when_events(names, 4, ioc.kill)
    t0 = time.monotonic()
    with pytest.raises(Exception) as err:
        RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, shape=(5, 5), overlap=0.7, optics=bl.optics))
    elapsed = time.monotonic() - t0
    killer.join(5)
    cause = err.value
    while not isinstance(cause, DeviceError) and cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, DeviceError), repr(err.value)
    assert "lost the IOC" in str(cause) or "does not answer" in str(cause)
    assert "\n" not in str(cause)
    assert elapsed < 30, elapsed  # told at once, not after a status timeout

    (stop,) = [doc for name, doc in docs if name == "stop"]
    assert stop["exit_status"] == "fail" and stop["reason"]
    uid = stop["run_start"]
    assert cat[uid].metadata["stop"]["exit_status"] == "fail"
    events = names.count("event")
    assert events >= 4
    (in_file,) = _in_files(docs).values()  # the IOC died; the file it flushed frame by frame reads
    assert len(in_file) >= events
    recorded = np.asarray(cat[uid]["primary"]["fccd_image"].read())
    assert recorded.shape[0] == events
    np.testing.assert_array_equal(recorded, in_file[:events])
    np.testing.assert_array_equal(recorded, _frames_of(docs))


def test_a_beam_dump_suspends_the_scan_and_it_completes_when_the_beam_is_back(start_ioc, catalog_dir):
    ioc = start_ioc(rate_hz=10.0)
    bl = _beamline(ioc, catalog_dir)
    RE = RunEngine({}, call_returns_result=False)
    suspenders = bl.install_suspenders(RE, sleep_s=0.5)
    names: list = []
    docs: list = []
    RE.subscribe(lambda name, doc: (names.append(name), docs.append((name, doc))))
    dump = _fault(bl, "beam_dump")

    def dump_for_a_second():
        dump.put("On", wait=True)
        time.sleep(1.0)
        dump.put("Off", wait=True)

    _when_events(names, 3, dump_for_a_second)
    watchdog = _abort_after(RE, 60)
    try:
        RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, shape=(3, 3), overlap=0.7, optics=bl.optics))
    finally:
        watchdog.set()
        for s in suspenders:
            RE.remove_suspender(s)
    (stop,) = [doc for name, doc in docs if name == "stop"]
    assert stop["exit_status"] == "success" and names.count("event") == 9
    assert names.count("stream_resource") == 2  # a new file after the suspension
    frames = _frames_of(docs).astype(float).sum(axis=(1, 2))
    assert len(frames) == 9
    assert frames.min() > 0.5 * np.median(frames)  # no frame of the dump (dark) was recorded


def test_an_ioc_restarted_mid_scan_suspends_the_run_engine_which_resumes_and_completes(start_ioc, catalog_dir,
                                                                                       cat):
    ioc = start_ioc(rate_hz=10.0)
    bl = _beamline(ioc, catalog_dir)
    bl.stage.y.user_offset.set(2e-9).wait(5)  # a drift correction the restarted IOC will have lost
    RE = RunEngine({"scan_id": last_scan_id(cat)}, call_returns_result=False)
    suspenders = bl.install_suspenders(RE, sleep_s=0.5)
    names: list = []
    docs: list = []
    RE.subscribe(lambda name, doc: (names.append(name), docs.append((name, doc))))
    RE.subscribe(make_tiled_writer(cat))
    restarted: list = []

    def restart():
        ioc.kill()
        ioc.stop()  # frees its port
        time.sleep(1.0)
        restarted.append(start_ioc(prefix=ioc.prefix, rate_hz=10.0, port=ioc.port))

    _when_events(names, 3, restart)
    t0 = time.monotonic()
    watchdog = _abort_after(RE, 120)
    try:
        RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, shape=(3, 3), overlap=0.7, optics=bl.optics))
    finally:
        watchdog.set()
        for s in suspenders:
            RE.remove_suspender(s)
    assert restarted and time.monotonic() - t0 < 90
    (stop,) = [doc for name, doc in docs if name == "stop"]
    assert stop["exit_status"] == "success" and names.count("event") == 9
    assert bl.fccd.acquire_time.get(use_monitor=False) == pytest.approx(EXPOSURE_S)  # put back after the restart
    off = bl.stage.y.user_offset.get(use_monitor=False)
    assert off == pytest.approx(2e-9, abs=1e-12), f"OFF {off} after the restart, seen {bl.stage.y._offset_seen}"
    recorded = np.asarray(cat[stop["run_start"]]["primary"]["fccd_image"].read())
    assert recorded.shape == (9, 1040, 1152)
    np.testing.assert_array_equal(recorded, _frames_of(docs))
    totals = recorded.astype(float).sum(axis=(1, 2))
    assert totals.min() > 0.5 * np.median(totals)  # the shutter was opened again: no dark frame recorded


def test_every_wait_of_the_epics_beamline_has_a_deadline(module_ioc, catalog_dir):
    from ophyd.signal import EpicsSignalBase

    from ns_bluesky.ophyd_devices.epics.waits import staged_signals

    bl = make_beamline(BeamlineDescription(prefix=module_ioc.prefix), detector_dir(catalog_dir))
    _made.extend(d for d in [*bl.devices.values(), bl.beam] if d is not None)
    signals = [w.item for dev in bl.devices.values() for w in dev.walk_signals(include_lazy=False)]
    signals += staged_signals(bl.fccd) + [bl.fccd.hdf5.file_path, bl.fccd.hdf5.capture]
    epics = [s for s in signals if isinstance(s, EpicsSignalBase)]
    assert len(epics) > 40 and all(0 < s.write_timeout <= 60 for s in epics)  # set().wait() never waits forever
    assert 0 < bl.stage.y.timeout <= 60 and 0 < bl.stage.x.timeout <= 60  # a move's status ends
    assert 0 < bl.fccd.trigger_timeout_s <= 60  # a frame's status ends
    bl.stage.y.user_offset.set(1e-9).wait(5)  # the drift correction's write: bounded and done
    bl.stage.y.user_offset.set(0.0).wait(5)
