"""LSQ-ML: least-squares maximum likelihood with mini-batches and per-frame optimal steps."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
from pydantic import Field

from ...errors import ParameterError
from ..backend import asnumpy
from ..layout import central_patch
from ..preprocess import crop_center
from ..probe_start import (
    WRONG_SIZE,
    cropped_far_field,
    far_field_from_data,
    far_field_share,
    search_defocus,
    trial_window,
)
from .base import Engine, EngineParams, outer_ramps, register
from .data import PtychoData
from .lsqml_refine import (
    ModeChoice,
    Momentum,
    drop_weak_modes,
    gradient_norms,
    orthogonal_modes,
    position_steps,
    start_modes,
)

log = logging.getLogger(__name__)


class LSQMLParams(EngineParams):
    batch_size: int = Field(8, ge=1, description="frames per update (mini-batch) at the start")
    batch_max: int = Field(
        0, ge=0, description="at most this many frames per mini-batch (0: no bound): a streaming caller that snapshots "
        "between mini-batches bounds how long one takes (a 1600-frame scan's batches grew to 256 frames, 2.4 s at load 28)"
    )
    batch_doubling: int = Field(
        8, ge=0, description="the batch doubles every this many iterations (0: never): small batches move fast "
        "early, large ones average the noise out late, as growing batches do for stochastic gradients"
    )
    object_reg: float = Field(0.1, gt=0, description="object preconditioner floor, relative to the peak illumination")
    probe_reg: float = Field(0.05, gt=0, description="probe preconditioner floor, relative to the peak object intensity")
    step_reg: float = Field(0.1, ge=0, description="regularisation of the per-frame 2 x 2 step-size problem")
    max_step: float = Field(1.0, gt=0, description="upper bound of the optimal step sizes")
    chunk: int = Field(
        8, ge=1, description="frames per vectorised step in each thread on numpy (cache-sized temporaries: 8 frames "
        "of 128² complex64 are 1 MB; 8 ran 7-10 % faster than 16 on a host of 2 MB L2 per core)"
    )
    likelihood: str = Field(
        "poisson", pattern="^(amplitude|poisson)$", description="noise model of the exit-wave update: poisson (half "
        "a gradient step of the Poisson likelihood) or amplitude (Gaussian on sqrt I, the modulus projection). "
        "Measured here with two probe modes: NRMSE 0.0164 against 0.0213 on the simulated benchmark, half-scan FRC "
        "0.40 against 0.42 on the measured star"
    )
    poisson_cap: float = Field(2.0, gt=0, description="upper bound of the Poisson update's factor I / |F psi|^2 - 1, halved")
    probe_modes: int = Field(
        2, ge=1, le=8, description="incoherent probe modes (a mixed state, Thibault & Menzel 2013): the intensity "
        "is the sum of the modes' intensities; more than one models partial coherence and detector blur"
    )
    mode_power: float = Field(0.05, gt=0, lt=1, description="power of each further probe mode at the start, as a part of the total")
    mode_min_power: float = Field(
        0.05, ge=0, lt=1, description="a further mode whose power is below this part of the total once mode_check "
        "iterations have updated the probe is dropped: it costs as much time as the main one and hardly changes the fit "
        "(coherent data leaves the second mode near 2 %, the measured star near 13 %)"
    )
    mode_check: int = Field(10, ge=0, description="probe-updating iterations before weak modes are dropped")
    mode_trial_frames: int = Field(
        64, ge=0, description="further modes that outlast mode_check with enough power must also earn their cost: "
        "from the state then, 10 iterations on this many frames nearest the scan's middle, with the modes and with "
        "the main probe alone (their power added to it), side by side; the modes stay only where one mode leaves a "
        "residual over 1 + mode_trial_margin times theirs (0: no trial, power alone decides). Measured: tike's "
        "measured star 0.0102 with two modes against 0.0132 with one (kept; half-scan FRC 0.423); the simulated "
        "coherent set from a start 1.5x too wide, whose second mode held 10-16 % of the power, 0.0046 against "
        "0.0042 (dropped: 0.49 against 0.99 s/iteration, NRMSE 0.0181 against 0.0188 after 200 iterations)"
    )
    mode_trial_margin: float = Field(0.02, ge=0, description="see mode_trial_frames")
    mode_trial_s: float = Field(
        10.0, gt=0, description="the most seconds the modes' trial may take (measured: 1.4 s on tike's star, 2 "
        "threads); where it does not get through 5 of its 10 iterations each side, nothing is decided and the modes "
        "stay (a first iteration's residuals mislead: the coherent set's second mode looks 10 % better there)"
    )
    position_correction: bool = Field(
        True, description="refine each frame's position (Odstrčil et al. 2018, sec. 4): the shift along the object's "
        "gradient, P_j dO/dx, that best explains the exit-wave update chi_j, a least-squares step per frame; the common "
        "shift of all frames (invisible to the data) is removed. Measured: half-scan FRC 0.423 against 0.400 on the "
        "measured star after 100 iterations; positions 1.42 px rms off come to 0.36 px in 80 iterations (every 5)"
    )
    position_start: int = Field(10, ge=0, description="iterations before the positions are refined (the object must have formed)")
    position_every: int = Field(10, ge=1, description="refine the positions every this many iterations (each such iteration costs ~10 % more)")
    position_max_step: float = Field(0.5, gt=0, description="largest move of a frame in one refinement, pixels")
    probe_start: str = Field(
        "auto", pattern="^(given|far_field|search|auto)$", description="how a start from scratch (no object given) "
        "takes its probe. given: as given; far_field: with the far field the data measured (the root of the mean "
        "pattern) and the given one's far-field phase; search: the given probe, or that far field with the defocus, "
        "whichever a trial (6 iterations on the scan's middle, the probe held) fits best; auto: the given probe with "
        "the defocus a trial (20 iterations, the probe refined from the third) fits best, or search where the given "
        "probe's far field holds "
        "under half of the mean pattern's counts (the wrong size). Measured: a start 60 % off in defocus reaches "
        "NRMSE 0.016 where as given it stalls at 0.034; tike's measured star keeps its image (half-scan FRC 0.423) "
        "(:mod:`ns_bluesky.ptycho.probe_start`). A start with an object takes the probe as given: it belongs to "
        "that object"
    )
    start_search_s: float = Field(
        60.0, gt=0, description="the most seconds the start's search (probe_start auto or search) may take: no trial "
        "starts after them, and it chooses among those done (measured: 69 trials of 10 iterations on 24 frames of "
        "128², 2 threads: about 12 s)"
    )
    momentum: float = Field(
        0.0, ge=0, description="gain of the object's momentum (0: none): the iterations' updates, while they keep "
        "pointing the same way, add up in a velocity that is applied as well (PtychoShelves' LSQ-ML acceleration)"
    )


def _power(xp, z, out, scratch) -> None:
    """|z|^2 of complex64 ``z`` into float32 ``out``, through ``scratch`` (complex, shaped like ``z``): the squares
    of the float view, then its pairs added; half the time of numpy's abs (a hypot per element) and a square."""
    zf, sf = z.view(np.float32), scratch.view(np.float32)
    xp.multiply(zf, zf, out=sf)
    xp.add(sf[..., 0::2], sf[..., 1::2], out=out)


