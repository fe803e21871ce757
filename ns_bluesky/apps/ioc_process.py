"""The simulated IOC as a child process of one program (``ns-bluesky demo --epics``): started, watched, stopped.

The IOC runs ``python -m ns_bluesky.apps.ioc`` on a Channel Access port free on 127.0.0.1, in a process group
of its own, with its log in a file; ``start`` waits for its ``{"ioc": "ready"}`` line (or fails with the log's
last line), and ``stop`` (also on leaving the ``with`` block after an error or Ctrl-C) interrupts it, then kills
the group if it does not end in time. On Linux the IOC is also told to end when this process dies, so even a
killed demo leaves no IOC behind. ``cpu_s`` reads the IOC's CPU time from ``/proc`` for the demo's summary.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import DeviceError

#: Linux ``prctl(PR_SET_PDEATHSIG)``: the signal a child gets when its parent dies
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: stop() in a finally is the only guard


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far, from ``/proc/<pid>/stat``; None where unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


class IOCProcess:
    """``with IOCProcess(port, prefix, workdir, ...) as ioc:`` the IOC serving on ``port``; ``ioc.ready`` is
    what it said when ready (pvs, port, tcp_port, prefix)."""

    def __init__(self, *, port: int, prefix: str, workdir: str | os.PathLike, description: Path | None = None,
                 simulation: Path | None = None, rate_hz: float = 10.0, ready_timeout_s: float = 60.0,
                 stop_timeout_s: float = 10.0, draw_ahead: bool = True):
        self.port, self.prefix, self.workdir = port, prefix, Path(workdir)
        self.description, self.simulation, self.rate_hz = description, simulation, rate_hz
        self.ready_timeout_s, self.stop_timeout_s = ready_timeout_s, stop_timeout_s
        self.draw_ahead = draw_ahead
        self.log_path = self.workdir / "ioc.log"
        self.proc: subprocess.Popen | None = None
        self.ready: dict = {}

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "ns_bluesky.apps.ioc", "--port", str(self.port), "--prefix", self.prefix,
                "--rate", repr(float(self.rate_hz)), "--interfaces", "127.0.0.1"]
        if self.description is not None:
            args += ["--description", str(self.description)]
        if self.simulation is not None:
            args += ["--simulation", str(self.simulation)]
        return args if self.draw_ahead else [*args, "--no-draw-ahead"]

    def start(self) -> IOCProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "NS_BLUESKY_LOG": str(self.log_path)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=log, env=env, start_new_session=True,
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            self.ready = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> dict:
        deadline = time.monotonic() + self.ready_timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline and sel.select(timeout=max(0.0, deadline - time.monotonic())):
                line = self.proc.stdout.readline()
                if not line:
                    break  # it ended
                try:
                    said = json.loads(line)
                except ValueError:
                    continue
                if isinstance(said, dict) and said.get("ioc") == "ready":
                    return said
        lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else "no output"
        state = "ended" if self.proc.poll() is not None else f"did not answer within {self.ready_timeout_s:g} s"
        raise DeviceError(f"the simulated IOC {state} on port {self.port}: {why} (log: {self.log_path})")

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def cpu_s(self) -> float | None:
        return None if self.proc is None or self.proc.poll() is not None else cpu_seconds(self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGINT to the IOC's group (it closes its file and ends), then SIGKILL if it has not ended in time."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        try:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGINT)
                    proc.wait(self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
                except ProcessLookupError:
                    pass
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def __enter__(self) -> IOCProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
