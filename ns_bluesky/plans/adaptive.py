"""``adaptive_ptycho``: one run that steers itself, every decision an event of its ``adaptive`` stream.

Coarse pass -> region of interest -> fine scan of it -> bad frames measured again ->
drift check against a reference patch, with correction through the stage's user
offsets. Without feedback (no pipeline) it measures the whole scan and says so. On a raster or a
Fermat spiral: the decisions (:mod:`ns_bluesky.ptycho.adaptive`) take the grid's shape or the
points' positions.
The annotations are real types (no ``from __future__ import annotations``): the queue server
checks a queued plan's parameters against them before it runs.
"""

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.utils import MsgGenerator, RunEngineControlException

from ..errors import ParameterError
from ..ptycho.adaptive import (
    audit_reconstruction,
    coarse_points,
    coarse_subset,
    estimate_drift,
    patch_around,
    reference_patch,
    reference_patch_scattered,
    region_of_interest,
    region_of_interest_scattered,
)
from ..ptycho.layout import grid_origins
from .decision_log import DecisionLog, record_decision
from .defaults import resolve_dark, resolve_feedback, resolve_optics
from .feedback import Feedback
from .stubs import check_room, merge_caller_md, ptycho_step, scan_layout, scan_metadata


def _await_qc(feedback, run: str, seqs: Sequence[int], timeout_s: float, poll_s: float = 0.05) -> MsgGenerator[dict[int, dict]]:
    """The QC of ``seqs`` as far as it came: waits between RunEngine messages while results keep
    arriving, and gives up ``timeout_s`` after the last one (an absent or stalled pipeline)."""
    last_progress, have = time.monotonic(), -1
    while True:
        qc = feedback.qc(run)
        got = sum(1 for s in seqs if s in qc)
        if got == len(seqs):
            return qc
        if got > have:
            have, last_progress = got, time.monotonic()
        elif time.monotonic() - last_progress > timeout_s:
            return qc
        yield from bps.sleep(poll_s)


_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaptive")


def _background(fn, *args, **kwargs) -> MsgGenerator:
    """Compute off the RunEngine's thread; the plan sleeps (pausable, interruptible) until it is done."""
    future = _EXECUTOR.submit(fn, *args, **kwargs)
    while not future.done():
        yield from bps.sleep(0.05)
    return future.result()


@dataclass
class _Reference:
    """The drift reference: the patch, its reconstruction and the grid that reconstruction is on; ``inner``:
    the points a drift check measures again (the patch's central 3 x 3, or its nine most central points)."""

    patch: np.ndarray
    inner: np.ndarray
    obj: np.ndarray
    probe: np.ndarray
    lowest_m: np.ndarray
    dx: float


def coarse_pass(pattern: str, shape: tuple[int, int], grid: np.ndarray, every: int, step_m: float) -> np.ndarray:
    """The coarse pass's points: every ``every``-th row and column of a raster; on a Fermat spiral the points
    at least ``every`` steps apart that cover it evenly, from its rim inwards
    (:func:`~ns_bluesky.ptycho.adaptive.coarse_subset`)."""
    if pattern == "raster":
        return coarse_points(shape, every)
    return coarse_subset(grid, every * step_m, outside_in=True)