def _locality_order(origins: np.ndarray, n: int) -> np.ndarray:
    """(N,) each frame's rank along a serpentine path through bands of the object a quarter window high:
    frames next on the path have windows that mostly overlap."""
    band = np.floor(origins[:, 0] / max(n // 4, 1)).astype(np.int64)
    x = np.where(band % 2 == 0, origins[:, 1], -origins[:, 1])
    key = np.lexsort((x, band))
    rank = np.empty(len(origins), np.int64)
    rank[key] = np.arange(len(origins))
    return rank


@register
class LSQML(Engine):
    """LSQ-ML with mini-batches and per-frame optimal steps (Odstrčil et al. 2018, eqs. 20-25).

    Each mini-batch takes three passes over its frames, each spread over the threads in
    cache-sized chunks with reused buffers (the FFTs in place): (1) exit waves, their
    update chi = P_M(psi) - psi, and the object (P* chi, |P|^2, scattered onto the object
    grid) and probe (O* chi unshifted, |O|^2) sums; (2) the per-frame products of the
    directions the step-size problem needs; (3) the object update, each frame's part
    scaled by its own step, added onto the object. With several probe modes (1) and (2)
    run per mode (the intensities add), the object sums add over the modes; the modes are
    made orthogonal after each iteration and a further mode that holds too little power is
    dropped. Pass (2) also gathers, every few iterations, each frame's products for its
    position refinement (against the object's gradient). The modes, positions and momentum
    are refined by the functions of :mod:`.lsqml_refine`.
    """

    name = "lsqml"
    Params = LSQMLParams

    def __init__(self, params: LSQMLParams | None = None):
        super().__init__(params)
        self._lock = threading.Lock()  # the scatters onto the object grids, from every thread
        self._store = None  # per batch and probe mode: the shifted probes and the exit-wave updates
        self._num = self._ill = None  # object-grid sums, reused by every batch
        self._grads = None  # [dO/dy, dO/dx] in an iteration that refines the positions
        self._pos_dots: np.ndarray | None = None  # (N, 2) per frame <P dO/dy, chi>, <P dO/dx, chi>
        self._pos_norms: np.ndarray | None = None  # (N, 2) per frame |P dO/dy|^2, |P dO/dx|^2
        self._momentum: Momentum | None = None  # since the data last changed
        self._place: np.ndarray | None = None  # (N,) each frame's rank along a path through the object (bands, serpentine)
        self.start_choice = None  # where a start search ran: what it chose and how (probe_start.DefocusChoice)
        self.mode_choice: ModeChoice | None = None  # where the further probe modes' trial ran: what it found

    def prepare(self, data, probe: np.ndarray, obj: np.ndarray | None = None) -> None:
        self.start_choice = None
        mode = self.params.probe_start
        if mode != "given" and obj is None:
            active = np.flatnonzero(np.asarray(data.weights) > 0)
            n = np.asarray(data.patterns).shape[-1]
            total = np.asarray(data.patterns)[active].sum(axis=0, dtype=np.float64) if len(active) else np.zeros((n, n))
            count = np.array([len(active)], np.float64)
            if self.comm.size > 1:  # every rank's frames (each rank takes part, frames or not): one probe for all
                self.comm.allreduce(total)
                self.comm.allreduce(count)
            if count[0] and total.max() > 0:  # no frames yet (a stream's empty slots): the probe as given
                mean, given = total / count[0], np.asarray(probe)
                wrong_size = mode == "auto" and far_field_share(given, mean) < WRONG_SIZE
                if mode in ("far_field", "search") or wrong_size:
                    probe = far_field_from_data(given, mean)
                if mode in ("search", "auto") and self.comm.size == 1 and len(active) >= 9:
                    patterns, origins = np.asarray(data.patterns)[active], np.asarray(data.origins_px)[active]
                    window, refine = trial_window(mean), probe is given
                    trial = self._trial(patterns, origins, refine_probe=refine, window=window)
                    confirm = (self._trial(patterns, origins, refine_probe=True, window=window, longer=True)
                               if refine else None)  # where the screening proposes a change, the longer trial decides
                    self.start_choice = search_defocus(probe, mean, trial, given=None if refine else given,
                                                       far_field=not refine, workers=self.threads,
                                                       seconds=self.params.start_search_s, confirm=confirm)
                    probe = self.start_choice.probe
                    log.info("lsqml: %s", self.start_choice.summary())
        super().prepare(data, probe, obj)

    def _trial(self, patterns: np.ndarray, origins: np.ndarray, *, refine_probe: bool, window: int,
               longer: bool = False):
        """The data residual a start probe leaves after a few iterations of one-mode LSQ-ML on the positions nearest
        the scan's middle (the mean of the last two), the patterns cut to their central ``window``² (the same window
        on a coarser grid; the probe's far field is cut alike).

        Candidates about the given probe (``refine_probe``): 10 iterations on 24 frames, the probe refined from the
        third (``longer``: 20 iterations on 48 frames, the trial that decides between the screening's best and the
        start, :func:`~ns_bluesky.ptycho.probe_start.search_defocus`). With the probe held, tike's measured star
        was judged wrongly (+76 rad preferred, whose image does not hold: half-scan FRC 0.08 against 0.42);
        refined, -18 (0.423, the given probe's image); 10 iterations on 24 frames rank as 20 on 48 did, at a
        quarter of the cost (:mod:`~ns_bluesky.ptycho.probe_start`). Candidates
        that carry the data's far field: 6 iterations on 48 frames with the probe held, which tests their defocus
        alone; refined, the probe moved off each candidate within the trial and the residuals flattened (a start
        1.5x too wide: +271 chosen, NRMSE 0.0235 at 120 s, against +212 and 0.0186)."""
        iterations, frames = (20, 48) if longer else (10, 24) if refine_probe else (6, 48)
        n = patterns.shape[-1]
        idx = central_patch(origins, frames)
        sub = patterns[idx] if window == n else crop_center(patterns[idx], (n // 2, n // 2), window)
        pos = origins[idx] * (window / n)
        pos = pos - np.floor(pos.min(axis=0)) + 2.0
        params = self._trial_params(probe_update_start=2 if refine_probe else iterations + 1)

        def trial(start: np.ndarray) -> float:
            eng = LSQML(params)
            eng.prepare(PtychoData(sub, pos), cropped_far_field(start, window))
            return float(np.mean(eng.iterate(iterations)[-2:]))

        return trial

    def _trial_params(self, **changes) -> LSQMLParams:
        """This engine's parameters for a short fit of its own (the start's and the modes' trials): one probe mode,
        one thread, the probe as given, no position refinement, momentum or trial of its own; ``changes`` on top."""
        return self.params.model_copy(update={"probe_modes": 1, "position_correction": False, "threads": 1,
                                              "probe_start": "given", "momentum": 0.0, "mode_trial_frames": 0,
                                              **changes})

    def _try_modes(self, active: np.ndarray) -> ModeChoice:
        """Whether the further probe modes earn their cost (each costs as much time as the main probe): the
        residual of 10 iterations (within ``mode_trial_s``) of one-mode and of mixed-state LSQ-ML from the present
        state, on the frames nearest the scan's middle and the part of the object they light, the probe refined.
        The power a mode holds does not tell: coherent data from a start of the wrong size kept a second mode at
        10-16 % that fitted no better than one, where tike's measured star keeps 13 % that fits 30 % better. Over
        MPI ranks each tries its own frames and the residuals add up: one decision for all."""
        t0, p = time.monotonic(), self.params
        frames, modes = min(p.mode_trial_frames, len(active)), self._n_modes()
        residuals = [0.0, 0.0]
        if frames >= 9:
            idx = active[central_patch(self.origins[active], frames)]
            pos = self.origins[idx]
            lo = np.maximum(np.floor(pos.min(axis=0)).astype(np.int64) - 2, 0)
            hi = np.minimum(np.ceil(pos.max(axis=0)).astype(np.int64) + self.n + 2, self.obj.shape)
            obj = asnumpy(self.obj[lo[0]:hi[0], lo[1]:hi[1]]).copy()
            counts = asnumpy(self.amp[self.xp.asarray(idx)]) ** 2
            data = PtychoData(np.fft.fftshift(counts, axes=(-2, -1)), pos - lo)
            main, further = asnumpy(self.probe), asnumpy(self.modes)
            alone = drop_weak_modes(np, main.copy(), further, 1.0)[0]  # what dropping them would leave
            params = self._trial_params(probe_update_start=0, mode_min_power=0.0)
            deadline = t0 + p.mode_trial_s

            def trial(mixed: bool) -> list[float]:
                eng = LSQML(params)
                eng.prepare(data, main if mixed else alone, obj)
                if mixed:
                    eng.modes = eng.xp.asarray(further.copy())
                out: list[float] = []
                while len(out) < 10 and (not out or time.monotonic() < deadline):
                    out += eng.iterate(1)
                return out

            runs = list(self._pool.map(trial, (True, False)) if self._pool else map(trial, (True, False)))
            done = min(len(r) for r in runs)  # compared after as many iterations on either side
            residuals = [float(np.mean(r[max(done - 2, 0) : done])) for r in runs]
            short = int(done < 5)
        else:
            done = short = 0
        # every rank's residuals and verdicts add up: one decision for all
        with_modes, one_mode, tried, cut, its = self._sum([*residuals, frames if frames >= 9 else 0, short, done])
        return ModeChoice(modes, with_modes, one_mode, p.mode_trial_margin, int(tried), time.monotonic() - t0,
                          decided=tried > 0 and not cut, iterations=int(its) if self.comm.size == 1 else None)

    def _prepare(self) -> None:
        xp = self.xp
        if self.params.momentum and self.comm.size > 1:
            raise ParameterError("lsqml: momentum is not split over MPI ranks; run it on one rank or set momentum 0")
        self._num = xp.empty_like(self.obj)
        self._ill = xp.empty(self.obj.shape, np.float32)
        if self.params.probe_modes > 1:
            probe, modes = start_modes(asnumpy(self.probe), self.params.probe_modes - 1, self.params.mode_power)
            self.probe, self.modes = xp.asarray(probe), xp.asarray(modes)
            self._orthogonalise_modes()
        self._pos_dots = np.zeros((len(self.origins), 2))
        self._place = _locality_order(self.origins, self.n)


    def _iterate(self, active: np.ndarray) -> float:
        p = self.params
        rng = np.random.default_rng([p.seed, self.iteration])
        order = rng.permutation(active)
        update_probe = self.iteration >= p.probe_update_start
        age = self.iteration - self.data_changed_at  # new frames restart the schedule: they need the fast updates
        size = p.batch_size * 2 ** (age // p.batch_doubling) if p.batch_doubling else p.batch_size
        if p.batch_max:
            size = min(size, p.batch_max)
        weights = asnumpy(self.weights)
        start = self.obj.copy() if p.momentum else None
        self._grads = movable = None
        if p.position_correction and (self.iteration - p.position_start) % p.position_every == 0:
            # frames in the fit for position_start iterations: the object around them has formed
            movable = active[self.iteration - self.arrived[active] >= p.position_start]
            if self._sum([len(movable)])[0] >= 2:
                self._grads = [self.xp.gradient(self.obj, axis=0), self.xp.gradient(self.obj, axis=1)]
                a = self.arrays
                self._pos_norms = gradient_norms(a.xp, a.fft, a.fft_kw, self.probe, self._grads, self.win)
                self._pos_dots[active] = 0
        total = self._active_total  # the batches are split over the ranks: as many on each
        with self._serial_ffts():  # the probe's single FFTs
            err = 0.0
            for b in np.array_split(order, max(1, round(total / size))):
                # the batch's frames in the order of their places on the object (a batch is a sum over its
                # frames, so the order changes nothing but the rounding): each window then overlaps the last,
                # and the object's grids stay in the cache, not fetched from memory at random places
                err += self._batch(b[np.argsort(self._place[b], kind="stable")], update_probe, weights)
                if self.on_batch is not None:
                    self.on_batch()
        if self._grads is not None:
            self._grads = None
            step = position_steps(self._pos_dots[movable], self._pos_norms[movable], p.position_max_step, self._mean_rows)
            self._move(movable, self.origins[movable] + step)
        if self.modes is not None and update_probe:
            self._orthogonalise_modes()
            if self.iteration + 1 - p.probe_update_start >= p.mode_check:
                self.probe, self.modes = drop_weak_modes(self.xp, self.probe, self.modes, p.mode_min_power)
                if self.modes is not None and p.mode_trial_frames and self.mode_choice is None:
                    self.mode_choice = self._try_modes(active)
                    log.info("lsqml: %s", self.mode_choice.summary())
                    if not self.mode_choice.keep:  # every further mode goes, its power to the main probe
                        self.probe, self.modes = drop_weak_modes(self.xp, self.probe, self.modes, 1.0)
        if p.momentum:
            self._step_momentum(start, err / max(float(self.energy[active].sum()), 1e-30), active)
        return err

    def _mean_rows(self, a: np.ndarray) -> np.ndarray:
        """The mean of the rows of ``a`` (B, k) over every rank's rows."""
        sums = self._sum([*a.sum(axis=0).tolist(), len(a)])
        return np.array(sums[:-1]) / max(sums[-1], 1)

    def _step_momentum(self, start, residual: float, active) -> None:
        """The object moves by ``momentum`` times the momentum's velocity as well, weighted towards the
        well-lit region (new frames start the momentum again)."""
        if self.data_changed_at == self.iteration or self._momentum is None:
            self._momentum = Momentum(self.xp, self.xp.zeros_like(self.obj))
        velocity = self._momentum.step(self.obj - start, residual, self._rdot)
        if velocity is not None:
            self.obj += self.params.momentum * self._illumination_weight(active) * velocity

    def _illumination_weight(self, active):
        """ill / (ill + 0.1 max ill) with the probe's (unshifted) intensity over the active frames."""
        xp = self.xp
        ill = xp.zeros(self.obj.shape, np.float32)
        p2 = xp.abs(self.probe) ** 2
        self.win.scatter_add(ill, xp.asarray(active), xp.broadcast_to(p2, (len(active), self.n, self.n)))
        ill /= ill + 0.1 * float(ill.max())
        return ill

    def _rephase_waves(self, factors) -> None:
        """The ambiguity fix moved the object: the stored updates no longer apply."""
        self._momentum = None

    # ------------------------------------------------------------- one batch
    def _batch(self, batch: np.ndarray, update_probe: bool, weights: np.ndarray) -> float:
        xp, p = self.xp, self.params
        size, k = len(batch), self._n_modes()
        if self._store is None or self._store[0].shape[1] < size or self._store[0].shape[0] != k:
            self._store = None  # let the old storage go before the new is allocated
            self._store = tuple(self.arrays.empty((k, size, self.n, self.n), np.complex64) for _ in range(2))
        parts = self.arrays.thread_parts(size, self.threads)
        # a rank whose part of the batch is empty still takes part in every reduction, with zeros
        slots = [(s[0], s[-1] + 1) for s in np.array_split(np.arange(size), parts)] if size else []
        num, ill = self._num, self._ill
        self._on_rows(lambda r: (num[r].fill(0), ill[r].fill(0)))
        # the in-place transforms are unnormalised (n² both ways, backend.fft2_inplace): the shifted probes' scale
        # is folded into their spectra here, the probe sums' into their total
        fprobes = self._fft2(self._all_modes()) * np.float32(1 / self.n)
        out = self._map(lambda s: self._forward(batch, s, fprobes, update_probe, weights), slots)
        gsum = sum((o[1] for o in out), xp.zeros((k, self.n, self.n), np.complex64)) if update_probe else None
        if gsum is not None:
            gsum *= np.float32(1 / self.n)
        o2 = sum((o[2] for o in out), xp.zeros((self.n, self.n), np.float32)) if update_probe else None
        # over the ranks: the batch is every rank's part of it, and the object's overlaps see all their frames
        if self.comm.size > 1:
            ill_max = self._reduce(num, ill, *((gsum, o2) if update_probe else ()))[1]
        else:
            ill_max = max(self._on_rows(lambda r: float(ill[r].max())))
        # object direction: sum_j P_j* chi_j over the illumination sum_j |P_j|^2 (floored); _ill becomes its inverse
        floor = np.float32(p.object_reg * ill_max)

        def direction(r):
            xp.add(ill[r], floor, out=ill[r])
            xp.reciprocal(ill[r], out=ill[r])
            xp.conjugate(num[r], out=num[r])
            num[r] *= ill[r]

        self._on_rows(direction)
        d_probe = None
        if update_probe:  # probe direction (each mode): sum_j O_j* chi_j (unshifted) over sum_j |O_j|^2
            d_probe = self._ifft2(gsum.conj())
            d_probe /= o2 + p.probe_reg * float(o2.max())
        dots = self._map(lambda s: self._products(batch, s, d_probe), slots)
        if dots:
            products = [xp.concatenate(d) for d in zip(*dots, strict=True)]
        else:
            products = [xp.zeros(0, np.float32)] * (5 if d_probe is not None else 2)
        alpha_o, alpha_p = self._steps(*products)
        steps = np.array([float(alpha_p.sum()), len(alpha_p)] if update_probe else [0.0, 0.0], np.float32)
        if self.comm.size == 1:
            self._map(lambda s: self._apply(batch, s, alpha_o, self.obj), slots)
        else:  # the update of every rank's frames, on this rank's part of the grid (and the probe steps' sum)
            self._num.fill(0)
            self._map(lambda s: self._apply(batch, s, alpha_o, self._num), slots)
            self._reduce(self._num, steps)
            self.obj += self._num
        if update_probe:
            step = float(steps[0]) / max(float(steps[1]), 1)
            self.probe += step * d_probe[0]
            if self.modes is not None:
                self.modes += step * d_probe[1:]
        return float(sum(o[0] for o in out))

    def _on_rows(self, fn) -> list:
        """``fn(rows)`` on the threads' bands of rows of the object grid (numpy: each band a thread's, cache-sized;
        cupy: the whole grid at once): the batch's passes over the grid run on every core, not on one."""
        rows = self.obj.shape[0]
        parts = self.arrays.thread_parts(rows, self.threads) if rows >= 64 else 1
        return self._map(fn, [slice(b[0], b[-1] + 1) for b in np.array_split(np.arange(rows), parts)])

    def _n_modes(self) -> int:
        return 1 if self.modes is None else 1 + len(self.modes)

    def _all_modes(self):
        """(K, n, n): the main probe and the further modes."""
        if self.modes is None:
            return self.probe[None]
        return self.xp.concatenate([self.probe[None], self.modes])

    def _orthogonalise_modes(self) -> None:
        new = orthogonal_modes(self.xp, self._all_modes())
        self.probe, self.modes = new[0].copy(), new[1:].copy()

    def _chunks(self, batch, slot):
        """(positions in the batch, host frame indices, device frame indices) of cache-sized chunks."""
        step = self.arrays.chunk_size(self.params.chunk, slot[1] - slot[0])
        for c0 in range(slot[0], slot[1], step):
            c1 = min(c0 + step, slot[1])
            yield slice(c0, c1), batch[c0:c1], self.xp.asarray(batch[c0:c1])

    def _work(self, c: int) -> dict:
        """This thread's chunk temporaries, allocated once."""
        work = getattr(self._tls, "work", None)
        if work is None or work["ramp"].shape[0] < c:
            empty, n = self.arrays.empty, self.n
            work = self._tls.work = {"ramp": empty((c, n, n), np.complex64), "tmp": empty((c, n, n), np.complex64),
                                     "mag": empty((c, n, n), np.float32), "amp": empty((c, n, n), np.float32),
                                     "real": empty((c, n, n), np.float32), "tmp2": empty((c, n, n), np.complex64),
                                     "obj": empty((c, n, n), np.complex64)}
        return {k: v[:c] for k, v in work.items()}

    def _forward(self, batch, slot, fprobes, want_probe: bool, weights):
        """Exit-wave updates chi of a slot's frames, for every probe mode (kept, with the shifted probes), the
        object sums (scattered onto the grids) and the probe sums (returned)."""
        xp, n = self.xp, self.n
        probes, chis = self._store[:2]
        modes = len(fprobes)
        err = 0.0
        # F psi comes n times too large from the unnormalised transform (n^-1 on |F psi|), and the inverse of
        # F psi times the update's factor n times as well: the factor carries n^-2 (all in passes made anyway)
        inv_n, inv_n2 = np.float32(1 / n), np.float32(1 / n**2)
        gsum = xp.zeros((modes, n, n), np.complex64) if want_probe else None
        o2 = xp.zeros((n, n), np.float32) if want_probe else None
        for sl, idx_h, idx in self._chunks(batch, slot):
            w = self._work(len(idx_h))
            ramp, tmp, mag, amp, real, ob = w["ramp"], w["tmp"], w["mag"], w["amp"], w["real"], w["obj"]
            outer_ramps(xp, self.ry[idx], self.rx[idx], out=ramp)
            # the chunk's object windows, copied once: three products use them, and a product with a window
            # of the grid (strided rows) costs numpy twice a copy of it and a product of contiguous arrays
            self.win.gather(self.obj, idx_h, idx, ob)
            for k in range(modes):
                pr, chi = probes[k, sl], chis[k, sl]
                xp.multiply(ramp, fprobes[k], out=pr)
                self._fft_inplace(pr, inverse=True)  # the probe as each frame sees it (sub-pixel shifted)
                xp.multiply(pr, ob, out=chi)  # psi = P_j O_j
                self._fft_inplace(chi)  # n F psi
            if modes == 1:
                xp.abs(chis[0, sl], out=mag)
            else:  # the modes add incoherently: |F psi| is the root of the summed intensities
                mag.fill(0)
                for k in range(modes):
                    xp.abs(chis[k, sl], out=real)
                    real *= real
                    mag += real
                xp.sqrt(mag, out=mag)
            mag *= inv_n
            xp.take(self.amp, idx, axis=0, out=amp)
            if self.params.likelihood == "poisson":
                xp.subtract(mag, amp, out=real)
                err += self._rdot(real, real).sum(dtype=np.float64)
                # half a gradient step of the Poisson likelihood: F psi (I / |F psi|^2 - 1) / 2, bounded; as
                # (amp / max(|F psi|, 1e-6))^2, the same as I / max(|F psi|^2, 1e-12) in a pass fewer
                xp.maximum(mag, 1e-6, out=mag)
                xp.divide(amp, mag, out=mag)
                xp.square(mag, out=mag)
                mag -= 1
                mag *= 0.5 * inv_n2
                xp.minimum(mag, self.params.poisson_cap * inv_n2, out=mag)
            else:
                # F chi = F psi (amp / |F psi| - 1), so sum over modes |F chi|^2 = (|F psi| - amp)^2: the misfit
                xp.maximum(mag, 1e-12, out=mag)
                xp.divide(amp, mag, out=mag)
                mag -= 1
                mag *= inv_n2
            wj = weights[idx_h]
            if (wj != 1).any():
                mag *= xp.asarray(wj.astype(np.float32))[:, None, None]
            if want_probe:
                _power(xp, ob, real, tmp)
                o2 += real.sum(axis=0)
            for k in range(modes):
                pr, chi = probes[k, sl], chis[k, sl]
                chi *= mag
                if self.params.likelihood != "poisson":  # chi here: n^-1 F chi
                    err += self._rdot(chi, chi).sum(dtype=np.float64) * n**2
                self._fft_inplace(chi, inverse=True)  # chi = P_M(psi) - psi
                # conj(chi) serves both sums: P_j conj(chi_j) is the conjugate of the object numerator P_j* chi_j
                # (the grid is conjugated once per batch), O_j conj(chi_j) that of the probe's
                xp.conjugate(chi, out=tmp)
                _power(xp, pr, real, w["tmp2"])
                if want_probe:
                    u = w["tmp2"]
                    xp.multiply(tmp, ob, out=u)
                tmp *= pr
                with self._lock:
                    self.win.scatter_add(self._num, idx, tmp)
                    self.win.scatter_add(self._ill, idx, real)
                if want_probe:
                    # sum_j F(O_j* chi_j) conj(ramp_j) = conj(sum_j F^-1(O_j conj(chi_j)) ramp_j)  (orthonormal FFTs;
                    # this one is n times that, undone on the sum in _batch)
                    self._fft_inplace(u, inverse=True)
                    u *= ramp
                    gsum[k] += u.sum(axis=0)
        return err, gsum, o2

    def _products(self, batch, slot, d_probe):
        """Per frame, the products of the step-size problem, summed over the modes: a = dO_j P_j, b = O_j dP
        (the sub-pixel shift of dP is left out of this estimate only): <a,a>, <a,chi>, <b,b>, <a,b>, <b,chi>."""
        xp = self.xp
        probes, chis = self._store[:2]
        out = []
        for sl, idx_h, idx in self._chunks(batch, slot):
            w = self._work(len(idx_h))
            a, b, dw, ow = w["tmp"], w["tmp2"], w["ramp"], w["obj"]
            # the windows copied first (see _forward), once for every mode
            self.win.gather(self._num, idx_h, idx, dw)
            if d_probe is not None:
                self.win.gather(self.obj, idx_h, idx, ow)
            dots = None
            for k in range(self._n_modes()):
                pr, chi = probes[k, sl], chis[k, sl]
                xp.multiply(pr, dw, out=a)
                d = [self._rdot(a, a), self._rdot(a, chi)]
                if d_probe is not None:
                    xp.multiply(d_probe[k][None], ow, out=b)
                    d += [self._rdot(b, b), self._rdot(a, b), self._rdot(b, chi)]
                dots = d if dots is None else [x + y for x, y in zip(dots, d, strict=True)]
                # the object update's numerator P_j* chi_j, in the probes' place (not needed again)
                xp.conjugate(pr, out=pr)
                pr *= chi
                if k == 0 and self._grads is not None:
                    # position: Re<P_j g, chi_j> = Re<g, P_j* chi_j> for g = dO/dy, dO/dx; window dots, nothing written
                    self._pos_dots[idx_h] += np.stack([self.win.dots(g, pr, idx_h, idx) for g in self._grads], axis=1)
            out.append(dots)
        return [xp.concatenate(d) for d in zip(*out, strict=True)]

    def _steps(self, aa, ac, bb=None, ab=None, bc=None):
        """Per frame, the real steps (alpha_o, alpha_p) minimising |chi - alpha_o a - alpha_p b|^2."""
        xp, lam, top = self.xp, self.params.step_reg, self.params.max_step
        # the regularisation's scale: the mean over the whole batch, every rank's part of it
        sa, sb, count = self._sum([float(aa.sum()), float(bb.sum()) if bb is not None else 0.0, len(aa)])
        aa = aa + lam * sa / max(count, 1) + 1e-30
        if bb is None:
            return xp.clip(ac / aa, 0, top), None
        bb = bb + lam * sb / max(count, 1) + 1e-30
        det = aa * bb - ab**2
        return xp.clip((bb * ac - ab * bc) / det, 0, top), xp.clip((aa * bc - ab * ac) / det, 0, top)

    def _apply(self, batch, slot, alpha_o, target) -> None:
        """The object update: each frame's P_j* chi_j / illumination (summed over modes), scaled by its own step,
        added onto ``target`` (the object, or the grid its update is summed on over the ranks)."""
        pchi = self._store[0]
        for sl, idx_h, idx in self._chunks(batch, slot):
            real = self._work(len(idx_h))["real"]
            self.win.gather(self._ill, idx_h, idx, real, scales=alpha_o[sl])  # each frame's step with its window
            u = pchi[0, sl]
            for k in range(1, self._n_modes()):
                u += pchi[k, sl]
            u *= real
            with self._lock:
                self.win.scatter_add(target, idx, u)

    def _fft_inplace(self, a, inverse: bool = False) -> None:
        """2-D FFT of each frame of ``a``, written back into ``a``, unnormalised (n² from a forward and an inverse)."""
        self.arrays.fft2_inplace(a, inverse, self._fft_kw())
