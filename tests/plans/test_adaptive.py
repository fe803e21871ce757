"""Adaptive acquisition on a real RunEngine, simulated beamline, pipeline and catalog.

One pipeline (dark + two frame workers, small 64 x 64 patterns) serves every scan here.
The sample is a Siemens star whose right half is empty; the field is a 16 x 16 raster,
and the fault scans take its central 10 x 10 (the same grid points), so the plain scan
of the whole field is the fault-free reference for all of them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from bluesky import RunEngine

from ns_bluesky.callbacks.bridge import PipelineBridge
from ns_bluesky.callbacks.feedback import AdaptiveFeedback
from ns_bluesky.callbacks.spool import catalog_writer
from ns_bluesky.instrument.scan import ScanPattern
from ns_bluesky.io.catalog import detector_dir, last_scan_id
from ns_bluesky.ophyd_devices import make_sim_beamline
from ns_bluesky.plans import dark_frames, ptycho_scan
from ns_bluesky.plans.adaptive import adaptive_ptycho
from ns_bluesky.plans.feedback import Feedback
from ns_bluesky.ptycho.adaptive import (
    audit_reconstruction,
    data_frames,
    estimate_drift,
    local_errors,
    region_of_interest,
)
from ns_bluesky.ptycho.layout import grid_origins
from ns_bluesky.sim import sample as sim_sample
from ns_bluesky.sim.faults import Faults, StageDrift
from ns_bluesky.sim.scoring import occupied_nrmse
from ns_bluesky.sim.settings import SimConfig
from ns_bluesky.stream.config import PipelineConfig, free_loopback_ports
from ns_bluesky.stream.launcher import PipelineProcess

pytestmark = pytest.mark.slow

FIELD = (16, 16)


@pytest.fixture(scope="module")
def rig(cat, catalog_dir, tmp_path_factory):
    """Beamline with a half-empty sample, pipeline, feedback, bridge and a RunEngine writing to the catalog."""
    tmp = tmp_path_factory.mktemp("adaptive")
    config = SimConfig(scan=ScanPattern(shape=FIELD, overlap=0.7))
    bl = make_sim_beamline(detector_dir(catalog_dir), config, image=sim_sample.with_empty_region(sim_sample.test_pattern(), "right"), rate_hz=0)
    for axis in (bl.stage.y, bl.stage.x):  # tests/plans measure the plan's decisions against an exact stage
        axis.encoder_noise.put(0.0)
    c, i, w, r = free_loopback_ports(4)
    cfg = PipelineConfig(
        modules=[{"name": "dark", "module": "dark"},
                 {"name": "frame", "module": "frame", "workers": 2, "params": {"crop": 240, "out_size": 64}}],
        control_port=c, ingest_port=i, worker_port=w, results_port=r, log_dir=str(tmp / "logs"),
    )
    with PipelineProcess(cfg, tmp / "pipeline"):
        feedback = AdaptiveFeedback(cfg, keep_patterns=True)
        assert isinstance(feedback, Feedback)  # the plan's protocol: what it asks of the pipeline
        bridge = PipelineBridge(cfg)
        writer = catalog_writer(catalog_dir)
        RE = RunEngine({"scan_id": last_scan_id(cat)}, call_returns_result=False)
        RE.subscribe(bridge)
        RE.subscribe(writer)
        (dark,) = RE(dark_frames(bl.fccd, bl.shutter, 3))
        try:
            yield {"bl": bl, "RE": RE, "feedback": feedback, "dark": dark, "writer": writer, "config": config}
        finally:
            bridge.close()
            writer.close()
            feedback.close()


def _scan(rig, *, faults=None, **kwargs):
    """Run ``adaptive_ptycho`` with these faults injected; returns the run uid."""
    bl = rig["bl"]
    bl.fccd.source.faults, bl.fccd.source.light_frames = faults, 0
    bl.stage.y.user_offset.put(0.0)
    bl.stage.x.user_offset.put(0.0)
    kwargs.setdefault("coarse_every", 3)
    (uid,) = rig["RE"](adaptive_ptycho(bl.fccd, bl.stage, bl.shutter, feedback=rig["feedback"], optics=bl.optics,
                                       overlap=0.7, dark_uid=rig["dark"], **kwargs))
    return uid


def _decisions(cat, rig, uid) -> list[dict]:
    """The run's ``adaptive`` stream, read back from the catalog."""
    rig["writer"].flush()
    table = cat[uid]["adaptive"].read()
    out = []
    for k in range(len(table["adaptive_action"])):
        out.append({
            "action": str(np.asarray(table["adaptive_action"])[k]),
            "reason": str(np.asarray(table["adaptive_reason"])[k]),
            "positions": np.array(json.loads(str(np.asarray(table["adaptive_positions"])[k]))),
            "seqs": json.loads(str(np.asarray(table["adaptive_seqs"])[k])),
            "detail": json.loads(str(np.asarray(table["adaptive_detail"])[k])),
        })
    return out


