"""Adaptive acquisition against the plain scan: frames and seconds saved at equal quality.

    .venv/bin/python benchmarks/adaptive.py [--scan 20x20] [--rate 10] [--coarse-every 3] [--iterations 60]

The sample is the Siemens star with its right half empty. The same simulated beamline,
pipeline (dark + 2 frame workers, the demo's 480-pixel crop to 128 x 128) and RunEngine
run the plain ``ptycho_scan`` of the whole raster, then ``adaptive_ptycho`` with and
without its drift check. Quality: every run's usable frames (the latest per point, drift
probes left out) reconstructed offline the same way (LSQ-ML, ``--iterations``, one
thread) and scored against the truth where there is sample (``occupied_nrmse``).
Seconds are the plan's wall time, RunEngine to close of run. Prints figures; passes or
fails nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from bluesky import RunEngine
from ns_bluesky.callbacks.bridge import PipelineBridge
from ns_bluesky.callbacks.feedback import AdaptiveFeedback
from ns_bluesky.ophyd_devices import make_sim_beamline

from ns_bluesky.apps.demo import parse_scan
from ns_bluesky.instrument.scan import ScanPattern
from ns_bluesky.plans import dark_frames, ptycho_scan
from ns_bluesky.plans.adaptive import adaptive_ptycho
from ns_bluesky.ptycho.adaptive import audit_reconstruction, data_frames
from ns_bluesky.sim import sample as sim_sample
from ns_bluesky.sim.scoring import occupied_nrmse
from ns_bluesky.sim.settings import SimConfig
from ns_bluesky.stream.config import PipelineConfig, free_loopback_ports
from ns_bluesky.stream.launcher import PipelineProcess


class _Decisions:
    """The ``adaptive`` stream's events of the runs, as the RunEngine emits them."""

    def __init__(self):
        self.streams: dict[str, str] = {}
        self.events: list[dict] = []

    def __call__(self, name: str, doc: dict) -> None:
        if name == "descriptor":
            self.streams[doc["uid"]] = doc["name"]
        elif name == "event" and self.streams.get(doc["descriptor"]) == "adaptive":
            self.events.append(doc["data"])


def usable_frames(feedback: AdaptiveFeedback, uid: str, grid: np.ndarray, events: list[dict]):
    """Grid point -> (pattern, QC) of its latest usable frame that is scan data, and the object pixel size."""
    decisions = [{"seqs": json.loads(e["adaptive_seqs"]), "detail": json.loads(e["adaptive_detail"])} for e in events]
    patterns, dx = feedback.patterns(uid)
    return data_frames(feedback.qc(uid), patterns, grid, decisions), dx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", default="20x20", help="raster rows x columns (default 20x20)")
    ap.add_argument("--rate", type=float, default=10.0, help="detector frame rate, Hz (0: as fast as it renders)")
    ap.add_argument("--coarse-every", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=60, help="LSQ-ML iterations of the audit reconstructions")
    args = ap.parse_args()
    shape = parse_scan(args.scan)

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        config = SimConfig(scan=ScanPattern(shape=shape, overlap=0.7))
        image = sim_sample.with_empty_region(sim_sample.test_pattern(), "right")
        bl = make_sim_beamline(tmp / "detector", config, image=image, rate_hz=args.rate)
        c, i, w, r = free_loopback_ports(4)
        cfg = PipelineConfig(
            modules=[{"name": "dark", "module": "dark"}, {"name": "frame", "module": "frame", "workers": 2}],
            control_port=c, ingest_port=i, worker_port=w, results_port=r, log_dir=str(tmp / "logs"),
        )
        with PipelineProcess(cfg, tmp / "pipeline"):
            feedback = AdaptiveFeedback(cfg, keep_patterns=True)
            bridge = PipelineBridge(cfg)
            decisions = _Decisions()
            RE = RunEngine({}, call_returns_result=False)
            RE.subscribe(bridge)
            RE.subscribe(decisions)
            (dark,) = RE(dark_frames(bl.fccd, bl.shutter, 4))
            grid = bl.sim.planned  # the raster both plans share
            rows = []
            runs = [
                ("plain ptycho_scan", lambda: ptycho_scan(bl.fccd, bl.stage, bl.shutter, shape=shape, overlap=0.7,
                                                          optics=bl.optics, dark_uid=dark)),
                ("adaptive_ptycho", lambda: adaptive_ptycho(bl.fccd, bl.stage, bl.shutter, feedback=feedback, shape=shape,
                                                            overlap=0.7, optics=bl.optics, dark_uid=dark,
                                                            coarse_every=args.coarse_every)),
                ("adaptive, no drift check", lambda: adaptive_ptycho(bl.fccd, bl.stage, bl.shutter, feedback=feedback,
                                                                     shape=shape, overlap=0.7, optics=bl.optics,
                                                                     dark_uid=dark, coarse_every=args.coarse_every,
                                                                     drift_check=False)),
            ]
            for label, plan in runs:
                decisions.events.clear()
                t0 = time.perf_counter()
                (uid,) = RE(plan())
                seconds = time.perf_counter() - t0
                feedback.wait_end(uid, 120)
                frames = len(feedback.qc(uid))
                kept, dx = usable_frames(feedback, uid, grid, decisions.events)
                points = sorted(kept)
                patterns = np.stack([kept[p][0] for p in points])
                positions = np.array([(kept[p][1]["position_y"], kept[p][1]["position_x"]) for p in points])
                obj = audit_reconstruction(patterns, positions, grid, dx, config.energy_eV, config.optics,
                                           iterations=args.iterations, threads=1)
                error = occupied_nrmse(bl.sim, grid, obj, dx, patterns.shape[-1])
                rows.append((label, frames, seconds, error))
            bridge.close()
            feedback.close()

    n0, s0, e0 = rows[0][1:]
    print(f"{shape[0]} x {shape[1]} raster at {args.rate:g} Hz, half the sample empty, coarse pass every "
          f"{args.coarse_every}. point, audit reconstruction {args.iterations} LSQ-ML iterations")
    print(f"{'plan':28s} {'frames':>7s} {'saved':>7s} {'seconds':>8s} {'saved':>7s} {'NRMSE occupied':>15s} {'vs plain':>9s}")
    for label, frames, seconds, error in rows:
        print(f"{label:28s} {frames:7d} {1 - frames / n0:7.1%} {seconds:8.1f} {1 - seconds / s0:7.1%} "
              f"{error:15.4f} {error / e0:9.3f}")


if __name__ == "__main__":
    main()
