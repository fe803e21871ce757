"""``ns-bluesky queue`` against a real RE Manager with real Redis on loopback (the session's ``queue_server``):
a scan queued from the shell runs in the worker that loaded the beamline profile and lands in the catalog
(raw run in ``raw``, its derived run in ``processed``); bad parameters are refused before anything runs;
the keys stay in 0600 files, off command lines and logs."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
import yaml

from ns_bluesky.io.catalog import open_catalog
from ns_bluesky.io.catalog_layout import derived_runs

pytestmark = pytest.mark.slow


def _one_line_error(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ns-bluesky: error: "), result.stderr
    return lines[0]


def test_a_scan_queued_from_the_shell_lands_in_raw_and_its_derived_run_in_processed(queue_server):
    added = queue_server.cli("add", "ptycho_scan", "shape=3,3", "sample=from-the-shell", "--run")
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("queued ptycho_scan shape=[3, 3] sample=\"from-the-shell\""), added.stdout
    waited = queue_server.cli("wait", "120", timeout=150)
    assert waited.returncode == 0, waited.stderr
    deadline, row = time.monotonic() + 90, None
    while time.monotonic() < deadline:  # the derived run opens once the pipeline has the scan's first results
        history = queue_server.cli("history", "--json")
        assert history.returncode == 0, history.stderr
        row = next(r for r in reversed(json.loads(history.stdout)) if "from-the-shell" in r["plan"])
        if row["derived_uids"]:
            break
        time.sleep(1)
    assert row["exit_status"] == "completed", row
    (raw_uid,) = row["raw_uids"]
    cat = open_catalog(queue_server.catalog, create=False)
    start = cat[raw_uid].metadata["start"]
    assert start["plan_name"] == "ptycho_scan" and start["sample_name"] == "from-the-shell"
    assert start["session_defaults"]["optics"].startswith("session")  # the profile lent its optics
    assert cat[raw_uid]["primary"]["fccd_image"].shape[0] == 9
    derived = derived_runs(cat, raw_uid)
    assert derived and row["derived_uids"] == [d.metadata["start"]["uid"] for d in derived]
    assert derived[0].metadata["start"]["parent_uid"] == raw_uid
    text = queue_server.cli("history")
    assert f"raw {raw_uid[:8]}" in text.stdout and f"derived {row['derived_uids'][0][:8]}" in text.stdout


@pytest.mark.parametrize("params, reason", [
    (["shape=abc"], "shape: 'str' instances are not allowed as a Sequence value"),
    (["pattern=spiral"], "pattern: Input should be 'raster' or 'fermat'"),
    (["shap=3,3"], "got an unexpected keyword argument 'shap'"),
])
def test_bad_parameters_are_refused_with_the_reason_before_they_run(queue_server, params, reason):
    before = json.loads(queue_server.cli("status", "--json").stdout)["status"]
    line = _one_line_error(queue_server.cli("add", "ptycho_scan", *params))
    assert f"the queue server refused ptycho_scan: {reason}" in line
    after = json.loads(queue_server.cli("status", "--json").stdout)["status"]
    assert (after["items_in_queue"], after["items_in_history"]) == (before["items_in_queue"], before["items_in_history"])


def test_dark_frames_needs_its_count_and_says_so(queue_server):
    line = _one_line_error(queue_server.cli("add", "dark_frames"))
    assert "refused dark_frames" in line and "num" in line


def test_the_lists_are_generated_and_the_keys_stay_private(queue_server):
    qdir = queue_server.dir
    for name in ("control.key", "control.key.pub", "queue.json", "user_group_permissions.yaml", "redis.conf"):
        assert stat.S_IMODE(os.stat(qdir / name).st_mode) == 0o600, name
    assert stat.S_IMODE(os.stat(qdir).st_mode) == 0o700
    existing = yaml.safe_load((qdir / "existing_plans_and_devices.yaml").read_text())
    assert {"ptycho_scan", "dark_frames", "adaptive_ptycho"} <= set(existing["existing_plans"])
    assert {"fccd", "stage", "shutter", "optics"} <= set(existing["existing_devices"])
    assert queue_server.state["control_addr"].startswith("tcp://127.0.0.1:")
    private = (qdir / "control.key").read_text().strip()
    with open(f"/proc/{queue_server.state['manager_pid']}/cmdline", "rb") as f:
        assert private.encode() not in f.read()
    assert private not in (qdir / "logs" / "manager.log").read_text()
    status = queue_server.cli("status")
    assert status.returncode == 0 and status.stdout.startswith("manager idle, environment open"), status.stderr


def test_a_second_start_is_refused_while_one_runs(queue_server):
    again = queue_server.cli("start", "--catalog", str(queue_server.catalog), "--ipython-dir", str(queue_server.ipython_dir))
    assert "a queue server already runs" in _one_line_error(again)


def test_a_running_scan_pauses_resumes_and_aborts_from_the_shell(queue_server):
    added = queue_server.cli("add", "ptycho_scan", "shape=12,12", "sample=to-abort", "--run")
    assert added.returncode == 0, added.stderr

    def state() -> str:
        status = queue_server.cli("status", "--json")
        assert status.returncode == 0, status.stderr
        answer = json.loads(status.stdout)
        if answer["status"]["manager_state"] != "idle":  # the running plan is shown, no longer in the queue
            assert "to-abort" in json.dumps(answer["running"]) and not answer["queue"], answer
        return answer["status"]["manager_state"]

    deadline = time.monotonic() + 60
    while state() != "executing_queue":
        assert time.monotonic() < deadline, "the queued scan did not start"
        time.sleep(0.2)
    assert queue_server.cli("pause", "--now").returncode == 0
    deadline = time.monotonic() + 30
    while state() != "paused":
        assert time.monotonic() < deadline, "the scan did not pause"
        time.sleep(0.2)
    assert queue_server.cli("resume").returncode == 0
    aborted = queue_server.cli("abort", timeout=90)  # pauses the running plan first, then aborts it
    assert aborted.returncode == 0 and aborted.stdout.startswith("aborted; the plan is back at the front"), aborted.stderr
    assert queue_server.cli("wait", "60", timeout=90).returncode == 0
    queued = json.loads(queue_server.cli("status", "--json").stdout)["queue"]
    assert [i["kwargs"]["sample"] for i in queued] == ["to-abort"]  # queueserver puts it back to run again
    assert queue_server.cli("clear").stdout.strip() == "the queue is empty"
    assert json.loads(queue_server.cli("status", "--json").stdout)["queue"] == []
    rows = json.loads(queue_server.cli("history", "--json").stdout)
    row = next(r for r in reversed(rows) if "to-abort" in r["plan"])
    assert row["exit_status"] == "aborted" and len(row["raw_uids"]) == 1, row
    cat = open_catalog(queue_server.catalog, create=False)
    assert cat[row["raw_uids"][0]].metadata["stop"]["exit_status"] == "abort"
    assert cat[row["raw_uids"][0]]["primary"]["fccd_image"].shape[0] < 144  # 10 Hz: 14 s for all of them
    nothing = queue_server.cli("resume")  # nothing is paused now: the manager's reason, one line
    assert "the queue server refused to resume" in _one_line_error(nothing)
