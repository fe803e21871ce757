"""Pre-processing throughput: raw 1040 x 1152 FCCD frames to 256 x 256 photon patterns, all nine steps.

    .venv/bin/python benchmarks/preprocess.py [--frames 64] [--batch 8]

Target: >= 200 raw frames/s on 2 cores (Nanosurveyor reached about 2 frames/s end to end).
Prints figures; passes or fails nothing.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ns_bluesky.ptycho.backend import get_xp
from ns_bluesky.ptycho.dark import DarkStatistics, bad_maps
from ns_bluesky.ptycho.preprocess import preprocess
from ns_bluesky.sim import PtychoSimulation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    args = ap.parse_args()
    sim = PtychoSimulation()
    geom = sim.geom
    darks = np.stack([sim.raw_frame(None, i) for i in range(8)])
    stats = DarkStatistics(geom.raw_shape)
    stats.update(darks)
    maps = bad_maps(stats, geom)
    raw = np.stack([sim.raw_frame(sim.planned[i], 100 + i) for i in range(args.frames)])
    kwargs = dict(
        dark_mean=stats.mean.astype(np.float32), bad_pixels=maps.pixels, adu_per_photon=sim.fccd.adu_per_photon,
        transmission_map=sim.beamstop_transmission_map,
    )
    print(f"cores: {os.cpu_count()}  frames: {args.frames}  batch: {args.batch}  backend: {args.backend}")
    if args.backend == "cupy":
        xp = get_xp("cupy")
        dev = {k: xp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
        batches = [xp.asarray(raw[i : i + args.batch]) for i in range(0, args.frames, args.batch)]
        for b in batches[:2]:
            preprocess(b, geom, xp=xp, **dev)
        xp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        out = [preprocess(b, geom, xp=xp, **dev) for b in batches]
        xp.cuda.Device().synchronize()
        dt = time.perf_counter() - t0
        print(f"GPU: {args.frames / dt:7.1f} raw frames/s (frames already on the GPU) -> {out[0].shape[1:]} patterns")
        return
    for threads in (1, 2):
        batches = [raw[i : i + args.batch] for i in range(0, args.frames, args.batch)]
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda b: preprocess(b, geom, **kwargs), batches[:threads]))  # warm-up
            t0 = time.perf_counter()
            out = list(pool.map(lambda b: preprocess(b, geom, **kwargs), batches))
            dt = time.perf_counter() - t0
        print(f"{threads} thread(s): {args.frames / dt:7.1f} raw frames/s -> {out[0].shape[1:]} float32 patterns")


if __name__ == "__main__":
    main()
