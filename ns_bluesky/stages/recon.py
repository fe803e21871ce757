"""Recon: a ptychographic reconstruction that grows while the frames arrive (SHARP's streaming trick).

Run one worker. The object grid is laid out from the planned positions at the start;
every frame of the scan has a slot whose weight stays 0 until the frame arrives, so
the engine iterates on what it has while the rest is still being measured. A
background thread iterates; ``process`` only hands frames over and, every
``publish_every_s``, returns the latest estimate. After the last frame the engine
goes on for at most ``final_seconds`` (or ``final_iterations``) and the final image goes
out at once; then the whole scan is solved again from the live probe for
``refine_seconds``, and that image ends the run (and goes into the CXI file).

Time budgets, not iteration counts, pace the live loop: ``publish_every_s`` is the refine
budget of each live update (the thread takes a snapshot between mini-batches once it is
spent, so a slow machine gets fewer iterations per update, never a longer silence), and
``final_seconds`` counts from the moment the run's end arrives, checked between mini-batches
too (an iteration in progress is cut, the state after its last finished batch is the final
image). Each update reports the iterations and mini-batches it got and the stage's own count
of late updates (``overruns``: later than the budget plus ``overrun_margin_s`` after the one
before, or after the first frame for the first).

Positions: the stage reads the sample's translation, so by default (``positions="auto"``
and ``"sample"``) the probe is at minus it (``"probe"``: at it). With ``auto`` the
refinement first lets the whole scan decide (:mod:`..ptycho.conventions`, from the
starting probe); when another orientation fits clearly better, it refines in that one, on
its own grid, and says so in the result (``positions``), which the CXI writer records. The
refinement's budget is seconds (:mod:`..ptycho.budget`): the best state it saw comes back
with its iterations; if it diverges, the live final image stands and the error is reported.

Memory: each open run holds its frames (N x n x n float32), its engine and a thread, so at most
``max_live_runs`` are reconstructed at once. A run that starts beyond that wraps up the oldest at
once: its final image from the frames it has (no refinement), marked ``cut_short`` (a scalar, and the
reason in the meta, which the recorder writes in the derived run's stop and the live monitor tells the
user); it goes out with the next item of that run (the handler takes a result only with an item of its
own run), its later frames are not reconstructed (the catalog and the CXI file have them). A run that
ends, is cut or is aborted lets go of its frames and engine at once.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ParameterError, ReconstructionError
from ..instrument.probe import zone_plate_probe
from ..ptycho.backend import arrays, asnumpy
from ..ptycho.budget import iterate_within
from ..ptycho.conventions import Orientation, choose_orientation, orientation
from ..ptycho.engines import PtychoData, empty_slots, engine
from ..ptycho.layout import MARGIN_PX, grid_origins, with_counts
from ..ptycho.stxm import probe_from_patterns
from ..stream.mpi import MPIJobError
from ..stream.protocol import Message
from ..stream.stage import Stage
from .recon_mpi import refine_over_mpi
from .scaninfo import ScanInfo, scan_info

log = logging.getLogger(__name__)

CUT_JOIN_S = 30.0  # how long a run wrapped up early may take for its last mini-batch (a starved host: seconds)
MAX_CUT_RUNS = 64  # runs wrapped up early whose end has not come yet: their final results, kept until then


class ReconParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine: str = Field("lsqml", description="reconstruction engine (ns-bluesky reconstruct --help lists them)")
    backend: str = Field("numpy", description="numpy or cupy")
    threads: int = Field(0, ge=0, description="threads for the engine on numpy (0: every core)")
    min_frames: int = Field(
        8, ge=1, description="frames to wait for before the first iteration when the start document has no optics "
        "(the probe is then guessed from them); with optics the reconstruction starts at the first frame"
    )
    publish_every_s: float = Field(
        1.0, gt=0, description="the refine budget of each live update, seconds: the growing estimate is published this "
        "often, however few mini-batches a slow machine got through meanwhile"
    )
    overrun_margin_s: float = Field(
        1.0, ge=0, description="a live update later than publish_every_s plus this after the one before counts as an "
        "overrun (reported with every update as 'overruns')"
    )
    live_batch_max: int = Field(
        64, ge=0, description="while frames arrive, at most this many frames per mini-batch (engines that batch: lsqml; "
        "0: the engine's schedule): snapshots are taken between mini-batches, so this bounds the gap a long one makes "
        "(at load 28-40 the demo's grew to 256 frames, 2.1-2.4 s, and gaps to 3.9-4.5 s)"
    )
    final_seconds: float = Field(3.5, ge=0, description="iterate at most this long after the last frame")
    final_iterations: int = Field(200, ge=0, description="... or at most this many iterations")
    refine_seconds: float = Field(
        60.0, ge=0, description="after the final image, solve the whole scan again from the live probe this long "
        "and publish that image; it ends the run (0: no refinement)"
    )
    ranks: int = Field(
        1, ge=1, le=256, description="MPI ranks for the refinement (the mpi extra): over 1, the whole-scan solve runs as "
        "an mpiexec job, the frames split over the ranks by position (SHARP's way); the live estimate stays in the worker"
    )
    max_live_runs: int = Field(
        2, ge=1, le=64, description="runs reconstructed live at once: each holds its frames (N x n x n float32), its "
        "engine and a thread, so a worker that cannot keep up (a starved host: 6 runs at once grew it by 1.5 GB) "
        "wraps up the oldest when one more starts: its final image from the frames it had, marked cut_short, "
        "the scan whole in the catalog for 'ns-bluesky replay'"
    )
    positions: str = Field(
        "auto", pattern="^(auto|probe|sample)$", description="what the stage's positions are: the sample's translation "
        "(sample: the probe at minus it, as this project's stages read them), the probe's position (probe), or auto: "
        "live as sample, and before the refinement the whole scan decides among both and their x/y flips and swaps"
    )


class _Cut(Exception):
    """Raised between mini-batches to end an iteration early: the run's end came, or the final budget is spent."""


