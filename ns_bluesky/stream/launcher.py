"""Where workers run: one interface, two launchers (local processes here, SLURM jobs in :mod:`.slurm`).

Either keeps ``spec.workers`` workers per module: started, counted, replaced when they
die, drained when scaled down. The handler calls only what :class:`WorkerLauncher` names.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .config import PipelineConfig
from .logs import log_dir
from .shm import unlink_worker_segments

log = logging.getLogger(__name__)


class WorkerLauncher(Protocol):
    """What the handler asks of whatever starts its workers."""

    def reconcile(self, wanted: dict[str, int], drain: Callable[..., None], every_s: float = 0.3) -> None:
        """Bring each module towards ``wanted`` workers; ``drain(module, pid)`` or ``drain(module, job=id)`` lets one go once idle.

        Called from the handler's loop every few ms: it must return at once (no waiting on a scheduler)."""

    def is_draining(self, pid: int, job: str | None) -> bool:
        """Whether a worker registering now was already scaled away (it is then let go once idle)."""

    def describe(self) -> dict:
        """What the status shows: the launcher's kind and its units (SLURM: job ids and states)."""

    def stop_all(self, timeout_s: float = 3.0) -> None:
        """Every worker this launcher started is ended (after the handler told them to shut down)."""


def worker_args(cfg: PipelineConfig, module: str, address: str) -> list[str]:
    """The worker's command-line options for ``module`` (the same for a local process and a SLURM job)."""
    spec = next(m for m in cfg.modules if m.name == module)
    args = [
        "--module", spec.module, "--name", spec.name, "--address", address,
        "--params", json.dumps(spec.params), "--credits", str(spec.credits), "--nice", str(spec.nice),
        # the worker gives the handler 1.5x the handler's own patience before reconnecting
        "--heartbeat-s", str(cfg.heartbeat_s), "--liveness", str(int(cfg.liveness * 1.5)),
        "--max-array-mb", f"{cfg.max_array_mb:g}",
    ]
    if spec.idle:
        args += ["--idle"]
    if cfg.log_dir:
        args += ["--log-dir", cfg.log_dir]
    if cfg.curve_keys:
        args += ["--curve-keys", cfg.curve_keys]  # a directory: the keys stay in their 0600 files
    return args


class LocalPool:
    """Keep ``spec.workers`` worker processes per module alive on this machine."""

    def __init__(self, cfg: PipelineConfig, worker_port: int):
        self.cfg, self.port = cfg, worker_port
        self.procs: dict[str, list[subprocess.Popen]] = {spec.name: [] for spec in cfg.modules}
        self.draining: set[int] = set()
        self._last = 0.0

    def command(self, module: str) -> list[str]:
        cmd = [sys.executable, "-m", "ns_bluesky.stream.worker", *worker_args(self.cfg, module, self.cfg.address(self.port, connect=True)),
               "--exit-with-parent"]
        if self.cfg.shm_slot_mb:
            cmd += ["--shm-slot-bytes", str(int(self.cfg.shm_slot_mb * 2**20))]
        return cmd

    def reconcile(self, wanted: dict[str, int], drain: Callable[[str, int], None], every_s: float = 0.3) -> None:
        now = time.monotonic()
        if now - self._last < every_s:
            return
        self._last = now
        for module, procs in self.procs.items():
            for p in [p for p in procs if p.poll() is not None]:
                procs.remove(p)
                unlink_worker_segments(p.pid)  # a killed worker could not remove its own
                if p.pid in self.draining:
                    self.draining.discard(p.pid)
                else:
                    log.warning("worker %s pid %d exited with %s; starting a replacement", module, p.pid, p.returncode)
            active = [p for p in procs if p.pid not in self.draining]
            for _ in range(wanted.get(module, 0) - len(active)):
                logs = log_dir(self.cfg.log_dir)
                logs.mkdir(parents=True, exist_ok=True)
                with open(logs / f"{module}.stderr", "ab") as err:  # start-up tracebacks kept
                    p = subprocess.Popen(self.command(module), stdin=subprocess.DEVNULL, stderr=err)
                procs.append(p)
                log.info("started worker %s pid %d", module, p.pid)
            for p in active[wanted.get(module, 0):]:
                self.draining.add(p.pid)
                drain(module, p.pid)
                log.info("draining worker %s pid %d (scale down)", module, p.pid)

    def pids(self) -> dict[str, list[int]]:
        return {m: [p.pid for p in procs] for m, procs in self.procs.items()}

    def is_draining(self, pid: int, job: str | None) -> bool:
        return job is None and pid in self.draining

    def describe(self) -> dict:
        return {"kind": "local", "pids": self.pids()}

    def stop_all(self, timeout_s: float = 3.0) -> None:
        procs = [p for ps in self.procs.values() for p in ps]
        deadline = time.monotonic() + timeout_s
        for p in procs:
            try:
                p.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                p.terminate()
        for p in procs:
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            unlink_worker_segments(p.pid)


class PipelineProcess:
    """A handler and its local workers as a child process, for one program's lifetime (the demo, replay, tests).

    ``with PipelineProcess(cfg, workdir) as pipe:`` writes the configuration next to the
    logs, starts the handler, waits until every module has a worker, and on leaving
    (also after Ctrl-C or an error) asks it to stop, then terminates what is left.
    """

    def __init__(self, cfg: PipelineConfig, workdir, *, ready_timeout_s: float = 60.0):
        self.cfg, self.workdir, self.ready_timeout_s = cfg, Path(workdir), ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self.control = None

    def start(self) -> PipelineProcess:
        from .client import ControlClient

        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.cfg.log_dir is None:
            self.cfg.log_dir = str(self.workdir / "logs")
        path = self.workdir / "pipeline.json"
        path.write_text(self.cfg.model_dump_json(indent=2))
        log_dir(self.cfg.log_dir).mkdir(parents=True, exist_ok=True)
        with open(log_dir(self.cfg.log_dir) / "handler.stderr", "ab") as err:
            # a lowered priority ('nice') must reach across sessions: in a session of its own the handler and its
            # workers form one scheduling group (Linux autogroup), whose nice value the handler sets
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ns_bluesky.stream.handler", "--config", str(path), "--exit-with-parent"],
                stdin=subprocess.DEVNULL, stderr=err, start_new_session=self.cfg.nice > 0,
            )
        self.control = ControlClient(self.cfg, timeout_s=5)
        try:
            self.control.wait_ready(self.ready_timeout_s)
        except BaseException:  # Ctrl-C while it starts too: the caller has no handle to stop it with yet
            self.stop()
            raise
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.control("stop")
            except Exception:
                self.proc.terminate()  # SIGTERM closes it like 'stop'
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> PipelineProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
