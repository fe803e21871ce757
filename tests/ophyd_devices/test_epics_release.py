"""Releasing an EPICS beamline's channels while Ophyd still reads their metadata must not crash the process.

Clearing a channel under one of Ophyd's dispatcher threads is a use-after-free in libca: CI died of it in the
teardown of test_epics_faults' last test. Before tests.support.epics.release_channels waited for those threads,
these rounds crashed 3 runs of 3 within 150 rounds (at rounds 1, 1 and 61).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_made_and_released_a_hundred_times_against_a_live_ioc_the_process_lives(tmp_path):
    rounds = 100
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_CA_")}  # ports of its own
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-m", "tests.support.epics_release_rounds",
                           str(rounds), str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"round {rounds} of {rounds}" in proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]  # no Ophyd thread read a cleared channel
