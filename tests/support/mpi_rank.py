"""One rank of the MPI tests and benchmark: the small set (or a simulated one), an engine split over the ranks,
some iterations; rank 0 saves the whole object, the residuals and its seconds in collectives.

``python -m mpi4py -m tests.support.mpi_rank OUT.npz ENGINE ITERATIONS [PARAMS_JSON]``
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from ns_bluesky.ptycho.engines import engine, gather_object, prepare_split
from ns_bluesky.stream.mpi import MPIComm
from tests.support.ptycho_set import small_set


def main(argv: list[str]) -> None:
    out, name, iterations = argv[0], argv[1], int(argv[2])
    params = json.loads(argv[3]) if len(argv) > 3 else {}
    comm = MPIComm()
    data, _, probe, _ = small_set()
    eng = engine(name, threads=1, **params)
    share = prepare_split(eng, data, probe, comm)
    t0 = time.perf_counter()
    eng.iterate(iterations)
    seconds = time.perf_counter() - t0
    obj = gather_object(eng, share, comm)
    if comm.rank == 0:
        np.savez(out, object=obj, residuals=np.array(eng.residuals), seconds=seconds, comm_seconds=comm.seconds,
                 frames=len(share.frames))


if __name__ == "__main__":
    main(sys.argv[1:])
