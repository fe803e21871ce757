"""A full disk under the detector's frames (issue 22), on a real tmpfs: a scan whose frames cannot fit is
refused before its run opens; a disk that fills during a scan (someone else wrote to it) stops the scan at
once with one line naming the disk, keeps every frame already written, and closes the run in the catalog
with exit status 'fail' and the reason. The spool's own full disk is in ``tests/callbacks/test_spool_writer.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from bluesky import RunEngine

from ns_bluesky.errors import DiskFullError
from ns_bluesky.io.catalog import close_catalogs, detector_dir, open_catalog
from ns_bluesky.ophyd_devices import make_sim_beamline
from ns_bluesky.plans import dark_frames, ptycho_scan
from tests.support.tmpfs import fill, small_disk

NS_BLUESKY = str(Path(sys.executable).with_name("ns-bluesky"))


def test_a_scan_whose_frames_do_not_fit_is_refused_before_its_run_opens(tmp_path, small_config):
    with small_disk(tmp_path / "frames", "8m") as disk:
        bl = make_sim_beamline(disk, small_config, rate_hz=0)
        RE = RunEngine({}, call_returns_result=False)
        docs: list[str] = []
        RE.subscribe(lambda name, doc: docs.append(name))
        (dark,) = RE(dark_frames(bl.fccd, bl.shutter, 2))  # 4.7 MiB of frames: fits
        docs.clear()
        with pytest.raises(DiskFullError, match=r"20 frames need 46\.7 MiB in .*frames, [0-9.]+ MiB is free; the run "
                                                 r"was not started"):
            RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, shape=(4, 5), overlap=0.7, optics=bl.optics, dark_uid=dark))
        assert docs == []  # no run opened, nothing written
        assert len(list(disk.glob("*.h5"))) == 1  # the darks' file only


def test_a_disk_that_fills_mid_scan_stops_the_demo_in_one_line_and_keeps_the_frames(tmp_path):
    catalog, out, said = tmp_path / "catalog", tmp_path / "out", tmp_path / "demo.out"
    with small_disk(detector_dir(catalog), "64m") as disk:  # the darks and their statistics (18 MiB), the scan (22)
        with open(said, "w") as stdout:
            proc = subprocess.Popen([NS_BLUESKY, "demo", "--scan", "3x3", "--rate", "2", "--darks", "2", "--workers", "1",
                                     "--refine", "0", "--catalog", str(catalog), "--out", str(out)],
                                    stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "NS_BLUESKY_LOG": str(tmp_path / "demo.log")})
        try:
            deadline = time.monotonic() + 180
            while proc.poll() is None and time.monotonic() < deadline:
                if len(list(disk.glob("*.h5"))) == 2 and "ptycho_scan" in said.read_text(errors="replace"):
                    break  # the scan's file is open and its frames come
                time.sleep(0.1)
            assert proc.poll() is None, said.read_text()[-2000:]
            time.sleep(1.0)
            fill(disk)  # someone else's file takes the rest of the disk
            filled = time.monotonic()
            told = told_wall = None
            while proc.poll() is None and told is None and time.monotonic() - filled < 30:
                if "demo: stopped:" in said.read_text(errors="replace"):
                    told, told_wall = time.monotonic() - filled, time.time()
                time.sleep(0.05)
            proc.wait(120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        text = said.read_text(errors="replace")
        assert told is not None, text[-2000:]
        assert proc.returncode == 1
        last = text.strip().splitlines()[-1]
        assert last.startswith("ns-bluesky: error: fccd_image: the disk under") and "is full" in last, last
        assert "Traceback" not in text
        cat = open_catalog(catalog, create=False)
        raw = cat[-1]
        assert raw.metadata["start"]["plan_name"] == "ptycho_scan"
        stop = raw.metadata["stop"]
        assert stop["exit_status"] == "fail" and "is full" in stop["reason"], stop
        # the next frame found the disk full (at most a frame period and its rendering after it filled): from the
        # run's end (its stop document) to the line, what the command itself takes
        print(f"told {told:.2f} s after the disk filled, {told_wall - stop['time']:.2f} s after the run stopped")
        assert told_wall - stop["time"] < 2.0
        kept = int(stop["num_events"]["primary"])
        assert 1 <= kept < 9
        frames = np.asarray(raw["primary"]["fccd_image"].read())
        assert frames.shape[0] == kept and frames.any(axis=(1, 2)).all()  # every frame written is kept, readable
        close_catalogs(catalog)
