"""Local worker processes: started, counted, replaced when they die, drained when scaled down."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable

from .config import PipelineConfig
from .logs import log_dir
from .shm import unlink_worker_segments

log = logging.getLogger(__name__)


class LocalPool:
    """Keep ``spec.workers`` worker processes per module alive on this machine."""

    def __init__(self, cfg: PipelineConfig, worker_port: int):
        self.cfg, self.port = cfg, worker_port
        self.procs: dict[str, list[subprocess.Popen]] = {spec.name: [] for spec in cfg.modules}
        self.draining: set[int] = set()
        self._last = 0.0

    def command(self, module: str) -> list[str]:
        spec = next(m for m in self.cfg.modules if m.name == module)
        cmd = [
            sys.executable, "-m", "ns_bluesky.stream.worker",
            "--module", spec.module, "--name", spec.name,
            "--address", self.cfg.address(self.port, connect=True),
            "--params", json.dumps(spec.params), "--credits", str(spec.credits),
            # the worker gives the handler 1.5x the handler's own patience before reconnecting
            "--heartbeat-s", str(self.cfg.heartbeat_s), "--liveness", str(int(self.cfg.liveness * 1.5)),
            "--exit-with-parent",
        ]
        if self.cfg.log_dir:
            cmd += ["--log-dir", self.cfg.log_dir]
        if self.cfg.curve_keys:
            cmd += ["--curve-keys", self.cfg.curve_keys]
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