def _frames(rig, uid, grid, decisions=()):
    """Grid point -> (pattern, QC) of the latest usable frame that no drift check superseded."""
    fb = rig["feedback"]
    assert fb.wait_end(uid, 60) is not None, "the pipeline did not end the run"
    patterns, dx = fb.patterns(uid)
    return data_frames(fb.qc(uid), patterns, grid, decisions), dx


@pytest.fixture(scope="module")
def full(rig, cat):
    """The plain scan of the whole field: the reference every adaptive scan is held to."""
    bl = rig["bl"]
    bl.fccd.source.faults = None
    (uid,) = rig["RE"](ptycho_scan(bl.fccd, bl.stage, bl.shutter, shape=FIELD, overlap=0.7, optics=bl.optics,
                                   dark_uid=rig["dark"]))
    grid = np.asarray(cat[uid].metadata["start"]["planned_positions_m"])
    frames, dx = _frames(rig, uid, grid)
    assert len(frames) == FIELD[0] * FIELD[1]
    return {"uid": uid, "grid": grid, "frames": frames, "dx": dx}


def _occupied_nrmse(rig, frames: dict, grid: np.ndarray, dx: float, region: np.ndarray) -> float:
    """Audit reconstruction of ``frames`` (grid point -> pattern, QC), scored where the sample is."""
    cfg = rig["config"]
    points = sorted(frames)
    patterns = np.stack([frames[p][0] for p in points])
    positions = np.array([(frames[p][1]["position_y"], frames[p][1]["position_x"]) for p in points])
    obj = audit_reconstruction(patterns, positions, grid, dx, cfg.energy_eV, cfg.optics, iterations=60, threads=1)
    return occupied_nrmse(rig["bl"].sim, grid, obj, dx, patterns.shape[-1], region)


def test_an_empty_half_is_skipped_with_a_third_fewer_frames_at_equal_quality(rig, full, cat):
    uid = _scan(rig, shape=FIELD)
    decisions = _decisions(cat, rig, uid)
    actions = [d["action"] for d in decisions]
    assert actions[:3] == ["coarse_pass", "region_of_interest", "drift_reference"], actions
    assert "drift_check" in actions and "fallback" not in actions
    roi = decisions[1]
    assert len(roi["detail"]["skipped_points"]) > 0.3 * FIELD[0] * FIELD[1]
    assert np.all(roi["positions"][:, 1] > full["grid"][:, 1].min())  # measured points lie on the occupied side
    frames_taken = len(cat[uid]["primary"]["fccd_image"])
    assert frames_taken <= 0.7 * FIELD[0] * FIELD[1], frames_taken
    adaptive, _ = _frames(rig, uid, full["grid"], decisions)
    everywhere = np.arange(len(full["grid"]))
    e_full = _occupied_nrmse(rig, full["frames"], full["grid"], full["dx"], everywhere)
    e_adaptive = _occupied_nrmse(rig, adaptive, full["grid"], full["dx"], everywhere)
    assert e_adaptive <= 1.1 * e_full, (e_adaptive, e_full)