class _Session:
    """One run's reconstruction: frames in through ``inbox``, iterations on a thread, snapshots out."""

    def __init__(self, info: ScanInfo, params: ReconParams, should_stop):
        self.info, self.params, self.should_stop = info, params, should_stop
        self.inbox: queue.Queue = queue.Queue()
        self.pending: dict[int, np.ndarray] = {}  # frames before the engine is prepared
        self.eng = None
        self.dx = None
        self.frames = 0
        self.snapshot: dict | None = None
        self.snapshot_id = 0
        self.finishing = threading.Event()
        self.first_frame_at = self.last_frame_at = None
        self.ended_at: float | None = None  # when the run's end arrived: the final image's budget runs from then
        self.final_deadline = math.inf
        self.final_from: int | None = None
        self.snapped_at = 0.0
        self.batches = 0  # mini-batches run
        self.batch_at = 0.0  # when the last mini-batch (or iteration) ended
        self.batch_s = 0.0  # how long the last one took: a snapshot is taken one batch before an update is due
        self.longest_batch_s = 0.0
        self.lock = threading.Lock()
        self.error: Exception | None = None
        # probe (y, x) = sign * stage reading: the stage reads the sample's translation unless told otherwise
        self.sign = 1.0 if params.positions == "probe" else -1.0
        # how the positions were read, relative to the CXI file's translations (minus the stage reading): for the result
        declared = Orientation.from_matrix(-self.sign * np.eye(2))
        self.positions = {"convention": declared.name, "matrix": declared.matrix.tolist(),
                          "details": {"decided_by": "given" if params.positions != "auto" else "auto, live as sample"}}
        self.refine_error: str | None = None
        self.patterns: np.ndarray | None = None  # the frame stack (N x n x n), kept for the refinement
        self.start_probe: np.ndarray | None = None
        # set when the session is wrapped up or dropped: the thread stops at its next mini-batch and lets go of
        # the frames and the engine (nothing else may keep them: a worker of a long beamtime must not grow)
        self.cancelled = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"recon-{info.uid[:8]}", daemon=True)
        self.thread.start()

    # ---------------------------------------------------------------- iterating thread
    def _loop(self) -> None:
        try:
            while not self.should_stop() and not self.cancelled.is_set():
                self._absorb()
                if self.eng is None:
                    if self.finishing.is_set() and self.inbox.empty():
                        break
                    time.sleep(0.02)
                    continue
                if self.finishing.is_set() and self.inbox.empty():
                    if self.final_from is None:
                        self.final_from = self.eng.iteration
                    if (time.monotonic() >= self.final_deadline
                            or self.eng.iteration - self.final_from >= self.params.final_iterations):
                        break
                self.batch_at = time.monotonic()
                try:
                    self.eng.iterate(1)
                except _Cut:  # the run ended meanwhile: absorb its last frames, or stop on the deadline
                    continue
                self._snap()
            if self.eng is not None and not self.cancelled.is_set():
                self._snap()  # the state after the last finished mini-batch: the final image
        except Exception as exc:  # kept, and reported by end_run: the worker must not die with it
            log.exception("reconstruction of run %s failed", self.info.uid[:8])
            self.error = exc.with_traceback(None)  # its traceback's frames would keep this session (and its frames) alive
        finally:
            if self.cancelled.is_set():  # released while this thread still ran: it lets go itself
                self._drop()

    def _absorb(self) -> None:
        while True:
            try:
                index, pattern, dx, position = self.inbox.get_nowait()
            except queue.Empty:
                break
            self.dx = self.dx or dx
            self.frames += 1
            if self.eng is None:
                self.pending[index] = (pattern, position)
            else:
                self.patterns[index] = pattern
                self.eng.add_frames([index], pattern[None], self._origins(position[None]))
        # with the optics known the probe needs no frames: start at the first, the first update comes sooner
        needed = 1 if self.info.optics is not None else self.params.min_frames
        if self.eng is None and (len(self.pending) >= needed or (self.finishing.is_set() and self.pending)):
            self._prepare()

    def _prepare(self) -> None:
        t0 = time.monotonic()
        info = self.info
        self.lowest = (self.sign * info.planned_m).min(axis=0)  # the grid is laid out for the plan
        origins = self._origins(info.planned_m)
        first = np.stack([pattern for pattern, _ in self.pending.values()])
        n = first.shape[-1]
        if info.optics is not None:
            probe = zone_plate_probe(n, self.dx, info.energy_eV, info.optics)
        else:
            probe = probe_from_patterns(first.mean(axis=0))
        probe = with_counts(probe, first)
        self.start_probe = probe.astype(np.complex64)  # what auto's trial starts from: the optics, not a fit
        data = PtychoData(empty_slots(len(origins), n), origins, np.zeros(len(origins), np.float32))
        p = self.params
        # lsqml live: bounded mini-batches; no trial of the probe modes (a second of fitting in which no update goes
        # out, decided on the few frames there are then): the power rule alone, the refinement runs the trial
        live = {}
        if p.engine == "lsqml":
            live = {"mode_trial_frames": 0} | ({"batch_max": p.live_batch_max} if p.live_batch_max else {})
        self.eng = engine(p.engine, backend=p.backend, threads=p.threads, **live)
        self.eng.prepare(data, probe.astype(np.complex64))
        self.eng.on_batch = self._on_batch  # a pass over a large scan may take longer than publish_every_s
        positions = np.stack([position for _, position in self.pending.values()])
        self.eng.add_frames(list(self.pending), first, self._origins(positions))  # each where it was measured
        self.patterns = np.zeros((len(origins), n, n), np.float32)  # kept for the refinement
        self.patterns[list(self.pending)] = first
        log.info("run %s: reconstruction prepared from %d frames in %.3f s, %.3f s after the first frame",
                 info.uid[:8], len(self.pending), time.monotonic() - t0, time.monotonic() - self.first_frame_at)
        self.pending.clear()

    def _origins(self, positions_m: np.ndarray) -> np.ndarray:
        """Probe-window corners (row, col) on the object grid for stage positions (y, x): the probe moves
        opposite to the sample (unless the positions are the probe's)."""
        return grid_origins(self.sign * np.asarray(positions_m, float), self.dx, self.lowest)

    def _on_batch(self) -> None:
        """Between mini-batches: the update's budget spent, a snapshot; the run ended, the pass is cut short
        to take the last frames in, or because the final image's budget is spent."""
        self.batches += 1
        now = time.monotonic()
        self.batch_s, self.batch_at = now - self.batch_at, now
        self.longest_batch_s = max(self.longest_batch_s, self.batch_s)
        if self.cancelled.is_set() or self.should_stop():
            raise _Cut
        if self.finishing.is_set() and (not self.inbox.empty() or now >= self.final_deadline):
            raise _Cut
        # the snapshot at the last batch's end before the update is due (another batch would end after it): the
        # update then goes out on time, not up to a batch later
        if now + self.batch_s >= self.snapped_at + self.params.publish_every_s:
            self._snap()

    def _snap(self, best=None) -> None:
        self.snapped_at = time.monotonic()
        obj, probe, residuals = self.eng.finalize()
        snap = {
            "object": np.array(obj), "probe": np.array(probe), "iteration": self.eng.iteration,
            "residual": float(residuals[-1]) if residuals else float("nan"), "frames": self.frames,
            "batches": self.batches, "probe_modes": 1 + (len(self.eng.modes) if self.eng.modes is not None else 0),
        }
        if best is not None:  # a refinement's best state, not its last
            snap.update(object=best.obj, probe=best.probe, residual=best.best_residual,
                        refine_iterations=best.iterations, refine_best_iteration=best.best_iteration,
                        refine_seconds=best.seconds)
        with self.lock:
            self.snapshot, self.snapshot_id = snap, self.snapshot_id + 1

    # ---------------------------------------------------------------- worker side
    def add(self, index: int, pattern: np.ndarray, dx: float, position_m: np.ndarray) -> None:
        self.last_frame_at = time.monotonic()
        self.first_frame_at = self.first_frame_at or self.last_frame_at
        self.inbox.put((index, pattern, dx, position_m))

    def latest(self) -> tuple[int, dict | None]:
        with self.lock:
            return self.snapshot_id, self.snapshot

    def finish(self, timeout_s: float, final_seconds: float | None = None) -> None:
        """The run's end: the final image within ``final_seconds`` (the params' by default; 0: from what it has)."""
        self.ended_at = time.monotonic()
        log.info("run %s: frames in; longest mini-batch %.3f s of %d", self.info.uid[:8], self.longest_batch_s, self.batches)
        budget = self.params.final_seconds if final_seconds is None else final_seconds
        self.final_deadline = self.ended_at + budget
        self.finishing.set()
        self.thread.join(timeout_s)

    def release(self, timeout_s: float = 5.0) -> None:
        """Let go of the frames, the engine and the snapshots: at once if the thread has ended (or ends within
        ``timeout_s``), else the thread does it when it stops, at its next mini-batch."""
        self.cancelled.set()
        self.thread.join(timeout_s)
        if not self.thread.is_alive():
            self._drop()

    def _drop(self) -> None:
        if self.eng is not None:
            self.eng.on_batch = None  # the engine's hook is this session's method: a cycle that outlives the run
        self.eng = self.patterns = self.start_probe = self.snapshot = None
        self.pending.clear()
        while True:
            try:
                self.inbox.get_nowait()
            except queue.Empty:
                break

    def refine(self, seconds: float) -> None:
        """Solve the whole scan again, from the live probe and a fresh object, as an offline
        reconstruction would: an object grown while frames arrived sits in a worse fit, from which
        more iterations climb out slowly (measured: NRMSE 0.126 -> 0.119 in 60 s, against 0.090
        for 100 iterations from the start). With ``positions="auto"`` the scan first decides which
        way round its positions are (a few seconds of the budget). The best state seen comes back;
        a divergence keeps the live image and is reported (``refine_error``)."""
        if self.eng is None or seconds <= 0:
            return
        t0 = time.monotonic()
        live, p = self.eng, self.params
        weights = asnumpy(live.weights)
        origins, probe, obj = live.origins.copy(), asnumpy(live.probe), np.ones(live.obj.shape, np.complex64)
        orient = orientation("probe")  # relative to the live positions
        if p.positions == "auto" and (weights > 0).sum() >= 2:
            arrived = np.flatnonzero(weights > 0)
            choice = choose_orientation(self.patterns[arrived], origins[arrived], self.start_probe, backend=p.backend)
            log.info("run %s: %s", self.info.uid[:8], choice.summary())
            if choice.clear:
                orient = choice.best
            if orient.matrix.tolist() != np.eye(2).tolist():  # another grid, and the live probe belongs to the old one
                oriented = orient.apply(origins)
                origins = oriented - oriented.min(axis=0) + MARGIN_PX
                probe, obj = self.start_probe, None
            # the CXI file holds minus the stage reading: probe = M (sign reading) = (-sign M) file
            file_m = Orientation.from_matrix(-self.sign * orient.matrix)
            self.positions = {"convention": file_m.name, "matrix": file_m.matrix.tolist(),
                              "details": {"decided_by": "auto", "margin": choice.margin, "clear": choice.clear,
                                          "twins": choice.twins, "residuals": choice.residuals}}
        if p.ranks > 1:
            n = self.patterns.shape[-1]
            shape = tuple(live.obj.shape) if obj is not None else tuple(int(np.ceil(v)) + n + 1 for v in origins.max(axis=0))
            self._refine_over_mpi(origins, weights, probe, shape, max(seconds - (time.monotonic() - t0), 1e-3), live.iteration)
            return
        # a grid turned by auto starts over (no object): its start search takes a share of the refine's seconds
        # and the probe modes' trial a tenth
        search = {}
        if p.engine == "lsqml":
            search = {"start_search_s": max(seconds / 4, 1e-3), "mode_trial_s": max(seconds / 10, 1e-3)}
        self.eng = engine(p.engine, backend=p.backend, threads=p.threads, **search)
        data = PtychoData(self.patterns, origins, weights)
        self.eng.prepare(data, probe, obj)  # the same grid as the live images, unless auto turned it
        self.eng.iteration = live.iteration  # iterations count on, for the error curve
        self.eng.data_changed_at = live.iteration
        try:
            best = iterate_within(self.eng, seconds=max(seconds - (time.monotonic() - t0), 1e-3),
                                  iterations=20 * max(self.params.final_iterations, 1), should_stop=self.should_stop)
        except ReconstructionError as exc:
            log.error("run %s: refinement failed, the live final image stands: %s", self.info.uid[:8], exc)
            self.refine_error = str(exc)
            self.eng = live
            return
        self._snap(best)

    def _refine_over_mpi(self, origins, weights, probe, shape: tuple[int, int], seconds: float, start_iteration: int) -> None:
        """The refinement as an MPI job of ``ranks`` ranks (:mod:`.recon_mpi`), on the positions as read (after
        ``auto``'s choice); when it fails, the live final image stays the run's last (nothing is lost) and the
        error is logged in one line."""
        p = self.params
        try:
            result = refine_over_mpi(
                p.ranks, self.patterns, origins, weights, probe, shape,
                engine_name=p.engine, backend=p.backend, seconds=seconds, max_iterations=20 * p.final_iterations,
                start_iteration=start_iteration,
            )
        except (MPIJobError, ParameterError, OSError) as exc:
            log.error("refinement over %d MPI ranks failed, the final image stands: %s", p.ranks, str(exc).splitlines()[0])
            self.refine_error = str(exc).splitlines()[0]
            return
        residual = result["residuals"][-1] if result["residuals"] else float("nan")
        snap = {"object": result["object"], "probe": result["probe"], "iteration": result["iteration"],
                "residual": float(residual), "frames": self.frames}
        with self.lock:
            self.snapshot, self.snapshot_id = snap, self.snapshot_id + 1


