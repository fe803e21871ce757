"""Position conventions on measured data: tike's Siemens star written as many CXI writers do (the sample's
translation), reconstructed with the right convention, the wrong one, and ``--positions auto``.

    .venv/bin/python benchmarks/conventions.py [--seconds 15] [--out conventions.png]

The star (tests/data/PROVENANCE.md) is split into its even and odd frames; each half is written as a CXI
file whose translations are the sample's (minus the probe's position), then reconstructed by
``ns-bluesky reconstruct``'s own code (apps/reconstruct.run, LSQ-ML) for ``--seconds`` each with
``--positions probe`` (wrong for these files), ``sample`` (right) and ``auto``. Figures: what auto chose and
its margin, and the half-scan FRC: the highest frequency (fraction of Nyquist) where the FRC of the two
halves stays >= 0.5 (registered, global phase and relative linear ramp removed, lowest 10 rings ignored;
the scoring of benchmarks/engines.py --star). Writes a PNG (path printed). Prints figures; passes or fails nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests.support.star: the star as CXI files
from engines import frc_crossing, half_frc, star_region  # noqa: E402  (this folder's engine benchmark)

from ns_bluesky.apps.reconstruct import run  # noqa: E402
from tests.support.star import star, star_cxi  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="budget per half (default 15)")
    ap.add_argument("--out", type=Path, default=Path("conventions.png"))
    args = ap.parse_args(argv)
    patterns, scan, probe = star()
    halves = {"even": np.arange(0, len(scan), 2), "odd": np.arange(1, len(scan), 2)}
    print(f"measured star: {len(scan)} frames, written as the sample's translation; halves of "
          f"{len(halves['even'])} / {len(halves['odd'])} frames, {args.seconds:g} s each", flush=True)
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {h: star_cxi(Path(tmp) / f"{h}.cxi", "sample", idx) for h, idx in halves.items()}
        for mode in ("probe", "sample", "auto"):
            out = {}
            for h, path in files.items():
                t0 = time.monotonic()
                lines = []
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    r = run(path, Path(tmp) / f"{h}_{mode}.cxi", seconds=args.seconds, positions=mode, progress=False,
                            say=lines.append)
                wall = time.monotonic() - t0
                out[h] = r
                note = f"; {lines[0]}" if lines else ""
                note += "".join(f"; warning: {w.message}" for w in caught)
                print(f"  {mode:<7}{h:<5} read as {r.orientation.name!r}: {len(r.residuals)} "
                      f"iterations in {r.seconds:.1f} s ({wall:.1f} s with the choice), best residual "
                      f"{r.best_residual:.4f} at iteration {r.best_iteration}{note}", flush=True)
            # the scanned region on this convention's object grid (the halves share it)
            p = out["even"].orientation.apply(scan * np.array([-1, -1]))  # the file's positions are minus the probe's
            origins = p - p.min(axis=0) + 2
            shape = out["even"].obj.shape
            mask, sq, window = star_region(origins, probe, shape)
            freq, curve = half_frc(out["even"].obj, out["odd"].obj, mask, sq, window)
            res = frc_crossing(freq, curve)
            results[mode] = (out, freq, curve, res)
            choice = out["even"].choice
            chosen = (f"{out['even'].orientation.name} / {out['odd'].orientation.name} (margin "
                      f"{choice.margin:.0%} / {out['odd'].choice.margin:.0%})") if choice else "given"
            rows.append((mode, chosen, res, sum(len(r.residuals) for r in out.values()) / 2))
    print(f"\nhalf-scan FRC, {args.seconds:g} s per half (LSQ-ML; files hold the sample's translation)")
    head = f"{'--positions':<13}{'read as (even / odd)':<48}{'its/half':>9}{'FRC 0.5 at':>12}"
    print(head)
    print("-" * len(head))
    for mode, chosen, res, its in rows:
        print(f"{mode:<13}{chosen:<48}{its:9.0f}{res:12.3f}")
    print(f"\nplot: {plot(results, args.out)}")


def plot(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(19, 4.6), constrained_layout=True)
    for k, mode in enumerate(("probe", "sample", "auto")):
        rec, freq, curve, res = results[mode]
        obj = rec["even"].obj
        ax[k].imshow(np.angle(obj * np.exp(-1j * np.angle(obj[obj.shape[0] // 2, obj.shape[1] // 2]))), cmap="gray")
        ax[k].set_title(f"--positions {mode} (read as {rec['even'].orientation.name}): even half, phase", fontsize=9)
        ax[k].axis("off")
        ax[3].plot(freq, curve, label=f"{mode}: 0.5 at {res:.3f}")
    ax[3].axhline(0.5, color="gray", lw=0.8)
    ax[3].set_xlabel("spatial frequency (fraction of Nyquist)")
    ax[3].set_ylabel("FRC even vs odd half")
    ax[3].legend(fontsize=8)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


if __name__ == "__main__":
    main()