def test_frames_spoiled_by_faults_are_measured_again_and_match_a_fault_free_scan(rig, full, cat):
    faults = Faults.make(dropped_packets=[3], beam_loss=range(30, 33), saturation=[45])
    uid = _scan(rig, shape=(10, 10), drift_check=False, faults=faults)
    decisions = _decisions(cat, rig, uid)
    again = [d for d in decisions if d["action"] == "remeasure"]
    flags = {flag for d in again for flag in d["detail"]["flags"].values()}
    assert {"zeros", "no_flux", "saturated"} <= flags
    assert sum(len(d["detail"]["bad_seqs"]) for d in again) >= len(faults.bad_frames)
    frames, dx = _frames(rig, uid, full["grid"], decisions)
    measured = {int(np.argmin(np.hypot(*(full["grid"] - p).T))) for d in decisions if d["action"] == "region_of_interest"
                for p in d["positions"]}
    assert measured <= set(frames)  # every point of the region has a usable frame
    # each point against the same point of the fault-free scan (the stage lands within its 2 nm jitter)
    for key in ("photons", "transmission"):
        rel = np.array([frames[p][1][key] / full["frames"][p][1][key] - 1 for p in frames])
        assert np.median(np.abs(rel)) < 0.005 and np.abs(rel).max() < 0.03, (key, rel)
    region = np.array(sorted(frames))
    fault_free = {p: full["frames"][p] for p in frames}
    e_faults = _occupied_nrmse(rig, frames, full["grid"], dx, region)
    assert e_faults == pytest.approx(_occupied_nrmse(rig, fault_free, full["grid"], dx, region), rel=0.1)


def test_injected_drift_is_detected_corrected_and_what_it_spoiled_measured_again(rig, cat):
    jump = np.array([40e-9, -30e-9])
    uid = _scan(rig, shape=(10, 10), drift_every=20, faults=Faults.make(drift=StageDrift(start=45, jump_m=tuple(jump))))
    decisions = _decisions(cat, rig, uid)
    actions = [d["action"] for d in decisions]
    assert "drift_detected" in actions, actions
    detected = decisions[actions.index("drift_detected")]
    estimate = np.asarray(detected["detail"]["drift_m"])
    assert np.hypot(*(estimate - jump)) < 0.4 * np.hypot(*jump), estimate
    stage = rig["bl"].stage
    offsets = np.array([stage.y.user_offset.get(), stage.x.user_offset.get()])
    tolerance = detected["detail"]["tolerance_m"]
    assert np.hypot(*(jump - offsets)) <= tolerance  # where the sample really is now vs where the stage says
    assert "drift_verified" in actions[actions.index("drift_detected"):]
    stale = next(d for d in decisions if d["action"] == "remeasure_drifted")
    assert len(stale["seqs"]) == len(stale["detail"]["superseded"]) > 0
    assert cat[uid].metadata["stop"]["exit_status"] == "success"


def test_a_reconstruction_tells_where_frames_sit_and_which_do_not_fit(rig, full):
    # a 5 x 5 patch of the plain scan on the occupied side, reconstructed as the plan's drift reference is
    nx = FIELD[1]
    patch = np.array([(7 + a) * nx + 11 + b for a in range(-2, 3) for b in range(-2, 3)])
    patterns = np.stack([full["frames"][g][0] for g in patch])
    positions = np.array([(full["frames"][g][1]["position_y"], full["frames"][g][1]["position_x"]) for g in patch])
    cfg, dx = rig["config"], full["dx"]
    obj, probe = audit_reconstruction(patterns, positions, full["grid"][patch], dx, cfg.energy_eV, cfg.optics,
                                      iterations=40, threads=1, with_probe=True)
    inner = np.array([6, 7, 8, 11, 12, 13, 16, 17, 18])  # the patch's central 3 x 3
    origins = grid_origins(-positions[inner], dx, (-full["grid"][patch]).min(axis=0))
    errors = local_errors(obj, probe, patterns[inner], origins)
    assert np.all(errors < 0.05), errors
    misplaced = local_errors(obj, probe, patterns[inner], origins + [2.5, -2.0])
    spoiled = local_errors(obj, probe, np.zeros_like(patterns[inner]) + patterns[inner].mean(), origins)
    assert np.all(misplaced > errors) and np.all(spoiled > 5 * errors)
    # stage readings off by a known amount: the registration finds it to a fraction of a pixel
    shift, _ = estimate_drift(obj, probe, patterns[inner], origins + [2.5, -2.0], max_shift_px=8)
    assert shift == pytest.approx([-2.5, 2.0], abs=0.5)