class ReconStage(Stage):
    name = "recon"
    description = "streaming ptychographic reconstruction: frames enter as they arrive, estimates published while the scan runs (run 1 worker)"
    inputs = ("clean",)
    outputs = ("recon",)
    keeps_inputs = True
    Params = ReconParams

    def __init__(self, params=None, **worker):
        super().__init__(params, **worker)
        self.sessions: dict[str, _Session] = {}  # open runs, oldest first: at most max_live_runs
        # runs wrapped up early (max_live_runs): their final result until an item of theirs takes it out (a result
        # goes back with an item of its own run), then None until their end; popped at their end or abort
        self.cut: dict[str, Message | None] = {}
        self.published: dict[str, tuple[int, float, int]] = {}  # run -> (snapshot id, time, updates)
        self.lateness: dict[str, tuple[int, float]] = {}  # run -> (overruns, largest gap between live updates, s)
        self.progress: dict[str, tuple[int, int]] = {}  # run -> (iteration, mini-batches) at the last published update
        try:  # the FFT modules' imports (~1 s) now, not while the first frames wait for the first image
            arrays(self.params.backend)
        except Exception as exc:  # e.g. no cupy here: the run that needs it reports it
            log.warning("the %s backend is not ready: %s", self.params.backend, exc)

    def start_run(self, msg: Message) -> None:
        info = scan_info(msg)
        if info.planned_m is not None and len(info.planned_m) and info.energy_J is not None:
            run = msg.run
            while len(self.sessions) >= self.params.max_live_runs:
                self._cut_oldest(run)
            self.sessions[run] = _Session(info, self.params, lambda: self.should_stop(run))
            self.published[run] = (0, 0.0, 0)
            self.lateness[run] = (0, 0.0)
            self.progress[run] = (0, 0)

    def _cut_oldest(self, newcomer: str) -> None:
        """Wrap up the oldest open run now, so that no more than ``max_live_runs`` hold their frames: its final
        image from the frames it has (no refinement), marked ``cut_short`` with the reason, kept for the next
        item of that run to take out; its later frames are not reconstructed (they are in the catalog)."""
        run = next(iter(self.sessions))
        session = self.sessions[run]
        session.finish(timeout_s=CUT_JOIN_S, final_seconds=0)
        reason = (f"reconstruction cut short: run {newcomer[:8]} started while {len(self.sessions)} runs were being "
                  f"reconstructed (max_live_runs={self.params.max_live_runs}); its final image is from {session.frames} "
                  f"of {len(session.info.planned_m)} frames, the scan is whole in the catalog: "
                  f"'ns-bluesky replay {run[:8]}' reconstructs it again")
        log.warning("run %s: %s", run[:8], reason)
        final = None
        try:
            snap_id, snap = session.latest()
            if session.error is None and snap is not None:
                final = self._result(run, snap_id, snap, final=True, cut=reason)
        finally:
            self._forget(run)
        self.cut[run] = final
        while len(self.cut) > MAX_CUT_RUNS:  # runs whose end never reached this worker: the handler expires them
            del self.cut[next(iter(self.cut))]

    def _forget(self, run: str) -> None:
        """Drop a run's state and let go of its frames and engine (at once, or when its thread stops)."""
        session = self.sessions.pop(run, None)
        self.published.pop(run, None)
        self.lateness.pop(run, None)
        self.progress.pop(run, None)
        if session is not None:
            session.release()

    def process(self, msg: Message) -> Message | None:
        session = self.sessions.get(msg.run)
        if session is None:
            if self.cut.get(msg.run) is not None:  # a run wrapped up early: its final result goes out with its item
                final, self.cut[msg.run] = self.cut[msg.run], None
                return final
            return None
        scalars = msg.meta.get("scalars") or {}
        index = msg.seq - 1
        if scalars.get("usable", 1) and 0 <= index < len(session.info.planned_m) and "pattern" in msg.arrays:
            position = np.asarray(msg.meta.get("position_m", session.info.planned_m[index]), float)
            if not np.isfinite(position).all():
                position = session.info.planned_m[index]
            session.add(index, msg.arrays["pattern"], float(msg.meta["object_pixel_size_m"]), position)
        last_id, last_t, _ = self.published[msg.run]
        snap_id, snap = session.latest()
        if snap is not None and snap_id != last_id and time.monotonic() - last_t >= self.params.publish_every_s:
            return self._result(msg.run, snap_id, snap, final=False)
        return None

    def _result(self, run: str, snap_id: int, snap: dict, final: bool, refined: bool = False, cut: str = "") -> Message:
        session = self.sessions[run]
        _, last_t, updates = self.published[run]
        now = time.monotonic()
        overruns, largest = self.lateness[run]
        if updates == 0:
            log.info("run %s: first live image %.3f s after the stage's first frame", run[:8], now - session.first_frame_at)
        if not final:  # live updates: each within the budget (plus the margin) of the one before, the first of the first frame
            gap = now - (last_t or session.first_frame_at or now)
            overruns += int(gap > self.params.publish_every_s + self.params.overrun_margin_s)
            largest = max(largest, gap)
            self.lateness[run] = (overruns, largest)
        updates += 1
        self.published[run] = (snap_id, now, updates)
        obj, probe = snap["object"], snap["probe"]
        scalars = {
            "iteration": int(snap["iteration"]), "residual": snap["residual"], "frames": int(snap["frames"]),
            "update": updates, "final": int(final), "refined": int(refined),
            "seconds_after_last_frame": float(now - session.last_frame_at) if session.last_frame_at else 0.0,
            "overruns": overruns, "largest_gap_s": round(largest, 3), "cut_short": int(bool(cut)),
        }
        # every result has the same keys (the derived run's stream holds one set): what does not apply is 0 or NaN
        last_iteration, last_batches = self.progress[run]
        batches = int(snap.get("batches", last_batches))  # what this update got: fewer iterations on a slow machine
        scalars["update_iterations"] = int(snap["iteration"]) - last_iteration
        scalars["update_batches"] = batches - last_batches
        self.progress[run] = (int(snap["iteration"]), batches)
        arrays = {
            "object_amplitude": np.abs(obj).astype(np.float32), "object_phase": np.angle(obj).astype(np.float32),
            "probe_amplitude": np.abs(probe).astype(np.float32), "probe_phase": np.angle(probe).astype(np.float32),
        }
        on_budget = final and not refined and not cut and session.ended_at is not None  # the final image's own budget
        scalars["final_s"] = round(now - session.ended_at, 3) if on_budget else float("nan")
        scalars["final_overrun"] = int(on_budget and now - session.ended_at > self.params.final_seconds + self.params.overrun_margin_s)
        scalars["refine_iterations"] = int(snap.get("refine_iterations", 0))
        scalars["refine_best_iteration"] = int(snap.get("refine_best_iteration", 0))
        scalars["refine_seconds"] = float(snap.get("refine_seconds", float("nan")))
        scalars["probe_modes"] = int(snap.get("probe_modes", 1))  # the mixed state's (lsqml drops modes that do not pay)
        meta = {"scalars": scalars, "object_pixel_size_m": session.dx, "engine": self.params.engine, "margin_px": MARGIN_PX}
        if final:
            meta["positions"] = session.positions
        if session.refine_error is not None:
            meta["refine_error"] = session.refine_error
        if cut:
            meta["cut_short"] = cut  # the recorder puts it in the derived run's stop, the live monitor tells the user
        return Message("result", run=run, seq=updates, stage="recon", meta=meta, arrays=arrays)

    def end_run(self, run: str) -> Message | None:
        session = self.sessions.get(run)
        if session is None:
            return self.cut.pop(run, None)  # wrapped up early: its final result, unless an item took it out
        session.finish(timeout_s=self.params.final_seconds + 120)
        try:
            if session.error is not None:
                raise RuntimeError(f"reconstruction failed: {session.error!r}")
            snap_id, snap = session.latest()
            if snap is None:
                return None
            if self.params.refine_seconds <= 0:
                return self._result(run, snap_id, snap, final=True)
            self.emit(self._result(run, snap_id, snap, final=True))  # the final image now; the refined one ends the run
            session.refine(self.params.refine_seconds)
            snap_id, snap = session.latest()
            return self._result(run, snap_id, snap, final=True, refined=session.refine_error is None)
        finally:
            self._forget(run)

    def abort_run(self, run: str) -> None:
        self.cut.pop(run, None)
        session = self.sessions.get(run)
        if session is not None:
            session.finish(timeout_s=5)
        self._forget(run)
