"""The science modules on their own (no sockets): known answers from the simulation, bad frames flagged."""

from __future__ import annotations

import numpy as np
import pytest

from ns_bluesky.stages.dark import DarkStage
from ns_bluesky.stages.frame import FrameStage
from ns_bluesky.stages.image import ImageStage
from ns_bluesky.stream.protocol import Message


@pytest.fixture(scope="module")
def dark_result(sim_scan):
    dark = DarkStage()
    dark.start_run(sim_scan.start(dark=True))
    for seq in range(1, 5):
        dark.process(sim_scan.dark_frame(seq))
    return dark.end_run(sim_scan.dark_uid)


def test_dark_statistics_and_maps_match_the_detector_model(sim_scan, dark_result):
    fccd = sim_scan.sim.fccd
    s = dark_result.meta["scalars"]
    assert dark_result.stage == "dark" and s["frames"] == 4
    # the mean of 4 darks sits on the model's noise-free baseline within the read noise / 2
    baseline = np.mean([fccd.baseline(1000 + k) for k in range(1, 5)], axis=0)
    good = dark_result.arrays["bad_pixels"] == 0
    err = np.abs(dark_result.arrays["mean"] - baseline)[good]
    assert np.median(err) < 0.5 * sim_scan.cfg.noise.read_noise_adu
    assert abs(s["read_noise_adu"] - sim_scan.cfg.noise.read_noise_adu) < 0.3 * sim_scan.cfg.noise.read_noise_adu
    assert dark_result.arrays["bad_channels"][sim_scan.cfg.noise.dead_channel] == 1
    assert s["bad_channel_count"] >= 1


def test_a_dark_frame_of_the_wrong_shape_is_refused_not_folded_in(sim_scan):
    dark = DarkStage()
    dark.start_run(sim_scan.start(dark=True))
    with pytest.raises(ValueError, match="shape"):
        dark.process(Message("frame", run=sim_scan.dark_uid, seq=1, arrays={"raw": np.zeros((10, 10), np.uint16)}))
    dark.process(sim_scan.dark_frame(2))
    dark.process(sim_scan.dark_frame(3))
    s = dark.end_run(sim_scan.dark_uid).meta["scalars"]
    assert (s["frames"], s["refused"]) == (2, 1)


@pytest.fixture
def frame_module(sim_scan, dark_result):
    mod = FrameStage()
    mod.process(dark_result)
    mod.start_run(sim_scan.start())
    return mod


def test_a_frame_becomes_photon_counts_with_its_qc(sim_scan, frame_module):
    out = frame_module.process(sim_scan.frame(1))
    s = out.meta["scalars"]
    assert out.stage == "clean" and out.arrays["pattern"].shape == (128, 128)
    assert s["usable"] == 1 and s["flags"] == "" and s["seq"] == 1
    # photons inside the crop against the simulation's expected photons there (beamstop divided out)
    expected = sim_scan.sim.expected_photons(sim_scan.sim.planned[0]) / sim_scan.sim.beamstop_transmission_map
    c, h = 480, 240
    assert s["photons"] == pytest.approx(expected[c - h : c + h, c - h : c + h].sum(), rel=0.1)
    assert (s["position_y"], s["position_x"]) == tuple(sim_scan.sim.planned[0])
    assert abs(s["dpc_y"]) < 2 and abs(s["dpc_x"]) < 2  # the pattern is centred
    assert out.meta["object_pixel_size_m"] == pytest.approx(2 * sim_scan.cfg.object_pixel_size_m)


@pytest.mark.parametrize(
    "spoil, flag",
    [
        (lambda raw: np.zeros((100, 100), np.uint16), "shape"),
        (lambda raw: np.where(np.arange(raw.size).reshape(raw.shape) == 5, np.nan, raw.astype(np.float32)), "nan"),
        (lambda raw: np.where(np.arange(raw.shape[0])[:, None] < 200, 0, raw).astype(np.uint16), "zeros"),
        (lambda raw: np.where(np.arange(raw.shape[0])[:, None] == 600, 8191, raw).astype(np.uint16), "saturated"),
    ],
)
def test_a_bad_frame_is_flagged_unusable_and_the_module_goes_on(sim_scan, frame_module, spoil, flag):
    msg = sim_scan.frame(2)
    msg.arrays["raw"] = spoil(msg.arrays["raw"])
    s = frame_module.process(msg).meta["scalars"]
    assert flag in s["flags"].split(",") and s["usable"] == 0
    assert frame_module.process(sim_scan.frame(3)).meta["scalars"]["usable"] == 1


def test_a_frame_without_its_dark_is_cleaned_from_the_overscan_and_says_so(sim_scan):
    mod = FrameStage()
    mod.start_run(sim_scan.start())
    s = mod.process(sim_scan.frame(1)).meta["scalars"]
    assert s["flags"] == "no_dark" and s["usable"] == 1 and s["photons"] > 0