def test_without_a_pipeline_the_plan_falls_back_to_the_plain_scan_and_says_why(rig):
    bl = rig["bl"]
    bl.fccd.source.faults = None
    docs = []
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(adaptive_ptycho(bl.fccd, bl.stage, bl.shutter, feedback=None, optics=bl.optics, shape=(3, 3), overlap=0.7))
    streams = {d["uid"]: d["name"] for name, d in docs if name == "descriptor"}
    events = [(streams[d["descriptor"]], d["data"]) for name, d in docs if name == "event"]
    assert sum(1 for s, _ in events if s == "primary") == 9
    (decision,) = [data for s, data in events if s == "adaptive" and data["adaptive_action"] == "fallback"]
    assert "no feedback channel" in decision["adaptive_reason"]


def test_the_region_of_interest_keeps_unknown_points_and_the_footprint_reach():
    shape, every = (7, 7), 3
    coarse = np.array([0, 3, 6, 21, 24, 27, 42, 45, 48])
    free = {"transmission": 100.0, "dpc_y": 0.0, "dpc_x": 0.0, "usable": 1}
    values = {g: dict(free) for g in coarse}
    values[27] = {**free, "transmission": 80.0}  # sample seen at the right edge of the middle row
    values.pop(42)  # a coarse frame without usable QC
    keep, info = region_of_interest(shape, every, coarse, values, free_transmission=100.0)
    grid = keep.reshape(shape)
    assert grid[3, 4] and grid[3, 5]  # between an empty and an occupied coarse point: the beam reaches
    assert not grid[1, 1] and not grid[1, 2]  # among empty coarse points only
    assert grid[5, 0] and grid[6, 1]  # next to the unknown one
    assert info["unknown_coarse_points"] == [42] and 27 not in info["empty_coarse_points"]


# ---------------------------------------------------------------------------------------------- on a Fermat spiral
FERMAT = 144  # points: a disc of 7.1 steps' radius, inside the rig's 16 x 16 field (7.5 steps each way)
FERMAT_JUMP = np.array([40e-9, -30e-9])


def _beam_taken(sim, grid: np.ndarray) -> np.ndarray:
    """The simulator's truth at each point: the share of the beam the sample takes, ``1 - sum |P O|^2 / sum |P|^2``
    over the probe's footprint (what the plan's occupancy estimates from a frame's transmission)."""
    free = float((np.abs(sim.probe) ** 2).sum())
    return np.array([1 - float((np.abs(sim.exit_wave(t)) ** 2).sum()) / free for t in grid])


@pytest.fixture(scope="module")
def fermat(rig, cat):
    """One adaptive scan of a Fermat spiral over the half-empty sample, with the raster tests' faults (a dropped
    packet in the coarse pass, saturation in the drift reference, a beam loss in the fine scan) and a drift."""
    coarse = 18  # coarse_subset of 144 spiral points 3 steps apart (tests/ptycho/test_adaptive.py)
    # light frames from 0: the coarse pass, its frame again, the reference patch (about 23 new points), its saturated
    # frame again, then the fine scan, 20 frames between drift checks: the drift in the first 20 (all of which are
    # taken again), the beam loss in the second 20
    faults = Faults.make(dropped_packets=[3], saturation=[coarse + 6], beam_loss=[coarse + 87, coarse + 88],
                         drift=StageDrift(start=coarse + 36, jump_m=tuple(FERMAT_JUMP)))
    uid = _scan(rig, pattern="fermat", num_points=FERMAT, drift_every=20, faults=faults)
    decisions = _decisions(cat, rig, uid)
    start = cat[uid].metadata["start"]
    grid = np.asarray(start["grid_positions_m"])
    frames, _ = _frames(rig, uid, grid, decisions)
    return {"uid": uid, "decisions": decisions, "actions": [d["action"] for d in decisions], "start": start,
            "grid": grid, "frames": frames, "faults": faults}


