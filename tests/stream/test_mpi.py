"""Reconstruction over MPI ranks, with real mpiexec (the MPICH wheel of the mpi extra): 1 and 2 ranks give
the same object; ``mpiexec -n 2 ns-bluesky reconstruct`` writes once; a killed rank, a failing rank and a
job past its deadline end with a clear error and leave no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mpi4py", reason="the mpi extra (mpi4py + the mpich wheel) is not installed")

from ns_bluesky.ptycho.metrics import nrmse  # noqa: E402
from ns_bluesky.stream.mpi import MPIJobError, descendants, mpiexec_path, run_mpiexec  # noqa: E402
from tests.support.ptycho_set import small_set  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": str(ROOT)}  # the ranks import tests.support


def _run(tmp_path, ranks: int, name: str, iterations: int, params: str = "{}") -> dict:
    out = tmp_path / f"{name}-{ranks}.npz"
    run_mpiexec(ranks, "tests.support.mpi_rank", [str(out), name, str(iterations), params], timeout_s=120, env=ENV)
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def _relative(a, b, mask):
    return float(np.linalg.norm((a - b)[mask]) / np.linalg.norm(a[mask]))


def _truth_error(est, obj, mask):
    h, w = obj.shape  # the engines' grid is 76 px here, the truth's 78: compare on the truth's
    return nrmse(np.pad(est, ((0, h - est.shape[0]), (0, w - est.shape[1])), constant_values=1), obj, mask)


@pytest.mark.parametrize(("name", "iterations", "params", "ranks", "tolerance"), [
    # RAAR reduces every sum of the overlap projection: the same arithmetic, summed in another order
    ("raar", 10, "{}", 2, 2e-3),
    # 4 ranks on 2 x 2 tiles: pixels in up to 4 parts, summed with 3 neighbours
    ("raar", 10, "{}", 4, 4e-3),
    # LSQ-ML with one batch of all frames: the same batches on 1 and 2 ranks; probe modes and position refinement on
    ("lsqml", 25, '{"batch_size": 64, "batch_doubling": 0}', 2, 1e-2),
])
def test_one_and_more_ranks_give_the_same_object(tmp_path, name, iterations, params, ranks, tolerance):
    one, two = _run(tmp_path, 1, name, iterations, params), _run(tmp_path, ranks, name, iterations, params)
    inner = np.zeros(one["object"].shape, bool)
    inner[16:-16, 16:-16] = True  # the well-covered region
    assert one["frames"] == 64 and two["frames"] == 64 // ranks  # rank 0 held its share of the frames
    # measured: 5e-4 (raar, 2 ranks), 1.3e-3 (raar, 4), 4e-3 (lsqml); residual curves alike
    assert _relative(one["object"], two["object"], inner) < tolerance
    assert two["residuals"][-1] == pytest.approx(one["residuals"][-1], rel=10 * tolerance)


def test_lsqml_mini_batches_over_two_ranks_reach_the_same_error(tmp_path):
    """Mini-batches are drawn on each rank from its own frames (the batch is both ranks' parts), so the path
    differs from one rank's; the result is as good."""
    _, obj, _, mask = small_set()
    one, two = _run(tmp_path, 1, "lsqml", 30), _run(tmp_path, 2, "lsqml", 30)
    e1, e2 = _truth_error(one["object"], obj, mask), _truth_error(two["object"], obj, mask)
    assert e1 < 0.15 and e2 < 0.15  # measured 0.121 and 0.118
    assert abs(e1 - e2) < 0.03


def _cxi(path):
    from ns_bluesky.instrument.units import ELECTRON_VOLT_J, wavelength_m
    from ns_bluesky.io.cxi import CXIData, write_cxi

    data, obj, probe, mask = small_set()
    n, distance, pixel = data.patterns.shape[-1], 0.08, 30e-6
    dx = distance * wavelength_m(800.0) / (n * pixel)
    t = data.origins_px * dx
    write_cxi(path, CXIData(frames=data.patterns * 1e4, translations_m=np.stack([t[:, 1], t[:, 0], np.zeros(len(t))], axis=1),
                            energy_J=800 * ELECTRON_VOLT_J, distance_m=distance, pixel_size_m=(pixel, pixel), probe=probe))


def _cli(ranks, *args):
    bindir = Path(sys.executable).parent
    return [mpiexec_path(), "-n", str(ranks), str(bindir / "ns-bluesky"), "reconstruct", *args]


def test_mpiexec_ns_bluesky_reconstruct_rank_0_writes(tmp_path):
    import h5py

    _cxi(tmp_path / "in.cxi")
    proc = subprocess.run(_cli(2, str(tmp_path / "in.cxi"), "--out", str(tmp_path / "out.cxi"), "--iterations", "8", "--quiet"),
                          capture_output=True, text=True, timeout=120, start_new_session=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("wrote") == 1 and "on 2 ranks" in proc.stdout  # rank 0 alone reports and writes
    with h5py.File(tmp_path / "out.cxi", "r") as f:
        assert f["entry_1/image_2/data"].shape == (78, 78)  # the grid of the translations in metres
        assert len(f["entry_1/ns_bluesky/reconstruction_residual"]) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.cxi", "out.cxi", "out.png"]


def _rank_pid(mpiexec: int, rank: int, timeout: float = 30) -> int:
    """The pid of rank ``rank`` among mpiexec's descendants (from its PMI_RANK)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for pid in descendants(mpiexec):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"PMI_RANK={rank}".encode() in env:
                return pid
        time.sleep(0.1)
    raise AssertionError(f"rank {rank} did not start")


def test_a_rank_killed_mid_run_ends_the_job_with_a_clear_error(tmp_path):
    _cxi(tmp_path / "in.cxi")
    proc = subprocess.Popen(_cli(2, str(tmp_path / "in.cxi"), "--out", str(tmp_path / "out.cxi"), "--iterations", "100000"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        victim = _rank_pid(proc.pid, 1)
        time.sleep(2.0)  # both ranks inside their iterations, in and out of the reductions
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        out, _ = proc.communicate(timeout=60)
        ended_after = time.monotonic() - t0
    finally:
        for pid in descendants(proc.pid) if proc.poll() is None else []:
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "BAD TERMINATION" in out and "signal 9" in out, out[-2000:]
    assert ended_after < 30  # measured ~0.4 s
    assert not (tmp_path / "out.cxi").exists()


def test_the_launcher_reports_a_killed_rank_and_a_deadline_in_one_line_and_leaves_nothing(tmp_path):
    errors: list[Exception] = []
    src = tmp_path / "x.npz"

    def job():
        try:
            run_mpiexec(2, "tests.support.mpi_rank", [str(src), "raar", "100000"], timeout_s=120, env=ENV)
        except MPIJobError as exc:
            errors.append(exc)

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.monotonic() + 30
    victim = None
    while victim is None and time.monotonic() < deadline:  # rank 1 of the job the thread started
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"PMI_RANK=1" in env and str(src).encode() in cmd:
                victim = int(pid)
        time.sleep(0.1)
    assert victim is not None
    time.sleep(1.0)
    os.kill(victim, signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive() and len(errors) == 1
    first = str(errors[0]).splitlines()[0]
    assert "failed with exit status" in first and ("BAD TERMINATION" in first or "KILLED" in first), first

    t0 = time.monotonic()
    with pytest.raises(MPIJobError, match="ran past its 3 s deadline"):
        run_mpiexec(2, "tests.support.mpi_rank", [str(src), "raar", "100000"], timeout_s=3, env=ENV)
    assert time.monotonic() - t0 < 15
    time.sleep(0.5)
    left = [p for p in filter(str.isdigit, os.listdir("/proc")) if _cmd_has(p, str(src))]
    assert left == []


def _cmd_has(pid: str, text: str) -> bool:
    try:
        return text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_an_error_on_the_ranks_ends_the_job_in_one_line(tmp_path):
    damaged = tmp_path / "damaged.cxi"  # exists, so the command line passes; the ranks fail reading it
    damaged.write_bytes(b"not an HDF5 file" * 64)
    proc = subprocess.run(_cli(2, str(damaged), "--quiet"), capture_output=True, text=True, timeout=60,
                          start_new_session=True)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ns-bluesky: error: rank")]
    assert lines and "damaged.cxi" in lines[0]
