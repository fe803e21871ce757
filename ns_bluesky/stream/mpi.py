"""MPI for the reconstruction: the communicator the engines reduce through (:class:`MPIComm`, over
mpi4py), whether this process is one of several ranks (:func:`mpi_size_from_env`), and the launcher that
starts ``mpiexec`` with a deadline and kills its whole process group (:func:`run_mpiexec`).

mpi4py and the MPICH wheel come with the ``mpi`` extra: ``mpiexec`` is the one beside the venv's python.
Ranks run as ``python -m mpi4py`` where this module starts them: an uncaught exception on one rank then
ends the job (MPI_Abort) instead of leaving the others waiting in a collective. Only buffers travel
between ranks (Allreduce, Bcast, Send/Recv of arrays), never pickles.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import ParameterError

#: what MPICH's hydra (PMI), Open MPI and PMIx launchers set in each rank's environment
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


def mpi_size_from_env() -> int:
    """How many ranks the launcher that started this process started (1 when none did)."""
    for name in _SIZE_VARS:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1


def cores_per_rank() -> int:
    """This host's cores shared by the ranks the launcher put on it (MPICH's MPI_LOCALNRANKS, Open MPI's
    OMPI_COMM_WORLD_LOCAL_SIZE): each rank's threads and FFT workers, so that ranks do not oversubscribe."""
    local = os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or str(mpi_size_from_env())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(local) if local.isdigit() else 1))


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise ParameterError("MPI needs the mpi extra: pip install 'ns-bluesky[mpi]'") from None
    return MPI


class MPIComm:
    """:class:`ns_bluesky.ptycho.engines.Communicator` over an mpi4py communicator (COMM_WORLD by default).

    ``seconds`` adds up the time spent in its collectives (waiting for the slowest rank included): the
    communication share of an iteration in ``benchmarks/mpi.py``.
    """

    def __init__(self, comm=None):
        mpi = _mpi()
        self._mpi = mpi
        self.comm = comm if comm is not None else mpi.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.seconds = 0.0
        self.calls = 0

    def _timed(self, fn: Callable, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1

    def allreduce(self, buf: np.ndarray, op: str = "sum") -> None:
        ops = {"sum": self._mpi.SUM, "max": self._mpi.MAX}
        if op not in ops:
            raise ValueError(f"unknown reduction {op!r}")
        self._timed(self.comm.Allreduce, self._mpi.IN_PLACE, buf, op=ops[op])

    def bcast(self, buf: np.ndarray, root: int = 0) -> None:
        self._timed(self.comm.Bcast, buf, root=root)

    def gather(self, a: np.ndarray, root: int = 0) -> list[np.ndarray] | None:
        """Shapes first (a fixed-size gather of int64), then each rank's buffer to the root."""
        a = np.ascontiguousarray(a)
        shape = np.full(8, -1, np.int64)
        shape[: a.ndim] = a.shape
        shapes = np.empty((self.size, 8), np.int64) if self.rank == root else None
        self._timed(self.comm.Gather, shape, shapes, root=root)
        if self.rank != root:
            self._timed(self.comm.Send, a, dest=root, tag=7)
            return None
        out = []
        for r in range(self.size):
            if r == root:
                out.append(a.copy())
                continue
            part = np.empty(tuple(int(v) for v in shapes[r] if v >= 0), a.dtype)
            self._timed(self.comm.Recv, part, source=r, tag=7)
            out.append(part)
        return out

    def exchange(self, sends: dict[int, np.ndarray], recvs: dict[int, np.ndarray]) -> None:
        """Non-blocking receives and sends with every neighbour at once, then wait for all."""
        requests = [self.comm.Irecv(buf, source=r, tag=11) for r, buf in recvs.items()]
        requests += [self.comm.Isend(buf, dest=r, tag=11) for r, buf in sends.items()]
        self._timed(self._mpi.Request.Waitall, requests)

    def barrier(self) -> None:
        self._timed(self.comm.Barrier)

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


def mpiexec_path() -> str:
    """The MPICH wheel's ``mpiexec`` beside this python (a venv's bin/), else one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    found = shutil.which("mpiexec")
    if found is None:
        raise ParameterError("no mpiexec: install the mpi extra (pip install 'ns-bluesky[mpi]', the MPICH wheel)")
    return found


def mpiexec_command(ranks: int, module: str, args: Sequence[str]) -> list[str]:
    """``mpiexec -n RANKS python -m mpi4py -m MODULE ARGS`` (``module`` a module's name, or a path to a .py
    script): a rank's uncaught exception aborts the job."""
    if ranks < 1:
        raise ParameterError(f"ranks must be >= 1, got {ranks}")
    target = [module] if module.endswith(".py") else ["-m", module]
    return [mpiexec_path(), "-n", str(ranks), sys.executable, "-m", "mpi4py", *target, *args]


class MPIJobError(RuntimeError):
    """An MPI job that failed (a rank died or raised) or ran past its deadline; the message is one line."""


def run_mpiexec(ranks: int, module: str, args: Sequence[str], timeout_s: float, *, env: dict | None = None) -> str:
    """Run ``module`` on ``ranks`` ranks and return its output; :class:`MPIJobError` (one line, the last
    lines of the output after it) when it fails or outlives ``timeout_s``. The job runs in its own process
    group (mpiexec, its proxies and the ranks), which is killed in every case: nothing is left behind."""
    cmd = mpiexec_command(ranks, module, args)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, _ = proc.communicate()
        raise MPIJobError(f"MPI job ({ranks} ranks, {module}) ran past its {timeout_s:.0f} s deadline and was killed"
                          f"\n{_tail(out)}") from None
    finally:
        _kill_group(proc)
    if proc.returncode != 0:
        raise MPIJobError(f"MPI job ({ranks} ranks, {module}) failed with exit status {proc.returncode}: "
                          f"{_reason(out)}\n{_tail(out)}")
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; elsewhere none). Hydra puts its proxy and each rank in a
    session of their own, so killing mpiexec's process group alone would leave them running."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])  # after "pid (comm) state"
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    """mpiexec, its proxies and its ranks, whatever session each is in."""
    below = descendants(proc.pid) if proc.poll() is None else []
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(out: str | None, lines: int = 15) -> str:
    return "\n".join((out or "").rstrip().splitlines()[-lines:])


def _reason(out: str | None) -> str:
    """The line that says what went wrong: a rank's error, else MPICH's 'BAD TERMINATION' notice."""
    text = (out or "").splitlines()
    for key in ("Error:", "Error", "BAD TERMINATION", "KILLED BY SIGNAL", "Abort"):
        hit = next((line.strip() for line in text if key in line), None)
        if hit:
            return hit
    return "no output"