def test_a_fermat_scan_skips_the_empty_half_and_keeps_every_point_whose_footprint_sees_sample(rig, fermat, cat):
    start, decisions, actions, grid = fermat["start"], fermat["decisions"], fermat["actions"], fermat["grid"]
    assert start["scan"]["kind"] == "fermat" and start["adaptive"]["pattern"] == "fermat" and len(grid) == FERMAT
    assert start["plan_args"]["pattern"] == "fermat" and "shape" not in start
    assert actions[0] == "coarse_pass" and "region_of_interest" in actions and "fallback" not in actions, actions
    coarse = decisions[0]
    assert coarse["detail"]["pattern"] == "fermat" and len(coarse["seqs"]) == start["adaptive"]["coarse_points"] == 18
    roi = decisions[actions.index("region_of_interest")]
    skipped = np.array(roi["detail"]["skipped_points"])
    taken = _beam_taken(rig["bl"].sim, grid)
    sees = taken >= roi["detail"]["tolerance"]  # the footprint sees sample: it takes the plan's tolerance of the beam
    assert not sees[skipped].any(), (skipped[sees[skipped]], taken[skipped].max())  # nothing seen was left out
    # most of what was not seen was: the raster test's bar (0.3 of 256 points) is 0.67 of the 115 its truth allows
    assert len(skipped) >= 0.6 * (~sees).sum() and len(skipped) > 0.25 * FERMAT, (len(skipped), (~sees).sum())


def test_a_fermat_scan_measures_spoiled_frames_again(fermat):
    decisions = fermat["decisions"]
    again = [d for d in decisions if d["action"] == "remeasure"]
    assert {"zeros", "no_flux", "saturated"} <= {flag for d in again for flag in d["detail"]["flags"].values()}
    grid = fermat["grid"]
    roi = decisions[fermat["actions"].index("region_of_interest")]
    measured = {int(np.argmin(np.hypot(*(grid - p).T))) for p in roi["positions"]}
    assert measured <= set(fermat["frames"])  # every point of the region has a usable frame


def test_a_fermat_scan_corrects_injected_drift_on_a_scattered_reference(rig, fermat, cat):
    decisions, actions = fermat["decisions"], fermat["actions"]
    assert len(decisions[actions.index("drift_reference")]["seqs"]) >= 25, actions  # 25 points, some taken twice
    assert "drift_detected" in actions, actions
    detected = decisions[actions.index("drift_detected")]
    estimate = np.asarray(detected["detail"]["drift_m"])
    assert np.hypot(*(estimate - FERMAT_JUMP)) < 0.4 * np.hypot(*FERMAT_JUMP), estimate
    stage = rig["bl"].stage
    offsets = np.array([stage.y.user_offset.get(), stage.x.user_offset.get()])
    assert np.hypot(*(FERMAT_JUMP - offsets)) <= detected["detail"]["tolerance_m"]
    assert "drift_verified" in actions[actions.index("drift_detected"):]
    stale = next(d for d in decisions if d["action"] == "remeasure_drifted")
    assert len(stale["seqs"]) == len(stale["detail"]["superseded"]) > 0
    assert cat[fermat["uid"]].metadata["stop"]["exit_status"] == "success"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pattern": "spiral"}, "pattern must be 'raster' or 'fermat'"),
        ({"pattern": "fermat", "num_points": 10}, r"coarse pass of \d points: it needs at least 4"),
        ({"pattern": "fermat", "num_points": 144, "coarse_every": 12}, r"coarse pass of \d points: it needs at least 4"),
        ({"pattern": "fermat", "num_points": 0}, "num_points must be a whole number"),
        ({"num_points": 100}, "num_points is the Fermat spiral's"),
    ],
)
def test_bad_fermat_parameters_are_refused_before_the_run_opens(rig, kwargs, message):
    from ns_bluesky.errors import ParameterError

    bl, seen = rig["bl"], []
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(lambda name, doc: seen.append(name))
    with pytest.raises(ParameterError, match=message):
        RE(adaptive_ptycho(bl.fccd, bl.stage, bl.shutter, feedback=rig["feedback"], optics=bl.optics, overlap=0.7, **kwargs))
    assert seen == []
