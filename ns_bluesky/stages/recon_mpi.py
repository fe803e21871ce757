"""The live reconstruction's whole-scan refinement over MPI ranks (``ranks: N`` in the recon module's params).

Why the stage starts ``mpiexec`` for its refinement rather than running its worker under it: while the
scan runs, frames join the estimate one by one and an image goes out every second; ranks in lockstep would
need each frame routed to its rank and all of them to agree when it joins, for little gain on a growing
set. The refinement after the scan (``refine_seconds``, 60 s by default: most of the compute) solves the
whole scan again from the live probe, the offline problem SHARP splits. So the worker hands the scan to an
MPI job (a file in, a file out; numpy's format, no pickles), each rank takes its share
(:mod:`ns_bluesky.ptycho.engines.split`), rank 0 decides each iteration whether time is left and writes
the result. A rank that dies ends the job, not the worker: the run ends with the live final image and a
one-line error in the worker's log.

Run by the stage as ``mpiexec -n N python -m mpi4py -m ns_bluesky.stages.recon_mpi IN.npz OUT.npz``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from ..ptycho.backend import set_fft_threads
from ..ptycho.engines import PtychoData, engine, gather_object, prepare_split
from ..stream.mpi import MPIComm, cores_per_rank, run_mpiexec

#: seconds an MPI job may take beyond its refinement budget (start-up of the ranks, the gather, the files)
STARTUP_S = 60.0


def refine_over_mpi(
    ranks: int, patterns: np.ndarray, origins_px: np.ndarray, weights: np.ndarray, probe: np.ndarray,
    shape: tuple[int, int], *, engine_name: str, backend: str, seconds: float, max_iterations: int, start_iteration: int = 0,
) -> dict:
    """Solve the scan again on ``ranks`` MPI ranks for at most ``seconds`` (and ``max_iterations``), from
    ``probe`` and a flat object of ``shape``; the result as a dict (object, probe, residuals, iteration).
    :class:`ns_bluesky.stream.mpi.MPIJobError` when the job fails or runs past its deadline."""
    with tempfile.TemporaryDirectory(prefix="ns-recon-mpi-") as tmp:
        src, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, patterns=np.asarray(patterns, np.float32), origins=np.asarray(origins_px, np.float64),
                 weights=np.asarray(weights, np.float32), probe=np.asarray(probe, np.complex64), shape=np.array(shape))
        args = [str(src), str(out), "--engine", engine_name, "--backend", backend, "--seconds", str(seconds),
                "--max-iterations", str(max_iterations), "--start-iteration", str(start_iteration)]
        run_mpiexec(ranks, __name__, args, timeout_s=seconds + STARTUP_S)
        with np.load(out, allow_pickle=False) as f:
            return {"object": f["object"], "probe": f["probe"], "residuals": f["residuals"].tolist(),
                    "iteration": int(f["iteration"])}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="one rank of the live reconstruction's refinement (started by the stage)")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--engine", default="lsqml")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--max-iterations", type=int, default=4000)
    p.add_argument("--start-iteration", type=int, default=0)
    args = p.parse_args(argv)
    comm = MPIComm()
    set_fft_threads(cores_per_rank())  # the ranks on a host share its cores
    with np.load(args.src, allow_pickle=False) as f:
        data = PtychoData(f["patterns"], f["origins"], f["weights"])
        probe, shape = f["probe"], tuple(int(v) for v in f["shape"])
    start = np.ones(shape, np.complex64)
    eng = engine(args.engine, backend=args.backend, threads=cores_per_rank())
    share = prepare_split(eng, data, probe, comm, start)
    eng.iteration = eng.data_changed_at = args.start_iteration  # iterations count on, for the error curve
    t0, last, go = time.monotonic(), 0.0, np.ones(1, np.int32)
    while True:
        if comm.rank == 0:  # rank 0's clock decides for all: every rank takes the same number of iterations
            done = eng.iteration - args.start_iteration
            go[0] = int(time.monotonic() - t0 + last <= args.seconds and done < args.max_iterations)
        comm.bcast(go)
        if not go[0]:
            break
        t = time.monotonic()
        eng.iterate(1)
        last = time.monotonic() - t
    obj = gather_object(eng, share, comm, start)
    if comm.rank == 0:
        _, probe, residuals = eng.finalize()
        np.savez(args.out, object=obj, probe=probe, residuals=np.asarray(residuals, np.float64), iteration=eng.iteration)


if __name__ == "__main__":
    main()
