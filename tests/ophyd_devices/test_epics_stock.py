"""A stock Ophyd client that knows nothing of this project drives the simulated IOC over Channel Access.

Plain ``ophyd.EpicsMotor`` on the stage's motor records, and the areaDetector client of
shared/reference/epics.md (``SingleTrigger`` + ``DetectorBase`` + ``AreaDetectorCam`` + ``HDF5Plugin`` with
Ophyd's own ``FileStoreHDF5IterativeWrite``), on a real RunEngine. The IOC runs in a subprocess on loopback.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd import Component as Cpt
from ophyd import EpicsMotor, EpicsSignal, EpicsSignalRO
from ophyd.areadetector.cam import AreaDetectorCam
from ophyd.areadetector.detectors import DetectorBase
from ophyd.areadetector.filestore_mixins import FileStoreHDF5IterativeWrite
from ophyd.areadetector.plugins import HDF5Plugin
from ophyd.areadetector.trigger_mixins import SingleTrigger
from ophyd.utils import LimitError


def test_the_channel_access_settings_load_before_ophyd():
    """libca reads EPICS_CA_ADDR_LIST once, when Ophyd is imported: the helpers that set it must not import Ophyd."""
    code = ("import sys, ns_bluesky.ophyd_devices.ioc.network as n; n.client_env([5064]); "
            "print(sorted(m for m in ('ophyd', 'epics', 'caproto', 'ns_bluesky.sim') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class Unchecked(EpicsMotor):
    """A client that skips the checks: the IOC's refusal fails its move at once."""

    user_setpoint = Cpt(EpicsSignal, ".VAL", limits=False, auto_monitor=True)

    def check_value(self, pos):
        pass


def _connected(motor: EpicsMotor) -> EpicsMotor:
    # Every signal connected and read before the tests move anything: a device first connected in the middle of
    # a test reads its metadata (LLM, SET, ...) on Ophyd's callback thread, and on a loaded host those reads
    # timed out (10 s each, seen in CI), holding up the DMOV callbacks of every motor and failing a 5 s move.
    motor.wait_for_connection(all_signals=True, timeout=20)
    motor.read_configuration()
    motor.read()
    return motor


@pytest.fixture(scope="module")
def motor(module_ioc):
    return _connected(EpicsMotor(module_ioc.pv("SS:X"), name="m"))


@pytest.fixture(scope="module")
def unchecked(module_ioc, motor):
    return _connected(Unchecked(module_ioc.pv("SS:X"), name="unchecked"))


def _record(ioc, field: str) -> EpicsSignalRO:
    sig = EpicsSignalRO(ioc.pv(f"SS:X.{field}"), name=field.lower())
    sig.wait_for_connection(timeout=10)
    return sig


def test_stock_motor_moves_at_its_velocity(module_ioc, motor):
    assert motor.limits == (-50e-6, 50e-6)  # VAL's control limits are the record's LLM/HLM
    assert motor.egu == "m" and motor.velocity.get() == pytest.approx(1e-3)
    motor.set(0.0).wait(5)
    motor.velocity.put(1e-4, wait=True)
    seen = {"DMOV": [], "MOVN": []}
    for field in seen:
        _record(module_ioc, field).subscribe(lambda value, field=field, **kw: seen[field].append(value), run=False)
    try:
        t0 = time.monotonic()
        motor.set(20e-6).wait(10)
        elapsed = time.monotonic() - t0
    finally:
        motor.velocity.put(1e-3, wait=True)
    assert 0.2 <= elapsed < 2.0  # 20 um at 100 um/s, plus ACCL
    assert motor.position == pytest.approx(20e-6, abs=1e-12)
    time.sleep(0.1)
    assert 0 in seen["DMOV"] and seen["DMOV"][-1] == 1 and 1 in seen["MOVN"] and seen["MOVN"][-1] == 0


def test_offset_set_and_freeze_keep_the_motor_record_meaning(module_ioc, motor):
    drbv, lvio = _record(module_ioc, "DRBV"), _record(module_ioc, "LVIO")
    motor.set(10e-6).wait(5)
    motor.user_offset.put(2e-6, wait=True)  # OFF moves the user coordinates, never the axis
    time.sleep(0.1)
    assert motor.position == pytest.approx(12e-6) and drbv.get() == pytest.approx(10e-6)
    assert motor.high_limit_travel.get() == pytest.approx(52e-6) and motor.limits[1] == pytest.approx(52e-6)
    motor.set_current_position(0.0)  # SET=Set, FOFF=Variable: a new offset, no motion
    time.sleep(0.1)
    assert motor.position == pytest.approx(0.0, abs=1e-12) and motor.user_offset.get() == pytest.approx(-10e-6)
    assert drbv.get() == pytest.approx(10e-6)
    motor.offset_freeze_switch.put(1, wait=True)  # FOFF=Frozen: SET redefines the dial position instead
    try:
        motor.set_current_position(5e-6)
        time.sleep(0.1)
        assert motor.user_offset.get() == pytest.approx(-10e-6) and drbv.get() == pytest.approx(15e-6)
    finally:
        motor.offset_freeze_switch.put(0, wait=True)
        motor.user_offset.put(0.0, wait=True)
    # STOP halts a move where the axis got to
    motor.velocity.put(1e-4, wait=True)
    try:
        status = motor.set(-40e-6)
        time.sleep(0.15)
        motor.stop()
        time.sleep(0.2)
        assert status.done  # finished where it stopped, not at the target
        assert -40e-6 < motor.position < 15e-6 and motor.motor_done_move.get() == 1
    finally:
        motor.velocity.put(1e-3, wait=True)
    assert lvio.get() == 0


