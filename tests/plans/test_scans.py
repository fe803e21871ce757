"""Plans on a real RunEngine: valid documents, complete start metadata, early and clear errors."""

from collections import Counter

import pytest
from bluesky.utils import FailedStatus
from event_model import DocumentNames, schema_validators

from ns_bluesky.errors import ParameterError
from ns_bluesky.plans import dark_frames, ptycho_scan


def test_every_document_passes_schema_validation(recorded):
    counts = Counter(name for name, _ in recorded["docs"])
    for name, doc in recorded["docs"]:
        schema_validators[DocumentNames(name)].validate(doc)
    assert counts["start"] == counts["stop"] == 3
    assert counts["event"] == 4 + 20 + 4
    assert counts["stream_datum"] == counts["event"]
    assert counts["stream_resource"] == 3
    assert "resource" not in counts and "datum" not in counts


def test_frames_never_go_inline(recorded):
    for name, doc in recorded["docs"]:
        if name == "event":
            assert "fccd_image" not in doc["data"]
        if name == "descriptor":
            assert doc["data_keys"]["fccd_image"]["external"] == "STREAM:"


def test_start_document_carries_what_a_reconstruction_needs(recorded):
    start = next(d for n, d in recorded["docs"] if n == "start" and d["uid"] == recorded["scan"])
    assert start["energy_eV"] == 800.0
    assert start["energy_J"] == pytest.approx(800 * 1.602176634e-19)
    assert start["detector_distance_m"] == pytest.approx(0.07955)
    assert start["detector_pixel_size_m"] == [30e-6, 30e-6]
    assert start["detector_raw_shape"] == [1040, 1152]
    assert start["detector_geometry"]["overscan_cols_per_channel"] == 2
    assert start["probe_optics"]["diameter_m"] == pytest.approx(240e-6)
    assert start["probe_optics"]["outer_zone_width_m"] == pytest.approx(100e-9)
    assert start["scan"]["kind"] == "raster" and start["scan"]["shape"] == [4, 5]
    assert start["scan"]["step_m"] > 0
    assert len(start["planned_positions_m"]) == 20
    assert start["sample_name"] == "star"
    assert start["dark_uid"] == recorded["dark"]
    assert start["plan_name"] == "ptycho_scan"
    assert start["object_pixel_size_m"] == pytest.approx(4.28e-9, rel=0.01)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shape": (0, 5), "step": 1e-7}, "shape must be two whole numbers"),
        ({"pattern": "spiral", "step": 1e-7}, "pattern must be 'raster' or 'fermat'"),
        ({"pattern": "fermat", "num_points": 0, "step": 1e-7}, "num_points must be a whole number"),
        ({"step": -1e-7}, "step must be a positive length"),
        ({"step": 1e-7, "overlap": 0.5}, "give step or overlap, not both"),
        ({"shape": (5, 5), "step": 30e-6}, "beyond the stage limits.*stage_y"),
    ],
)
def test_bad_scan_parameters_fail_before_the_run_opens(RE, beamline, kwargs, message):
    seen = []
    RE.subscribe(lambda name, doc: seen.append(name))
    with pytest.raises(ParameterError, match=message):
        RE(ptycho_scan(beamline.fccd, beamline.stage, beamline.shutter, optics=beamline.optics, **kwargs))
    assert seen == []


def test_scan_without_optics_is_refused_before_the_run_opens(RE, beamline):
    with pytest.raises(ParameterError, match="optics is required"):
        RE(ptycho_scan(beamline.fccd, beamline.stage, beamline.shutter, shape=(2, 2), step=1e-7))


def test_fermat_overlap_means_what_it_says(RE, beamline):
    import numpy as np

    starts = []
    RE.subscribe(lambda name, doc: starts.append(doc) if name == "start" else None)
    RE(ptycho_scan(beamline.fccd, beamline.stage, beamline.shutter, optics=beamline.optics, pattern="fermat", num_points=30, overlap=0.7))
    pos = np.asarray(starts[-1]["planned_positions_m"])
    d = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1)) + np.eye(len(pos))
    beam = starts[-1]["scan"]["beam_diameter_m"]
    assert np.median(d.min(axis=1)) == pytest.approx(beam * 0.3, rel=0.05)
    assert starts[-1]["scan"]["step_m"] == pytest.approx(beam * 0.3)


def test_negative_exposure_and_zero_darks_fail_before_the_run_opens(RE, beamline):
    seen = []
    RE.subscribe(lambda name, doc: seen.append(name))
    with pytest.raises(ParameterError, match="num must be a whole number of frames >= 1"):
        RE(dark_frames(beamline.fccd, beamline.shutter, 0))
    beamline.fccd.acquire_time.put(-1.0)
    with pytest.raises(ParameterError, match="acquire_time .*must be > 0"):
        RE(ptycho_scan(beamline.fccd, beamline.stage, beamline.shutter, optics=beamline.optics, shape=(2, 2), step=1e-7))
    assert seen == []


def test_missing_image_file_is_named(tmp_path):
    from ns_bluesky.apps.demo import run_demo

    with pytest.raises(ParameterError, match="sample image not found: .*nope.png"):
        run_demo(scan=(2, 2), rate_hz=0, darks=2, out=tmp_path, catalog=tmp_path / "cat", sample_image=str(tmp_path / "nope.png"), progress=False)


def test_detector_failure_mid_scan_closes_the_run_and_the_shutter(RE, beamline):
    stops = []
    RE.subscribe(lambda name, doc: stops.append(doc) if name == "stop" else None)
    source = beamline.fccd.source

    class DiesAfterThree:
        geometry = source.geometry

        def render(self, index, exposure, light):
            if light and index >= 3:
                raise RuntimeError("CIN link lost")
            return source.render(index, exposure, light)

    beamline.fccd.source = DiesAfterThree()
    with pytest.raises(FailedStatus):
        RE(ptycho_scan(beamline.fccd, beamline.stage, beamline.shutter, optics=beamline.optics, shape=(3, 3), step=1e-7))
    assert stops[-1]["exit_status"] == "fail"
    assert "CIN link lost" in stops[-1]["reason"]
    assert stops[-1]["num_events"]["primary"] == 3
    assert not beamline.shutter.is_open
