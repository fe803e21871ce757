"""Reconstruction over MPI ranks: s/iteration, NRMSE against wall time and the communication share of an
iteration, for 1 and 2 ranks on the same simulated set, side by side in one run.

    .venv/bin/python benchmarks/mpi.py [--seconds 20] [--grid 24] [--engine lsqml] [--rounds 2] [--out DIR]

Set: benchmarks/engines.py's simulated one (jittered raster at 70 % overlap, 128² frames, 10⁶ photons with
Poisson noise, a flat start object and a zone-plate probe 20 % off in defocus), ``--grid`` x ``--grid``
positions. Each configuration runs as its own ``mpiexec -n R`` job (the MPICH wheel's), one thread and one
FFT worker a rank, so 2 ranks use 2 cores against 1 rank's one; "1 rank, 2 threads" is the same two cores
used by threads in one process, for reference. Time axis: the engine's iterations only (the gathers for
the NRMSE are off the clock). Communication: the seconds rank 0 spends in collectives (its waits for the
other rank included) over its iteration time; and pure transfer figures timed after a barrier: one
object-sized reduction (3 floats a pixel where rank 0's part overlaps its neighbours') and one allreduce of
two probe modes' sums.

Prints figures, writes JSON and a PNG (paths printed); passes or fails nothing. The rank side of the
benchmark is this same file with ``--rank`` (run by mpiexec).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = [(1, 1), (2, 1), (1, 2)]  # (ranks, threads per rank)


# ------------------------------------------------------------------------------------------- one rank
def rank_main(args) -> None:
    from ns_bluesky.ptycho.backend import set_fft_threads
    from ns_bluesky.ptycho.engines import PtychoData, engine, gather_object, prepare_split
    from ns_bluesky.ptycho.metrics import nrmse
    from ns_bluesky.stream.mpi import MPIComm

    comm = MPIComm()
    set_fft_threads(args.threads)
    with np.load(args.set) as f:
        data = PtychoData(f["patterns"], f["origins"])
        probe, truth, mask = f["probe_start"], f["obj"], f["mask"]
    eng = engine(args.engine, threads=args.threads)
    share = prepare_split(eng, data, probe, comm)
    wall, comm_s, its, points, go = 0.0, [], [], [], np.ones(2, np.int32)  # rank 0's clock decides for all
    next_check = 0.0

    def score():
        obj = gather_object(eng, share, comm)
        if comm.rank == 0:
            h, w = min(obj.shape[0], truth.shape[0]), min(obj.shape[1], truth.shape[1])
            points.append((eng.iteration, wall, float(nrmse(obj[:h, :w], truth[:h, :w], mask[:h, :w]))))

    while True:
        if comm.rank == 0:
            go[:] = int(wall < args.seconds), int(wall >= next_check)
        comm.bcast(go)
        if not go[0]:
            break
        if go[1]:
            score()
            next_check += args.every
        c0, t0 = comm.seconds, time.perf_counter()
        eng.iterate(1)
        its.append(time.perf_counter() - t0)
        comm_s.append(comm.seconds - c0)
        wall += its[-1]
    score()
    # pure transfer, after a barrier: one object-sized reduction (complex numerator + illumination, 3 floats a
    # pixel, over the overlaps with the neighbours) and one small allreduce (two probe modes' sums, 128²)
    halo = {r: np.zeros(3 * int(np.prod([b.stop - b.start for b in box])), np.float32) for r, box in eng.neighbours.items()}
    small = np.zeros(3 * 128 * 128 * 2, np.float32)
    transfer, reduce_small = [], []
    for _ in range(20):
        comm.barrier()
        t0 = time.perf_counter()
        comm.exchange(halo, {r: np.empty_like(b) for r, b in halo.items()})
        transfer.append(time.perf_counter() - t0)
        comm.barrier()
        t0 = time.perf_counter()
        comm.allreduce(small)
        reduce_small.append(time.perf_counter() - t0)
    if comm.rank == 0:
        out = {"ranks": comm.size, "threads": args.threads, "frames_rank0": len(share.frames),
               "grid": list(share.whole_shape), "rank0_grid": list(share.shape), "iteration_s": its,
               "comm_s": comm_s, "points": points, "halo_exchange_s": float(np.median(transfer)),
               "halo_bytes": int(sum(b.nbytes for b in halo.values())), "small_allreduce_s": float(np.median(reduce_small)),
               "collectives_per_iteration": comm.calls / max(len(its), 1)}
        Path(args.out).write_text(json.dumps(out))


# -------------------------------------------------------------------------------------------- driver
def build_set(grid: int, path: Path) -> dict:
    from ns_bluesky.sim.farfield import farfield_set

    s = farfield_set(grid=grid, frame=128, overlap=0.7, photons=1e6, probe_diameter_px=40.0, jitter_px=1.0,
                     defocus_error=0.2, pixel_m=40e-9, energy_eV=800.0, seed=0)
    np.savez(path, patterns=s.patterns, origins=s.origins, probe_start=s.probe_start, obj=s.obj, mask=s.mask)
    return {"frames": len(s.origins), "frame": 128, "object": list(s.obj.shape)}


def run_config(ranks: int, threads: int, set_path: Path, out: Path, args) -> dict:
    from ns_bluesky.stream.mpi import run_mpiexec

    here = str(Path(__file__).resolve())
    cmd = ["--rank", "--set", str(set_path), "--out", str(out), "--seconds", str(args.seconds), "--threads", str(threads),
           "--engine", args.engine, "--every", str(args.every)]
    t0 = time.perf_counter()
    run_mpiexec(ranks, here, cmd, timeout_s=args.seconds * 3 + 180,
                env={"PYTHONPATH": str(Path(here).parents[1])})
    result = json.loads(out.read_text())
    result["job_s"] = time.perf_counter() - t0
    return result


def summarise(r: dict) -> dict:
    its, comm = np.array(r["iteration_s"]), np.array(r["comm_s"])
    s_it = float(np.median(its))
    share = float(np.sum(comm) / max(np.sum(its), 1e-30))
    pts = r["points"]

    def at(t):
        vals = [v for _, w, v in pts if w <= t + 1e-9]
        return vals[-1] if vals else float("nan")

    return {"label": f"{r['ranks']} rank{'s' if r['ranks'] > 1 else ''} x {r['threads']} thread{'s' if r['threads'] > 1 else ''}",
            "s_per_iteration": s_it, "iterations": len(its), "comm_share": share,
            "comm_s_per_iteration": float(np.median(comm)), "nrmse_at_5s": at(5), "nrmse_at_10s": at(10),
            "nrmse_end": pts[-1][2] if pts else float("nan"), "halo_ms": 1e3 * r["halo_exchange_s"],
            "halo_bytes": r["halo_bytes"], "small_allreduce_ms": 1e3 * r["small_allreduce_s"],
            "collectives_per_iteration": r["collectives_per_iteration"], "rank0_grid": r["rank0_grid"], "grid": r["grid"],
            "frames_rank0": r["frames_rank0"]}


def plot(results: list[dict], summaries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    names = [f"{s['label']}, round {s.get('round', 1)}" for s in summaries]
    for r, name in zip(results, names, strict=True):
        pts = np.array(r["points"])
        ax[0].semilogy(pts[:, 1], pts[:, 2], marker="o", ms=3, label=name)
    ax[0].set_xlabel("wall time of the iterations (s)")
    ax[0].set_ylabel("NRMSE")
    ax[0].set_title("NRMSE against wall time")
    ax[0].legend(fontsize=7)
    labels = [n.replace(" x ", "\n").replace(", ", "\n") for n in names]
    total = [s["s_per_iteration"] for s in summaries]
    comm = [s["comm_s_per_iteration"] for s in summaries]
    ax[1].bar(range(len(labels)), total, color="tab:blue", label="iteration")
    ax[1].bar(range(len(labels)), comm, color="tab:orange", label="in collectives (rank 0)")
    ax[1].set_xticks(range(len(labels)), labels, fontsize=7)
    ax[1].set_ylabel("s / iteration (median)")
    ax[1].set_title("s/iteration and its communication share")
    ax[1].legend()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--set", help=argparse.SUPPRESS)
    ap.add_argument("--out", help="directory for the JSON and PNG (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=20.0, help="iteration time per configuration (default 20)")
    ap.add_argument("--grid", type=int, default=24, help="scan positions per side (default 24: 576 frames)")
    ap.add_argument("--engine", default="lsqml")
    ap.add_argument("--every", type=float, default=2.0, help="seconds of iterations between NRMSE points")
    ap.add_argument("--rounds", type=int, default=2, help="times each configuration runs, alternating (default 2)")
    args = ap.parse_args()
    if args.rank:
        rank_main(args)
        return
    out = Path(args.out or tempfile.mkdtemp(prefix="ns-bench-mpi-"))
    out.mkdir(parents=True, exist_ok=True)
    set_path = out / "set.npz"
    info = build_set(args.grid, set_path)
    print(f"set: {args.grid} x {args.grid} raster, {info['frames']} frames {info['frame']}², object {info['object']}; "
          f"{args.engine}, {args.seconds:g} s of iterations per configuration", flush=True)
    results = []
    for round_ in range(args.rounds):  # the configurations alternate: a busy neighbour slows each alike
        for ranks, threads in CONFIGS:
            print(f"  round {round_ + 1}: mpiexec -n {ranks}, {threads} thread(s) a rank ...", flush=True)
            results.append(run_config(ranks, threads, set_path, out / f"r{ranks}t{threads}-{round_}.json", args))
    summaries = [summarise(r) for r in results]
    for i, s in enumerate(summaries):
        s["round"] = i // len(CONFIGS) + 1
    print(f"\n{'configuration':<22}{'s/it':>8}{'its':>6}{'comm share':>12}{'comm s/it':>11}{'NRMSE@5s':>10}"
          f"{'NRMSE@10s':>11}{'NRMSE end':>11}{'halo MB / ms':>15}{'allreduce ms':>13}{'colls/it':>10}")
    for s in summaries:
        print(f"{s['label']:<22}{s['s_per_iteration']:8.3f}{s['iterations']:6d}{100 * s['comm_share']:11.1f}%"
              f"{s['comm_s_per_iteration']:11.4f}{s['nrmse_at_5s']:10.4f}{s['nrmse_at_10s']:11.4f}{s['nrmse_end']:11.4f}"
              f"{s['halo_bytes'] / 1e6:8.2f} /{s['halo_ms']:5.2f}{s['small_allreduce_ms']:13.2f}"
              f"{s['collectives_per_iteration']:10.0f}")
    ratios = [summaries[i]["s_per_iteration"] / summaries[i + 1]["s_per_iteration"] for i in range(0, len(summaries), len(CONFIGS))]
    one, two = summaries[0], summaries[1]
    print(f"\nspeed-up 2 ranks / 1 rank (1 thread each), each round: {', '.join(f'{r:.2f}x' for r in ratios)}; "
          f"rank 0 holds {two['frames_rank0']} of {info['frames']} frames on a {two['rank0_grid']} part of the "
          f"{two['grid']} grid")
    print(f"per frame and iteration: {1e3 * one['s_per_iteration'] / info['frames']:.2f} ms on one core (1 rank)")
    report = {"set": info, "speedups": ratios, "engine": args.engine, "seconds": args.seconds, "summaries": summaries, "runs": results}
    (out / "mpi.json").write_text(json.dumps(report, indent=1))
    plot(results, summaries, out / "mpi.png")
    print(f"wrote {out / 'mpi.json'}\n      {out / 'mpi.png'}")


if __name__ == "__main__":
    sys.exit(main())