class _AdaptiveRun:
    """One adaptive scan's state and steps; each step a generator of RunEngine messages."""

    def __init__(self, det, stage, shutter, feedback, pattern, grid, shape, step_m, energy_eV, optics_model, settings):
        self.det, self.stage, self.shutter, self.feedback = det, stage, shutter, feedback
        self.pattern, self.grid, self.shape, self.step_m = pattern, grid, shape, step_m
        self.energy_eV, self.optics_model = energy_eV, optics_model
        self.s = settings
        self.log = DecisionLog(name="adaptive")
        self.uid = ""
        self.seq_point: dict[int, int] = {}  # primary event -> grid point
        self.next_seq = 1
        self.superseded: set[int] = set()  # events measured again after a drift

    # ------------------------------------------------------------------------------ basics
    def record(self, action: str, reason: str, points=(), seqs=(), **detail) -> MsgGenerator:
        yield from record_decision(self.log, action, reason, self.grid[np.asarray(points, int)], seqs, **detail)

    def measure(self, points: Sequence[int], keep_patterns: bool = False) -> MsgGenerator[list[int]]:
        seqs = list(range(self.next_seq, self.next_seq + len(points)))
        if keep_patterns and self.feedback is not None:
            self.feedback.keep(self.uid, seqs)
        for seq, g in zip(seqs, points, strict=True):
            y, x = self.grid[g]
            yield from ptycho_step(self.det, self.stage, float(y), float(x))
            self.seq_point[seq] = int(g)
        self.next_seq += len(points)
        return seqs

    def seqs_at(self, points) -> list[int]:
        """The events measured so far at these grid points, in the order taken."""
        points = {int(g) for g in points}
        return [s for s, g in self.seq_point.items() if g in points]

    def qc(self, seqs: Sequence[int]) -> MsgGenerator[dict[int, dict]]:
        return (yield from _await_qc(self.feedback, self.uid, seqs, self.s["feedback_timeout_s"]))

    def usable(self, qc: dict[int, dict]) -> dict[int, dict]:
        """Grid point -> the QC of its latest usable frame (frames superseded after a drift left out)."""
        return {g: qc[seq] for seq, g in sorted(self.seq_point.items())
                if seq in qc and qc[seq].get("usable", 0) and seq not in self.superseded}

    # ------------------------------------------------------------------------------ the pattern's geometry
    def region(self, coarse: np.ndarray, values: dict[int, dict]) -> tuple[np.ndarray, dict]:
        opts = {"tolerance": self.s["tolerance"], "dpc_tolerance": self.s["dpc_tolerance"],
                "free_transmission": self.s["free_transmission"]}
        if self.pattern == "raster":
            return region_of_interest(self.shape, self.s["coarse_every"], coarse, values, **opts)
        return region_of_interest_scattered(self.grid, coarse, values, **opts)

    def patch(self, keep: np.ndarray, values: dict[int, dict]) -> np.ndarray | None:
        if self.pattern == "raster":
            return reference_patch(self.shape, keep, values)
        return reference_patch_scattered(self.grid, keep, values)

    def inner(self, patch: np.ndarray) -> np.ndarray:
        """The patch's points a drift check measures again: its central 3 x 3 (raster) or nine nearest the centre."""
        if self.pattern == "raster":
            c = int(patch[len(patch) // 2])
            r = int(np.sqrt(len(patch))) // 2
            return patch_around(self.shape, c // self.shape[1], c % self.shape[1], r - 1)
        return np.asarray(patch[:9], int)  # reference_patch_scattered: the centre first, then by distance

    # ------------------------------------------------------------------------------ steps
    def remeasure_bad(self, seqs: Sequence[int], why: str) -> MsgGenerator:
        """Measure again the points of ``seqs`` whose frames the pipeline flagged and that have no good one."""
        for round_ in range(self.s["remeasure_rounds"]):
            qc = yield from self.qc(seqs)
            good = self.usable(qc)
            bad = [s for s in seqs if s in qc and not qc[s].get("usable", 0) and self.seq_point[s] not in good]
            if not bad:
                return
            points = list(dict.fromkeys(self.seq_point[s] for s in bad))
            again = yield from self.measure(points)
            yield from self.record("remeasure", f"{why}, round {round_ + 1}: {len(points)} frames flagged unusable by "
                                   "the pipeline", points, again, bad_seqs=bad, flags={str(s): qc[s].get("flags", "") for s in bad})
            seqs = again

    def reference(self, patch: np.ndarray) -> MsgGenerator[_Reference | None]:
        """Reconstruct the patch as first measured: what later frames are registered against."""
        seqs = self.seqs_at(patch)
        qc = yield from self.qc(seqs)
        first: dict[int, int] = {}
        for s in sorted(seqs):
            if s in qc and qc[s].get("usable", 0):
                first.setdefault(self.seq_point[s], s)
        patterns, dx = self.feedback.patterns(self.uid)
        chosen = [first.get(int(g)) for g in patch]
        if None in chosen or dx is None or any(s not in patterns for s in chosen):
            return None
        positions = np.array([(qc[s]["position_y"], qc[s]["position_x"]) for s in chosen])
        obj, probe = yield from _background(
            audit_reconstruction, np.stack([patterns[s] for s in chosen]), positions, self.grid[patch], dx, self.energy_eV,
            self.optics_model, iterations=40, with_probe=True)
        return _Reference(patch, self.inner(patch), obj, probe, (-self.grid[patch]).min(axis=0), dx)

    def drift_probe(self, ref: _Reference) -> MsgGenerator[tuple[np.ndarray | None, list[int], float]]:
        """Measure the patch's inner points again: the drift (m, y x) since the reference (None without
        data), the events, and the fit's misfit."""
        seqs = yield from self.measure(ref.inner, keep_patterns=True)
        qc = yield from self.qc(seqs)
        patterns, _ = self.feedback.patterns(self.uid)
        if not all(s in qc and qc[s].get("usable", 0) and s in patterns for s in seqs):
            return None, seqs, float("nan")
        positions = np.array([(qc[s]["position_y"], qc[s]["position_x"]) for s in seqs])
        origins = grid_origins(-positions, ref.dx, ref.lowest_m)
        shift, misfit = yield from _background(estimate_drift, ref.obj, ref.probe, np.stack([patterns[s] for s in seqs]),
                                               origins, max_shift_px=self.step_m / ref.dx)
        return -shift * ref.dx, seqs, misfit  # the window moves opposite to the sample

    def check_drift(self, ref: _Reference, since: list[int]) -> MsgGenerator:
        """Detect drift on the reference; correct it through the stage's user offsets until a check
        passes (at most ``drift_rounds``); measure again what was taken since the last clean check."""
        tolerance = self.s["drift_tolerance_steps"] * self.step_m
        corrected = False
        for round_ in range(self.s["drift_rounds"] + 1):
            drift, seqs, misfit = yield from self.drift_probe(ref)
            points = [self.seq_point[s] for s in seqs]
            self.superseded.update(seqs)  # reference frames, not data for the region
            if drift is None:
                yield from self.record("drift_check_skipped", "no usable frames of the reference patch", points, seqs,
                                       data=False)
                return
            size = float(np.hypot(*drift))
            if size <= tolerance:
                what = "drift_verified" if corrected else "drift_check"
                yield from self.record(what, f"the reference patch is {size * 1e9:.1f} nm from where it was (tolerance "
                                       f"{tolerance * 1e9:.1f} nm)", points, seqs, drift_m=drift, tolerance_m=tolerance, data=False,
                                       misfit=misfit)
                break
            if round_ == self.s["drift_rounds"]:
                yield from self.record("drift_uncorrected", f"{size * 1e9:.1f} nm left after {round_} corrections",
                                       points, seqs, drift_m=drift, tolerance_m=tolerance, data=False, misfit=misfit)
                break
            offsets = np.array([self.stage.y.user_offset.get(), self.stage.x.user_offset.get()]) + drift
            yield from self.record("drift_detected", f"the reference patch moved by {size * 1e9:.1f} nm (tolerance "
                                   f"{tolerance * 1e9:.1f} nm): stage user offsets set to {(offsets * 1e9).round(1).tolist()} nm",
                                   points, seqs, drift_m=drift, tolerance_m=tolerance, data=False, misfit=misfit, offset_m=offsets)
            yield from bps.mv(self.stage.y.user_offset, float(offsets[0]), self.stage.x.user_offset, float(offsets[1]))
            corrected = True
        stale = [s for s in since if s not in self.superseded]
        if corrected and stale:
            self.superseded.update(stale)
            points = [self.seq_point[s] for s in stale]
            again = yield from self.measure(points)
            yield from self.record("remeasure_drifted", "frames taken since the last clean check were recorded at the "
                                   "wrong place", points, again, superseded=stale)

    def fine_scan(self, points: list[int], ref: _Reference | None) -> MsgGenerator[list[int]]:
        """Measure ``points``; with ``drift_every``, a drift check after each such many frames."""
        since: list[int] = []
        every = self.s["drift_every"] or max(len(points), 1)
        for start in range(0, len(points), every):
            chunk = points[start : start + every]
            since += yield from self.measure(chunk)
            if self.s["drift_every"] and ref is not None and start + len(chunk) < len(points):
                yield from self.check_drift(ref, since)
                since = []
        return since

    def body(self) -> MsgGenerator:
        ny, nx = self.shape
        every = self.s["coarse_every"]
        coarse = coarse_pass(self.pattern, self.shape, self.grid, every, self.step_m)
        rest = np.setdiff1d(np.arange(len(self.grid)), coarse)
        yield from bps.mv(self.shutter, "open")
        seqs = yield from self.measure(coarse)
        if self.pattern == "raster":
            what = f"every {every}. point of the {ny} x {nx} raster in both directions"
        else:
            what = f"{len(coarse)} of the {len(self.grid)} points of the Fermat spiral, at least {every} steps apart"
        yield from self.record("coarse_pass", f"{what}, to find the sample", coarse, seqs, pattern=self.pattern)
        qc = {} if self.feedback is None else (yield from self.qc(seqs))
        if not any(s in qc for s in seqs):
            why = "no feedback channel" if self.feedback is None else \
                f"no QC from the pipeline within {self.s['feedback_timeout_s']:g} s"
            again = yield from self.measure(rest)
            whole = "raster" if self.pattern == "raster" else "Fermat spiral"
            yield from self.record("fallback", f"{why}: the plain scan of the whole {whole}", rest, again)
            return
        yield from self.remeasure_bad(seqs, "coarse pass")
        qc = yield from self.qc(sorted(self.seq_point))
        values = self.usable(qc)
        keep, info = self.region(coarse, values)
        todo = [int(g) for g in rest if keep[g]]
        skipped = [int(g) for g in rest if not keep[g]]
        yield from self.record("region_of_interest", f"{len(skipped)} of {len(rest)} fine points skipped: the coarse "
                               "pass saw no sample near them", todo, (), skipped_points=skipped,
                               skipped_positions_m=self.grid[skipped], pattern=self.pattern, **info)
        ref = None
        if self.s["drift_check"]:
            patch = self.patch(keep, values)
            if patch is None:
                yield from self.record("no_drift_reference", "no 5 x 5 patch fits inside the region of interest" if
                                       self.pattern == "raster" else "no compact patch of 25 points fits inside the "
                                       "region of interest")
            else:
                in_patch = set(patch.tolist())
                first = [g for g in todo if g in in_patch]
                self.feedback.keep(self.uid, self.seqs_at(patch))  # the coarse pass's frames in the patch
                seqs = yield from self.measure(first, keep_patterns=True)
                yield from self.remeasure_bad(seqs, "drift reference")
                todo = [g for g in todo if g not in in_patch]
                ref = yield from self.reference(patch)
                patch_seqs = self.seqs_at(patch)
                if ref is None:
                    yield from self.record("no_drift_reference", "the reference patch has frames without usable data",
                                           patch, patch_seqs)
                else:
                    yield from self.record("drift_reference", "the patch of the region of interest whose phase "
                                           "gradients point every way, measured first and reconstructed", patch, patch_seqs)
        since = yield from self.fine_scan(todo, ref)
        yield from self.remeasure_bad(sorted(self.seq_point), "fine scan")
        if ref is not None:
            yield from self.check_drift(ref, since)
            yield from self.remeasure_bad(sorted(self.seq_point), "after the drift check")
        yield from bps.mv(self.shutter, "close")

    def run(self, md: dict) -> MsgGenerator[str]:
        """The body inside one run, closed with the reason when it fails (``run_wrapper``, with the uid known)."""
        self.uid = yield from bps.open_run(md=md)

        def except_plan(e):
            if isinstance(e, RunEngineControlException):
                yield from bps.close_run(exit_status=e.exit_status)
            else:
                yield from bps.close_run(exit_status="fail", reason=str(e))

        yield from bpp.contingency_wrapper(self.body(), except_plan=except_plan, else_plan=bps.close_run)
        return self.uid


def adaptive_ptycho(
    det,
    stage,
    shutter,
    *,
    feedback: Feedback | None = None,
    optics=None,
    pattern: Literal["raster", "fermat"] = "raster",
    shape: Sequence[int] = (40, 40),
    num_points: int | None = None,
    step: float | None = None,
    overlap: float | None = None,
    center: Sequence[float] = (0.0, 0.0),
    coarse_every: int = 2,
    tolerance: float = 0.03,
    dpc_tolerance: float = 0.1,
    free_transmission: float | None = None,
    remeasure_rounds: int = 2,
    drift_check: bool = True,
    drift_every: int | None = None,
    drift_tolerance_steps: float = 0.15,
    drift_rounds: int = 2,
    feedback_timeout_s: float = 10.0,
    sample: str | None = None,
    dark_uid: str | None = None,
    md: dict | None = None,
) -> MsgGenerator[str]:
    """Ptychography that looks before it measures: coarse pass, region of interest, fine scan,
    bad frames again, drift checked and corrected; one run, its decisions in the ``adaptive`` stream.

    Why: frames on empty sample cost time and dose and teach the reconstruction nothing; a
    frame spoiled by a dropped packet, a beam dump or saturation leaves a hole; a sample
    that drifts on its stage is recorded at the wrong place. The pipeline already knows
    all three while the scan runs (``feedback``), so the plan asks it:

    1. coarse pass: every ``coarse_every``-th point of the fine raster in both directions;
       on a Fermat spiral (``pattern="fermat"``, ``num_points`` of them, the step or overlap
       as for ``ptycho_scan``) the points at least ``coarse_every`` steps apart that cover it
       evenly (:func:`coarse_subset`). These frames are scan frames too, and stay in the data;
    2. region of interest: the fine points the sample's occupancy, interpolated from the
       coarse pass, reaches (:func:`region_of_interest`, bilinear on the raster's coarse grid;
       :func:`region_of_interest_scattered`, linear over the coarse points' triangles on a
       spiral; flagged coarse frames are taken again first);
    3. fine scan of it, a 5 x 5 reference patch first (:func:`reference_patch`; on a spiral
       the 25 points nearest a centre, :func:`reference_patch_scattered`), which is
       reconstructed at once; with ``drift_every``, a drift check after so many frames;
    4. frames the pipeline flagged unusable are measured again (``remeasure_rounds``);
    5. drift check (``drift_check``): the patch's inner 3 x 3 (nine) points are measured again and
       registered on the reference reconstruction (:func:`estimate_drift`); a drift above
       ``drift_tolerance_steps`` goes into the stage's user offsets and is checked again
       (``drift_rounds``), and the frames taken since the last clean check are measured
       again (the stale events are named ``superseded``).

    ``feedback`` left out is the session's (the profile lends its pipeline's, so a queued
    ``adaptive_ptycho`` needs none). Without any, or when no QC comes within ``feedback_timeout_s``, the plan
    measures the whole raster or spiral (the plain scan) and records why. The start document is a
    ``ptycho_scan``'s, with ``planned_positions_m`` the coarse points, the rest of the
    grid, then the grid again as slots for frames taken twice (the pipeline keeps a slot
    per event); ``num_points`` is left out because the plan decides it.

    See Also
    --------
    ns_bluesky.plans.ptycho_scan, ns_bluesky.plans.dark_frames
    """
    if isinstance(coarse_every, bool) or not isinstance(coarse_every, (int, np.integer)) or coarse_every < 1:
        raise ParameterError(f"coarse_every must be a whole number >= 1, got {coarse_every!r}")
    if drift_every is not None and (not isinstance(drift_every, (int, np.integer)) or drift_every < 1):
        raise ParameterError(f"drift_every must be a whole number of frames >= 1 or None, got {drift_every!r}")
    if remeasure_rounds < 0:
        raise ParameterError(f"remeasure_rounds must be >= 0, got {remeasure_rounds!r}")
    if pattern == "raster" and num_points is not None:
        raise ParameterError(f"num_points is the Fermat spiral's (pattern='fermat'); a raster has shape, got "
                             f"num_points={num_points!r}")
    used: dict[str, str] = {}
    optics, dark_uid = resolve_optics(optics, used), resolve_dark(det, dark_uid, used)
    feedback = resolve_feedback(feedback, used)
    zp, spec, grid, scan_md = scan_layout(det, stage, optics, pattern, shape=shape, num_points=num_points, step=step,
                                          overlap=overlap, center=center)
    step_m = scan_md["step_m"]
    ny, nx = spec.shape
    coarse = coarse_pass(pattern, (ny, nx), grid, int(coarse_every), step_m)
    if pattern == "fermat" and not 4 <= len(coarse) < len(grid):
        raise ParameterError(f"a Fermat spiral of {len(grid)} points with coarse_every={coarse_every} gives a coarse pass of "
                             f"{len(coarse)} points: it needs at least 4 and fewer than the scan's (give more num_points "
                             "or a smaller coarse_every)")
    rest = np.setdiff1d(np.arange(len(grid)), coarse)
    planned = np.concatenate([grid[coarse], grid[rest], grid])
    check_room(det, len(grid))  # every grid point once; frames taken again are few

    settings = {
        "coarse_every": int(coarse_every), "tolerance": tolerance, "dpc_tolerance": dpc_tolerance,
        "free_transmission": free_transmission, "remeasure_rounds": remeasure_rounds, "drift_check": drift_check,
        "drift_every": drift_every, "drift_tolerance_steps": drift_tolerance_steps, "drift_rounds": drift_rounds,
        "feedback_timeout_s": feedback_timeout_s,
    }
    _md = {
        "plan_name": "adaptive_ptycho",
        "plan_args": {"det": repr(det), "stage": repr(stage), "shutter": repr(shutter), "pattern": pattern,
                      "shape": list(shape), "num_points": num_points, "step": step, "overlap": overlap,
                      "center": list(center), **settings},
        **scan_metadata(det, stage, optics, scan_md, planned, sample, dark_uid),
        "grid_positions_m": grid.tolist(),
        "adaptive": {**settings, "pattern": pattern, "coarse_points": len(coarse),
                     "planned_positions_note": "coarse points, the rest of the grid, then the grid again as "
                     "slots for frames measured twice; the adaptive stream says what was measured and why"},
    }
    if pattern == "raster":
        _md["shape"] = [ny, nx]
    if used:
        _md["session_defaults"] = used
    _md = merge_caller_md(_md, md)
    runner = _AdaptiveRun(det, stage, shutter, feedback, pattern, grid, (ny, nx), step_m, optics.energy.get(), zp, settings)

    def close_shutter():
        yield from bps.mv(shutter, "close")

    return (yield from bpp.finalize_wrapper(bpp.stage_wrapper(runner.run(_md), [det, stage]), close_shutter()))
