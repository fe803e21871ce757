"""CXI round trips, the documented paths in plain h5py, and nsraw2cxi from the catalog."""

import h5py
import numpy as np
import pytest

from ns_bluesky.errors import CXIError
from ns_bluesky.instrument.detector import DetectorGeometry, assemble
from ns_bluesky.io.cxi import CXIData, CXIImage, append_image, read_cxi, write_cxi
from ns_bluesky.io.export import export_run


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return CXIData(
        frames=rng.integers(0, 100, (5, 32, 32), dtype=np.uint16),
        translations_m=rng.normal(0, 1e-6, (5, 3)),
        energy_J=800 * 1.602176634e-19,
        distance_m=0.07955,
        pixel_size_m=(30e-6, 30e-6),
        dark=rng.integers(0, 10, (2, 32, 32), dtype=np.uint16),
        probe=(rng.normal(size=(32, 32)) + 1j).astype(np.complex64),
        mask=np.zeros((32, 32), np.uint32),
        metadata={"sample_name": "star", "raw_uid": "abc"},
    )


def test_round_trip(tmp_path, data):
    path = write_cxi(tmp_path / "a.cxi", data)
    back = read_cxi(path)
    np.testing.assert_array_equal(back.frames, data.frames)
    np.testing.assert_allclose(back.translations_m, data.translations_m)
    np.testing.assert_array_equal(back.dark, data.dark)
    np.testing.assert_array_equal(back.probe, data.probe)
    assert back.energy_J == pytest.approx(data.energy_J)
    assert back.distance_m == data.distance_m and back.pixel_size_m == data.pixel_size_m
    assert back.metadata["raw_uid"] == "abc"


def test_documented_paths_in_plain_h5py(tmp_path, data):
    path = write_cxi(tmp_path / "a.cxi", data)
    obj = CXIImage(np.ones((8, 8), np.complex64), "object", (5e-9, 5e-9))
    assert append_image(path, CXIImage(data.probe, "probe", (5e-9, 5e-9))) == "entry_1/image_1"
    assert append_image(path, obj) == "entry_1/image_2"
    with h5py.File(path, "r") as f:
        assert f["cxi_version"][()] == 160
        assert f["entry_1/instrument_1/source_1/energy"][()] == pytest.approx(1.2817e-16, rel=1e-4)
        assert f["entry_1/instrument_1/detector_1/data"].attrs["axes"] == "translation:y:x"
        assert f["entry_1/data_1/data"].shape == (5, 32, 32)
        assert f["entry_1/data_1/translation"].shape == (5, 3)
        assert f["entry_1/instrument_1/detector_1/translation"].shape == (5, 3)
        assert f["entry_1/sample_1/geometry_1/translation"].attrs["units"] == "m"
        assert f["entry_1/instrument_1/detector_1/x_pixel_size"][()] == 30e-6
        assert f["entry_1/instrument_1/detector_1/data_dark"].shape == (2, 32, 32)
        assert f["entry_1/image_1/data_type"][()] == b"probe"
        assert f["entry_1/image_2/data_type"][()] == b"object"
    images = read_cxi(path).images
    assert [i.data_type for i in images] == ["probe", "object"]


def test_errors_name_the_missing_path(tmp_path, data):
    path = write_cxi(tmp_path / "a.cxi", data)
    with h5py.File(path, "a") as f:
        del f["entry_1/instrument_1/detector_1/distance"]
    with pytest.raises(CXIError, match="detector distance .* /entry_1/instrument_1/detector_1/distance"):
        read_cxi(path)
    (tmp_path / "junk.cxi").write_text("not hdf5")
    with pytest.raises(CXIError, match="not an HDF5/CXI file"):
        read_cxi(tmp_path / "junk.cxi")
    with pytest.raises(CXIError, match="no CXI file"):
        read_cxi(tmp_path / "none.cxi")
    bad = CXIData(**{**data.__dict__, "translations_m": np.zeros((4, 3))})
    with pytest.raises(CXIError, match="5 frames but 4 translations"):
        write_cxi(tmp_path / "b.cxi", bad)


def test_nsraw2cxi_from_the_catalog(cat, recorded, tmp_path):
    geom = DetectorGeometry()
    out = export_run(cat, recorded["scan"], tmp_path / "scan.cxi", progress=False)
    back = read_cxi(out)
    assert back.frames.shape == (20, 960, 960)
    np.testing.assert_array_equal(back.frames[3], assemble(recorded["scan_frames"][3], geom))
    np.testing.assert_array_equal(back.dark, assemble(recorded["dark_frames"], geom))
    run = cat[recorded["scan"]]
    # the probe's position on the sample: minus the stage's (docs/conventions.md)
    np.testing.assert_allclose(back.translations_m[:, 0], -np.asarray(run["primary"]["stage_x"].read()))
    np.testing.assert_allclose(back.translations_m[:, 1], -np.asarray(run["primary"]["stage_y"].read()))
    assert back.probe.shape == (960, 960)
    assert back.metadata["dark_uid"] == recorded["dark"]
    raw = read_cxi(export_run(cat, recorded["scan"], tmp_path / "raw.cxi", raw=True, progress=False))
    np.testing.assert_array_equal(raw.frames, recorded["scan_frames"])


def test_nsraw2cxi_refuses_a_dark_run(cat, recorded, tmp_path):
    from ns_bluesky.errors import CatalogError

    with pytest.raises(CatalogError, match="only ptycho_scan runs"):
        export_run(cat, recorded["dark"], tmp_path / "d.cxi", progress=False)
