"""``ns-bluesky demo --epics`` as a user runs it: a real subprocess that starts its own IOC on loopback.

The demo process starts the simulated IOC, drives it over Channel Access, streams the frames through the
pipeline and records raw and derived runs in the session's catalog (the demo connects to the session's
embedded server); the test then reads the raw run back and checks it holds the frames the IOC filed, and
that the IOC is gone, after a normal end and after Ctrl-C.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from tiled.queries import Key

from ns_bluesky.io.catalog_layout import processed_of
from tests.support.processes import process_running

pytestmark = pytest.mark.slow

NS_BLUESKY = str(Path(sys.executable).with_name("ns-bluesky"))


def _demo(args: list[str], out: Path, catalog_dir: Path) -> tuple[subprocess.Popen, Path]:
    """The demo with its output in a file (the pipeline's workers inherit it: a pipe would stay open after
    the demo ended, as long as the slowest of them)."""
    out.mkdir(parents=True)
    said = out.parent / "demo.out"
    env = {**os.environ, "NS_BLUESKY_LOG": str(out.parent / "demo.log")}
    with open(said, "w") as stdout:
        proc = subprocess.Popen([NS_BLUESKY, "demo", "--epics", "--quiet", "--catalog", str(catalog_dir), "--out",
                                 str(out), *args], stdout=stdout, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    return proc, said


def _finish(proc: subprocess.Popen, said: Path, timeout_s: float) -> str:
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the demo did not end within {timeout_s:g} s; its output ends:\n"
                             f"{said.read_text()[-3000:]}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return said.read_text()


def test_demo_over_epics_files_every_frame_through_the_ioc_and_stops_it(tmp_path, cat, catalog_dir):
    out = tmp_path / "out"
    proc, said = _demo(["--scan", "6x6", "--rate", "20", "--darks", "2", "--workers", "1", "--refine", "2"], out,
                       catalog_dir)
    output = _finish(proc, said, 300)
    assert proc.returncode == 0, output[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["path"] == "epics" and summary["exit_status"] == "success" and summary["frames"] == 36
    ioc = summary["ioc"]
    assert ioc["prefix"] == "NSDEMO:" and ioc["address"] == "127.0.0.1" and ioc["port"] > 0
    assert f"epics (IOC NSDEMO: on 127.0.0.1:{ioc['port']})" in output
    assert ioc["cpu_s_scan"] > 0 and ioc["cpu_s_per_frame"] > 0
    assert not process_running(ioc["pid"]), "the demo left its IOC running"
    assert not _started_for(out / "ioc")

    raw = cat[summary["raw_uid"]]
    frames = raw["primary"]["fccd_image"]
    assert frames.shape == (36, 1040, 1152)
    (source,) = frames.data_sources()
    files = [asset.data_uri.removeprefix("file://localhost") for asset in source.assets]
    assert files and all(Path(f).is_relative_to(Path(catalog_dir).resolve()) for f in files)
    ioc_log = Path(ioc["log"]).read_text()
    with h5py.File(files[0], "r") as f:  # the file the IOC wrote: the catalog serves exactly its frames
        np.testing.assert_array_equal(f["entry/data/data"][()], np.asarray(frames.read()))
    assert raw.metadata["start"]["exposure_s"] == pytest.approx(0.015)  # 20 Hz: 30 % of the period exposes
    assert "acquisition failed" not in ioc_log  # (caproto logs beacon tracebacks: no repeater on loopback)

    derived = processed_of(cat).search(Key("parent_uid") == summary["raw_uid"])
    assert summary["derived_uid"] in list(derived)
    assert derived[summary["derived_uid"]].metadata["stop"]["exit_status"] == "success"
    assert Path(summary["png"]).stat().st_size > 10_000
    assert math.isfinite(summary["nrmse"]) and 0 < summary["nrmse"] < 0.6


def test_ctrl_c_during_the_epics_scan_stops_the_ioc(tmp_path, catalog_dir):
    out = tmp_path / "out"
    proc, said = _demo(["--scan", "30x30", "--rate", "10", "--darks", "2", "--workers", "1"], out, catalog_dir)
    pid = None
    try:
        deadline = time.monotonic() + 180
        while pid is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            if found := re.search(r"EPICS path: IOC \S+ on 127\.0\.0\.1:\d+ \(pid (\d+)", said.read_text()):
                pid = int(found[1])
        assert pid is not None and process_running(pid), said.read_text()[-2000:]
        while not _scanning(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _scanning(out), "the demo's pipeline never saw a run"
        time.sleep(2)  # mid-scan, as test_demo_and_replay's Ctrl-C test
        proc.send_signal(signal.SIGINT)
        output = _finish(proc, said, 120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 130, output[-2000:]
    assert "interrupted" in output
    assert not process_running(pid), "Ctrl-C left the demo's IOC running"
    deadline = time.monotonic() + 15  # nor anything else it started (the pipeline stops in its own time)
    while (left := _started_for(out)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"still running after Ctrl-C: {left}"


def _scanning(out: Path) -> bool:
    """The demo's pipeline is up with all its workers and has seen a run."""
    from ns_bluesky.stream.client import ControlClient
    from ns_bluesky.stream.config import load_config

    try:
        status = ControlClient(load_config(out / "pipeline" / "pipeline.json"), timeout_s=1).status()
    except Exception:
        return False
    return bool(status["runs"]) and all(m["workers"] for m in status["modules"].values())


def _started_for(out: Path) -> list[str]:
    """Command lines of the live processes that name ``out`` (the IOC, the pipeline's handler and workers)."""
    found = []
    for proc_dir in Path("/proc").iterdir():
        if proc_dir.name.isdigit() and process_running(int(proc_dir.name)):
            try:
                cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(out) in cmdline:
                found.append(cmdline[:200])
    return found
