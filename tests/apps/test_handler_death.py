"""The pipeline's handler killed in the middle of a scan (issue 22): the scan completes in the catalog, the
user is told at once in one line, the command ends instead of waiting out its timeout, and ``replay``
processes the scan afterwards as an undisturbed pipeline would have.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ns_bluesky.apps.replay import replay
from tests.support.processes import process_running

pytestmark = pytest.mark.slow

NS_BLUESKY = str(Path(sys.executable).with_name("ns-bluesky"))


def _handler_pid(out: Path) -> int | None:
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ns_bluesky.stream.handler" in cmdline and str(out / "pipeline" / "pipeline.json").encode() in cmdline:
            return int(proc_dir.name)
    return None


def test_the_handler_killed_mid_scan_loses_nothing_and_the_scan_is_replayed(tmp_path, cat, catalog_dir):
    out = tmp_path / "out"
    said = tmp_path / "demo.out"
    with open(said, "w") as stdout:
        proc = subprocess.Popen([NS_BLUESKY, "demo", "--scan", "8x8", "--rate", "10", "--darks", "2", "--workers", "1",
                                 "--refine", "1", "--catalog", str(catalog_dir), "--out", str(out)],
                                stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "NS_BLUESKY_LOG": str(tmp_path / "demo.log")})
    try:
        deadline = time.monotonic() + 120
        while "ptycho_scan" not in said.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # the scan's progress bar: frames are flowing
        handler = _handler_pid(out)
        assert handler is not None and proc.poll() is None, said.read_text()[-2000:]
        time.sleep(1.5)
        os.kill(handler, signal.SIGKILL)
        killed = time.monotonic()
        told = None
        while told is None and time.monotonic() - killed < 30:
            if "pipeline's handler" in said.read_text():
                told = time.monotonic() - killed
            time.sleep(0.05)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    text = said.read_text()
    print(f"the user was told {told} s after the handler's SIGKILL")
    assert told is not None and told < 10, text[-2000:]  # WATCH_S is 0.25 s; the margin is for a loaded CI
    assert f"(pid {handler}) ended during the run (killed by SIGKILL)" in text
    assert proc.returncode == 1, text[-2000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith("ns-bluesky: error:") and "'ns-bluesky replay " in last, last
    uid8 = re.search(r"ns-bluesky replay (\w+)'", last)[1]
    assert not process_running(handler)

    raw = cat[uid8]  # the scan is whole in the catalog
    assert raw.metadata["stop"]["exit_status"] == "success" and raw.metadata["stop"]["num_events"]["primary"] == 64
    frames = np.asarray(raw["primary"]["fccd_image"].read())
    assert frames.shape == (64, 1040, 1152) and frames.any(axis=(1, 2)).all()

    result = replay(uid8, catalog=catalog_dir, out=tmp_path / "replay", workers=1, progress=False, end_timeout_s=120,
                    refine_s=1)
    assert result["frames"] == 64 and result["usable"] == 64 and result["flags"] == {}
    assert result["derived_uid"] and np.isfinite(result["residual"])
