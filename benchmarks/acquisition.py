"""Acquisition throughput: frames simulated per second, and frames per second through
RunEngine + HDF5 + catalog at ``--rate 0``. Prints figures; passes or fails nothing.

    .venv/bin/python benchmarks/acquisition.py [--scan 20x40] [--sim-frames 200]

Target (the FCCD's design rate, unverified at COSMIC): 100 frames/s for both on 2 cores.
The catalog figure counts until the catalog holds every frame reference (writer flushed).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from bluesky import RunEngine

from ns_bluesky.apps.demo import parse_scan
from ns_bluesky.callbacks.spool import catalog_writer
from ns_bluesky.instrument.scan import ScanPattern
from ns_bluesky.io.catalog import close_catalogs, detector_dir, open_catalog
from ns_bluesky.ophyd_devices import ReplaySource, make_sim_beamline
from ns_bluesky.plans import ptycho_scan
from ns_bluesky.sim import PtychoSimulation
from ns_bluesky.sim.settings import SimConfig


def simulated_frames_per_s(sim: PtychoSimulation, n: int, threads: int, light: bool = True) -> float:
    positions = sim.planned

    def one(i: int) -> None:
        sim.raw_frame(positions[i % len(positions)] if light else None, i)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(threads)))  # warm-up
        t0 = time.perf_counter()
        list(pool.map(one, range(n)))
        return n / (time.perf_counter() - t0)


def catalog_frames_per_s(scan: tuple[int, int], replay: bool, batch_size: int) -> tuple[float, float]:
    """(frames/s until the plan ends, frames/s until the catalog holds everything)."""
    with tempfile.TemporaryDirectory() as d:
        cat = open_catalog(d)
        bl = make_sim_beamline(detector_dir(d), SimConfig(scan=ScanPattern(shape=scan, overlap=0.7)), rate_hz=0)
        for axis in (bl.stage.x, bl.stage.y):
            axis.settle_time.put(0.0)
        if replay:
            bank = np.stack([bl.sim.raw_frame(bl.sim.planned[i], i) for i in range(16)])
            dark = np.stack([bl.sim.raw_frame(None, i) for i in range(4)])
            bl.fccd.source = ReplaySource(bank, dark, bl.sim.geom)
        RE = RunEngine({}, call_returns_result=False)
        writer = catalog_writer(d, batch_size=batch_size)
        RE.subscribe(writer)
        n = scan[0] * scan[1]
        t0 = time.perf_counter()
        (uid,) = RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, shape=scan, overlap=0.7, optics=bl.optics))
        t_plan = time.perf_counter() - t0
        writer.close()
        t_all = time.perf_counter() - t0
        assert cat[uid]["primary"]["fccd_image"].shape[0] == n, "catalog lost frames"
        close_catalogs()
        return n / t_plan, n / t_all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", default="20x40", help="scan for the catalog figures (default 20x40 = 800 frames)")
    ap.add_argument("--sim-frames", type=int, default=200, help="frames for the simulation figures")
    ap.add_argument("--batch-size", type=int, default=25, help="TiledWriter batch size (default: the package's)")
    ap.add_argument("--replay-only", action="store_true", help="skip the physics-in-the-loop catalog figure")
    args = ap.parse_args()
    scan = parse_scan(args.scan)
    print(f"cores: {os.cpu_count()}  numpy {np.__version__}")
    sim = PtychoSimulation(SimConfig(scan=ScanPattern(shape=(40, 40), overlap=0.7)))
    for threads in (1, 2):
        light = simulated_frames_per_s(sim, args.sim_frames, threads)
        dark = simulated_frames_per_s(sim, args.sim_frames, threads, light=False)
        print(f"raw frames simulated, {threads} thread(s): {light:7.1f} light frames/s   {dark:7.1f} dark frames/s")
    cases = ((True, "replayed frames (acquisition stack alone)"), (False, "physics simulated in the loop"))
    for replay, label in cases[: 1 if args.replay_only else 2]:
        plan, total = catalog_frames_per_s(scan, replay, args.batch_size)
        print(
            f"RunEngine + HDF5 + catalog, {label}, {scan[0]}x{scan[1]} at --rate 0: "
            f"{plan:6.1f} frames/s to the plan's end, {total:6.1f} frames/s until the catalog holds all"
        )


if __name__ == "__main__":
    main()
