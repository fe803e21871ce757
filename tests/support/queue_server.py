"""The ``queue_server`` fixture: one real RE Manager (bluesky-queueserver) with real Redis on loopback, started by
``ns-bluesky queue start`` for the whole session and shared by the shell's and the panel's tests.

Its worker loads the beamline profile (fresh install in a temporary IPython directory) on a catalog of its
own. Every command has a deadline; at the end ``queue stop`` runs, and whatever is left of the manager's
and Redis's process groups is killed. Skipped, with the reason, where redis-server is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import process_running

#: seconds the manager may take to open its environment (the profile starts a catalog and a pipeline)
START_S = 240


@dataclass
class QueueServer:
    dir: Path
    catalog: Path
    ipython_dir: Path
    state: dict

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """``ns-bluesky queue ARGS --dir DIR`` as a user types it, with a deadline."""
        return run_queue_cli(*args, "--dir", str(self.dir), timeout=timeout)


def run_queue_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ns_bluesky.apps.cli", "queue", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _kill_group(pid: int) -> None:
    if process_running(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture(scope="module")  # not the session: an idle manager's environment (its pipeline, catalog and Redis)
def queue_server(tmp_path_factory):  # took CPU from the timing-sensitive EPICS tests that run after it
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server): the queue server keeps "
                    "its queue in Redis")
    pytest.importorskip("bluesky_queueserver", reason="the queue extra is not installed: pip install 'ns-bluesky[queue]'")
    base = tmp_path_factory.mktemp("queue")
    qdir, catalog, ipy = base / "state", base / "catalog", base / "ipython"
    state: dict = {}
    try:
        started = run_queue_cli("start", "--dir", str(qdir), "--catalog", str(catalog), "--ipython-dir", str(ipy),
                                "--wait", str(START_S), timeout=START_S + 60)
        if (qdir / "queue.json").exists():
            state = json.loads((qdir / "queue.json").read_text())
        assert started.returncode == 0, started.stdout + started.stderr + _log_tail(qdir)
        yield QueueServer(qdir, catalog, ipy, state)
    finally:
        if (qdir / "queue.json").exists():
            state = json.loads((qdir / "queue.json").read_text()) or state
            try:
                run_queue_cli("stop", "--force", "--dir", str(qdir), timeout=90)
            except subprocess.TimeoutExpired:
                pass
        for key in ("manager_pid", "redis_pid"):
            if state.get(key):
                _kill_group(state[key])


def _log_tail(qdir: Path) -> str:
    try:
        return "\n" + (qdir / "logs" / "manager.log").read_text()[-3000:]
    except OSError:
        return ""
