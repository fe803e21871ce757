"""A program's private pipeline (``PipelineProcess``) ends with the program, however the program ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from tests.support.processes import process_running

PROGRAM = textwrap.dedent("""
    import json, sys, time
    from ns_bluesky.stages.pipeline import ptycho_pipeline
    from ns_bluesky.stream.launcher import PipelineProcess
    pipe = PipelineProcess(ptycho_pipeline(free_ports=True, out_dir=sys.argv[1]), sys.argv[1]).start()
    status = pipe.control.status()
    pids = [status["pid"], *(w["pid"] for m in status["modules"].values() for w in m["workers"])]
    print(json.dumps(pids), flush=True)
    time.sleep(600)
""")


def test_a_killed_program_leaves_no_pipeline_running(tmp_path):
    """SIGKILL gives the program no chance to stop its pipeline: the handler sees its parent gone and stops,
    its workers follow it."""
    prog = subprocess.Popen([sys.executable, "-c", PROGRAM, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        pids = json.loads(prog.stdout.readline())
        assert len(pids) >= 2 and all(process_running(pid) for pid in pids)
        prog.send_signal(signal.SIGKILL)
        prog.wait(10)
        deadline = time.monotonic() + 30
        while (alive := [pid for pid in pids if process_running(pid)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive, f"still running after their program was killed: {alive}"
    finally:
        if prog.poll() is None:
            prog.kill()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_the_pipeline_gives_up_the_cpu_priority_it_is_told_to_and_its_workers_inherit_it(tmp_path):
    """Over EPICS the demo's processing yields to the IOC and the RunEngine on a shared host (``nice``):
    the handler lowers its own priority before it starts its workers, which add their own on top."""
    from ns_bluesky.stages.pipeline import ptycho_pipeline
    from ns_bluesky.stream.launcher import PipelineProcess

    base = os.getpriority(os.PRIO_PROCESS, 0)
    with PipelineProcess(ptycho_pipeline(free_ports=True, out_dir=str(tmp_path), recon_idle=False, nice=4),
                         tmp_path) as pipe:
        deadline = time.monotonic() + 60
        while True:
            modules = pipe.control.status()["modules"]
            if all(m["workers"] for m in modules.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert os.getpriority(os.PRIO_PROCESS, pipe.proc.pid) == min(base + 4, 19)
        group = f"/proc/{pipe.proc.pid}/autogroup"  # Linux with autogroup: its session's group is niced as well
        if os.path.exists(group):
            with open(group) as f:
                assert f.read().split()[-1] == str(min(base + 4, 19))  # the handler's own value
        nice = {name: {os.getpriority(os.PRIO_PROCESS, w["pid"]) for w in m["workers"]} for name, m in modules.items()}
        assert nice["frame"] == {min(base + 4, 19)} and nice["dark"] == {min(base + 4, 19)}, nice
