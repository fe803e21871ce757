"""``adaptive_ptycho`` over EPICS: the simulated IOC in a subprocess, faults switched on by its PVs mid-scan.

The same plan as tests/plans/test_adaptive.py, unchanged, against the EPICS beamline (Channel Access on
loopback), with the real pipeline reading the IOC's HDF5 files and the run written to the session's tiled
catalog. Mid-scan, a RunEngine callback puts the IOC's fault PVs as a beamline would suffer them: a dropped
packet, two frames of beam loss, then a slip of the sample on the stage; the plan must measure the spoiled
frames again and correct the drift through the motor records' user offsets (OFF).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from bluesky import RunEngine
from ophyd import EpicsSignal

from ns_bluesky.callbacks.bridge import PipelineBridge
from ns_bluesky.callbacks.feedback import AdaptiveFeedback
from ns_bluesky.callbacks.spool import catalog_writer
from ns_bluesky.instrument.beamline import BeamlineDescription
from ns_bluesky.io.catalog import detector_dir, last_scan_id
from ns_bluesky.ophyd_devices import make_beamline
from ns_bluesky.plans import dark_frames
from ns_bluesky.plans.adaptive import adaptive_ptycho
from ns_bluesky.stream.config import PipelineConfig, free_loopback_ports
from ns_bluesky.stream.launcher import PipelineProcess
from tests.support.epics import IOCProcess

pytestmark = pytest.mark.slow

JUMP_M = np.array([40e-9, -30e-9])  # the sample's slip (y, x), as in the in-process drift test


class FaultsMidScan:
    """A RunEngine callback that switches the IOC's fault PVs on when the scan's primary stream reaches
    given event numbers: ``{seq: [(fault attribute, value), ...]}``."""

    def __init__(self, description: BeamlineDescription, schedule: dict[int, list[tuple[str, object]]]):
        d = description
        self.signals = {attr: EpicsSignal(d.pv(getattr(d.faults, attr)), name=attr)
                        for attr in {a for puts in schedule.values() for a, _ in puts}}
        for sig in self.signals.values():
            sig.wait_for_connection(timeout=5)
        self.schedule, self.primary = schedule, set()

    def __call__(self, name, doc):
        if name == "descriptor" and doc["name"] == "primary":
            self.primary.add(doc["uid"])
        elif name == "event" and doc["descriptor"] in self.primary:
            for attr, value in self.schedule.pop(doc["seq_num"], []):
                self.signals[attr].put(value, wait=False)


@pytest.fixture(scope="module")
def epics_rig(cat, catalog_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adaptive-epics")
    ioc = IOCProcess(tmp, rate_hz=0.0)
    try:
        bl = make_beamline(BeamlineDescription(prefix=ioc.prefix), detector_dir(catalog_dir))
        c, i, w, r = free_loopback_ports(4)
        cfg = PipelineConfig(
            modules=[{"name": "dark", "module": "dark"},
                     {"name": "frame", "module": "frame", "workers": 2, "params": {"crop": 240, "out_size": 64}}],
            control_port=c, ingest_port=i, worker_port=w, results_port=r, log_dir=str(tmp / "logs"),
        )
        with PipelineProcess(cfg, tmp / "pipeline"):
            feedback = AdaptiveFeedback(cfg, keep_patterns=True)
            bridge = PipelineBridge(cfg)
            writer = catalog_writer(catalog_dir)
            RE = RunEngine({"scan_id": last_scan_id(cat)}, call_returns_result=False)
            RE.subscribe(bridge)
            RE.subscribe(writer)
            try:
                (dark,) = RE(dark_frames(bl.fccd, bl.shutter, 3))
                yield {"bl": bl, "RE": RE, "feedback": feedback, "dark": dark, "writer": writer}
            finally:
                bridge.close()
                writer.close()
                feedback.close()
    finally:
        ioc.stop()


def _decisions(cat, uid) -> list[dict]:
    table = cat[uid]["adaptive"].read()
    return [{"action": str(np.asarray(table["adaptive_action"])[k]),
             "seqs": json.loads(str(np.asarray(table["adaptive_seqs"])[k])),
             "detail": json.loads(str(np.asarray(table["adaptive_detail"])[k]))}
            for k in range(len(table["adaptive_action"]))]


def test_adaptive_ptycho_over_epics_measures_spoiled_frames_again_and_corrects_drift_through_off(epics_rig, cat):
    rig = epics_rig
    bl, RE = rig["bl"], rig["RE"]
    faults = FaultsMidScan(bl.description, {
        5: [("dropped_packets", 1)],  # the 6th frame loses a packet
        12: [("beam_loss", 2)],  # the 13th and 14th see no beam
        45: [("drift_y", float(JUMP_M[0])), ("drift_x", float(JUMP_M[1]))],  # the sample slips from the 46th on
    })
    token = RE.subscribe(faults)
    try:
        (uid,) = RE(adaptive_ptycho(bl.fccd, bl.stage, bl.shutter, feedback=rig["feedback"], optics=bl.optics,
                                    shape=(10, 10), overlap=0.7, coarse_every=3, drift_every=20,
                                    dark_uid=rig["dark"]))
    finally:
        RE.unsubscribe(token)
        offsets = np.array([bl.stage.y.user_offset.get(), bl.stage.x.user_offset.get()])  # the records' OFF
        for attr in ("drift_y", "drift_x"):
            faults.signals[attr].put(0.0, wait=True)
        bl.stage.y.user_offset.put(0.0, wait=True)
        bl.stage.x.user_offset.put(0.0, wait=True)
    assert faults.schedule == {}  # every fault was switched on during the scan
    rig["writer"].flush()
    assert cat[uid].metadata["stop"]["exit_status"] == "success"

    decisions = _decisions(cat, uid)
    actions = [d["action"] for d in decisions]
    again = [d for d in decisions if d["action"] == "remeasure"]
    flags = {flag for d in again for flag in d["detail"]["flags"].values()}
    assert {"zeros", "no_flux"} <= flags, (actions, flags)
    bad = {s for d in again for s in d["detail"]["bad_seqs"]}
    assert {6, 13, 14} <= bad, bad

    assert "drift_detected" in actions, actions
    detected = decisions[actions.index("drift_detected")]
    estimate = np.asarray(detected["detail"]["drift_m"])
    # the first estimate points the way the sample slipped; the corrections that follow converge on it
    cosine = estimate @ JUMP_M / (np.hypot(*estimate) * np.hypot(*JUMP_M))
    assert cosine > 0.8 and 0.5 < np.hypot(*estimate) / np.hypot(*JUMP_M) < 1.5, estimate
    assert np.hypot(*(JUMP_M - offsets)) <= detected["detail"]["tolerance_m"], offsets  # corrected through OFF
    assert "drift_verified" in actions[actions.index("drift_detected"):]
    assert any(d["action"] == "remeasure_drifted" for d in decisions)

    events = len(cat[uid]["primary"]["fccd_image"])  # every frame in the catalog, read from the IOC's files
    assert events == cat[uid]["primary"]["stage_x"].read().shape[0] > 100
