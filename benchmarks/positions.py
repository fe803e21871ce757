"""Position refinement against the simulated stage's encoder noise: recovered against true position error.

The simulated stage (:class:`ns_bluesky.ophyd_devices.motors.SimMotor`) settles a few nm off each
raster point (settling jitter: the frames are measured there, so the scan is no perfect lattice) and
its encoder reads a few nm off where it settled (encoder noise: what a run records). The engine is
given the recorded positions; LSQ-ML's position refinement should bring them back towards the true
ones. For each encoder noise level the set (the demo's geometry: 8.56 nm pixels at 128², the zone
plate's beam, 70 % overlap, Poisson noise) is reconstructed twice from the same start, with and
without position refinement, and the table gives the rms position error (nm, after removing the
common shift, which the data cannot see) before and after, and each run's object NRMSE.

    .venv/bin/python benchmarks/positions.py        # 16 x 16 raster, 100 iterations, 3 levels: ~5-10 min on 2 loaded cores
    .venv/bin/python benchmarks/positions.py --grid 12 --iterations 80 --out test-output/positions

Prints a table; writes positions.json and positions.png (true, recorded and refined positions around
their lattice points, and the errors' rms per level) in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from ns_bluesky.instrument.scan import raster
from ns_bluesky.ophyd_devices import SampleStage
from ns_bluesky.ptycho.engines import PtychoData, engine
from ns_bluesky.ptycho.metrics import nrmse
from ns_bluesky.sim.farfield import farfield_set
from ns_bluesky.sim.settings import SimConfig

RECON_BINNING = 2  # the pipeline's 128² frames from the simulator's 256² grid: twice its object pixel


def rms_error_px(estimate: np.ndarray, truth: np.ndarray) -> float:
    """rms distance between two sets of positions (N, 2) after removing their mean offset (invisible to the data)."""
    d = estimate - truth
    d = d - d.mean(axis=0)
    return float(np.sqrt((d**2).sum(axis=1).mean()))


def stage_figures() -> tuple[float, float]:
    """(settling jitter, encoder noise), rms metres: the simulated stage's defaults."""
    stage = SampleStage(name="stage")
    return float(stage.x.jitter.get()), float(stage.x.encoder_noise.get())


