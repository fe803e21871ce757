"""Pre-processing throughput: raw 1040 x 1152 FCCD frames to 256 x 256 photon patterns, all nine steps.

    .venv/bin/python benchmarks/preprocess.py [--frames 64] [--batch 8] [--against HEAD] [--repeat 2] [--profile]

Target: >= 200 raw frames/s on 2 cores (Nanosurveyor reached about 2 frames/s end to end).
``--against REV`` also runs ``ns_bluesky/ptycho/preprocess.py`` as it is at git revision REV,
alternating with the working tree's in the same process on the same frames: on a shared
machine only such side-by-side ratios compare, figures from separate runs do not.
``--profile`` prints where one thread's time goes, per function (cProfile, own time).
Prints figures; passes or fails nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import os
import pstats
import re
import subprocess
import tempfile
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ns_bluesky.ptycho import preprocess as current
from ns_bluesky.ptycho.backend import get_xp
from ns_bluesky.ptycho.dark import DarkStatistics, bad_maps
from ns_bluesky.sim import PtychoSimulation

MODULE_PATH = "ns_bluesky/ptycho/preprocess.py"


def module_at(rev: str) -> types.ModuleType:
    """The pre-processing module as committed at ``rev`` (read with ``git show``; nothing is checked out)."""
    root = Path(__file__).resolve().parents[1]
    show = ["git", "show", f"{rev}:{MODULE_PATH}"]
    src = subprocess.run(show, cwd=root, capture_output=True, text=True, check=True).stdout
    # a sibling of the installed module, so that its relative imports resolve against the package
    name = "ns_bluesky.ptycho._preprocess_at_" + re.sub(r"\W", "_", rev)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "preprocess.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return mod


def throughput(pool: ThreadPoolExecutor, run, batches, threads: int) -> tuple[float, float]:
    """Raw frames per second, and the process's CPU milliseconds per frame (all threads): the
    CPU cost stays meaningful when other jobs take cores from the wall-clock figure."""
    list(pool.map(run, batches[:threads]))  # warm-up
    frames = sum(len(b) for b in batches)
    t0, c0 = time.perf_counter(), time.process_time()
    list(pool.map(run, batches))
    return frames / (time.perf_counter() - t0), 1e3 * (time.process_time() - c0) / frames


def profile(name: str, run, batches) -> None:
    """Own time per function over all batches on one thread, in ms per frame."""
    run(batches[0])
    prof = cProfile.Profile()
    prof.enable()
    for b in batches:
        run(b)
    prof.disable()
    frames = sum(len(b) for b in batches)
    stats = pstats.Stats(prof).stats
    rows = sorted(((tt, f) for f, (_, _, tt, _, _) in stats.items()), reverse=True)
    total = sum(tt for tt, _ in rows)
    print(f"{name}: {1e3 * total / frames:.2f} ms per frame on one thread; own time per function:")
    for tt, (path, line, func) in rows[:12]:
        where = f"{Path(path).name}:{line}" if line else path
        print(f"  {1e3 * tt / frames:6.2f} ms  {100 * tt / total:4.1f} %  {func} ({where})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    ap.add_argument("--against", metavar="REV", help="also time the module committed at this revision, alternately")
    ap.add_argument("--repeat", type=int, default=1, help="measurements per thread count (and version)")
    ap.add_argument("--profile", action="store_true", help="print where one thread's time goes")
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
            current.preprocess(b, geom, xp=xp, **dev)
        xp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        out = [current.preprocess(b, geom, xp=xp, **dev) for b in batches]
        xp.cuda.Device().synchronize()
        dt = time.perf_counter() - t0
        print(f"GPU: {args.frames / dt:7.1f} raw frames/s (frames already on the GPU) -> {out[0].shape[1:]} patterns")
        return
    versions = {"working tree": current}
    if args.against:
        versions = {args.against: module_at(args.against), **versions}
    runs = {name: (lambda b, m=mod: m.preprocess(b, geom, **kwargs)) for name, mod in versions.items()}
    batches = [raw[i : i + args.batch] for i in range(0, args.frames, args.batch)]
    shape = runs["working tree"](batches[0]).shape[1:]
    if args.against:
        new, old = runs["working tree"](batches[0]), runs[args.against](batches[0])
        diff = np.abs(new - old).max()
        print(f"max |working tree - {args.against}| on the first batch: {diff:.3g} ({diff / np.abs(old).max():.2g} of the peak)")
    for threads in (1, 2):
        with ThreadPoolExecutor(threads) as pool:
            for _ in range(args.repeat):
                got = {name: throughput(pool, run, batches, threads) for name, run in runs.items()}
                figures = "  ".join(f"{name}: {fps:6.1f} ({cpu:5.2f} CPU ms/frame)" for name, (fps, cpu) in got.items())
                ratio = f"  x{got['working tree'][0] / got[args.against][0]:.2f}" if args.against else ""
                print(f"{threads} thread(s): {figures} raw frames/s{ratio} -> {shape} float32 patterns")
    if args.profile:
        for name, run in runs.items():
            profile(name, run, batches)


if __name__ == "__main__":
    main()