def test_a_move_past_a_limit_is_refused_with_an_alarm(module_ioc, motor, unchecked):
    motor.set(1e-6).wait(5)
    with pytest.raises(LimitError, match="outside of range"):
        motor.set(60e-6)  # the stock client checks the IOC's control limits first
    val = EpicsSignal(module_ioc.pv("SS:X.VAL"), name="val")  # a raw put, as caput would do it
    val.put(60e-6, wait=True)
    time.sleep(0.2)
    rbv = EpicsSignalRO(module_ioc.pv("SS:X.RBV"), name="rbv")
    rbv.wait_for_connection(timeout=10)
    rbv.get()
    assert _record(module_ioc, "LVIO").get() == 1
    assert rbv.alarm_severity == 2 and rbv.alarm_status == 15  # MAJOR, SOFT: on the whole record
    assert motor.position == pytest.approx(1e-6) and val.get() == pytest.approx(1e-6)  # not moved, VAL restored

    # ``motor`` sees the refusal's DMOV pulse too, on Ophyd's callback thread; a set() issued while its
    # handler of that pulse still runs loses its done-subscription to the handler's reset (Ophyd's
    # PositionerBase race) and waits forever. A callback added after the handler runs after it: wait for it.
    handled = threading.Event()
    motor.motor_done_move.subscribe(lambda value, **kw: value == 1 and handled.set(), run=False)
    status = unchecked.set(-70e-6)
    with pytest.raises(Exception):
        status.wait(5)
    assert status.done and not status.success
    assert handled.wait(10)
    motor.set(2e-6).wait(15)  # a good move clears the violation
    time.sleep(0.1)
    rbv.get()
    assert _record(module_ioc, "LVIO").get() == 0 and rbv.alarm_severity == 0


class HDF5PluginWithFileStore(HDF5Plugin, FileStoreHDF5IterativeWrite):
    pass


def stock_detector_class(root: str):
    class StockDetector(SingleTrigger, DetectorBase):
        cam = Cpt(AreaDetectorCam, "cam1:")
        hdf5 = Cpt(HDF5PluginWithFileStore, "HDF1:", write_path_template=root + "/", root=root)

    return StockDetector


def test_stock_areadetector_takes_the_simulators_frames(module_ioc, tmp_path):
    det = stock_detector_class(str(tmp_path))(module_ioc.pv("FCCD:"), name="det")
    det.hdf5.kind = "normal"  # as ophyd's tutorials do: the plugin's datum goes into each event
    det.wait_for_connection(timeout=10)
    # connected before its first read: a char waveform read at once on connecting came back cut to 1 character
    # in about 1 run of 10 (pyepics), which is not what this test is about
    det.hdf5.full_file_name.wait_for_connection(timeout=10)
    det.cam.acquire_time.put(0.05, wait=True)
    shutter = EpicsSignal(module_ioc.pv("SHUTTER:Cmd"), name="cmd")
    status = EpicsSignalRO(module_ioc.pv("SHUTTER:Sts"), name="sts")
    RE = RunEngine({})

    def take(n: int) -> tuple[np.ndarray, list]:
        docs: list = []
        RE(bp.count([det], n), lambda name, doc: docs.append((name, doc)))
        (resource,) = [doc for name, doc in docs if name == "resource"]
        assert [name for name, _ in docs].count("datum") == n and resource["spec"] == "AD_HDF5"
        assert det.hdf5.full_file_name.get() == str(tmp_path / resource["resource_path"])  # a long string, whole
        with h5py.File(tmp_path / resource["resource_path"], "r") as f:
            return f["/entry/data/data"][()], docs

    shutter.put(0, wait=True)
    dark, docs = take(3)
    assert dark.shape == (3, 1040, 1152) and dark.dtype == np.uint16
    assert not np.array_equal(dark[0], dark[1])  # each frame its own readout noise
    (descriptor,) = [doc for name, doc in docs if name == "descriptor"]
    assert descriptor["data_keys"]["det_image"]["dtype_numpy"] == "<u2"
    shutter.put(1, wait=True)
    deadline = time.monotonic() + 5
    while status.get() != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        light, _ = take(2)
    finally:
        shutter.put(0, wait=True)
    assert light.astype(float).sum(axis=(1, 2)).min() > dark.astype(float).sum(axis=(1, 2)).max()
