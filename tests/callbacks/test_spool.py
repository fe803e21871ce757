"""The catalog's spool (``callbacks/spool.py``): the embedded tiled server killed in the middle of a scan, for
real, and a spool left by a session that crashed, written by ``ns-bluesky catalog flush``.

Each test has a catalog of its own (the session's shared one must not be killed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from bluesky import RunEngine

from ns_bluesky.callbacks.spool import catalog_writer, read_spool
from ns_bluesky.io import catalog as catalog_module
from ns_bluesky.io.catalog import close_catalogs, detector_dir, open_catalog
from ns_bluesky.ophyd_devices import make_sim_beamline
from ns_bluesky.plans import ptycho_scan

pytestmark = pytest.mark.slow

NS_BLUESKY = str(Path(sys.executable).with_name("ns-bluesky"))


def _server_pid(directory: Path) -> int:
    return catalog_module._servers[directory.resolve()][0].pid


def test_the_catalog_server_killed_mid_scan_loses_no_document(tmp_path, small_config):
    where = tmp_path / "cat"
    told: list[tuple[float, str]] = []
    writer = catalog_writer(where, batch_size=5, say=lambda line: told.append((time.monotonic(), line)))
    bl = make_sim_beamline(detector_dir(where), small_config, rate_hz=10.0)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(writer)
    events: list = []
    RE.subscribe(lambda name, doc: events.append(time.monotonic()) if name == "event" else None)
    killed: list[float] = []

    def kill_when_scanning():
        while len(events) < 8:
            time.sleep(0.02)
        os.kill(_server_pid(where), signal.SIGKILL)
        killed.append(time.monotonic())

    threading.Thread(target=kill_when_scanning, daemon=True).start()
    (uid,) = RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, shape=(5, 5), overlap=0.7, optics=bl.optics))
    writer.flush(180)
    writer.close()

    assert killed and writer.outages == 1
    down = [t for t, line in told if "not answering" in line]
    back = [line for _, line in told if "back after" in line]
    assert down and back, told
    print(f"told {down[0] - killed[0]:.2f} s after the SIGKILL; {back[0]}")
    assert down[0] - killed[0] < 10  # HEALTH_S is 0.5 s; the margin is for a loaded machine
    cat = open_catalog(where)  # the restarted server
    run = cat[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    seq = np.asarray(run["primary"]["seq_num"].read())
    assert sorted(seq.tolist()) == list(range(1, 26))  # every event, once
    frames = np.asarray(run["primary"]["fccd_image"].read())
    assert frames.shape[0] == 25 and frames.any(axis=(1, 2)).all()  # the frames still linked
    assert not list((where / "spool").glob("*.jsonl"))  # a run in the catalog leaves no spool behind
    close_catalogs(where)


def test_catalog_flush_writes_what_a_crashed_session_left(tmp_path, small_config):
    where = tmp_path / "cat"
    docs: list = []
    bl = make_sim_beamline(detector_dir(where), small_config, rate_hz=0)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    (uid,) = RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, shape=(3, 3), overlap=0.7, optics=bl.optics))
    open_catalog(where)  # the catalog exists, without this run
    spool = where / "spool"
    spool.mkdir(mode=0o700)
    cut = [(n, d) for n, d in docs if n != "stop"]  # the session died before the stop document
    (spool / f"{uid}.jsonl").write_text("".join(json.dumps([n, d], default=lambda v: v.tolist()) + "\n" for n, d in cut)
                                        + '["event", {"trunc')  # and in the middle of a line
    assert len(read_spool(spool / f"{uid}.jsonl")) == len(cut)
    close_catalogs(where)  # the command below starts its own
    out = subprocess.run([NS_BLUESKY, "catalog", "flush", "--catalog", str(where)], capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr
    assert f"wrote run {uid[:8]}: {len(cut) + 1} documents" in out.stdout
    run = open_catalog(where)[uid]
    assert run.metadata["stop"]["exit_status"] == "abort" and "catalog flush" in run.metadata["stop"]["reason"]
    assert run.metadata["stop"]["num_events"]["primary"] == 9
    assert np.asarray(run["primary"]["fccd_image"].read()).shape[0] == 9
    assert not list(spool.glob("*.jsonl"))
    again = subprocess.run([NS_BLUESKY, "catalog", "flush", "--catalog", str(where)], capture_output=True, text=True,
                           timeout=180)
    assert again.returncode == 0 and "nothing to write" in again.stdout
    close_catalogs(where)


def test_a_full_spool_disk_and_a_killed_server_still_lose_no_document(tmp_path, small_config):
    """The spool's disk (a real 1 MB tmpfs, filled) refuses every line, and the server dies mid-scan: the
    documents held in memory are written again to the restarted server, each once."""
    from tests.support.tmpfs import fill, small_disk

    where = tmp_path / "cat"
    with small_disk(where / "spool", "1m") as disk:
        fill(disk)
        told: list[tuple[float, str]] = []
        writer = catalog_writer(where, batch_size=5, say=lambda line: told.append((time.monotonic(), line)))
        bl = make_sim_beamline(detector_dir(where), small_config, rate_hz=10.0)
        RE = RunEngine({}, call_returns_result=False)
        RE.subscribe(writer)
        events: list = []
        RE.subscribe(lambda name, doc: events.append(time.monotonic()) if name == "event" else None)

        def kill_when_scanning():
            while len(events) < 8:
                time.sleep(0.02)
            os.kill(_server_pid(where), signal.SIGKILL)

        threading.Thread(target=kill_when_scanning, daemon=True).start()
        t0 = time.monotonic()
        (uid,) = RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, shape=(5, 5), overlap=0.7, optics=bl.optics))
        writer.flush(180)
        writer.close()
        full = [t - t0 for t, line in told if "cannot write the spool" in line]
        assert len(full) == 1 and full[0] < 2.0, told  # one line, at the run's first document
        assert writer.disk_full == 1 and writer.outages == 1
        run = open_catalog(where)[uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        assert sorted(np.asarray(run["primary"]["seq_num"].read()).tolist()) == list(range(1, 26))
        assert np.asarray(run["primary"]["fccd_image"].read()).shape[0] == 25
        close_catalogs(where)


def test_a_writer_caught_in_the_clients_retries_comes_back_with_the_idle_one(tmp_path):
    """Two writers on one catalog, as in the demo (raw and derived runs). The server dies as one of them sends a
    document: that request sits in the tiled client's retries (10 attempts, up to 45 s; measured in the faults
    benchmark: back 18 s after the idle writer). The health watch closes its client, so it reopens the catalog
    with the other one."""
    from event_model import compose_run

    where = tmp_path / "cat"
    told: list[tuple[float, str]] = []
    say = lambda line: told.append((time.monotonic(), line))  # noqa: E731
    idle, busy = (catalog_writer(where, name=name, say=say) for name in ("raw", "derived"))
    runs = [compose_run() for _ in range(2)]
    for writer, run in zip((idle, busy), runs):
        writer("start", run.start_doc)
    idle.flush(60)
    busy.flush(60)
    old_client = busy.catalog.context.http_client
    os.kill(_server_pid(where), signal.SIGKILL)
    desc = runs[1].compose_descriptor(name="primary", data_keys={"x": {"dtype": "number", "shape": [], "source": "sim"}})
    busy("descriptor", desc.descriptor_doc)  # into the client's retries: the server is gone
    busy("event", desc.compose_event(data={"x": 1.0}, timestamps={"x": time.time()}, seq_num=1))
    busy("stop", runs[1].compose_stop())
    idle("stop", runs[0].compose_stop())
    idle.flush(180)
    busy.flush(180)
    idle.close()
    busy.close()
    back = {line.split(":")[0]: t for t, line in told if "back after" in line}
    print([line for _, line in told])
    assert old_client.is_closed  # cut by the health watch
    assert set(back) == {"raw", "derived"}, told
    assert abs(back["derived"] - back["raw"]) < 10  # not the client's retry schedule apart
    cat = open_catalog(where, container="raw")
    for run in runs:
        assert cat[run.start_doc["uid"]].metadata["stop"]["exit_status"] == "success"
    assert cat[runs[1].start_doc["uid"]].metadata["stop"]["num_events"]["primary"] == 1
    close_catalogs(where)
