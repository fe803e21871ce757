"""What the plan reads from the pipeline, without waiting on it.

:class:`AdaptiveFeedback` listens to the pipeline's results port on a thread and keeps,
per run, the per-frame QC (bad frames: zeros, saturation, no flux, ...), the latest
STXM and reconstruction (and from it each frame's local error) and the cleaned
patterns a plan asks for. A plan polls it between RunEngine messages, so a slow
pipeline delays a decision, never the RunEngine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..ptycho.adaptive import local_errors
from ..stream.config import PipelineConfig
from ..stream.subscriber import ResultsSubscriber
from .run_bounds import forget_old_runs


@dataclass
class RunFeedback:
    """What the pipeline said about one run so far."""

    qc: dict[int, dict] = field(default_factory=dict)  # primary event number -> the frame's QC scalars
    patterns: dict[int, np.ndarray] = field(default_factory=dict)  # kept only with keep_patterns
    object_pixel_size_m: float | None = None
    stxm: dict | None = None
    recon: dict | None = None
    ended: dict | None = None
    updated_at: float | None = None  # monotonic time of the last result


class AdaptiveFeedback(ResultsSubscriber):
    """The plan's view of the pipeline: ``AdaptiveFeedback(cfg)``, then ``qc(run)``, ``stxm(run)``, ``recon(run)``,
    ``local_error(run, planned)``.

    Reads return copies at once; nothing here waits for the pipeline. ``keep_patterns``
    also keeps each cleaned pattern, for an audit reconstruction of exactly the frames a
    plan chose (:meth:`patterns`). What it keeps is kept for the runs under way and the last
    few ended ones (:mod:`.run_bounds`), patterns included: a beamtime of scans does not pile up.
    """

    def __init__(self, cfg: PipelineConfig, *, keep_patterns: bool = False):
        self.keep_patterns = keep_patterns
        self._runs: dict[str, RunFeedback] = {}
        self._wanted: dict[str, set[int]] = {}
        self._lock = threading.Lock()
        super().__init__(cfg, name="adaptive-feedback")

    def _view(self, run: str) -> RunFeedback:
        if run not in self._runs:
            self._runs[run] = RunFeedback()
            self._forget_old()
        return self._runs[run]

    def _forget_old(self) -> None:
        for run in forget_old_runs(self._runs, lambda v: v.ended is not None):
            self._wanted.pop(run, None)

    def _on_message(self, msg) -> None:
        scalars = msg.meta.get("scalars") or {}
        with self._lock:
            v = self._view(msg.run)
            v.updated_at = time.monotonic()
            if msg.kind == "result" and msg.stage == "clean":
                v.qc[int(msg.seq)] = dict(scalars)
                v.object_pixel_size_m = msg.meta.get("object_pixel_size_m", v.object_pixel_size_m)
                if "pattern" in msg.arrays and (self.keep_patterns or int(msg.seq) in self._wanted.get(msg.run, ())):
                    v.patterns[int(msg.seq)] = np.array(msg.arrays["pattern"])
            elif msg.kind == "result" and msg.stage == "stxm":
                v.stxm = {"scalars": dict(scalars), **{k: np.array(a) for k, a in msg.arrays.items()}}
            elif msg.kind == "result" and msg.stage == "recon":
                v.recon = {"scalars": dict(scalars), "meta": dict(msg.meta), "arrays": {k: np.array(a) for k, a in msg.arrays.items()}}
            elif msg.kind == "end_of_run":
                v.ended = dict(msg.meta)
                self._forget_old()

    def keep(self, run: str, seqs: Sequence[int]) -> None:
        """Keep the cleaned patterns of these events (ask before they are measured)."""
        with self._lock:
            self._view(run)  # the wish lives as long as the run's view
            self._wanted.setdefault(run, set()).update(int(s) for s in seqs)

    def qc(self, run: str) -> dict[int, dict]:
        """Per-frame QC by primary event number (from 1): usable, flags, photons, transmission, dpc, position."""
        with self._lock:
            return {seq: dict(s) for seq, s in self._view(run).qc.items()}

    def stxm(self, run: str) -> dict | None:
        """The pipeline's latest STXM images (its image module's grid), or None."""
        with self._lock:
            return self._view(run).stxm

    def recon(self, run: str) -> dict | None:
        """The latest reconstruction (scalars iteration/residual/frames, object and probe arrays), or None."""
        with self._lock:
            return self._view(run).recon

    def local_error(self, run: str, planned_m: np.ndarray) -> dict[int, float]:
        """The latest live reconstruction's misfit at each kept frame (:func:`local_errors`), by event
        number; empty before the first reconstruction. ``planned_m``: the start document's
        ``planned_positions_m``, which lays out the reconstruction's grid."""
        from ..ptycho.layout import grid_origins

        with self._lock:
            v = self._view(run)
            recon, patterns, qc = v.recon, dict(v.patterns), dict(v.qc)
        if recon is None or not patterns:
            return {}
        a, meta = recon["arrays"], recon["meta"]
        seqs = [s for s in sorted(patterns) if s in qc]
        positions = np.array([(qc[s]["position_y"], qc[s]["position_x"]) for s in seqs])
        dx = float(meta["object_pixel_size_m"])
        origins = grid_origins(-positions, dx, (-np.asarray(planned_m, float)).min(axis=0), float(meta["margin_px"]))
        errors = local_errors(a["object_amplitude"] * np.exp(1j * a["object_phase"]),
                              a["probe_amplitude"] * np.exp(1j * a["probe_phase"]),
                              np.stack([patterns[s] for s in seqs]), origins)
        return dict(zip(seqs, errors.tolist(), strict=True))

    def patterns(self, run: str) -> tuple[dict[int, np.ndarray], float | None]:
        """Kept cleaned patterns by event number, and their object pixel size (m)."""
        with self._lock:
            v = self._view(run)
            return dict(v.patterns), v.object_pixel_size_m

    def ended(self, run: str) -> dict | None:
        with self._lock:
            return self._view(run).ended

    def wait_end(self, run: str, timeout_s: float) -> dict | None:
        """Block until the pipeline ends ``run`` (for a caller after the plan, never inside it)."""
        deadline = time.monotonic() + timeout_s
        while self.ended(run) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.ended(run)
