"""The engine benchmark matrix: LSQ-ML (or any engine) on simulated sets made under varied conditions, and the measured star.

    .venv/bin/python benchmarks/matrix.py [--quick] [--engine lsqml] [--threads 2] [--cap-seconds 300] [--cap-iterations 200]

Sets (seeded, cached as .npz in --cache; each a zone-plate beam 40 px wide at 70 % overlap over a Siemens star with
absorbing particles, Poisson noise; the start: a flat object and a probe 20 % off in defocus unless said):

    base        32 x 32 raster with 1 px rms stage jitter, 1024 frames of 128², 1e6 photons/frame (the project's set)
    1e4, 1e8    the same at 1e4 and 1e8 photons/frame
    defocus60   starting probe 60 % off in defocus
    size1.5     starting probe 1.5 times too wide (the start probe magnified about its centre)
    perfect     the raster without jitter (a perfect lattice)
    fermat      1024 frames on a Fermat spiral of the same step
    4096        64 x 64 raster, 4096 frames
    256px       1024 frames of 256² (the beam 80 px wide, the same scan in beam widths)
    star        tike's measured Siemens star (tests/data): even and odd frames apart, half-scan FRC (0.5 crossing,
                fraction of Nyquist) instead of NRMSE

For each: s/iteration (median), NRMSE at 45 s of prepare() and iterate() time, NRMSE at the end (converged, or at the caps; against
the truth or its twin conj(O(-r)), whichever is lower, after removing a linear phase ramp: the data cannot tell
these apart; the table says when the twin was closer),
the best NRMSE and whether the run diverged (a non-finite residual, a residual that ends over 10 times its best, or
an NRMSE that ends over 1.5 times its best). Targets (issue 20) for 1024 x 128² at 1e6 photons: <= 0.35 s/iteration,
NRMSE <= 0.025 within 45 s and <= 0.020 converged, no divergence on any set. --quick: base, 1e4, size1.5, fermat
and the star, with shorter caps. --peers PYTHON: pty-chi's LSQ-ML beside it (benchmarks/peer_ptychi.py, run by a
Python that has pty-chi; PtyPy is not on the package index here). Prints a table, writes JSON and a PNG (paths printed); passes or fails nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
import engines as bench  # noqa: E402  (this folder's engine benchmark: data sets, runs, star scoring)

from ns_bluesky.instrument.scan import fermat_spiral  # noqa: E402
from ns_bluesky.ptycho.engines import PtychoData  # noqa: E402
from ns_bluesky.ptycho.metrics import nrmse  # noqa: E402
from ns_bluesky.sim.farfield import farfield_set, shifted_probes  # noqa: E402
from ns_bluesky.sim.sample import resample, test_pattern, transmission  # noqa: E402

BASE = {"grid": 32, "frame": 128, "photons": 1e6, "probe_diameter": 40.0, "jitter": 1.0, "defocus_error": 0.2}
SETS = {
    "base": {}, "1e4": {"photons": 1e4}, "1e8": {"photons": 1e8}, "defocus60": {"defocus_error": 0.6},
    "size1.5": {"start_size": 1.5}, "perfect": {"jitter": 0.0}, "fermat": {"fermat": True}, "4096": {"grid": 64},
    "256px": {"frame": 256, "probe_diameter": 80.0},
}
QUICK = ["base", "1e4", "size1.5", "fermat"]
TARGETS = {"s_it": 0.35, "at45": 0.025, "end": 0.020}


@dataclass
class Set:
    data: PtychoData
    start: np.ndarray
    obj: np.ndarray
    mask: np.ndarray
    what: str
    path: Path | None = None  # the cached .npz (what a peer in another environment reads)


def make_set(name: str, cache: Path) -> Set:
    c = dict(BASE, **SETS[name])
    if c.get("fermat"):
        return fermat_set(c, cache)
    p = {"version": bench.SET_VERSION, "grid": c["grid"], "overlap": 0.7, "frame": c["frame"], "photons": c["photons"],
         "probe_diameter_px": c["probe_diameter"], "pixel_m": 40e-9, "energy_eV": 800.0, "jitter_px": c["jitter"],
         "defocus_error": c["defocus_error"], "seed": 0}
    s, how = bench.load_set(p, cache)
    path = cache / f"ptycho-set-{hashlib.sha1(json.dumps(p, sort_keys=True).encode()).hexdigest()[:12]}.npz"  # load_set's
    start = s.probe_start
    if "start_size" in c:
        start = magnified(start, c["start_size"])
    what = (f"{len(s.origins)} frames {c['frame']}², {c['photons']:.0e} photons, jitter {c['jitter']} px, "
            f"start defocus +{c['defocus_error']:.0%}" + (f", start {c['start_size']}x too wide" if "start_size" in c else ""))
    print(f"{name}: {how}", flush=True)
    # the peer starts from the start probe in the file: only the sets whose start is the file's
    return Set(PtychoData(s.patterns, s.origins), start, s.obj, s.mask, what, None if "start_size" in c else path)


def magnified(probe: np.ndarray, factor: float) -> np.ndarray:
    """The probe magnified ``factor`` times about the window's centre, on the same window and with the same power."""
    n = probe.shape[-1]
    zoom = [ndimage.zoom(part, factor, order=1) for part in (probe.real, probe.imag)]
    big = zoom[0] + 1j * zoom[1]
    if big.shape[0] < n:  # made smaller: padded back onto the window
        big = np.pad(big, [((n - big.shape[0]) // 2, n - big.shape[0] - (n - big.shape[0]) // 2)] * 2)
    lo = (big.shape[0] - n) // 2
    out = big[lo : lo + n, lo : lo + n]
    out *= np.sqrt((np.abs(probe) ** 2).sum() / (np.abs(out) ** 2).sum())
    return out.astype(np.complex64)


def fermat_set(c: dict, cache: Path) -> Set:
    """The base set's beam, object and noise on a Fermat spiral of the raster's step (as many frames)."""
    path = cache / f"matrix-fermat-{c['grid']}-{c['frame']}-{c['photons']:.0e}-v{bench.SET_VERSION}.npz"
    if path.exists():
        with np.load(path) as z:
            print(f"fermat: loaded {path}", flush=True)
            return Set(PtychoData(z["patterns"], z["origins"]), z["start"], z["obj"], z["mask"], str(z["what"]), path)
    t0 = time.perf_counter()
    n, count = c["frame"], c["grid"] ** 2
    beam = farfield_set(grid=2, frame=n, photons=c["photons"], probe_diameter_px=c["probe_diameter"], jitter_px=0.0,
                        defocus_error=c["defocus_error"])  # the beam and starting probe only
    step = 0.3 * c["probe_diameter"]
    pos = fermat_spiral(count, step)
    origins = pos - pos.min(axis=0) + 4.0
    shape = tuple(int(np.ceil(v)) + n + 1 for v in origins.max(axis=0))
    rng = np.random.default_rng(0)  # the object as sim.farfield makes it, on this grid
    star = transmission(resample(test_pattern((512, 512)), shape), energy_eV=800.0, delta=2e-3, beta=1e-3, thickness_m=50e-9)
    blobs = ndimage.gaussian_filter(rng.normal(size=shape), 6)
    particles = ndimage.gaussian_filter((blobs > 1.5 * blobs.std()).astype(np.float32), 1.0)
    obj = (star * transmission(particles, energy_eV=800.0, delta=0.5e-3, beta=2e-3, thickness_m=50e-9)).astype(np.complex64)
    noise = np.random.default_rng([0, 1])
    fprobe = sfft.fft2(beam.probe)
    iy, ix = np.floor(origins).astype(int).T
    rows, cols = np.arange(n)[:, None], np.arange(n)[None, :]
    patterns = np.empty((count, n, n), np.float32)
    for b in range(0, count, 64):
        sl = slice(b, b + 64)
        wave = shifted_probes(fprobe, origins[sl]) * obj[iy[sl, None, None] + rows, ix[sl, None, None] + cols]
        patterns[sl] = noise.poisson(np.abs(sfft.fftshift(sfft.fft2(wave, norm="ortho"), axes=(-2, -1))) ** 2)
    centre = origins + n / 2  # NRMSE inside the disc the probe centres cover (less a step)
    mid = centre.mean(axis=0)
    radius = np.hypot(*(centre - mid).T).max() - step
    yy, xx = np.indices(shape)
    mask = np.hypot(yy - mid[0], xx - mid[1]) <= radius
    start = (beam.probe_start * np.sqrt(patterns.sum(axis=(-2, -1)).mean() / beam.patterns.sum(axis=(-2, -1)).mean()))
    what = f"{count} frames {n}² on a Fermat spiral, {c['photons']:.0e} photons, start defocus +{c['defocus_error']:.0%}"
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, patterns=patterns, origins=origins, obj=obj, mask=mask, start=start.astype(np.complex64), what=what)
    print(f"fermat: built in {time.perf_counter() - t0:.1f} s, cached as {path}", flush=True)
    return Set(PtychoData(patterns, origins), start.astype(np.complex64), obj, mask, what, path)


def twin_aware_nrmse(obj: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> tuple[float, bool]:
    """NRMSE against the truth or against its twin, conj(O(-r)), whichever is lower, and whether the twin was:
    far-field intensities cannot tell them apart (with the probe's twin), so a run may settle on either; each
    after removing the linear phase ramp between estimate and reference (another thing the data cannot see)."""
    est, ref = bench._common(obj, truth)
    m = mask[: ref.shape[0], : ref.shape[1]]
    out = []
    for r, rm in ((ref, m), (np.conj(ref[::-1, ::-1]), m[::-1, ::-1])):
        # a linear phase ramp (less than a cycle per window) is invisible to the data too: removed first
        out.append(nrmse(est * np.exp(1j * bench._relative_ramp(r, est, rm)), r, rm))
    return (out[1], True) if out[1] < out[0] else (out[0], False)


def run_set(name: str, s: Set, args, params: dict) -> dict:
    twins: list[bool] = []

    def observe(it, wall, obj):
        value, twin = twin_aware_nrmse(obj, s.obj, s.mask)
        twins.append(twin)
        return value

    run = bench.run_engine(args.engine, params, s.data, s.start, seconds=args.cap_seconds, max_iter=args.cap_iterations,
                           observe=observe, every=args.every, label=f"{name:<9} ", progress_s=15)
    row = {"set": name, "what": s.what, "load": os.getloadavg()[0], "prepare_s": run.prepare_s}
    if run.error or not run.metric:
        return dict(row, error=run.error or "no iterations", diverged=True)
    vals = np.array([v for *_, v in run.metric])
    res = np.array(run.residuals)
    reasons = []
    if not np.isfinite(res).all() or not np.isfinite(vals).all():
        reasons.append("non-finite")
    elif res[-1] > 10 * res.min():
        reasons.append(f"residual ends {res[-1] / res.min():.0f}x its best")
    if np.isfinite(vals).all() and vals[-1] > 1.5 * vals.min():
        reasons.append(f"NRMSE ends {vals[-1] / vals.min():.1f}x its best")
    return dict(row, twin=bool(twins and twins[-1]), s_it=run.s_per_it, iterations=len(run.times), seconds=run.times[-1],
                at45=bench.value_at(run.metric, 45.0), end=float(vals[-1]), best=float(np.nanmin(vals)),
                curve=[(w, v) for _, w, v in run.metric], diverged=bool(reasons), why=", ".join(reasons))


def run_peer(name: str, s: Set, args) -> dict:
    """pty-chi's LSQ-ML on the same set in its own environment (benchmarks/peer_ptychi.py), with a deadline;
    its snapshots scored here like the engine's."""
    row = {"set": f"{name} (pty-chi LSQML)", "what": "peer, default LSQML options, batch 96", "load": os.getloadavg()[0]}
    out = args.cache / f"peer-ptychi-{name}.npz"
    cmd = [args.peers, str(Path(__file__).parent / "peer_ptychi.py"), str(s.path), str(out),
           "--seconds", str(args.cap_seconds), "--epochs", str(args.cap_iterations), "--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log, _ = proc.communicate(timeout=args.cap_seconds + 600)  # set-up and snapshots come on top of the run
    except subprocess.TimeoutExpired:
        log = "timed out"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    if proc.returncode != 0 or not out.exists():
        return dict(row, error=f"pty-chi run failed: {log.strip().splitlines()[-1][:200] if log.strip() else proc.returncode}",
                    diverged=False)
    with np.load(out) as z:
        times, objs, s_epoch, epochs = z["times"], z["objects"], float(z["s_epoch"]), z["epochs"]
    curve = []
    for t, o in zip(times, objs, strict=True):
        est, ref = bench._common(o, s.obj)
        curve.append((float(t), float(nrmse(est, ref, s.mask[: ref.shape[0], : ref.shape[1]]))))
    vals = np.array([v for _, v in curve])
    return dict(row, s_it=s_epoch, iterations=int(epochs[-1]), seconds=float(times[-1]), at45=bench.value_at([(0, t, v) for t, v in curve], 45.0),
                end=float(vals[-1]), best=float(np.nanmin(vals)), curve=curve, diverged=not np.isfinite(vals).all(),
                why="" if np.isfinite(vals).all() else "non-finite")


def run_star(args, params: dict) -> dict:
    patterns, origins, probe = bench.load_star()
    shape = tuple(int(np.ceil(v)) + patterns.shape[-1] + 1 for v in origins.max(axis=0))
    mask, sq, window = bench.star_region(origins, probe, shape)
    objs, runs = [], []
    for h, idx in (("even", slice(0, None, 2)), ("odd", slice(1, None, 2))):
        pat = patterns[idx]
        p0 = (probe * np.sqrt(pat.sum(axis=(-2, -1)).mean() / (np.abs(probe) ** 2).sum())).astype(np.complex64)
        run = bench.run_engine(args.engine, params, PtychoData(pat, origins[idx]), p0, seconds=args.star_seconds,
                               max_iter=args.cap_iterations, observe=lambda *a: None, every=10**9,
                               label=f"star {h:<4} ", progress_s=15)
        if run.obj is None:
            return {"set": "star", "error": run.error, "diverged": True}
        objs.append(run.obj)
        runs.append(run)
    freq, curve = bench.half_frc(objs[0], objs[1], mask, sq, window)
    res = np.concatenate([r.residuals for r in runs])
    return {"set": "star", "what": f"measured, {len(patterns)} frames {patterns.shape[1]}², halves {args.star_seconds:g} s each",
            "load": os.getloadavg()[0], "s_it": float(np.median(runs[0].durations + runs[1].durations)),
            "iterations": len(runs[0].times), "seconds": runs[0].times[-1], "frc": bench.frc_crossing(freq, curve),
            "diverged": not np.isfinite(res).all(), "why": "" if np.isfinite(res).all() else "non-finite"}


def table(rows: list[dict]) -> str:
    def f(v, fmt="{:.4f}"):
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)

    lines = ["| set | s/iteration | NRMSE @ 45 s | NRMSE end (iterations, s) | best | diverged |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['set']} | failed: {r['error']} | | | | yes |")
            continue
        if r["set"] == "star":
            lines.append(f"| star (measured; half-scan FRC 0.5 at) | {r['s_it']:.2f} | - | FRC {r['frc']:.3f} of Nyquist "
                         f"({r['iterations']} per half, {r['seconds']:.0f} s) | - | {'yes' if r['diverged'] else 'no'} |")
            continue
        twin = " (the twin)" if r.get("twin") else ""
        lines.append(f"| {r['set']}: {r['what']} | {r['s_it']:.2f} | {f(r['at45'])} | {r['end']:.4f}{twin} ({r['iterations']}, "
                     f"{r['seconds']:.0f}) | {r['best']:.4f} | {'yes: ' + r['why'] if r['diverged'] else 'no'} |")
    lines.append(f"| target (base) | <= {TARGETS['s_it']} | <= {TARGETS['at45']} | <= {TARGETS['end']} | | none |")
    return "\n".join(lines)


def plot(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in rows:
        if r.get("curve"):
            t, v = zip(*r["curve"], strict=True)
            ax.plot(t, v, lw=1.4, label=f"{r['set']} ({r['s_it']:.2f} s/it){' DIVERGED' if r['diverged'] else ''}")
    ax.axvline(45, color="0.5", ls=":", lw=1)
    ax.plot([45], [TARGETS["at45"]], "rv", ms=9, label="target at 45 s (base)")
    ax.axhline(TARGETS["end"], color="r", ls="--", lw=0.8, label="target converged (base)")
    ax.set_yscale("log")
    ax.set_xlabel("wall time of prepare() and iterate() (s)")
    ax.set_ylabel("NRMSE over the scanned region")
    star = next((r for r in rows if r["set"] == "star" and "frc" in r), None)
    ax.set_title("engine matrix" + (f"; measured star: half-scan FRC 0.5 at {star['frc']:.3f} of Nyquist" if star else ""),
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)} and the star, shorter caps")
    ap.add_argument("--sets", nargs="+", choices=[*SETS, "star"], default=None, help="these sets (default: all)")
    ap.add_argument("--engine", default="lsqml")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cap-seconds", type=float, default=None, help="prepare() + iterate() time per set (default 300, --quick 120)")
    ap.add_argument("--cap-iterations", type=int, default=200)
    ap.add_argument("--star-seconds", type=float, default=None, help="per half (default 60, --quick 30)")
    ap.add_argument("--every", type=int, default=5, help="NRMSE every k iterations (off the clock)")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="engine parameter")
    ap.add_argument("--peers", metavar="PYTHON", default=None,
                    help="a Python with pty-chi (not the project's): pty-chi's LSQML beside the engine on --peer-sets")
    ap.add_argument("--peer-sets", nargs="+", default=["base"], help="sets pty-chi runs on (default: base)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "ns-bluesky-bench")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (the PNG beside it); default in --cache")
    args = ap.parse_args()
    args.cap_seconds = args.cap_seconds or (120.0 if args.quick else 300.0)
    args.star_seconds = args.star_seconds or (30.0 if args.quick else 60.0)
    names = args.sets or ([*QUICK, "star"] if args.quick else [*SETS, "star"])
    params = bench._engine_params([f"{args.engine}.{p}" for p in args.param], [args.engine],
                                  {"threads": args.threads})[args.engine]
    print(f"{args.engine} {params}; threads: {bench.limit_threads(args.threads)}; load {os.getloadavg()}", flush=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    with sfft.set_workers(args.threads):
        for name in names:
            if name == "star":
                rows.append(run_star(args, params))
            else:
                s = make_set(name, args.cache)
                rows.append(run_set(name, s, args, params))
                if args.peers and name in args.peer_sets and s.path is not None:
                    rows.append(run_peer(name, s, args))
            for r in rows[-2:] if rows[-1]["set"].endswith("(pty-chi LSQML)") else rows[-1:]:
                print(f"  -> {r['set']}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in r.items() if k not in ("curve", "what", "set")), flush=True)
    print(f"\n{args.engine}, {args.threads} threads, started {started}, caps {args.cap_seconds:g} s / {args.cap_iterations} "
          f"iterations per set; load average at the end {os.getloadavg()}")
    print(table(rows))
    out = args.out or args.cache / ("matrix-quick.json" if args.quick else "matrix.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"engine": args.engine, "params": params, "started": started, "rows": rows}, indent=1, default=float))
    print(f"\njson: {out}\nplot: {plot(rows, out.with_suffix('.png'))}")


if __name__ == "__main__":
    main()
