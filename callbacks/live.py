"""Watch the pipeline's results while a scan runs: progress on the terminal, the latest images kept.

A thread subscribes to the handler's results port (like a PyDM screen would) and keeps,
per run, what a person watching wants: frames processed and flagged, the
reconstruction's iteration and residual with the time of each update, the latest
STXM, the first cleaned pattern, the final estimate and when it came, and the end of
the run. It never blocks the pipeline: a slow terminal only delays its own bar.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ns_bluesky.stream.config import PipelineConfig

from ..stream.subscriber import ResultsSubscriber
from .run_bounds import forget_old_runs


@dataclass
class RunView:
    processed: int = 0
    usable: int = 0
    flags: Counter = field(default_factory=Counter)
    first_clean_at: float | None = None
    last_clean_at: float | None = None
    clean_pattern: np.ndarray | None = None
    recon: dict | None = None  # latest: arrays and scalars
    recon_updates: list = field(default_factory=list)  # (wall time, iteration, residual, frames)
    final_at: float | None = None  # the first final image (the refined one may follow)
    first_final: dict | None = None
    refined_at: float | None = None
    stxm: dict | None = None
    errors: list = field(default_factory=list)
    cxi: list = field(default_factory=list)
    ended: dict | None = None
    cut_short: str = ""  # why the reconstruction was wrapped up early (its max_live_runs), if it was


class LiveMonitor(ResultsSubscriber):
    """``LiveMonitor(cfg)``; ``view(run)`` for what came, ``wait_end(run)`` for the end of a run.

    Views are kept for the runs under way and the last few ended ones (:mod:`.run_bounds`): a session of
    hundreds of scans does not keep every scan's images. ``say`` tells the user what the pipeline did
    to a run that they should know (a reconstruction cut short)."""

    def __init__(self, cfg: PipelineConfig, *, progress: bool = True, total: int | None = None, say=None):
        self.runs: dict[str, RunView] = {}
        self.say = say or (lambda line: tqdm.write(line, file=sys.stderr))
        self._bar = tqdm(total=total, desc="pipeline", unit="frame", disable=not progress, position=1, dynamic_ncols=True, leave=True)
        self._lock = threading.Lock()
        super().__init__(cfg, name="live-monitor")

    def view(self, run: str) -> RunView:
        with self._lock:
            if run not in self.runs:
                self.runs[run] = RunView()
                forget_old_runs(self.runs, lambda v: v.ended is not None)
            return self.runs[run]

    def wait_end(self, run: str, timeout_s: float) -> RunView:
        deadline = time.monotonic() + timeout_s
        while self.view(run).ended is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.view(run)

    def _on_message(self, msg) -> None:
        now = time.time()
        v = self.view(msg.run)
        scalars = msg.meta.get("scalars") or {}
        if msg.kind == "result" and msg.stage == "clean":
            v.processed += 1
            v.usable += int(scalars.get("usable", 1))
            for flag in filter(None, str(scalars.get("flags", "")).split(",")):
                v.flags[flag] += 1
            v.first_clean_at = v.first_clean_at or now
            v.last_clean_at = now
            if v.clean_pattern is None and scalars.get("usable", 1):
                v.clean_pattern = np.array(msg.arrays["pattern"])
            self._bar.update(1)
        elif msg.kind == "result" and msg.stage == "recon":
            v.recon = {"scalars": scalars, "arrays": {k: np.array(a) for k, a in msg.arrays.items()}, "meta": dict(msg.meta)}
            residual = scalars.get("residual")
            residual = float("nan") if residual is None else float(residual)  # NaN travels as JSON null
            v.recon_updates.append((now, scalars.get("iteration"), residual, scalars.get("frames")))
            if scalars.get("final") and v.final_at is None:
                v.final_at, v.first_final = now, v.recon
            if scalars.get("refined"):
                v.refined_at = now
            if msg.meta.get("cut_short") and not v.cut_short:
                v.cut_short = str(msg.meta["cut_short"])
                self.say(f"pipeline: run {msg.run[:8]}: {v.cut_short}")
            self._bar.set_postfix_str(f"recon it {scalars.get('iteration')} residual {residual:.4f}"
                                      f" on {scalars.get('frames')} frames")
        elif msg.kind == "result" and msg.stage == "stxm":
            v.stxm = {k: np.array(a) for k, a in msg.arrays.items()}
        elif msg.kind == "result" and msg.stage == "cxi":
            v.cxi = list(msg.meta.get("paths") or [])
        elif msg.kind == "error":
            v.errors.append(f"{msg.stage} seq {msg.seq}: {msg.meta.get('error')}")
        elif msg.kind == "end_of_run":
            v.ended = dict(msg.meta)
            with self._lock:
                forget_old_runs(self.runs, lambda view: view.ended is not None)

    def close(self, timeout_s: float = 5.0) -> None:
        super().close(timeout_s)
        self._bar.close()
