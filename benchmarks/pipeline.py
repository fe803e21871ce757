"""End to end: the demo's live pipeline on a simulated 40 x 40 scan of raw FCCD frames. Prints figures.

    .venv/bin/python benchmarks/pipeline.py [--scan 40x40] [--skip-rate0] [--offline-iterations 100]

Against the paper's 1600 frames at 10 Hz with a complete reconstruction about 5 minutes
after the start (about 2 frames/s end to end). Targets: final image <= 5 s after the
last frame at 10 Hz; a live update at least every 2 s during the scan; >= 100 frames/s
end to end at --rate 0; the streaming result's NRMSE within 10 % of the offline
``reconstruct`` on the same cleaned frames (the pipeline's CXI).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from ns_bluesky.apps import reconstruct
from ns_bluesky.apps.demo import parse_scan, run_demo
from ns_bluesky.io.catalog import close_catalogs, open_catalog
from ns_bluesky.sim.experiment import PtychoSimulation
from ns_bluesky.sim.scoring import score
from ns_bluesky.sim.settings import SimConfig


def offline_nrmse(cat_dir: str, raw_uid: str, cxi: str, iterations: int, out: str) -> tuple[float, float]:
    """(NRMSE, seconds) of ``reconstruct`` on the pipeline's cleaned CXI, scored like the live result."""
    cat = open_catalog(cat_dir)
    start = cat[raw_uid].metadata["start"]
    sim = PtychoSimulation(SimConfig(**start["simulation"]["config"]))
    t0 = time.perf_counter()
    rec = reconstruct.run(cxi, out, iterations=iterations, progress=False)
    seconds = time.perf_counter() - t0
    return score(sim, start, rec.obj, rec.pixel_size_m, rec.probe.shape[-1]), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", default="40x40")
    ap.add_argument("--rate", type=float, default=10.0, help="frame rate of the live-reconstruction run (default 10)")
    ap.add_argument("--offline-iterations", type=int, default=100)
    ap.add_argument("--skip-rate0", action="store_true", help="skip the --rate 0 throughput run")
    args = ap.parse_args()
    scan = parse_scan(args.scan)
    print(f"cores: {os.cpu_count()}  scan {scan[0]}x{scan[1]} = {scan[0] * scan[1]} raw 1040x1152 frames")
    with tempfile.TemporaryDirectory() as d:
        r = run_demo(scan=scan, rate_hz=args.rate, out=f"{d}/live", catalog=f"{d}/cat", progress=False)
        print(f"live at {args.rate:g} Hz: acquisition {r.acquisition_s:.1f} s ({r.acquisition_frames_per_s:.1f} frames/s), "
              f"final image {r.last_frame_to_final_s} s after the last frame, largest gap between live updates "
              f"{r.max_update_gap_s} s; NRMSE {r.nrmse_first_final} at the final image, {r.nrmse} after refining "
              f"({r.last_frame_to_refined_s} s after the last frame, {r.iterations} iterations in all)")
        off, secs = offline_nrmse(f"{d}/cat", r.raw_uid, r.cxi, args.offline_iterations, f"{d}/offline.cxi")
        print(f"offline reconstruct of the same {r.frames} cleaned frames, {args.offline_iterations} iterations "
              f"({secs:.0f} s): NRMSE {off:.4f}; streaming / offline = {r.nrmse_first_final / off:.3f} at the final "
              f"image, {r.nrmse / off:.3f} refined")
        close_catalogs()
        if not args.skip_rate0:
            r0 = run_demo(scan=scan, rate_hz=0, out=f"{d}/rate0", catalog=f"{d}/cat0", progress=False, prerendered=32)
            print(f"--rate 0 (32 prerendered frames cycled): acquisition {r0.acquisition_frames_per_s:.1f} frames/s, "
                  f"end to end {r0.frames_per_s} frames/s (first frame to last cleaned), final image "
                  f"{r0.last_frame_to_final_s} s after the last frame")


if __name__ == "__main__":
    main()
