"""The EPICS path against the in-process path: the whole demo, side by side in one run. Prints figures.

    .venv/bin/python benchmarks/epics.py [--scan 40x40] [--rates 0 10] [--free-exposure 0.01] [--out DIR]

For each rate, ``ns-bluesky demo`` runs twice as a user runs it, one after the other: on the in-process
simulated devices, then with ``--epics`` (its own caproto IOC on loopback, the same plans over Channel Access,
the frames filed by the IOC). Reported per run: acquisition frames/s (darks excluded), end-to-end frames/s
(pipeline's cleaned frames), NRMSE against the truth, the IOC's CPU (from /proc/<pid>/stat over the scan: ms
per frame and % of one core) and the CPU of the whole run (the demo and everything it started, per frame).
At rate 0 the exposure is ``--free-exposure`` for both paths (the IOC, like a camera, ends no frame sooner
than its exposure; the in-process FCCD free-runs at period 0), else each path's default exposure for the rate.
Writes ``epics.json`` and ``epics.png`` (bar chart) in ``--out``; passes or fails nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NS_BLUESKY = str(Path(sys.executable).with_name("ns-bluesky"))


def children_cpu_s() -> float:
    """CPU seconds of the children this process has reaped, with everything they reaped: a run's whole cost."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_demo(path: str, rate: float, args, catalog: Path, out: Path) -> dict:
    """One ``ns-bluesky demo`` in a subprocess (its own process group, killed at the deadline); its summary."""
    cmd = [NS_BLUESKY, "demo", "--scan", args.scan, "--rate", str(rate), "--darks", str(args.darks), "--quiet",
           "--workers", str(args.workers), "--refine", str(args.refine), "--catalog", str(catalog), "--out", str(out)]
    if rate == 0:
        cmd += ["--exposure", str(args.free_exposure)]
    if path == "epics":
        cmd.append("--epics")
    out.mkdir(parents=True, exist_ok=True)
    print(f"  {path:10s} rate {rate:g}: {' '.join(cmd[1:])}", flush=True)
    cpu0, t0, load0 = children_cpu_s(), time.monotonic(), os.getloadavg()[0]
    with open(out / "demo.out", "w") as said:
        proc = subprocess.Popen(cmd, stdout=said, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "NS_BLUESKY_LOG": str(out / "demo.log")})
    try:
        rc = proc.wait(args.deadline)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    wall, cpu = time.monotonic() - t0, children_cpu_s() - cpu0
    if rc != 0:
        tail = (out / "demo.out").read_text(errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"benchmarks/epics.py: the {path} demo at rate {rate:g} "
                         f"{'timed out' if rc is None else f'exited {rc}'}: {' | '.join(tail)}")
    s = json.loads((out / "summary.json").read_text())
    ioc = s.get("ioc") or {}
    return {
        "path": s["path"], "rate_hz": rate, "frames": s["frames"], "acquisition_s": s["acquisition_s"],
        "acquisition_frames_per_s": s["acquisition_frames_per_s"], "end_to_end_frames_per_s": s["frames_per_s"],
        "nrmse": s["nrmse"], "exposure_s": s["exposure_s"],
        "ioc_cpu_ms_per_frame": None if ioc.get("cpu_s_per_frame") is None else round(ioc["cpu_s_per_frame"] * 1e3, 1),
        "ioc_cpu_core_percent": ioc.get("cpu_core_percent"),
        "run_cpu_s": round(cpu, 1), "run_cpu_ms_per_frame": round(1e3 * cpu / s["frames"], 1), "wall_s": round(wall, 1),
        "load_at_start": round(load0, 2), "ioc_prefix": ioc.get("prefix"), "ioc_port": ioc.get("port"),
    }


