"""Workers placed by SLURM beside local ones, in the same run: time until the workers joined, a scaled-up
worker's time to join, and frames/s of a scan of raw 1040 x 1152 FCCD frames. Prints figures; passes or fails nothing.

    .venv/bin/python benchmarks/slurm_workers.py [--frames 200] [--workers 2] [--repeat 3]

Starts its own single-node SLURM cluster (munged, slurmctld, slurmd in a temp dir, as the tests do).
Local workers share frames with the handler through shared memory; SLURM-placed workers, which may be on
other nodes, get them over TCP, so the local pipeline runs a second time with TCP only (``shm_slot_mb = 0``)
to tell the placement from the transport.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: the cluster the tests start

from ns_bluesky.stream.client import IngestClient  # noqa: E402
from ns_bluesky.stream.config import PipelineConfig, free_loopback_ports  # noqa: E402
from ns_bluesky.stream.launcher import PipelineProcess  # noqa: E402
from ns_bluesky.stream.protocol import Message, decode  # noqa: E402
from tests.support.scan import SimScan  # noqa: E402
from tests.support.slurm import SlurmCluster, missing  # noqa: E402


def _config(workdir: Path, launcher: str, workers: int, shm_mb: float) -> PipelineConfig:
    c, i, w, r = free_loopback_ports(4)
    return PipelineConfig(control_port=c, ingest_port=i, worker_port=w, results_port=r, log_dir=str(workdir / "logs"),
                          spill_dir=str(workdir / "spill"), launcher=launcher, shm_slot_mb=shm_mb,
                          modules=[{"name": "echo", "module": "echo", "workers": workers}])


def _scan(cfg: PipelineConfig, frames: list[np.ndarray], n: int) -> float:
    """frames/s from the first frame sent to the run's end published (every result received)."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(cfg.address(cfg.results_port, connect=True))
    time.sleep(0.3)
    client = IngestClient(cfg)
    run = f"bench-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    client.send(Message("start", run=run))
    for seq in range(n):
        client.send(Message("frame", run=run, seq=seq, arrays={"raw": frames[seq % len(frames)]}))
        client.poll(0)
    client.send(Message("stop", run=run))
    got, deadline = set(), time.monotonic() + 300
    while time.monotonic() < deadline:
        client.poll(0)
        if not sub.poll(100):
            continue
        msg = decode(sub.recv_multipart()[1:])
        if msg.kind == "result" and msg.run == run:
            got.add(msg.seq)
        if msg.kind == "end_of_run" and msg.run == run:
            break
    seconds = time.perf_counter() - t0
    client.close()
    sub.close(linger=0)
    assert len(got) == n, f"{len(got)} of {n} results"
    return n / seconds


def _measure(label: str, cfg: PipelineConfig, workdir: Path, frames: list[np.ndarray], n: int) -> dict:
    t0 = time.perf_counter()
    with PipelineProcess(cfg, workdir, ready_timeout_s=120) as pipe:
        joined = time.perf_counter() - t0
        rate = _scan(cfg, frames, n)
        t1 = time.perf_counter()
        pipe.control("scale", counts={"echo": cfg.modules[0].workers + 1})
        pipe.control.wait_ready(120)
        scaled = time.perf_counter() - t1
        jobs = [j["job"] for j in pipe.control.status()["launcher"].get("jobs", [])]
    print(f"  {label:<34} {joined:5.2f} s      {scaled:5.2f} s      {rate:7.1f}" + (f"   jobs {','.join(jobs)}" if jobs else ""), flush=True)
    return {"joined": joined, "scaled": scaled, "rate": rate}


def _plot(med: dict, runs: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(med)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, key, title in zip(axes, ("rate", "joined", "scaled"), ("frames/s", "s until all joined", "s until +1 joined")):
        ax.bar(range(len(labels)), [med[label][key] for label in labels], color=["#4c72b0", "#8c8c8c", "#dd8452"])
        for i, label in enumerate(labels):
            ax.plot([i] * len(runs[label]), [r[key] for r in runs[label]], "k.", ms=4)
        ax.set_xticks(range(len(labels)), [label.replace(" (", "\n(") for label in labels], fontsize=8)
        ax.set_title(title, fontsize=10)
    fig.suptitle("Workers placed by SLURM beside local ones (bars: medians, dots: rounds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"figure: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--png", help="also draw the medians (frames/s, seconds to join) into this PNG")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of the three set-ups, in rotated order; medians compared")
    args = ap.parse_args()
    why = missing()
    if why:
        sys.exit(f"cannot run: {why}")
    scan = SimScan(shape=(2, 2))
    frames = [scan.frame(seq).arrays["raw"] for seq in range(1, 5)]
    print(f"cores: {os.cpu_count()}  {args.workers} echo workers, {args.frames} raw {frames[0].shape[0]}x{frames[0].shape[1]} "
          f"{frames[0].dtype} frames ({frames[0].nbytes / 1e6:.1f} MB) per scan", flush=True)
    cluster = SlurmCluster(cpus=max(os.cpu_count() or 1, args.workers + 1))  # room for the scaled-up worker's job
    t0 = time.perf_counter()
    cluster.start()
    print(f"single-node SLURM cluster up in {time.perf_counter() - t0:.2f} s", flush=True)
    os.environ["SLURM_CONF"] = str(cluster.conf)  # the handler, its sbatch and squeue
    runs: dict[str, list[dict]] = {}
    try:
        print(f"  {'workers':<34} {'all joined':>10} {'+1 joined':>10} {'frames/s':>9}")
        with tempfile.TemporaryDirectory() as d:
            setups = [("local (shared memory)", "local", 4.0), ("local (TCP only)", "local", 0.0), ("SLURM jobs (TCP)", "slurm", 0.0)]
            for k in range(args.repeat):
                for label, launcher, shm in setups[k % 3:] + setups[: k % 3]:  # each set-up takes each place in turn
                    work = Path(d) / f"{launcher}-{shm:g}-{k}"
                    runs.setdefault(label, []).append(_measure(label, _config(work, launcher, args.workers, shm), work, frames, args.frames))
                    cluster.wait_idle()
    finally:
        cluster.stop()
    med = {label: {key: statistics.median(r[key] for r in rs) for key in ("joined", "scaled", "rate")} for label, rs in runs.items()}
    slurm, tcp = med["SLURM jobs (TCP)"], med["local (TCP only)"]
    for label, m in med.items():
        print(f"median {label:<27} {m['joined']:5.2f} s      {m['scaled']:5.2f} s      {m['rate']:7.1f}")
    if args.png:
        _plot(med, runs, args.png)
    print(f"SLURM / local TCP: frames/s {slurm['rate'] / tcp['rate']:.2f}x, all joined {slurm['joined'] - tcp['joined']:+.2f} s, "
          f"+1 worker {slurm['scaled'] - tcp['scaled']:+.2f} s")


if __name__ == "__main__":
    main()