def run_level(s, recorded: np.ndarray, iterations: int, refine: bool, threads: int) -> dict:
    """Reconstruct ``s`` from the ``recorded`` origins; the refined origins and the object's NRMSE."""
    eng = engine("lsqml", position_correction=refine, threads=threads)
    eng.prepare(PtychoData(s.patterns, recorded.copy()), s.probe_start)
    t0 = time.perf_counter()
    eng.iterate(iterations)
    seconds = time.perf_counter() - t0
    obj, _, residuals = eng.finalize()
    return {"origins": eng.origins.copy(), "nrmse": nrmse(obj[: s.obj.shape[0], : s.obj.shape[1]], s.obj, s.mask),
            "residual": float(residuals[-1]), "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=16, help="raster points per side")
    ap.add_argument("--frame", type=int, default=128, help="frame size, pixels")
    ap.add_argument("--photons", type=float, default=1e6, help="photons per frame")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--noise-nm", default="default,5,10", help="encoder noise levels, rms nm ('default': the stage's)")
    ap.add_argument("--threads", type=int, default=0, help="engine threads (0: every core)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="test-output/positions", help="folder for positions.json and positions.png")
    args = ap.parse_args(argv)

    cfg = SimConfig()
    dx = RECON_BINNING * cfg.object_pixel_size_m
    beam_px = cfg.optics.beam_diameter_m(cfg.energy_eV) / dx
    settle_m, encoder_m = stage_figures()
    levels = [encoder_m if v.strip() == "default" else float(v) * 1e-9 for v in args.noise_nm.split(",")]
    s = farfield_set(grid=args.grid, frame=args.frame, overlap=0.7, photons=args.photons, probe_diameter_px=beam_px,
                     jitter_px=settle_m / dx, pixel_m=dx, energy_eV=cfg.energy_eV, seed=args.seed)
    true = s.origins  # where the stage settled: the frames were simulated there
    step = s.info["step_px"]  # farfield_set's raster, drawn again: the settling error of each point
    settled = raster((args.grid, args.grid), step, jitter_m=settle_m / dx, seed=args.seed) - raster((args.grid, args.grid), step)
    print(f"{args.grid} x {args.grid} raster, {args.frame}² frames, pixel {dx * 1e9:.2f} nm, beam {beam_px:.0f} px, "
          f"{args.photons:.0e} photons/frame, settling jitter {settle_m * 1e9:.1f} nm rms, {args.iterations} LSQ-ML "
          f"iterations; load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"{'encoder noise':>14} {'recorded err':>13} {'refined err':>12} {'ratio':>6} {'NRMSE refined':>14} "
          f"{'NRMSE fixed':>12} {'s/it refined':>13} {'s/it fixed':>11}")
    rows = []
    for k, level in enumerate(levels):
        rng = np.random.default_rng([args.seed, 0xE1C0, k])
        recorded = true + rng.normal(0.0, level / dx, true.shape)  # what the encoder read
        refined = run_level(s, recorded, args.iterations, True, args.threads)
        fixed = run_level(s, recorded, args.iterations, False, args.threads)
        before = rms_error_px(recorded, true) * dx * 1e9
        after = rms_error_px(refined["origins"], true) * dx * 1e9
        row = {"encoder_noise_nm": level * 1e9, "recorded_error_nm": before, "refined_error_nm": after,
               "ratio": after / before, "nrmse_refined": refined["nrmse"], "nrmse_fixed": fixed["nrmse"],
               "s_per_iteration_refined": refined["seconds"] / args.iterations,
               "s_per_iteration_fixed": fixed["seconds"] / args.iterations,
               "recorded_px": recorded.tolist(), "refined_px": refined["origins"].tolist()}
        rows.append(row)
        print(f"{level * 1e9:11.1f} nm {before:10.2f} nm {after:9.2f} nm {after / before:6.2f} {refined['nrmse']:14.4f} "
              f"{fixed['nrmse']:12.4f} {row['s_per_iteration_refined']:13.3f} {row['s_per_iteration_fixed']:11.3f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"grid": args.grid, "frame": args.frame, "pixel_nm": dx * 1e9, "beam_px": beam_px, "photons": args.photons,
              "iterations": args.iterations, "settling_jitter_nm": settle_m * 1e9, "load_average": os.getloadavg()[0],
              "true_px": true.tolist(), "settling_error_px": settled.tolist(), "levels": rows}
    (out / "positions.json").write_text(json.dumps(result, indent=1))
    figure(out / "positions.png", true, settled, rows, dx)
    print(f"wrote {out / 'positions.json'} and {out / 'positions.png'}")
    return 0


def figure(path: Path, true: np.ndarray, settled: np.ndarray, rows: list[dict], dx: float) -> None:
    """Where each frame really was against its lattice point (``settled``, px); per level, the errors of the
    recorded and refined positions against the true ones (nm, common shift removed), one dot each per frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, len(rows) + 1, figsize=(5 * (len(rows) + 1), 5), constrained_layout=True)
    off = settled * dx * 1e9
    ax[0].scatter(off[:, 1], off[:, 0], s=6)
    ax[0].set_title(f"true positions off their lattice point (nm)\nsettling jitter {np.sqrt((off**2).mean()):.2f} nm rms "
                    "per axis: no lattice")
    ax[0].set_aspect("equal")
    for a, row in zip(ax[1:], rows, strict=True):
        for key, colour in (("recorded_px", "tab:red"), ("refined_px", "tab:green")):
            d = np.asarray(row[key]) - true
            d = (d - d.mean(axis=0)) * dx * 1e9
            a.scatter(d[:, 1], d[:, 0], s=6, c=colour, label=f"{key.split('_')[0]} ({np.sqrt((d**2).sum(1).mean()):.2f} nm rms)")
        a.set_title(f"encoder noise {row['encoder_noise_nm']:.1f} nm: error against the truth (nm)")
        a.set_aspect("equal")
        a.legend(loc="upper right", fontsize=8)
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
