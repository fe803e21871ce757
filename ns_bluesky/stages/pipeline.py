"""The streaming-ptychography pipeline: Nanosurveyor's modules wired, as a configuration.

dark (1) -> frame (N) -> image (1), recon (1) -> cxiwrite (1). The same configuration
the demo and ``replay`` run, written out as a file for ``ns-bluesky pipeline start``.
"""

from __future__ import annotations

import os

from ..stream.config import PipelineConfig, free_loopback_ports


def ptycho_pipeline(
    *,
    frame_workers: int = 2,
    engine: str = "lsqml",
    backend: str = "numpy",
    out_dir: str | os.PathLike = "cxi-output",
    crop: int = 480,
    out_size: int = 128,
    raw_cxi: bool = False,
    refine_s: float = 60.0,
    ranks: int = 1,
    positions: str = "auto",
    max_live_runs: int = 2,
    recon_idle: bool = True,
    free_ports: bool = True,
    **settings,
) -> PipelineConfig:
    """The pipeline for a ptychography scan; ``free_ports`` picks loopback ports nobody uses (a private pipeline).
    ``refine_s``: the reconstruction's refinement budget in seconds (the best state it sees ends the run);
    ``ranks`` > 1 refines each scan's reconstruction over that many MPI ranks (the mpi extra);
    ``positions``: auto, sample or probe (what the stage's positions are; :class:`.recon.ReconParams`);
    ``max_live_runs``: runs the reconstruction works on at once; one more wraps up the oldest (``cut_short``);
    ``recon_idle``: the reconstruction iterates only on CPU time nothing else wants (nice 10 and SCHED_IDLE: frames
    as fast as possible lose nothing to it); False for a scan at a set rate, whose live updates must keep coming on
    a busy machine: it then runs at the normal priority (measured on 2 loaded cores, load 10-16: under SCHED_IDLE
    and under nice 10 alike its first image came 6-9 s after the first frame, the engine's set-up starved)."""
    modules = [
        {"name": "dark", "module": "dark", "workers": 1},
        # several frame workers share the cores: one FFT thread each
        {"name": "frame", "module": "frame", "workers": frame_workers, "params": {"crop": crop, "out_size": out_size, "fft_threads": 1}},
        {"name": "image", "module": "image", "workers": 1},
        # the reconstruction iterates on whatever CPU the frames leave: cleaning them comes first
        {"name": "recon", "module": "recon", "workers": 1, "credits": 8, "nice": 10 if recon_idle else 0, "idle": recon_idle, "params": {"engine": engine, "backend": backend, "refine_seconds": refine_s, "positions": positions, "max_live_runs": max_live_runs, **({"ranks": ranks} if ranks > 1 else {})}},
        {"name": "cxiwrite", "module": "cxiwrite", "workers": 1, "credits": 8, "params": {"out_dir": str(out_dir), "raw": raw_cxi}},
    ]
    if free_ports:
        c, i, w, r = free_loopback_ports(4)
        settings = {"control_port": c, "ingest_port": i, "worker_port": w, "results_port": r, **settings}
    return PipelineConfig(modules=modules, **settings)
