"""Every command-line value is checked before the command starts anything (issue 22, item 6).

Each bad value must end in one line naming the option, with nothing created: no output folder, no catalog,
no pipeline. ``main`` runs in this process (argparse's exit is a ``SystemExit``), so each case takes
milliseconds; ``test_cli.py`` runs the installed console scripts as real processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from ns_bluesky.apps.cli import main
from ns_bluesky.apps.options import BYTES_PER_POINT, available_memory_bytes


def _fails(argv: list[str], capsys, tmp_path: Path) -> tuple[int, str]:
    """Run ``ns-bluesky ARGV`` here; its exit code and its one stderr line. Nothing may appear in tmp_path
    except what the test put there."""
    before = set(tmp_path.rglob("*"))
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert set(tmp_path.rglob("*")) == before, "a refused command left something behind"
    assert code in (1, 2) and "Traceback" not in err[0] and "unexpected" not in err[0], err[0]
    return code, err[0]


def _demo(tmp_path: Path, *extra: str) -> list[str]:
    return ["demo", "--catalog", str(tmp_path / "cat"), "--out", str(tmp_path / "out"), *extra]


@pytest.mark.parametrize("extra, says", [
    (["--rate", "nan"], "argument --rate: must be a finite number, got 'nan'"),
    (["--rate", "inf"], "argument --rate: must be a finite number, got 'inf'"),
    (["--rate", "5000"], "argument --rate: must be <= 1000 frames/s"),
    (["--exposure", "0"], "argument --exposure: must be > 0 s"),
    (["--exposure=-inf"], "argument --exposure: must be a finite number"),
    (["--scan", "100000x100000"], "argument --scan: 10000000000 points is more than"),
    (["--scan", "3x"], "argument --scan: must look like 40x40"),
    (["--workers", "0"], "argument --workers: must be between 1 and 64, got 0"),
    (["--workers", "two"], "argument --workers: expected a whole number, got 'two'"),
    (["--refine", "-1"], "argument --refine: must be >= 0"),
    (["--seed", "-1"], "argument --seed: must be between 0 and"),
])
def test_demo_values(extra, says, tmp_path, capsys):
    code, line = _fails(_demo(tmp_path, *extra), capsys, tmp_path)
    assert code == 2 and says in line, line
    assert line.startswith("ns-bluesky demo: error:")


def test_a_scan_larger_than_memory_is_refused_before_allocating(tmp_path, capsys):
    free = available_memory_bytes()
    if free is None:
        pytest.skip("no /proc/meminfo on this system: the memory check is not made")
    side = int((free / BYTES_PER_POINT) ** 0.5) + 2
    if side * side > 1_000_000:
        pytest.skip(f"{free / 2**30:.0f} GiB available: the point cap refuses before the memory check")
    code, line = _fails(_demo(tmp_path, "--scan", f"{side}x{side}"), capsys, tmp_path)
    assert code == 2 and "GiB are available" in line, line


def test_unwritable_outputs_are_refused_before_the_scan(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere: make it a file in the way instead
        locked.rmdir()
        locked.write_text("not a folder")
    code, line = _fails(_demo(tmp_path, "--summary-json", str(locked / "summary.json")), capsys, tmp_path)
    assert code == 2 and "argument --summary-json: cannot write in" in line, line
    code, line = _fails(["demo", "--catalog", str(tmp_path / "cat"), "--out", str(locked / "out")], capsys, tmp_path)
    assert code == 2 and "argument --out" in line, line


@pytest.mark.parametrize("extra, says", [
    (["--size", "-8"], "argument --size: must be between 8 and"),
    (["--size", "0"], "argument --size: must be between 8 and"),
    (["--iterations", "0"], "argument --iterations: must be between 1 and"),
    (["--seconds", "nan"], "argument --seconds: must be a finite number"),
    (["--seconds", "0"], "argument --seconds: must be > 0 s"),
])
def test_reconstruct_values(extra, says, tmp_path, capsys):
    cxi = tmp_path / "scan.cxi"
    cxi.write_bytes(b"")
    code, line = _fails(["reconstruct", str(cxi), *extra], capsys, tmp_path)
    assert code == 2 and says in line, line


def test_reconstruct_of_a_missing_file(tmp_path, capsys):
    code, line = _fails(["reconstruct", str(tmp_path / "nope.cxi")], capsys, tmp_path)
    assert code == 2 and f"no such file: {tmp_path / 'nope.cxi'}" in line


def test_a_corrupted_cxi_is_named_in_one_line(tmp_path, capsys):
    """A CXI file cut short (its frames half written, as by a full disk): h5py's error, with the file named."""
    cxi = tmp_path / "cut.cxi"
    with h5py.File(cxi, "w") as f:
        f.create_dataset("entry_1/instrument_1/detector_1/data", data=np.ones((64, 128, 128), np.float32))
    raw = cxi.read_bytes()
    cxi.write_bytes(raw[: len(raw) // 3])
    code, line = _fails(["reconstruct", str(cxi)], capsys, tmp_path)
    assert code == 1 and str(cxi) in line, line
    garbage = tmp_path / "garbage.cxi"
    garbage.write_bytes(os.urandom(4096))
    code, line = _fails(["reconstruct", str(garbage)], capsys, tmp_path)
    assert code == 1 and str(garbage) in line and "not an HDF5/CXI file" in line, line


def test_a_binary_pipeline_file_is_named_in_one_line(tmp_path, capsys):
    from ns_bluesky.errors import ParameterError
    from ns_bluesky.stream.config import load_config

    for name, content in [("pipe.toml", os.urandom(2048)), ("pipe.json", b"[1, 2]"),
                          ("pipe.yaml", b"modules: 7\n")]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ParameterError) as caught:
            load_config(path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value), caught.value
