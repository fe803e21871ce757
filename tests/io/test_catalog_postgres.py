"""The catalog on PostgreSQL: ``ns-bluesky catalog serve`` on a real PostgreSQL server started for the session.

Runs written over HTTP with the api key from a 0600 file; the queries users ask
(scan id, time range, sample, full text); two RunEngines in two processes writing at
once; PostgreSQL restarted under a scan in progress. Skipped, with the reason, where
PostgreSQL is not installed (tests/support/postgres.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ns_bluesky.errors import CatalogError
from ns_bluesky.io.catalog import data_dir, last_scan_id, open_catalog, search_runs

WRITER = [sys.executable, "-m", "tests.support.catalog_writer"]


@pytest.fixture
def served(pg_catalog, monkeypatch):
    """The served catalog, with this process's api key from the 0600 file."""
    monkeypatch.delenv("NS_BLUESKY_API_KEY", raising=False)
    monkeypatch.setenv("NS_BLUESKY_API_KEY_FILE", str(pg_catalog.key_file))
    return pg_catalog


def _write(served, *args, timeout=120) -> list[dict]:
    proc = subprocess.run([*WRITER, served.url, *args], env=served.env(), capture_output=True, text=True,
                          timeout=timeout, cwd=os.getcwd())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_the_server_publishes_where_detectors_write_and_wants_its_key(served, monkeypatch):
    cat = open_catalog(served.url)
    assert any(s.name == "CatalogOfBlueskyRuns" for s in cat.specs)
    assert data_dir(served.url, cat) == served.detector_dir
    monkeypatch.setenv("NS_BLUESKY_DETECTOR_DIR", "/mnt/detector")  # the same directory mounted elsewhere
    assert str(data_dir(served.url, cat)) == "/mnt/detector"
    monkeypatch.delenv("NS_BLUESKY_API_KEY_FILE")
    monkeypatch.setenv("NS_BLUESKY_API_KEY", "wrongkey")
    with pytest.raises(CatalogError, match="wants an api key: it was refused; set"):
        open_catalog(served.url)
    key = served.key_file.read_text().strip()
    assert key not in served.log.read_text(errors="replace")  # the key is in no log line
    assert key not in " ".join(served.proc.args)


def test_runs_written_over_http_answer_the_queries_users_ask(served):
    before = time.time()
    gold, star = _write(served, "--events", "7", "--sample", "gold-balls,siemens-star")
    after = time.time()
    cat = open_catalog(served.url)
    run = cat[gold["uid"]]
    assert run.metadata["stop"]["exit_status"] == "success" and run.metadata["stop"]["num_events"]["primary"] == 7
    assert np.asarray(run["primary"]["det1"].read()).shape == (7,) and cat[star["uid"]].metadata["start"]["sample_name"] == "siemens-star"
    sid = run.metadata["start"]["scan_id"]
    assert cat[sid].metadata["start"]["uid"] == gold["uid"]  # c[scan_id]: the CatalogOfBlueskyRuns spec
    assert set(search_runs(cat, scan_id=sid)) >= {gold["uid"]}
    assert set(search_runs(cat, sample="gold-balls")) >= {gold["uid"]} and star["uid"] not in search_runs(cat, sample="gold-balls")
    assert {gold["uid"], star["uid"]} <= set(search_runs(cat, since=before, until=after))
    assert not set(search_runs(cat, since=after + 3600))
    assert gold["uid"] in set(search_runs(cat, text="gold")) and star["uid"] not in set(search_runs(cat, text="gold"))
    assert last_scan_id(cat) >= cat[star["uid"]].metadata["start"]["scan_id"]
    names = [name for name, _ in cat[star["uid"]].documents()]
    assert names[0] == "start" and names[-1] == "stop"


def test_two_runengines_write_at_once(served):
    procs = [subprocess.Popen([*WRITER, served.url, "--runs", "3", "--events", "15", "--sample", f"two-writers-{i}"],
                              env=served.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
    assert [p.returncode for p in procs] == [0, 0], [err[-1500:] for _, err in outs]
    cat = open_catalog(served.url)
    for i, (out, _) in enumerate(outs):
        uids = [json.loads(line)["uid"] for line in out.splitlines() if line.startswith("{")]
        assert set(search_runs(cat, sample=f"two-writers-{i}")) == set(uids) and len(uids) == 3
        for uid in uids:
            run = cat[uid]
            assert run.metadata["stop"]["exit_status"] == "success"
            assert list(np.asarray(run["primary"]["det1"].read()).shape) == [15]
            assert list(np.asarray(run["primary"]["seq_num"].read())) == list(range(1, 16))


def test_postgresql_restarted_mid_scan_loses_nothing(served, postgres):
    """The server's connections die with PostgreSQL; tiled's client retries the failed requests, so the run
    ends with its stop document and every event once, in order."""
    proc = subprocess.Popen([*WRITER, served.url, "--events", "40", "--delay", "0.05", "--sample", "restarted"],
                            env=served.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        cat = open_catalog(served.url)
        while time.monotonic() < deadline and not len(search_runs(cat, sample="restarted")):
            time.sleep(0.2)  # until the start document is in
        assert len(search_runs(cat, sample="restarted")) == 1, "the scan never started"
        time.sleep(1.0)  # some 20 events in
        logged = len(served.log.read_bytes())
        postgres.restart()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 0, err[-2000:]
    assert b"500 Internal Server Error" in served.log.read_bytes()[logged:], "the restart did not reach a request"
    cat = open_catalog(served.url)
    (uid,) = set(search_runs(cat, sample="restarted"))
    assert [json.loads(line)["uid"] for line in out.splitlines() if line.startswith("{")] == [uid]
    run = cat[uid]
    assert run.metadata["stop"] is not None and run.metadata["stop"]["exit_status"] == "success"
    assert list(np.asarray(run["primary"]["seq_num"].read())) == list(range(1, 41))
