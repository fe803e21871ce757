"""Workers placed by SLURM: one batch job per worker, submitted, watched and cancelled by the handler.

The job script is generated from the pipeline configuration (one per module, kept in
``<log dir>/slurm/``): it ``exec``s the worker, so ``scancel`` signals the worker itself,
and the worker connects back to the handler's address (CURVE keys named by their
directory, never their contents). Nothing here waits on SLURM in the handler's loop: a
thread runs ``sbatch``, ``squeue`` and ``scancel`` (each with a deadline) and the loop
reads the last states it saw. A job that does not start stays PENDING in the status with
SLURM's reason; a job that ends unasked is replaced, with a back-off when jobs keep
failing, so a broken node or script never turns into a storm of submissions.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ParameterError
from .config import PipelineConfig
from .launcher import worker_args
from .logs import log_dir
from .security import LOOPBACK

log = logging.getLogger(__name__)

#: states after which SLURM has finished with a job (squeue -t all still lists them for MinJobAge)
ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
FAILED_WITHIN_S = 10.0  # a job ending unasked this soon after it was submitted counts towards the back-off
MAX_BACKOFF_S = 60.0
STARTING_POLL_S = 0.25  # squeue again this soon while a job is submitted or pending without a reason


class SlurmError(RuntimeError):
    """sbatch, squeue or scancel failed or ran past its deadline."""


@dataclass
class Job:
    id: str
    module: str
    submitted: float
    state: str = "SUBMITTED"  # until squeue first lists it
    reason: str = ""
    node: str = ""
    draining_since: float | None = None
    cancelled: bool = False

    def info(self, now: float) -> dict:
        return {"job": self.id, "module": self.module, "state": self.state, "reason": self.reason, "node": self.node,
                "age_s": round(now - self.submitted, 1), "draining": self.draining_since is not None, "cancelled": self.cancelled}


def job_name(module: str) -> str:
    return f"ns-bluesky-{module}"


def handler_address(cfg: PipelineConfig, worker_port: int) -> str:
    """The worker port as the nodes see it (keyless: the handler's ipc socket, reached only by jobs on this machine)."""
    if not cfg.curve_keys and not cfg.slurm.handler_host:
        return cfg.address(worker_port, connect=True)
    host = cfg.slurm.handler_host or (socket.getfqdn() if cfg.host in ("0.0.0.0", "*", "") else cfg.host)
    return f"tcp://{host}:{worker_port}"


def job_script(cfg: PipelineConfig, module: str, address: str, output: Path) -> str:
    """The batch script for one worker of ``module``: #SBATCH options from ``cfg.slurm``, then the worker."""
    s = cfg.slurm
    opts = [f"--job-name={job_name(module)}", "--ntasks=1", f"--cpus-per-task={s.cpus_per_worker}", f"--time={s.time_limit}",
            f"--output={output}"]
    if s.partition:
        opts.append(f"--partition={s.partition}")
    if s.account:
        opts.append(f"--account={s.account}")
    if s.mem_per_worker:
        opts.append(f"--mem={s.mem_per_worker}")
    if s.gpus_per_worker:
        opts.append(f"--gpus={s.gpus_per_worker}")
    opts += s.extra_args
    for opt in opts:
        if "\n" in opt or not opt.startswith("-"):
            raise ParameterError(f"slurm option {opt!r}: each must be one sbatch option such as '--qos=beamline'")
    cmd = [s.python or sys.executable, "-m", "ns_bluesky.stream.worker", *worker_args(cfg, module, address), "--give-up-s", f"{s.give_up_s:g}"]
    return "\n".join([
        "#!/bin/bash",
        *(f"#SBATCH {opt}" for opt in opts),
        f"# ns-bluesky: one {module!r} worker, connecting back to the handler at {address}.",
        "# Generated from the pipeline configuration; CURVE keys are read from their directory, never written here.",
        "exec " + " ".join(shlex.quote(c) for c in cmd),
        "",
    ])


class SlurmPool:
    """Keep ``spec.workers`` SLURM jobs per module, each running one worker (a :class:`~.launcher.WorkerLauncher`)."""

    def __init__(self, cfg: PipelineConfig, worker_port: int, *, env: dict | None = None):
        self.cfg, self.settings = cfg, cfg.slurm
        self.env = env  # None: this process's environment (SLURM_CONF and the like)
        self.address = handler_address(cfg, worker_port)
        host = self.address.split("//")[1].rsplit(":", 1)[0]
        if self.address.startswith("ipc://") or host in LOOPBACK:
            log.warning("SLURM workers connect to %s: only jobs placed on this machine can reach it. For other nodes bind "
                        "host = \"0.0.0.0\" (with curve_keys) or set slurm.handler_host", self.address)
        if cfg.curve_keys:
            secret = Path(cfg.curve_keys).expanduser() / "client.key_secret"
            if secret.is_file() and secret.stat().st_mode & 0o077:
                raise ParameterError(f"{secret} is readable by others; chmod 600 it before handing its directory to SLURM jobs")
        self.dir = log_dir(cfg.log_dir) / "slurm"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.scripts = {}
        for spec in cfg.modules:
            path = self.dir / f"{spec.name}.sbatch"
            path.write_text(job_script(cfg, spec.name, self.address, self.dir / f"{spec.name}-%j.out"))
            self.scripts[spec.name] = path
        self.jobs: dict[str, Job] = {}
        self.errors: dict[str, str] = {}
        self._wanted: dict[str, int] = {}
        self._to_drain: list[tuple[str, str]] = []
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="slurm-launcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ the handler's side (never waits)
    def reconcile(self, wanted: dict[str, int], drain: Callable[..., None], every_s: float = 0.3) -> None:
        with self._lock:
            if wanted != self._wanted:
                self._wanted = dict(wanted)
                self._wake.set()
            to_drain, self._to_drain = self._to_drain, []
        for module, job in to_drain:
            drain(module, job=job)

    def is_draining(self, pid: int, job: str | None) -> bool:
        with self._lock:
            known = self.jobs.get(job) if job else None
            return known is not None and (known.draining_since is not None or known.cancelled)

    def describe(self) -> dict:
        now = time.monotonic()
        with self._lock:
            return {"kind": "slurm", "address": self.address, "partition": self.settings.partition, "account": self.settings.account,
                    "output": str(self.dir),
                    "jobs": [j.info(now) for j in self.jobs.values()], "errors": dict(self.errors)}

    def stop_all(self, timeout_s: float = 3.0) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(self.settings.command_timeout_s + 5)
        with self._lock:
            ids = [j.id for j in self.jobs.values()]
        if ids:
            try:
                self._run(["scancel", *ids])
                log.info("cancelled SLURM jobs %s", ", ".join(ids))
            except SlurmError as exc:
                log.error("could not cancel SLURM jobs %s: %s", ", ".join(ids), exc)
        with self._lock:
            self.jobs.clear()
        self._save()

    # ------------------------------------------------------------ the thread's side
    def _run(self, cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=self.settings.command_timeout_s, env=self.env,
                                 stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise SlurmError(f"{cmd[0]} did not answer within {self.settings.command_timeout_s:g} s") from None
        except OSError as exc:
            raise SlurmError(f"{cmd[0]}: {exc.strerror or exc}") from None
        if out.returncode != 0:
            lines = (out.stderr or out.stdout).strip().splitlines()
            raise SlurmError(f"{cmd[0]} failed ({out.returncode}): {lines[-1] if lines else 'no output'}")
        return out.stdout

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._tick()
            except Exception:  # the launcher thread must outlive any one bad answer
                log.exception("SLURM launcher round failed; retrying")
            with self._lock:  # a job about to start is looked at again soon: its worker joins within a second
                starting = any(j.state == "SUBMITTED" or (j.state == "PENDING" and not j.reason) for j in self.jobs.values())
            self._wake.wait(min(STARTING_POLL_S, self.settings.poll_s) if starting else self.settings.poll_s)
            self._wake.clear()

    def _poll(self) -> None:
        """Refresh the states of our jobs; jobs SLURM has finished with leave the book."""
        with self._lock:
            if not self.jobs:
                return
            names = sorted({job_name(j.module) for j in self.jobs.values()})
        out = self._run(["squeue", "-h", "-t", "all", "-u", getpass.getuser(), "-n", ",".join(names), "-o", "%i|%T|%r|%N"])
        seen = {}
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 4:
                seen[parts[0]] = parts
        now = time.monotonic()
        with self._lock:
            for job in list(self.jobs.values()):
                if job.id in seen:
                    _, job.state, job.reason, job.node = seen[job.id]
                    job.reason = "" if job.reason == "None" else job.reason
                if job.id in seen and job.state not in ENDED:
                    if job.state == "RUNNING" and now - job.submitted > FAILED_WITHIN_S:
                        self._failures.pop(job.module, None)  # this module's jobs run again: no back-off, no stale error
                        self.errors.pop(job.module, None)
                    continue
                if job.id not in seen and now - job.submitted < 2 * self.settings.poll_s:
                    continue  # not listed yet
                del self.jobs[job.id]
                if job.cancelled or job.draining_since is not None:
                    continue
                log.warning("SLURM job %s (%s) ended unasked (%s%s); submitting a replacement", job.id, job.module,
                            job.state, f", {job.reason}" if job.reason else "")
                if now - job.submitted < FAILED_WITHIN_S:
                    self._backoff(job.module, f"job {job.id} ended {job.state} within {FAILED_WITHIN_S:g} s; see {self.dir}/{job.module}-{job.id}.out")

    def _backoff(self, module: str, why: str) -> None:
        n = self._failures.get(module, 0) + 1
        self._failures[module] = n
        self._retry_at[module] = time.monotonic() + min(2.0 ** n, MAX_BACKOFF_S)
        self.errors[module] = why

    def _tick(self) -> None:
        try:
            self._poll()
        except SlurmError as exc:  # states unknown: submit or cancel nothing on a guess
            self.errors["squeue"] = str(exc)
            log.error("%s", exc)
            return
        self.errors.pop("squeue", None)
        now = time.monotonic()
        cancel: list[Job] = []
        submit: list[str] = []
        with self._lock:
            for job in self.jobs.values():
                if job.draining_since is not None and not job.cancelled and now - job.draining_since > self.settings.drain_timeout_s:
                    job.cancelled = True  # its worker did not leave when let go
                    cancel.append(job)
            for module, n in self._wanted.items():
                active = [j for j in self.jobs.values() if j.module == module and j.draining_since is None and not j.cancelled]
                if len(active) < n and now >= self._retry_at.get(module, 0.0):
                    submit += [module] * (n - len(active))
                for job in sorted(active, key=lambda j: (j.state == "RUNNING", j.submitted), reverse=False)[: max(len(active) - n, 0)]:
                    if job.state == "RUNNING":
                        job.draining_since = now  # its worker finishes what it holds, then the job ends by itself
                        self._to_drain.append((module, job.id))
                    else:
                        job.cancelled = True  # never started: nothing to finish
                        cancel.append(job)
        if cancel:
            try:
                self._run(["scancel", *(j.id for j in cancel)])
                log.info("cancelled SLURM jobs %s", ", ".join(j.id for j in cancel))
            except SlurmError as exc:
                log.error("%s", exc)
        for module in submit:
            try:
                job_id = self._run(["sbatch", "--parsable", str(self.scripts[module])]).strip().split(";")[0]
            except SlurmError as exc:
                log.error("cannot submit a %s worker job: %s", module, exc)
                with self._lock:
                    self._backoff(module, str(exc))
                break
            with self._lock:
                self.jobs[job_id] = Job(job_id, module, time.monotonic())
            log.info("submitted SLURM job %s for a %s worker", job_id, module)
        if cancel or submit:
            self._save()

    def _save(self) -> None:
        """The job ids in ``<log dir>/slurm/jobs.json``, for 'pipeline stop' to cancel if the handler died."""
        with self._lock:
            ids = sorted(self.jobs)
        path = self.dir / "jobs.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"jobs": ids, "slurm_conf": (self.env or os.environ).get("SLURM_CONF")}))
        tmp.replace(path)


def cancel_saved_jobs(log_directory: str | None) -> list[str]:
    """Cancel the jobs a handler that is gone left in its jobs file (``pipeline stop`` with no handler answering)."""
    path = log_dir(log_directory) / "slurm" / "jobs.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    ids = [str(i) for i in saved.get("jobs", []) if str(i).isdigit()]
    env = dict(os.environ)
    if saved.get("slurm_conf") and "SLURM_CONF" not in env:  # the cluster the handler used
        env["SLURM_CONF"] = saved["slurm_conf"]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=20, stdin=subprocess.DEVNULL, env=env)
    path.write_text(json.dumps({"jobs": []}))
    return ids
