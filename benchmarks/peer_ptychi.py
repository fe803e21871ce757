"""pty-chi's LSQ-ML on one of benchmarks/matrix.py's sets, for the matrix's side-by-side column.

Runs in a separate environment that has pty-chi (never the project's pins), e.g.

    python3 -m venv /tmp/venv-peers && /tmp/venv-peers/bin/pip install ptychi
    /tmp/venv-peers/bin/python benchmarks/peer_ptychi.py SET.npz OUT.npz --seconds 120 --threads 2

SET.npz: patterns (N, n, n) zero frequency centred, origins (N, 2) window corners (row, col) in object pixels,
the start probe (probe_start or start) and the object's shape (obj). OUT.npz: the object after each snapshot
(every --every seconds of run time) with its run time and epoch; matrix.py scores them (NRMSE) with the
project's metrics. Imports numpy, torch and ptychi only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("set", help="the set's .npz")
    ap.add_argument("out", help="snapshots .npz")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--every", type=float, default=5.0, help="snapshot every this many seconds of run time")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=96)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import ptychi.api as api
    from ptychi.api.task import PtychographyTask

    with np.load(args.set) as z:
        patterns, origins = z["patterns"].astype(np.float32), z["origins"].astype(np.float64)
        start = z["probe_start"] if "probe_start" in z else z["start"]
        shape = z["obj"].shape
    n = patterns.shape[-1]
    centres = origins + n / 2 - np.array(shape) / 2  # pty-chi: probe centres about the object's centre, pixels

    options = api.LSQMLOptions()  # the arrays go to the task; data zero frequency centred (pty-chi shifts it)
    options.object_options.pixel_size_m = 1.0
    options.object_options.optimizable = True
    options.object_options.step_size = 1
    options.probe_options.optimizable = True
    options.probe_options.step_size = 1
    options.probe_position_options.optimizable = False
    options.reconstructor_options.batch_size = args.batch
    options.reconstructor_options.num_epochs = args.epochs
    t0 = time.perf_counter()
    task = PtychographyTask(options, diffraction_data=patterns, object_data=torch.ones((1, *shape), dtype=torch.complex64),
                            probe_data=torch.as_tensor(start.astype(np.complex64))[None, None],
                            probe_position_x_px=centres[:, 1], probe_position_y_px=centres[:, 0])
    setup = time.perf_counter() - t0
    snaps, times, epochs = [], [], []
    wall, last = 0.0, -1e9
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        task.run(1)
        wall += time.perf_counter() - t0
        if wall - last >= args.every or wall >= args.seconds or epoch == args.epochs:
            last = wall
            snaps.append(task.get_data_to_cpu("object", as_numpy=True)[0].astype(np.complex64))
            times.append(wall)
            epochs.append(epoch)
            print(f"  pty-chi LSQML epoch {epoch:4d} {wall:7.1f} s", flush=True)
        if wall >= args.seconds:
            break
    np.savez(args.out, objects=np.stack(snaps), times=np.array(times), epochs=np.array(epochs), setup_s=setup,
             s_epoch=wall / max(epochs[-1], 1))


if __name__ == "__main__":
    main()