def test_the_cleaner_follows_a_dark_that_arrives_mid_run(sim_scan, dark_result, frame_module):
    """The module prepares its cleaner once per dark: a dark that comes after the first
    frames must still be used for the next one, exactly as if it had been there first."""
    mod = FrameStage()
    mod.start_run(sim_scan.start())
    before = mod.process(sim_scan.frame(1))
    mod.process(dark_result)
    after = mod.process(sim_scan.frame(1))
    assert before.meta["scalars"]["flags"] == "no_dark" and after.meta["scalars"]["flags"] == ""
    np.testing.assert_array_equal(after.arrays["pattern"], frame_module.process(sim_scan.frame(1)).arrays["pattern"])


def test_zeroed_pixels_are_counted_but_not_the_darks_bad_ones(sim_scan, dark_result, frame_module):
    good = dark_result.arrays["bad_pixels"] == 0
    msg = sim_scan.frame(2)
    raw = msg.arrays["raw"]
    already = np.count_nonzero((raw == 0) & good)
    raw[~good] = 0  # masked anyway: not dropped packets
    raw.ravel()[np.flatnonzero(good & (raw != 0))[5000:5010]] = 0  # ten good pixels zeroed
    assert frame_module.process(msg).meta["scalars"]["zeros"] == already + 10


def test_no_flux_is_flagged_against_the_runs_median(sim_scan, frame_module):
    for seq in (1, 2, 3):
        frame_module.process(sim_scan.frame(seq))
    msg = sim_scan.frame(4)
    msg.arrays["raw"] = sim_scan.sim.raw_frame(None, 4)  # the beam lost: a dark frame where light was due
    s = frame_module.process(msg).meta["scalars"]
    assert "no_flux" in s["flags"] and s["usable"] == 0


def test_the_stxm_image_grows_on_the_scan_grid(sim_scan, frame_module):
    image = ImageStage(ImageStage.Params(every_s=1e-3))
    image.start_run(sim_scan.start())
    outs = [image.process(frame_module.process(sim_scan.frame(seq))) for seq in (1, 2, 6)]
    final = image.end_run(sim_scan.uid)
    t = final.arrays["transmission"]
    assert t.shape == (4, 4) and final.meta["scalars"]["frames"] == 3 and final.meta["scalars"]["final"] == 1
    assert np.isfinite(t).sum() == 3 and np.isfinite(t[0, 0]) and np.isfinite(t[1, 1])
    assert outs[0] is not None and final.arrays["probe_amplitude"].shape == (128, 128)


def test_a_frame_lands_where_it_was_measured_not_where_its_number_points(sim_scan, frame_module):
    """An adaptive plan skips and repeats points: event 1 may be taken at planned point 11."""
    image = ImageStage(ImageStage.Params(every_s=1e-3))
    image.start_run(sim_scan.start())
    clean = frame_module.process(sim_scan.frame(11))
    clean.seq = 1  # the first event of the run, measured at point 11's position (its stage readback)
    image.process(clean)
    t = image.end_run(sim_scan.uid).arrays["transmission"]
    assert np.isfinite(t).sum() == 1 and np.isfinite(t[2, 2])  # point 11 of the 4 x 4 raster, not point 1


@pytest.mark.parametrize("ending", ["end", "abort"])
def test_the_cxi_file_holds_every_usable_frame_in_order_also_after_an_abort(sim_scan, frame_module, tmp_path, ending):
    """Frames reach the CXI file in blocks; the last, partial block must be written too, also
    when the run is aborted, and a frame whose message buffer is reused must not change."""
    import h5py

    from ns_bluesky.stages.cxiwrite import CXIWriteParams, CXIWriteStage

    writer = CXIWriteStage(CXIWriteParams(out_dir=str(tmp_path)))
    writer.start_run(sim_scan.start())
    cleaned = [frame_module.process(sim_scan.frame(seq)) for seq in range(1, 6)]
    kept = [c.arrays["pattern"].copy() for c in cleaned]
    for c in cleaned:
        writer.process(c)
        c.arrays["pattern"][...] = -1  # the runtime reuses the buffer once process() returned
    if ending == "end":
        writer.end_run(sim_scan.uid)
    else:
        writer.abort_run(sim_scan.uid)
    (path,) = tmp_path.glob("*_clean.cxi")
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["entry_1/instrument_1/detector_1/data"][()], np.stack(kept))
        trans = f["entry_1/sample_1/geometry_1/translation"][()]
    np.testing.assert_allclose(trans[:, :2], [[-c.meta["position_m"][1], -c.meta["position_m"][0]] for c in cleaned])
