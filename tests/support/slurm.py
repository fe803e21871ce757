"""A single-node SLURM cluster for tests and benchmarks: munged, slurmctld and slurmd in a temp dir.

Started by hand as in docs' scale-out notes (Debian's slurm-wlm, no systemd, no cgroups,
no accounting): a munge key and socket of its own, free TCP ports, ``SLURM_CONF`` in
:attr:`SlurmCluster.env` for every client (sbatch, squeue, scancel) the test starts.
Loaded for every test package by ``pytest_plugins`` in tests/conftest.py (the
``slurm_cluster`` fixture, once per session); where the binaries are missing or the
cluster does not come up, the tests that use it are skipped with the reason.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from ns_bluesky.stream.config import free_loopback_ports

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")

CONF = """ClusterName=nsbtest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthInfo=socket={d}/munge/munge.sock
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=5
{overrides}{users}NodeName=localhost CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def missing() -> str | None:
    """Why no cluster can start here, or None."""
    absent = [b for b in BINARIES if shutil.which(b) is None]
    if absent:
        return f"SLURM not installed ({', '.join(absent)} missing): apt-get install -y slurm-wlm munge"
    return None


def _tail(path: Path, n: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class SlurmCluster:
    """One node ``localhost`` with ``cpus`` CPUs (default: this machine's) in partition ``debug``; :meth:`stop` leaves nothing running."""

    def __init__(self, cpus: int | None = None):
        self.cpus = cpus or os.cpu_count() or 1
        self.dir = Path(tempfile.mkdtemp(prefix="nsb-slurm-"))
        self.conf = self.dir / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.partition = "debug"
        self._procs: list[subprocess.Popen] = []
        self._munged = False

    def start(self, timeout_s: float = 30.0) -> SlurmCluster:
        d = self.dir
        for sub in ("munge", "state", "spool", "log"):
            (d / sub).mkdir()
        root = os.geteuid() == 0
        (d / "munge").chmod(0o700 if root else 0o755)  # non-root munged wants its socket's directory searchable
        key = d / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        munged = ["munged", f"--key-file={key}", f"--socket={d}/munge/munge.sock", f"--pid-file={d}/munge/munged.pid",
                  f"--log-file={d}/log/munged.log", f"--seed-file={d}/munge/seed"]
        subprocess.run(munged + (["--force"] if root else []), check=True, timeout=10, capture_output=True)
        self._munged = True
        ctld_port, slurmd_port = free_loopback_ports(2)
        mem_kb = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")))
        user = getpass.getuser()
        self.conf.write_text(CONF.format(
            d=d, ctld_port=ctld_port, slurmd_port=slurmd_port, cpus=self.cpus, memory_mb=mem_kb // 2048,
            # more CPUs than the machine has: slurmd takes the configured count instead of draining the node
            overrides="SlurmdParameters=config_overrides\n" if self.cpus > (os.cpu_count() or 1) else "",
            users="" if root else f"SlurmUser={user}\nSlurmdUser={user}\n",
        ))
        for daemon in ("slurmctld", "slurmd"):
            with open(d / "log" / f"{daemon}.out", "wb") as out:
                self._procs.append(subprocess.Popen([daemon, "-D", "-f", str(self.conf)], stdout=out, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, env=self.env, start_new_session=True))
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self._procs):
                break
            try:
                state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True, timeout=5).stdout.strip()
            except subprocess.TimeoutExpired:
                state = "(sinfo timed out)"
            if state == "idle":
                return self
            time.sleep(0.1)
        logs = "\n".join(f"--- {name}\n{_tail(d / 'log' / name)}" for name in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"))
        self.stop()
        raise RuntimeError(f"the SLURM node did not become idle within {timeout_s:g} s (sinfo: {state!r})\n{logs}")

    def squeue(self) -> dict[str, str]:
        """Every job the cluster still lists: job id to state."""
        out = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=self.env, capture_output=True, text=True, timeout=10).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def wait_idle(self, timeout_s: float = 20.0) -> None:
        """Until no job is listed (a test's jobs are gone before the next test starts)."""
        deadline = time.monotonic() + timeout_s
        while self.squeue() and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> None:
        try:
            if self._procs and all(p.poll() is None for p in self._procs):
                subprocess.run(["scancel", f"--user={getpass.getuser()}"], env=self.env, capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for p in self._procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self._procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self._procs = []
        if self._munged:
            subprocess.run(["munged", "--stop", f"--socket={self.dir}/munge/munge.sock"], capture_output=True, timeout=10)
            self._munged = False
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster():
    """The session's single-node SLURM cluster (skips the test with the reason where it cannot run)."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster()
    try:
        cluster.start()
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"SLURM cluster did not start: {str(exc)[:2000]}")
    try:
        yield cluster
    finally:
        cluster.stop()
