"""``ns-bluesky reconstruct`` on a CXI file: the object and probe come back as image_2 / image_1."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ns_bluesky.apps.reconstruct import run
from ns_bluesky.errors import CXIError
from ns_bluesky.instrument.units import ELECTRON_VOLT_J, wavelength_m
from ns_bluesky.io.cxi import CXIData, write_cxi
from ns_bluesky.ptycho.metrics import nrmse
from tests.support.ptycho_set import small_set as _data


def _cxi(path, with_probe=True):
    data, obj, probe, mask = _data()
    n = data.patterns.shape[-1]
    distance, pixel = 0.08, 30e-6
    dx = distance * wavelength_m(800.0) / (n * pixel)
    # CXI translations are the probe's position on the sample: o dx, stored as (x, y, z)
    t = data.origins_px * dx
    translations = np.stack([t[:, 1], t[:, 0], np.zeros(len(t))], axis=1)
    write_cxi(path, CXIData(frames=data.patterns * 1e4, translations_m=translations, energy_J=800 * ELECTRON_VOLT_J,
                            distance_m=distance, pixel_size_m=(pixel, pixel), probe=probe if with_probe else None))
    return obj, mask


def test_reconstruct_writes_probe_and_object_that_match_the_truth(tmp_path):
    obj, mask = _cxi(tmp_path / "in.cxi")
    result = run(tmp_path / "in.cxi", tmp_path / "out.cxi", engine_name="epie", iterations=60, png=tmp_path / "out.png", progress=False)
    assert result.residuals[-1] < result.residuals[0] / 10
    with h5py.File(tmp_path / "out.cxi", "r") as f:
        assert f["entry_1/image_1/data_type"][()] == b"probe" and f["entry_1/image_2/data_type"][()] == b"object"
        est = f["entry_1/image_2/data"][()]
        assert f["entry_1/image_2/x_pixel_size"][()] == pytest.approx(result.pixel_size_m)
        assert len(f["entry_1/ns_bluesky/reconstruction_residual"]) == 60
        assert f["entry_1/data_1/data"].shape[0] == 64  # the input is kept
        # what ptychodus reads: extents, pixel sizes, the object's centre and the losses
        assert f["entry_1/image_2/image_size"][:2] == pytest.approx([est.shape[1] * result.pixel_size_m, est.shape[0] * result.pixel_size_m])
        assert f["entry_1/ptychodus/object_pixel_width_m"][()] == pytest.approx(result.pixel_size_m)
        assert len(f["entry_1/ptychodus/loss_values"]) == 60
        translations = f["entry_1/sample_1/geometry_1/translation"][()]
        centre_x = f["entry_1/ptychodus/object_center_x_m"][()]
    # the object's centre in metres: the engine's pixel (w/2) sits at the first probe window's corner + w/2 - 2
    dx = result.pixel_size_m
    assert centre_x == pytest.approx(translations[:, 0].min() + ((est.shape[1] - 32) / 2 - 2) * dx)
    # a second reconstruction of the output replaces image_1 and image_2, as ptychodus reads them by number
    again = run(tmp_path / "out.cxi", tmp_path / "out.cxi", iterations=2, progress=False)
    with h5py.File(again.out, "r") as f:
        assert "entry_1/image_3" not in f and len(f["entry_1/ptychodus/loss_values"]) == 2
    # the engine's grid starts 2 pixels (minus the sub-pixel jitter) before the truth's
    h, w = obj.shape
    assert nrmse(est[1 : 1 + h, 1 : 1 + w], obj, mask) < 0.1  # measured 0.095 (noise-free 32² toy set, ePIE)
    assert (tmp_path / "out.png").stat().st_size > 10_000


def test_reconstruct_starts_from_the_data_without_a_probe(tmp_path):
    _cxi(tmp_path / "in.cxi", with_probe=False)
    result = run(tmp_path / "in.cxi", tmp_path / "out.cxi", iterations=30, progress=False)
    assert result.residuals[-1] < result.residuals[0] / 3


def test_cli_errors_name_the_missing_dataset(tmp_path):
    exe = Path(sys.executable).parent / "ns-bluesky"
    out = subprocess.run([str(exe), "reconstruct", str(tmp_path / "none.cxi")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip() == (f"ns-bluesky reconstruct: error: argument cxi: no such file: "
                                                          f"{tmp_path / 'none.cxi'} (see ns-bluesky reconstruct --help)")
    _cxi(tmp_path / "in.cxi")
    with h5py.File(tmp_path / "in.cxi", "a") as f:
        del f["entry_1/instrument_1/source_1/energy"]
    with pytest.raises(CXIError, match="photon energy .*/entry_1/instrument_1/source_1/energy"):
        run(tmp_path / "in.cxi", tmp_path / "out.cxi", iterations=1, progress=False)


def test_a_product_written_before_is_a_starting_probe(tmp_path):
    """No source_1/illumination, but an image_1 probe (ptychodus' layout, or our own output): it starts the run."""
    from ns_bluesky.apps.reconstruct import prepare_data
    from ns_bluesky.io.cxi import CXIImage, put_image

    _cxi(tmp_path / "in.cxi", with_probe=False)
    _, _, probe, _ = _data()
    shaped = np.exp(1j * np.linspace(0, 1, probe.size)).reshape(probe.shape).astype(np.complex64) * np.abs(probe)
    put_image(tmp_path / "in.cxi", 1, CXIImage(shaped[None, None], "probe", (1e-8, 1e-8)))  # (modes, ..., n, n)
    _, start, _ = prepare_data(tmp_path / "in.cxi")
    c = np.vdot(shaped, start) / np.vdot(shaped, shaped)  # the same probe, scaled to the counts
    np.testing.assert_allclose(start, c * shaped, rtol=0, atol=1e-4 * np.abs(start).max())


def test_an_fccd_scan_from_nsraw2cxi_is_read_in_photons(cat, recorded, tmp_path):
    """ADU frames with their darks come out as photon counts: the simulation's own, frame by frame, to 10 %
    (a 5 ADU read noise against 15 ADU per photon: any threshold loses some single photons or keeps some noise)."""
    from ns_bluesky.apps.reconstruct import prepare_data
    from ns_bluesky.io.export import export_run

    out = export_run(cat, recorded["scan"], tmp_path / "scan.cxi", progress=False)
    data, _, _ = prepare_data(out)
    sim = recorded["beamline"].fccd.source.sim
    stage = np.stack([np.asarray(cat[recorded["scan"]]["primary"][k].read()) for k in ("stage_y", "stage_x")], axis=1)
    for i in (0, 7, 19):
        expected = sim.expected_photons(stage[i]).sum()
        assert abs(data.patterns[i].sum() - expected) < 0.1 * expected, (i, data.patterns[i].sum(), expected)


def test_probe_start_is_chosen_on_the_command_line_and_said(tmp_path):
    """``--probe-start search`` runs lsqml's start search and prints its choice; for another engine it is refused in
    one line before anything is read or written."""
    exe = str(Path(sys.executable).parent / "ns-bluesky")
    _cxi(tmp_path / "in.cxi")
    out = subprocess.run([exe, "reconstruct", str(tmp_path / "in.cxi"), "--probe-start", "search", "--iterations", "5",
                          "--positions", "probe", "--quiet"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "start probe:" in out.stdout and "trials in" in out.stdout
    bad = subprocess.run([exe, "reconstruct", str(tmp_path / "in.cxi"), "--probe-start", "search", "--engine", "epie",
                          "--out", str(tmp_path / "epie.cxi")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "--probe-start is an lsqml option" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "epie.cxi").exists()
