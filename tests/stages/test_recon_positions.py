"""The live reconstruction's refinement: a budget in seconds, the best state, and auto reading the stage's
positions either way round (a stage that reports the probe's position instead of the sample's)."""

from __future__ import annotations

import numpy as np
import pytest

from ns_bluesky.stages.dark import DarkStage
from ns_bluesky.stages.frame import FrameStage
from ns_bluesky.stages.recon import ReconStage
from ns_bluesky.stream.protocol import Message
from tests.support.scan import SimScan


@pytest.fixture(scope="module")
def scan8():
    return SimScan(shape=(8, 8), seed=1)


def _clean(sim_scan):
    """A scan's cleaned frames, as the frame stage sends them."""
    dark = DarkStage()
    dark.start_run(sim_scan.start(dark=True))
    for seq in range(1, 5):
        dark.process(sim_scan.dark_frame(seq))
    frames = FrameStage()
    frames.process(dark.end_run(sim_scan.dark_uid))
    frames.start_run(sim_scan.start())
    return [frames.process(sim_scan.frame(seq)) for seq in range(1, len(sim_scan.sim.planned) + 1)]


@pytest.fixture(scope="module")
def cleaned(scan8):
    return _clean(scan8)


def _reconstruct(sim_scan, cleaned, sign: float, **params):
    """The scan through a recon stage whose positions are ``sign`` times the sample's translation."""
    emitted = []
    stage = ReconStage(ReconStage.Params(min_frames=4, final_seconds=0.5, publish_every_s=0.1, **params), emit=emitted.append)
    doc = {**sim_scan.doc, "planned_positions_m": (sign * sim_scan.sim.planned).tolist()}
    stage.start_run(Message("start", run=sim_scan.uid, meta={"start": doc}))
    for msg in cleaned:
        meta = {**msg.meta, "position_m": (sign * np.asarray(msg.meta["position_m"])).tolist()}
        stage.process(Message(msg.kind, run=msg.run, seq=msg.seq, stage=msg.stage, meta=meta, arrays=msg.arrays))
    return emitted, stage.end_run(sim_scan.uid)


@pytest.mark.parametrize("sign, expected", [(1.0, "probe"), (-1.0, "sample")])
def test_auto_reads_the_stage_either_way_round_before_the_refinement(scan8, cleaned, sign, expected):
    # measured on this 8 x 8 raster: margin 26 % (the next best an x/y swap)
    emitted, refined = _reconstruct(scan8, cleaned, sign, refine_seconds=6.0, positions="auto")
    final = emitted[-1]
    assert (final.meta["scalars"]["refined"], refined.meta["scalars"]["refined"]) == (0, 1)
    positions = refined.meta["positions"]
    # relative to the CXI file, which holds minus the stage reading: "probe" when the stage reads the sample's
    # translation, "sample" for a stage that reads the probe's position
    assert positions["convention"] == expected and positions["details"]["clear"], positions
    s = refined.meta["scalars"]
    assert s["refine_iterations"] >= 1 and 1 <= s["refine_best_iteration"] <= s["refine_iterations"]
    assert s["refine_seconds"] < 6.0 + 30  # generous: it stops
    assert s["probe_modes"] in (1, 2) and final.meta["scalars"]["probe_modes"] in (1, 2)  # lsqml's default starts two
    # the best state of the refinement (from a fresh object: on a loaded machine its few iterations may not
    # yet beat the live image, so no comparison with it here)
    assert 0 < s["residual"] < 1


def test_a_given_convention_is_recorded_as_given_also_in_the_cxi_file(scan8, cleaned, tmp_path):
    import h5py

    from ns_bluesky.stages.cxiwrite import CXIWriteParams, CXIWriteStage

    _, refined = _reconstruct(scan8, cleaned, 1.0, refine_seconds=1.0, positions="sample")
    assert refined.meta["positions"]["convention"] == "probe"
    assert refined.meta["positions"]["details"]["decided_by"] == "given"
    writer = CXIWriteStage(CXIWriteParams(out_dir=str(tmp_path)))
    writer.start_run(scan8.start())
    for msg in [*cleaned, refined]:
        writer.process(msg)
    writer.end_run(scan8.uid)
    (path,) = tmp_path.glob("*_clean.cxi")
    with h5py.File(path, "r") as f:
        g = f["entry_1/ns_bluesky"]
        assert g["positions_convention"][()] == b"probe"
        np.testing.assert_array_equal(g["positions_matrix"][()], np.eye(2))
        assert f["entry_1/image_2/data_type"][()] == b"object"


def test_too_few_frames_to_tell_keep_the_declared_convention(sim_scan):
    """16 frames of a 4 x 4 raster fit every orientation alike (measured: margin under 1 %): the stage's
    declared convention (the sample's translation) stays, and the result says the choice was not clear."""
    _, refined = _reconstruct(sim_scan, _clean(sim_scan), -1.0, refine_seconds=2.0, positions="auto")
    positions = refined.meta["positions"]
    assert positions["convention"] == "probe" and not positions["details"]["clear"]
    assert refined.meta["scalars"]["refined"] == 1