def table(rows: list[dict]) -> str:
    head = (f"{'rate Hz':>7} {'path':>10} {'exposure s':>10} {'acq f/s':>8} {'e2e f/s':>8} {'NRMSE':>7} "
            f"{'IOC ms/f':>8} {'IOC %core':>9} {'run CPU ms/f':>12} {'vs in-process':>13}")
    lines = [head, "-" * len(head)]
    base = {r["rate_hz"]: r["acquisition_frames_per_s"] for r in rows if r["path"] == "in-process"}

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in rows:
        ratio = r["acquisition_frames_per_s"] / base[r["rate_hz"]] if base.get(r["rate_hz"]) else None
        lines.append(f"{r['rate_hz']:>7g} {r['path']:>10} {f(r['exposure_s'], '.3f'):>10} "
                     f"{r['acquisition_frames_per_s']:>8.2f} {f(r['end_to_end_frames_per_s'], '.2f'):>8} "
                     f"{f(r['nrmse'], '.4f'):>7} {f(r['ioc_cpu_ms_per_frame'], '.1f'):>8} "
                     f"{f(r['ioc_cpu_core_percent'], '.0f'):>9} {r['run_cpu_ms_per_frame']:>12.1f} {f(ratio, '.2f'):>13}")
    return "\n".join(lines)


def chart(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rates = sorted({r["rate_hz"] for r in rows})
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    x = np.arange(len(rates))
    for k, (name, colour) in enumerate((("in-process", "tab:blue"), ("epics", "tab:orange"))):
        got = {r["rate_hz"]: r for r in rows if r["path"] == name}
        acq = [got[q]["acquisition_frames_per_s"] if q in got else 0 for q in rates]
        bars = a.bar(x + (k - 0.5) * 0.38, acq, 0.36, label=name, color=colour)
        a.bar_label(bars, fmt="%.1f")
        cpu = [got[q]["run_cpu_ms_per_frame"] if q in got else 0 for q in rates]
        bars = b.bar(x + (k - 0.5) * 0.38, cpu, 0.36, label=f"{name}: whole run", color=colour, alpha=0.5)
        if name == "epics":
            ioc = [got[q]["ioc_cpu_ms_per_frame"] or 0 if q in got else 0 for q in rates]
            b.bar(x + (k - 0.5) * 0.38, ioc, 0.36, label="epics: the IOC", color=colour)
    for i, q in enumerate(rates):
        if q > 0:
            a.hlines(q, i - 0.45, i + 0.45, colors="k", linestyles="--", label="requested rate" if i == len(rates) - 1 else None)
    a.set_xticks(x, [f"rate {q:g} Hz" if q else "rate 0 (free)" for q in rates])
    a.set_ylabel("acquisition frames/s")
    a.legend()
    b.set_xticks(x, [f"rate {q:g} Hz" if q else "rate 0 (free)" for q in rates])
    b.set_ylabel("CPU ms per frame")
    b.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", default="40x40", help="raster rows x columns (default 40x40)")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.0, 10.0], help="frame rates, Hz (default 0 10)")
    ap.add_argument("--free-exposure", type=float, default=0.01, help="exposure at rate 0, both paths (default 0.01 s)")
    ap.add_argument("--darks", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--refine", type=float, default=2.0, help="seconds of refinement after the scan (default 2)")
    ap.add_argument("--deadline", type=float, default=900.0, help="seconds one demo may take (default 900)")
    ap.add_argument("--out", default="benchmark-epics", help="folder for epics.json, epics.png and the runs")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count()
    print(f"benchmarks/epics.py: scan {args.scan}, rates {args.rates}, {cores} cores, "
          f"load {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ns-epics-bench-") as tmp:
        catalog = Path(tmp) / "catalog"
        for rate in args.rates:
            for path in ("in-process", "epics"):
                rows.append(run_demo(path, rate, args, catalog, Path(tmp) / f"{path}-{rate:g}"))
    load = os.getloadavg()
    print(table(rows))
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({cores} cores)")
    result = {"scan": args.scan, "cores": cores, "load_end": load, "free_exposure_s": args.free_exposure,
              "command": " ".join(["benchmarks/epics.py", *sys.argv[1:]]), "runs": rows}
    (out / "epics.json").write_text(json.dumps(result, indent=2))
    chart(rows, out / "epics.png", f"ns-bluesky demo, {args.scan}: in-process vs EPICS (caproto IOC on loopback), "
          f"{cores} cores, load {load[1]:.1f}")
    print(f"wrote {out / 'epics.json'} and {out / 'epics.png'}")


if __name__ == "__main__":
    main()
