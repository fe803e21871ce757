"""``ns-bluesky reconstruct --positions`` and ``--seconds`` on the measured Siemens star (tests/data/PROVENANCE.md),
cropped to its central 120 frames so each reconstruction takes seconds."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from ns_bluesky.apps.reconstruct import run
from ns_bluesky.errors import CXIError
from ns_bluesky.ptycho.metrics import register_shift, shift_image
from tests.support.star import central, star_cxi

FRAMES = central(120)


def _similarity(a: np.ndarray, b: np.ndarray) -> float:
    """|<a, b>| / (|a| |b|) over the middle 120² of two complex objects, means removed and ``b`` registered onto
    ``a`` (sub-pixel): 1 for the same image up to a global phase and shift."""
    h, w = a.shape
    c = slice(h // 2 - 60, h // 2 + 60), slice(w // 2 - 60, w // 2 + 60)
    a, b = a[c] - a[c].mean(), b[c] - b[c].mean()
    b = shift_image(b, register_shift(b, a))
    return float(abs(np.vdot(a, b)) / np.sqrt(np.vdot(a, a).real * np.vdot(b, b).real))


@pytest.fixture(scope="module")
def star_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("star")
    return {c: star_cxi(d / f"{c}.cxi", c, FRAMES) for c in ("probe", "sample", "swapped")}


@pytest.fixture(scope="module")
def auto(star_files):
    lines = []
    out = {c: run(p, p.with_name(f"{c}_out.cxi"), iterations=8, progress=False, say=lines.append)
           for c, p in star_files.items()}
    return out, lines


def test_auto_reads_the_measured_star_right_in_every_convention(auto):
    results, lines = auto
    expected = {"probe": "probe", "sample": "sample", "swapped": "probe, x/y swapped"}
    for c, r in results.items():
        assert r.orientation.name == expected[c] and r.choice.clear
        assert r.choice.margin > 0.15, r.choice.summary()  # measured: 34 % at 6 iterations on 64 frames
        with h5py.File(r.out, "r") as f:
            g = f["entry_1/ns_bluesky"]
            assert g["positions_convention"][()].decode() == expected[c]
            np.testing.assert_array_equal(g["positions_matrix"][()], r.orientation.matrix)
            details = json.loads(g["positions_choice_json"][()])
            assert details["decided_by"] == "auto" and details["margin"] == pytest.approx(r.choice.margin)
            assert len(details["residuals"]) == 8
    chosen = [line for line in lines if line.startswith("positions:")]
    assert len(chosen) == 3 and all("margin" in line and "clear" in line for line in chosen)
    assert sum(line.startswith("start probe:") for line in lines) == 3  # and the start each took


def test_the_three_conventions_give_the_same_image_and_the_wrong_one_does_not(auto, star_files):
    results, _ = auto
    ref = results["probe"].obj
    for c in ("sample", "swapped"):
        assert results[c].obj.shape == ref.shape
        assert _similarity(results[c].obj, ref) > 0.99  # measured: 0.99999995 (the same origins after the choice)
    wrong = run(star_files["probe"], star_files["probe"].with_name("wrong.cxi"), iterations=8, progress=False,
                positions="sample")
    assert wrong.orientation.name == "sample"
    # measured after 8 iterations: residual 0.053 against 0.02, similarity 0.11 (0.11 turned by 180°)
    assert wrong.best_residual > 2 * results["probe"].best_residual
    assert max(_similarity(ref, wrong.obj), _similarity(ref, np.rot90(wrong.obj, 2))) < 0.5


def test_a_budget_in_seconds_on_the_command_line(star_files, tmp_path):
    exe = Path(sys.executable).parent / "ns-bluesky"
    out = subprocess.run([str(exe), "reconstruct", str(star_files["sample"]), "--positions", "sample", "--seconds", "3",
                          "--out", str(tmp_path / "t.cxi")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    start, line = lines[0], next((x for x in lines if "stopped by" in x), "")
    assert start.startswith("start probe:") and "time budget" in start, start  # its search had 0.75 s of the 3
    # where the run got as far as the probe modes' trial, that had 0.3 s of the 3
    assert all(x.startswith("probe modes: 1 further") for x in lines if "probe modes" in x), lines
    assert "stopped by seconds" in line and "positions read as: sample" in line and "best " in line, line
    # progress shows iterations and the residual
    assert "residual" in out.stderr and "it/s" in out.stderr or "s/it" in out.stderr
    with h5py.File(tmp_path / "t.cxi", "r") as f:
        details = json.loads(f["entry_1/ns_bluesky/positions_choice_json"][()])
        losses = f["entry_1/ptychodus/loss_values"][()]
    assert details["decided_by"] == "given" and details["stopped_by"] == "seconds"
    assert details["iterations"] == len(losses) >= 1 and details["best_residual"] == pytest.approx(losses.min())
    assert details["seconds"] < 3 + 60  # generous: it stops


def test_an_unclear_choice_warns_and_keeps_the_declared_convention(tmp_path):
    # one frame: every orientation puts it in the same place (even 4 far-apart frames decide, measured 6.5 %)
    path = star_cxi(tmp_path / "few.cxi", "sample", FRAMES[:1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = run(path, tmp_path / "few_out.cxi", iterations=2, progress=False, say=lambda line: None)
    assert not r.choice.clear and r.choice.margin < 0.05 and r.orientation.name == "probe"
    assert any("no position convention fits clearly" in str(w.message) for w in caught)


def test_frames_holding_nan_are_refused_by_name(star_files, tmp_path):
    bad = tmp_path / "nan.cxi"
    bad.write_bytes(star_files["probe"].read_bytes())
    with h5py.File(bad, "a") as f:
        f["entry_1/instrument_1/detector_1/data"][5, 3, 3] = np.nan
    with pytest.raises(CXIError, match="1 frames hold NaN or inf \\(the first is frame 5\\)"):
        run(bad, tmp_path / "nan_out.cxi", iterations=1, progress=False)
