"""Reconstruction engines with PtyPy's shape (prepare / iterate / finalize) and pty-chi's
separation of data (:class:`PtychoData`), parameters (pydantic, per engine) and engine.

- ``lsqml``: least-squares maximum likelihood (Odstrčil et al., Opt. Express 26, 3108,
  2018): mini-batches, object and probe update directions preconditioned by their
  illumination, and per-frame optimal step sizes from a 2 x 2 least-squares problem; the
  Poisson likelihood, incoherent probe modes (a second one kept where the data asks for it)
  and position refinement by default. The default: fastest to a low error.
- ``epie`` / ``rpie``: frame-by-frame updates (Maiden & Rodenburg 2009; Maiden et al. 2017).
- ``dm``: difference map (Thibault et al. 2009) and ``raar``: relaxed averaged alternating
  reflections (Luke 2005; β = 0.6 as SHARP), both on all exit waves at once, with the
  object and probe solved jointly in the overlap projection.

Every frame carries a weight: 0 until it has arrived (SHARP's streaming trick), so an
engine iterates on "all frames so far" and frames join while it runs
(:meth:`Engine.add_frames`). Positions are sub-pixel: the probe is shifted by the
fractional part with a Fourier phase ramp, never rounded. Every iteration records the
Fourier-space data residual ``sum (|F psi| - sqrt(I))^2 / sum I`` over the frames
that count: the cost the engines minimise, normalised as PtyPy's Fourier-magnitude
error ``err_fmag`` (a squared quantity; its square root is the relative RMS misfit).
One code path for numpy and cupy: arrays live in ``self.xp``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ParameterError
from .backend import asnumpy, fft_module, fft_workers, get_xp


@dataclass
class PtychoData:
    """Measured intensities ``(N, n, n)`` (zero frequency centred), probe-window origins
    ``(N, 2)`` in object pixels (row, col, may be fractional) and per-frame weights."""

    patterns: np.ndarray
    origins_px: np.ndarray
    weights: np.ndarray | None = None

    def __post_init__(self):
        p = np.asarray(self.patterns)
        if p.ndim != 3 or p.shape[1] != p.shape[2]:
            raise ParameterError(f"patterns must be (N, n, n), got {p.shape}")
        if np.asarray(self.origins_px).shape != (p.shape[0], 2):
            raise ParameterError(f"origins_px must be ({p.shape[0]}, 2), got {np.asarray(self.origins_px).shape}")
        if self.weights is None:
            self.weights = np.ones(p.shape[0], np.float32)


class EngineParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    probe_update_start: int = Field(2, ge=0, description="iterations with the probe held fixed first")
    backend: str = Field("numpy", description="array module: numpy or cupy")
    seed: int = Field(0, description="order of frames and batches")
    threads: int = Field(0, ge=0, description="threads for the element-wise work on numpy (0: every core)")
    restart_fraction: float = Field(
        0.25, gt=0, description="new frames, as a part of those already active, that restart the schedule (mini-batch "
        "sizes, momentum): while streaming, a trickle of frames into a large scan does not"
    )


_ENGINES: dict[str, type[Engine]] = {}


def register(cls):
    _ENGINES[cls.name] = cls
    return cls


def engine(name: str, **params) -> Engine:
    if name not in _ENGINES:
        raise ParameterError(f"unknown engine {name!r}; known: {', '.join(sorted(_ENGINES))}")
    cls = _ENGINES[name]
    return cls(cls.Params(**params))


def engine_names() -> list[str]:
    return sorted(_ENGINES)


def _centre_of_mass(power, xp) -> np.ndarray:
    """(row, col) centre of an intensity in FFT order, in signed frequency pixels."""
    k = xp.asarray(np.fft.fftfreq(power.shape[-1]) * power.shape[-1], dtype=np.float32)
    total = float(power.sum())
    return np.array([float((power.sum(axis=1) * k).sum()), float((power.sum(axis=0) * k).sum())]) / max(total, 1e-30)


class Engine:
    """Public methods do the bookkeeping; subclasses implement ``_iterate`` (one pass over the frames)."""

    name: ClassVar[str]
    Params: ClassVar[type[EngineParams]] = EngineParams

    def __init__(self, params: EngineParams | None = None):
        self.params = params or self.Params()
        self._tls = threading.local()
        self.threads = max(1, min(self.params.threads or (os.cpu_count() or 1), 16))
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self.iteration = 0
        self.data_changed_at = 0
        self._added = 0  # frames added since the schedule last restarted
        self.residuals: list[float] = []
        self.obj = self.probe = None
        self.modes = None  # further incoherent probe modes (K - 1, n, n), for engines that fit a mixed state
        # called between mini-batches: a streaming reconstruction publishes its estimate on time even when
        # one pass over many frames takes longer than the screens may wait
        self.on_batch: Callable[[], None] | None = None

    # ------------------------------------------------------------------ public
    def prepare(self, data: PtychoData, probe: np.ndarray, obj: np.ndarray | None = None) -> None:
        xp = self.xp = get_xp(self.params.backend)
        self.fft, self.fft_kw = fft_module(xp), fft_workers(xp)
        patterns = np.asarray(data.patterns, dtype=np.float32)
        n = self.n = patterns.shape[-1]
        if probe.shape != (n, n):
            raise ParameterError(f"probe must be {n} x {n} like the patterns, got {probe.shape}")
        origins = np.array(data.origins_px, dtype=np.float64)  # a copy: add_frames may move frames
        if origins.min() < 0:
            raise ParameterError("origins_px must be >= 0: shift the positions so the object grid holds them")
        shape = tuple(int(np.ceil(v)) + n + 1 for v in origins.max(axis=0))
        if obj is None:
            obj = np.ones(shape, np.complex64)
        elif obj.shape[0] < shape[0] or obj.shape[1] < shape[1]:
            raise ParameterError(f"object {obj.shape} is too small for the positions (needs {shape})")
        whole = np.floor(origins)
        self.iy_np, self.ix_np = whole.astype(np.int64).T
        frac = origins - whole
        k = np.fft.fftfreq(n)
        self.ry = xp.asarray(np.exp(-2j * np.pi * frac[:, :1] * k[None, :]).astype(np.complex64))  # (N, n)
        self.rx = xp.asarray(np.exp(-2j * np.pi * frac[:, 1:] * k[None, :]).astype(np.complex64))
        self.iy, self.ix = xp.asarray(self.iy_np), xp.asarray(self.ix_np)
        self.ar = xp.arange(n)
        self.amp = xp.asarray(np.fft.ifftshift(np.sqrt(np.maximum(patterns, 0)), axes=(-2, -1)))
        self.origins = origins
        self.weights = xp.asarray(np.asarray(data.weights, np.float32).copy())
        self.arrived = np.where(np.asarray(data.weights) > 0, 0, np.iinfo(np.int64).max // 2)  # iteration each frame joined
        self.energy = np.maximum(patterns, 0).sum(axis=(-2, -1), dtype=np.float64)  # sum I per frame, for the residual
        self.obj = xp.asarray(obj.astype(np.complex64))
        self.probe = xp.asarray(probe.astype(np.complex64))
        self._pattern_sum = np.maximum(patterns, 0).sum(axis=0, dtype=np.float64)
        self.data_centre = _centre_of_mass(np.fft.ifftshift(self._pattern_sum), np)  # FFT order, like the probe's far field
        self._prepare()

    def add_frames(self, indices, patterns=None, origins_px=None) -> None:
        """Frames that arrived: weight 1, their data (if not given at prepare) and where they were measured
        (``origins_px``, when the stage's reading differs from the plan the grid was laid out for)."""
        xp = self.xp
        host = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        idx = xp.asarray(host)
        if patterns is not None:
            amp = np.fft.ifftshift(np.sqrt(np.maximum(np.asarray(patterns, np.float32), 0)), axes=(-2, -1))
            self.amp[idx] = xp.asarray(amp)
            self.energy[host] = (amp**2).sum(axis=(-2, -1))
            # the probe is held to the centre of the data that has arrived, not of the zeros before it
            self._pattern_sum += np.maximum(np.asarray(patterns, np.float32), 0).sum(axis=0, dtype=np.float64)
            self.data_centre = _centre_of_mass(np.fft.ifftshift(self._pattern_sum), np)
        if origins_px is not None:
            self._move(host, np.asarray(origins_px, dtype=np.float64).reshape(-1, 2))
        weights = asnumpy(self.weights)
        self.arrived[host[weights[host] == 0]] = self.iteration
        self._added += int((weights[host] == 0).sum())
        self.weights[idx] = 1.0
        if self._added >= self.params.restart_fraction * max(int((weights > 0).sum()), 1):
            self.data_changed_at, self._added = self.iteration, 0

    def _move(self, host: np.ndarray, origins: np.ndarray) -> None:
        """New probe-window origins for some frames, kept inside the object grid laid out at prepare."""
        xp, n = self.xp, self.n
        origins = np.clip(origins, 0, np.array(self.obj.shape) - n - 1)
        whole = np.floor(origins)
        frac = origins - whole
        k = np.fft.fftfreq(n)
        self.origins[host] = origins
        self.iy_np[host], self.ix_np[host] = whole.astype(np.int64).T
        self.iy, self.ix = xp.asarray(self.iy_np), xp.asarray(self.ix_np)
        self.ry[xp.asarray(host)] = xp.asarray(np.exp(-2j * np.pi * frac[:, :1] * k[None, :]).astype(np.complex64))
        self.rx[xp.asarray(host)] = xp.asarray(np.exp(-2j * np.pi * frac[:, 1:] * k[None, :]).astype(np.complex64))
        if hasattr(self, "psi_ready"):  # projection engines: the exit waves of moved frames start again
            self.psi_ready[host] = False

    def iterate(self, n: int = 1) -> list[float]:
        """Run ``n`` iterations; returns the data residual of each (0 frames: nothing to fit, residual nan)."""
        if self.obj is None:
            raise RuntimeError("prepare() first")
        out = []
        for _ in range(n):
            active = np.flatnonzero(asnumpy(self.weights) > 0)
            if len(active):
                err = self._iterate(active)
                if self.iteration >= self.params.probe_update_start:
                    self._fix_ambiguities()
                res = err / max(float(self.energy[active].sum()), 1e-30)
            else:
                res = float("nan")
            self.iteration += 1
            self.residuals.append(res)
            out.append(res)
        return out

    def finalize(self) -> tuple[np.ndarray, np.ndarray, list[float]]:
        return asnumpy(self.obj), asnumpy(self.probe), list(self.residuals)

    def _fix_ambiguities(self) -> None:
        """Undo what the data cannot see, before it accumulates into drift.

        A linear phase ramp on the probe and the opposite ramp on the object leave every
        exit wave's intensity unchanged, so iterations wander along it (the two halves of
        a scan come out with different ramps, an object with a tilt it does not have).
        The mean diffraction pattern says where the beam's far field is centred; a probe
        whose far field has moved half a pixel or more away from it is moved back by whole
        pixels, the object takes the opposite ramp and each kept exit wave the constant
        phase that keeps it consistent. (A ramp of less than a cycle per window remains:
        compare halves after removing their relative ramp, as PtychoShelves' FSC does.)
        """
        xp, n = self.xp, self.n
        # whole cycles per window only: such a ramp is periodic in the window, so the probe's
        # sub-pixel shifts stay exact and the correction changes no exit wave's intensity
        c = np.round(self._far_field_centre(self.probe) - self.data_centre)
        if not c.any():
            return

        def ramp(rows, cols, sign):
            return xp.exp(sign * 2j * np.pi * (c[0] * rows[:, None] + c[1] * cols[None, :]) / n).astype(np.complex64)

        probe_ramp = ramp(xp.arange(n, dtype=np.float64), xp.arange(n, dtype=np.float64), -1)
        self.probe *= probe_ramp
        if self.modes is not None:  # the object's ramp is every mode's
            self.modes *= probe_ramp[None]
        self.obj *= ramp(xp.arange(self.obj.shape[0], dtype=np.float64), xp.arange(self.obj.shape[1], dtype=np.float64), 1)
        self._rephase_waves(xp.asarray(np.exp(2j * np.pi * (self.origins @ c) / n).astype(np.complex64)))

    def _far_field_centre(self, probe) -> np.ndarray:
        return _centre_of_mass(self.xp.abs(self._fft2(probe)) ** 2, self.xp)

    def _rephase_waves(self, factors) -> None:
        """Engines that keep exit waves multiply each frame's by its factor."""

    # ----------------------------------------------------- batched array helpers
    def _fft2(self, a):
        return self.fft.fft2(a, axes=(-2, -1), norm="ortho", **getattr(self._tls, "fft_kw", self.fft_kw))

    def _ifft2(self, a):
        return self.fft.ifft2(a, axes=(-2, -1), norm="ortho", **getattr(self._tls, "fft_kw", self.fft_kw))

    def _parallel(self, fn, idx) -> list:
        """``fn`` on parts of a batch in threads (numpy releases the GIL in its loops and FFTs): the
        element-wise work, single-threaded in numpy, then uses every core. One part on a GPU."""
        parts = self.threads if self.xp is np and len(idx) >= 2 * self.threads else 1
        return self._map(fn, np.array_split(np.asarray(idx), parts) if parts > 1 else [idx])

    def _map(self, fn, items: list) -> list:
        """``fn`` on each of the parts :meth:`_parallel` made, in the same threads."""
        if len(items) == 1 or self._pool is None:
            return [fn(item) for item in items]

        def run(item):
            self._tls.fft_kw = {"workers": 1}
            return fn(item)

        return list(self._pool.map(run, items))

    def _ramps(self, idx):
        """Fourier ramps that shift the probe by each frame's fractional position: (B, n, n)."""
        return self.ry[idx][:, :, None] * self.rx[idx][:, None, :]

    def _probes(self, idx, ramps=None):
        """The probe as each frame sees it (sub-pixel shifted)."""
        ramps = self._ramps(idx) if ramps is None else ramps
        return self._ifft2(self._fft2(self.probe)[None] * ramps)

    def _unshift_sum(self, values, idx, ramps=None):
        """Sum of per-frame probe-frame quantities after undoing each frame's sub-pixel shift."""
        f = self._fft2(values)
        f *= (self._ramps(idx) if ramps is None else ramps).conj()
        return self._ifft2(f.sum(axis=0))

    def _index(self, idx):
        ar = self.ar
        return self.iy[idx][:, None, None] + ar[None, :, None], self.ix[idx][:, None, None] + ar[None, None, :]

    def _patches(self, array, idx):
        if self.xp is np:  # whole-window copies: far faster than element-wise fancy indexing
            idx = np.asarray(idx)
            windows = np.lib.stride_tricks.sliding_window_view(array, (self.n, self.n))
            return windows[self.iy_np[idx], self.ix_np[idx]]
        rows, cols = self._index(idx)
        return array[rows, cols]

    def _scatter(self, target, idx, values) -> None:
        """target[window_j] += values[j] for every frame j (overlapping windows add up)."""
        if self.xp is np:
            n = self.n
            for k, j in enumerate(np.asarray(idx)):
                target[self.iy_np[j] : self.iy_np[j] + n, self.ix_np[j] : self.ix_np[j] + n] += values[k]
        else:
            import cupyx

            rows, cols = self._index(idx)
            if target.dtype.kind == "c":
                cupyx.scatter_add(target.real, (rows, cols), values.real)
                cupyx.scatter_add(target.imag, (rows, cols), values.imag)
            else:
                cupyx.scatter_add(target, (rows, cols), values)

    def _modulus(self, psi, idx):
        """Fourier-modulus projection of exit waves ``psi`` (B, n, n), and their squared amplitude misfit."""
        xp = self.xp
        f = self._fft2(psi)
        mag, amp, err = self._magnitudes(f, idx)
        xp.maximum(mag, 1e-12, out=mag)
        xp.divide(amp, mag, out=mag)
        f *= mag
        return self._ifft2(f), err

    def _rdot(self, x, y):
        """Per frame, Re sum conj(x) y: one pass over the float views, no temporaries."""
        b = x.shape[0]
        return self.xp.einsum("ij,ij->i", x.view(np.float32).reshape(b, -1), y.view(np.float32).reshape(b, -1))

    def _magnitudes(self, f, idx):
        """|F psi|, the measured amplitudes and the squared misfit between them."""
        mag = self.xp.abs(f)
        amp = self.amp[idx]
        diff = mag - amp
        return mag, amp, float(self.xp.square(diff, out=diff).sum(dtype=np.float64))

    def _misfit(self, psi, idx) -> float:
        return self._magnitudes(self._fft2(psi), idx)[2]

    def _prepare(self) -> None:
        pass

    def _iterate(self, active: np.ndarray) -> float:
        """One pass over the ``active`` frames; returns the summed squared amplitude misfit."""
        raise NotImplementedError


# --------------------------------------------------------------------------- PIE
class RPIEParams(EngineParams):
    alpha: float = Field(0.1, gt=0, le=1, description="rPIE object regularisation (1: ePIE)")
    probe_alpha: float = Field(1.0, gt=0, le=1, description="the same for the probe update")
    probe_step: float = Field(1.0, gt=0, le=1)


@register
class RPIE(Engine):
    """rPIE (Maiden et al., Optica 4, 2017): frame-by-frame object and probe updates."""

    name = "rpie"
    Params = RPIEParams

    def _iterate(self, active: np.ndarray) -> float:
        xp, p = self.xp, self.params
        rng = np.random.default_rng([p.seed, self.iteration])
        err = 0.0
        update_probe = self.iteration >= p.probe_update_start
        if xp is np:
            self._tls.fft_kw = {"workers": 1}  # one 2-D FFT at a time: threads would only add overhead
        try:
            for j in rng.permutation(active):
                err += self._update_frame(int(j), update_probe)
        finally:
            self._tls.__dict__.pop("fft_kw", None)
        return err

    def _update_frame(self, j: int, update_probe: bool) -> float:
        xp, p, n = self.xp, self.params, self.n
        sl = slice(self.iy_np[j], self.iy_np[j] + n), slice(self.ix_np[j], self.ix_np[j] + n)
        idx = [j]
        ramps = self._ramps(idx)
        probe = self._probes(idx, ramps)
        o = self.obj[sl].copy()
        psi = probe * o
        new, err = self._modulus(psi, idx)
        d = ((new - psi) * self.weights[j])[0]
        probe = probe[0]
        p2 = xp.abs(probe) ** 2
        self.obj[sl] = o + probe.conj() * d / ((1 - p.alpha) * p2 + p.alpha * p2.max())
        if update_probe:  # with the object as it was before this frame's update (o is a copy)
            o2 = xp.abs(o) ** 2
            dp = p.probe_step * o.conj() * d / ((1 - p.probe_alpha) * o2 + p.probe_alpha * o2.max())
            self.probe = self.probe + self._unshift_sum(dp[None], idx, ramps)
        return err


class EPIEParams(RPIEParams):
    alpha: float = Field(1.0, gt=0, le=1, description="1: the plain ePIE update (Maiden & Rodenburg 2009)")


@register
class EPIE(RPIE):
    """ePIE: rPIE with alpha = 1."""

    name = "epie"
    Params = EPIEParams


# ------------------------------------------------------------------------ LSQ-ML
class LSQMLParams(EngineParams):
    batch_size: int = Field(8, ge=1, description="frames per update (mini-batch) at the start")
    batch_doubling: int = Field(
        8, ge=0, description="the batch doubles every this many iterations (0: never): small batches move fast "
        "early, large ones average the noise out late, as growing batches do for stochastic gradients"
    )
    object_reg: float = Field(0.1, gt=0, description="object preconditioner floor, relative to the peak illumination")
    probe_reg: float = Field(0.05, gt=0, description="probe preconditioner floor, relative to the peak object intensity")
    step_reg: float = Field(0.1, ge=0, description="regularisation of the per-frame 2 x 2 step-size problem")
    max_step: float = Field(1.0, gt=0, description="upper bound of the optimal step sizes")
    chunk: int = Field(16, ge=1, description="frames per vectorised step in each thread on numpy (cache-sized temporaries)")
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
    position_correction: bool = Field(
        True, description="refine each frame's position (Odstrčil et al. 2018, sec. 4): the shift along the object's "
        "gradient, P_j dO/dx, that best explains the exit-wave update chi_j, a least-squares step per frame; the common "
        "shift of all frames (invisible to the data) is removed. Measured: half-scan FRC 0.423 against 0.400 on the "
        "measured star after 100 iterations; positions 1.42 px rms off come to 0.36 px in 80 iterations (every 5)"
    )
    position_start: int = Field(10, ge=0, description="iterations before the positions are refined (the object must have formed)")
    position_every: int = Field(10, ge=1, description="refine the positions every this many iterations (each such iteration costs ~10 % more)")
    position_max_step: float = Field(0.5, gt=0, description="largest move of a frame in one refinement, pixels")
    momentum: float = Field(
        0.0, ge=0, description="gain of the object's momentum (0: none): the iterations' updates, while they keep "
        "pointing the same way, add up in a velocity that is applied as well (PtychoShelves' LSQ-ML acceleration)"
    )


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
    position refinement (against the object's gradient).
    """

    name = "lsqml"
    Params = LSQMLParams

    def _prepare(self) -> None:
        xp = self.xp
        self._ryc, self._rxc = self.ry.conj(), self.rx.conj()
        self._lock = threading.Lock()  # the scatters onto the object grids, from every thread
        self._store = None  # per batch: shifted probes, object patches, exit-wave updates
        self._num = xp.empty_like(self.obj)  # object-grid sums, reused by every batch
        self._ill = xp.empty(self.obj.shape, np.float32)
        if self.params.probe_modes > 1:
            self._start_modes()
        self._grads = None
        self._pos_dots = np.zeros((len(self.ix_np), 2))

    def _start_modes(self) -> None:
        """Further modes from the main probe times low-order polynomials across the beam (x, y, xy, x², ...),
        each with ``mode_power`` of the total; the total power stays the start probe's."""
        xp, n, p = self.xp, self.n, self.params
        probe = asnumpy(self.probe).astype(np.complex128)
        i = np.abs(probe) ** 2
        y, x = np.indices((n, n), dtype=np.float64)
        total = i.sum()
        cy, cx = (i * y).sum() / total, (i * x).sum() / total
        sy = np.sqrt((i * (y - cy) ** 2).sum() / total) + 1e-9
        sx = np.sqrt((i * (x - cx) ** 2).sum() / total) + 1e-9
        u, v = (x - cx) / sx, (y - cy) / sy
        shapes = [u, v, u * v, u**2 - 1, v**2 - 1, u**3 - 3 * u, v**3 - 3 * v]
        modes = []
        for k in range(p.probe_modes - 1):
            m = probe * shapes[k]
            modes.append(m * np.sqrt(p.mode_power * total / max((np.abs(m) ** 2).sum(), 1e-30)))
        self.probe = xp.asarray((probe * np.sqrt(max(1 - p.mode_power * len(modes), 0.05))).astype(np.complex64))
        self.modes = xp.asarray(np.stack(modes).astype(np.complex64))
        self._orthogonalise_modes()

    def _iterate(self, active: np.ndarray) -> float:
        p = self.params
        rng = np.random.default_rng([p.seed, self.iteration])
        order = rng.permutation(active)
        update_probe = self.iteration >= p.probe_update_start
        age = self.iteration - self.data_changed_at  # new frames restart the schedule: they need the fast updates
        size = p.batch_size * 2 ** (age // p.batch_doubling) if p.batch_doubling else p.batch_size
        weights = asnumpy(self.weights)
        start = self.obj.copy() if p.momentum else None
        self._grads = movable = None
        if p.position_correction and (self.iteration - p.position_start) % p.position_every == 0:
            # frames in the fit for position_start iterations: the object around them has formed
            movable = active[self.iteration - self.arrived[active] >= p.position_start]
            if len(movable) >= 2:
                self._grads = [self.xp.gradient(self.obj, axis=0), self.xp.gradient(self.obj, axis=1)]
                self._pos_norms = self._gradient_norms(self._grads)
                self._pos_dots[active] = 0
        if self.xp is np:
            self._tls.fft_kw = {"workers": 1}  # the probe's single FFTs: threads would only add overhead
        try:
            err = 0.0
            for b in np.array_split(order, max(1, round(len(order) / size))):
                err += self._batch(b, update_probe, weights)
                if self.on_batch is not None:
                    self.on_batch()
        finally:
            self._tls.__dict__.pop("fft_kw", None)
        if self._grads is not None:
            self._grads = None
            self._correct_positions(movable)
        if self.modes is not None and update_probe:
            self._orthogonalise_modes()
            if self.iteration + 1 - p.probe_update_start >= p.mode_check:
                self._drop_weak_modes()
        if p.momentum:
            self._momentum(start, err / max(float(self.energy[active].sum()), 1e-30), active)
        return err

    def _momentum(self, start, residual: float, active) -> None:
        """Momentum on the object (after Odstrčil's PtychoShelves): while the last iterations' updates
        correlate, they add up in a velocity (with a friction from how fast the correlation decays) and
        the object moves by ``momentum`` times it as well, weighted towards the well-lit region."""
        xp = self.xp
        upd = self.obj - start
        if self.data_changed_at == self.iteration or getattr(self, "_mom", None) is None:
            self._mom = {"updates": [], "residuals": [], "velocity": xp.zeros_like(self.obj)}
        m = self._mom
        norm = float(xp.sqrt(self._rdot(upd.reshape(1, -1), upd.reshape(1, -1))[0]))
        m["updates"] = [*m["updates"], upd / max(norm, 1e-30)][-3:]
        m["residuals"] = [*m["residuals"], residual][-3:]
        if len(m["updates"]) < 3:
            return
        u2, u1, u0 = m["updates"]
        corr = [float(self._rdot(u.reshape(1, -1), u0.reshape(1, -1))[0]) for u in (u1, u2)]
        r2, r1, r0 = m["residuals"]
        if max(r2, r1) > min(r1, r0) and min(corr) > 0:
            slope = np.polyfit([0, 1, 2], [0, np.log(corr[0]), np.log(corr[1])], 1)[0]
            friction = 0.5 * max(-slope, 0.0)
            m["velocity"] *= 1 - friction
            m["velocity"] += upd
            if getattr(self, "_lit", None) is None or self._lit[0] != self.iteration:
                self._lit = (self.iteration, self._illumination_weight(active))
            self.obj += self.params.momentum * self._lit[1] * m["velocity"]
        else:
            m["velocity"] *= 0.5

    def _illumination_weight(self, active):
        """ill / (ill + 0.1 max ill) with the probe's (unshifted) intensity over the active frames."""
        xp = self.xp
        ill = xp.zeros(self.obj.shape, np.float32)
        p2 = xp.abs(self.probe) ** 2
        self._scatter(ill, xp.asarray(active), xp.broadcast_to(p2, (len(active), self.n, self.n)))
        ill /= ill + 0.1 * float(ill.max())
        return ill

    def _rephase_waves(self, factors) -> None:
        """The ambiguity fix moved the object: the stored updates no longer apply."""
        self._mom = None

    # ------------------------------------------------------------- one batch
    def _batch(self, batch: np.ndarray, update_probe: bool, weights: np.ndarray) -> float:
        xp, p = self.xp, self.params
        size, k = len(batch), self._n_modes()
        if self._store is None or self._store[0].shape[1] < size or self._store[0].shape[0] != k:
            self._store = None  # let the old storage go before the new is allocated
            self._store = tuple(xp.empty((k, size, self.n, self.n), np.complex64) for _ in range(2))
        parts = self.threads if xp is np and size >= 2 * self.threads else 1
        slots = [(s[0], s[-1] + 1) for s in np.array_split(np.arange(size), parts)]
        self._num.fill(0)
        self._ill.fill(0)
        fprobes = self._fft2(self._all_modes())
        out = self._map(lambda s: self._forward(batch, s, fprobes, update_probe, weights), slots)
        # object direction: sum_j P_j* chi_j over the illumination sum_j |P_j|^2 (floored); _ill becomes its inverse
        xp.conjugate(self._num, out=self._num)
        self._ill += p.object_reg * float(self._ill.max())
        xp.reciprocal(self._ill, out=self._ill)
        self._num *= self._ill
        d_probe = None
        if update_probe:  # probe direction (each mode): sum_j O_j* chi_j (unshifted) over sum_j |O_j|^2
            d_probe = self._ifft2(sum(o[1] for o in out).conj())
            o2 = sum(o[2] for o in out)
            d_probe /= o2 + p.probe_reg * float(o2.max())
        dots = self._map(lambda s: self._products(batch, s, d_probe), slots)
        alpha_o, alpha_p = self._steps(*(xp.concatenate(d) for d in zip(*dots, strict=True)))
        self._map(lambda s: self._apply(batch, s, alpha_o), slots)
        if update_probe:
            step = float(alpha_p.mean())
            self.probe += step * d_probe[0]
            if self.modes is not None:
                self.modes += step * d_probe[1:]
        return float(sum(o[0] for o in out))

    def _n_modes(self) -> int:
        return 1 if self.modes is None else 1 + len(self.modes)

    def _all_modes(self):
        """(K, n, n): the main probe and the further modes."""
        if self.modes is None:
            return self.probe[None]
        return self.xp.concatenate([self.probe[None], self.modes])

    def _orthogonalise_modes(self) -> None:
        """Unitary mixing of the modes changes no intensity: make them orthogonal, strongest first
        (the main probe the strongest), so that power cannot hide in correlated modes."""
        xp = self.xp
        m = self._all_modes().reshape(self._n_modes(), -1)
        gram = asnumpy(m.conj() @ m.T).astype(np.complex128)  # <m_i, m_j>
        vecs = np.linalg.eigh(gram)[1][:, ::-1]  # strongest first
        # each new mode's phase as that of the old mode it mostly came from: no jumps in the main probe's phase
        overlap = (gram @ vecs).diagonal()  # <m_i, new_i>
        vecs = vecs * (np.conj(overlap) / np.maximum(np.abs(overlap), 1e-300))[None, :]
        new = (xp.asarray(vecs.T.astype(np.complex64)) @ m).reshape(-1, self.n, self.n)
        self.probe, self.modes = new[0].copy(), new[1:].copy()

    def _correct_positions(self, active) -> None:
        """Move each frame by the least-squares shift its exit-wave update asks for (from the dot products
        ``_products`` gathered, <P dO/dy, chi> and <P dO/dx, chi>, over |P dO/dy|^2 and |P dO/dx|^2), bounded,
        less the mean shift (a translation of everything is invisible)."""
        num, den = self._pos_dots[active], self._pos_norms[active]
        step = num / (den + 1e-3 * den.mean(axis=0) + 1e-30)  # (rows, cols)
        step = np.clip(step, -self.params.position_max_step, self.params.position_max_step)
        step -= step.mean(axis=0)
        self._move(active, self.origins[active] + step)

    def _gradient_norms(self, grads) -> np.ndarray:
        """(N, 2): |P_j g|^2 for every frame and g = dO/dy, dO/dx, as the correlation of |g|^2 with the probe's
        intensity (the sub-pixel shift left out of this norm), by FFTs over the object grid."""
        xp, fft, kw = self.xp, self.fft, self.fft_kw
        shape = self.obj.shape
        fp = xp.zeros(shape, np.float32)
        fp[: self.n, : self.n] = xp.abs(self.probe) ** 2
        fp = xp.conj(fft.rfft2(fp, **kw))
        out = [fft.irfft2(fft.rfft2(xp.abs(g) ** 2, **kw) * fp, s=shape, **kw)[self.iy, self.ix] for g in grads]
        return asnumpy(xp.stack(out, axis=1)).astype(np.float64)

    def _drop_weak_modes(self) -> None:
        """Further modes below ``mode_min_power`` of the total go (for good)."""
        xp = self.xp
        power = asnumpy(xp.sum(xp.abs(self._all_modes()) ** 2, axis=(-2, -1))).astype(np.float64)
        keep = power[1:] >= self.params.mode_min_power * power.sum()
        if keep.all():
            return
        # the dropped modes' power goes to the main probe, so the total intensity stays the data's
        self.probe *= np.float32(np.sqrt(1 + power[1:][~keep].sum() / power[0]))
        self.modes = self.modes[xp.asarray(np.flatnonzero(keep))] if keep.any() else None

    def _chunks(self, batch, slot):
        """(positions in the batch, host frame indices, device frame indices) of cache-sized chunks."""
        step = self.params.chunk if self.xp is np else slot[1] - slot[0]
        for c0 in range(slot[0], slot[1], step):
            c1 = min(c0 + step, slot[1])
            yield slice(c0, c1), batch[c0:c1], self.xp.asarray(batch[c0:c1])

    def _work(self, c: int) -> dict:
        """This thread's chunk temporaries, allocated once."""
        work = getattr(self._tls, "work", None)
        if work is None or work["ramp"].shape[0] < c:
            xp, n = self.xp, self.n
            work = self._tls.work = {"ramp": xp.empty((c, n, n), np.complex64), "tmp": xp.empty((c, n, n), np.complex64),
                                     "mag": xp.empty((c, n, n), np.float32), "amp": xp.empty((c, n, n), np.float32),
                                     "real": xp.empty((c, n, n), np.float32), "tmp2": xp.empty((c, n, n), np.complex64)}
        return {k: v[:c] for k, v in work.items()}

    def _forward(self, batch, slot, fprobes, want_probe: bool, weights):
        """Exit-wave updates chi of a slot's frames, for every probe mode (kept, with the shifted probes), the
        object sums (scattered onto the grids) and the probe sums (returned)."""
        xp, n = self.xp, self.n
        probes, chis = self._store[:2]
        modes = len(fprobes)
        err = 0.0
        gsum = xp.zeros((modes, n, n), np.complex64) if want_probe else None
        o2 = xp.zeros((n, n), np.float32) if want_probe else None
        for sl, idx_h, idx in self._chunks(batch, slot):
            w = self._work(len(idx_h))
            ramp, tmp, mag, amp, real = w["ramp"], w["tmp"], w["mag"], w["amp"], w["real"]
            xp.multiply(self.ry[idx][:, :, None], self.rx[idx][:, None, :], out=ramp)
            for k in range(modes):
                pr, chi = probes[k, sl], chis[k, sl]
                xp.multiply(ramp, fprobes[k], out=pr)
                self._fft_inplace(pr, inverse=True)  # the probe as each frame sees it (sub-pixel shifted)
                self._windows(xp.multiply, pr, self.obj, idx_h, idx, chi)  # psi = P_j O_j
                self._fft_inplace(chi)  # F psi
            if modes == 1:
                xp.abs(chis[0, sl], out=mag)
            else:  # the modes add incoherently: |F psi| is the root of the summed intensities
                mag.fill(0)
                for k in range(modes):
                    xp.abs(chis[k, sl], out=real)
                    real *= real
                    mag += real
                xp.sqrt(mag, out=mag)
            xp.take(self.amp, idx, axis=0, out=amp)
            if self.params.likelihood == "poisson":
                xp.subtract(mag, amp, out=real)
                err += self._rdot(real, real).sum(dtype=np.float64)
                # half a gradient step of the Poisson likelihood: F psi (I / |F psi|^2 - 1) / 2, bounded
                xp.square(mag, out=mag)
                xp.maximum(mag, 1e-12, out=mag)
                xp.square(amp, out=amp)
                xp.divide(amp, mag, out=mag)
                mag -= 1
                mag *= 0.5
                xp.minimum(mag, self.params.poisson_cap, out=mag)
            else:
                # F chi = F psi (amp / |F psi| - 1), so sum over modes |F chi|^2 = (|F psi| - amp)^2: the misfit
                xp.maximum(mag, 1e-12, out=mag)
                xp.divide(amp, mag, out=mag)
                mag -= 1
            wj = weights[idx_h]
            if (wj != 1).any():
                mag *= xp.asarray(wj.astype(np.float32))[:, None, None]
            if want_probe:
                self._windows(xp.abs, None, self.obj, idx_h, idx, real)
                real *= real
                o2 += real.sum(axis=0)
            for k in range(modes):
                pr, chi = probes[k, sl], chis[k, sl]
                chi *= mag
                if self.params.likelihood != "poisson":
                    err += self._rdot(chi, chi).sum(dtype=np.float64)
                self._fft_inplace(chi, inverse=True)  # chi = P_M(psi) - psi
                # conj(chi) serves both sums: P_j conj(chi_j) is the conjugate of the object numerator P_j* chi_j
                # (the grid is conjugated once per batch), O_j conj(chi_j) that of the probe's
                xp.conjugate(chi, out=tmp)
                xp.abs(pr, out=real)
                real *= real
                if want_probe:
                    u = w["tmp2"]
                    self._windows(xp.multiply, tmp, self.obj, idx_h, idx, u)
                tmp *= pr
                with self._lock:
                    self._scatter(self._num, idx, tmp)
                    self._scatter(self._ill, idx, real)
                if want_probe:
                    # sum_j F(O_j* chi_j) conj(ramp_j) = conj(sum_j F^-1(O_j conj(chi_j)) ramp_j)  (orthonormal FFTs)
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
            a, b = w["tmp"], w["tmp2"]
            dots = None
            for k in range(self._n_modes()):
                pr, chi = probes[k, sl], chis[k, sl]
                self._windows(xp.multiply, pr, self._num, idx_h, idx, a)
                d = [self._rdot(a, a), self._rdot(a, chi)]
                if d_probe is not None:
                    self._windows(xp.multiply, d_probe[k][None], self.obj, idx_h, idx, b)
                    d += [self._rdot(b, b), self._rdot(a, b), self._rdot(b, chi)]
                dots = d if dots is None else [x + y for x, y in zip(dots, d, strict=True)]
                # the object update's numerator P_j* chi_j, in the probes' place (not needed again)
                xp.conjugate(pr, out=pr)
                pr *= chi
                if k == 0 and self._grads is not None:
                    # position: Re<P_j g, chi_j> = Re<g, P_j* chi_j> for g = dO/dy, dO/dx; window dots, nothing written
                    self._pos_dots[idx_h] += np.stack([self._window_dots(g, pr, idx_h, idx) for g in self._grads], axis=1)
            out.append(dots)
        return [xp.concatenate(d) for d in zip(*out, strict=True)]

    def _steps(self, aa, ac, bb=None, ab=None, bc=None):
        """Per frame, the real steps (alpha_o, alpha_p) minimising |chi - alpha_o a - alpha_p b|^2."""
        xp, lam, top = self.xp, self.params.step_reg, self.params.max_step
        aa = aa + lam * aa.mean() + 1e-30
        if bb is None:
            return xp.clip(ac / aa, 0, top), None
        bb = bb + lam * bb.mean() + 1e-30
        det = aa * bb - ab**2
        return xp.clip((bb * ac - ab * bc) / det, 0, top), xp.clip((aa * bc - ab * ac) / det, 0, top)

    def _apply(self, batch, slot, alpha_o) -> None:
        """The object update: each frame's P_j* chi_j / illumination (summed over modes), scaled by its own step."""
        pchi = self._store[0]
        for sl, idx_h, idx in self._chunks(batch, slot):
            real = self._work(len(idx_h))["real"]
            self._gather(self._ill, idx_h, idx, real)
            real *= alpha_o[sl][:, None, None]
            u = pchi[0, sl]
            for k in range(1, self._n_modes()):
                u += pchi[k, sl]
            u *= real
            with self._lock:
                self._scatter(self.obj, idx, u)

    # ------------------------------------------------------------- helpers
    def _fft_inplace(self, a, inverse: bool = False) -> None:
        """2-D FFT (orthonormal) of each frame of ``a``, written back into ``a``."""
        fn = self.fft.ifft2 if inverse else self.fft.fft2
        r = fn(a, axes=(-2, -1), norm="ortho", overwrite_x=True, **getattr(self._tls, "fft_kw", self.fft_kw))
        if _address(r) != _address(a):
            a[...] = r

    def _windows(self, fn, a, grid, idx_h, idx, out) -> None:
        """out[k] = fn(a[k], window of frame k on the grid), or fn(window) if ``a`` is None; ``a`` may
        have one frame for all. Window by window on numpy: no copies of the windows."""
        if self.xp is np:
            n, one = self.n, a is not None and len(a) == 1
            for k, j in enumerate(idx_h):
                y, x = self.iy_np[j], self.ix_np[j]
                win = grid[y : y + n, x : x + n]
                if a is None:
                    fn(win, out=out[k])
                else:
                    fn(a[0 if one else k], win, out=out[k])
        else:
            rows, cols = self._index(idx)
            win = grid[rows, cols]
            if a is None:
                fn(win, out=out)
            else:
                fn(a, win, out=out)

    def _window_dots(self, grid, a, idx_h, idx) -> np.ndarray:
        """Per frame k, Re sum conj(window of frame k on the grid) a[k] (``a`` may have one frame for all), as
        a host array; on numpy straight from the windows, as float views, without copies."""
        xp, n = self.xp, self.n
        if xp is np:
            one, w = len(a) == 1, 2 if grid.dtype.kind == "c" else 1
            gv, av = (grid.view(np.float32), a.view(np.float32)) if w == 2 else (grid, a)
            out = np.empty(len(idx_h))
            for k, j in enumerate(idx_h):
                y, x = self.iy_np[j], self.ix_np[j]
                out[k] = np.einsum("ij,ij->", gv[y : y + n, w * x : w * (x + n)], av[0 if one else k])
            return out
        rows, cols = self._index(idx)
        return asnumpy((xp.conj(grid[rows, cols]) * a).real.sum(axis=(-2, -1)))

    def _gather(self, array, idx_h, idx, out) -> None:
        """out[k] = array[window of frame idx[k]]."""
        if self.xp is np:
            n = self.n
            for k, j in enumerate(idx_h):
                y, x = self.iy_np[j], self.ix_np[j]
                out[k] = array[y : y + n, x : x + n]
        else:
            rows, cols = self._index(idx)
            out[...] = array[rows, cols]


def _address(a) -> int:
    return a.data.ptr if hasattr(a.data, "ptr") else a.__array_interface__["data"][0]


# ------------------------------------------------------------------ DM and RAAR
class ProjectionParams(EngineParams):
    chunk: int = Field(128, ge=1, description="frames per vectorised chunk (memory against speed)")
    overlap_loops: int = Field(2, ge=1, description="object/probe alternations in each overlap projection")
    probe_support: float = Field(0.8, ge=0, le=1.5, description="probe confined to this fraction of the window radius (0: none)")
    reg: float = Field(0.01, gt=0, description="inertia of object and probe in the overlap projection, relative to the peak illumination")


class _Projection(Engine):
    """Engines that keep one exit wave per frame and alternate the modulus and overlap projections."""

    Params = ProjectionParams

    def _support(self):
        if getattr(self, "_support_mask", None) is None:
            y, x = np.indices((self.n, self.n)) - (self.n - 1) / 2
            mask = np.hypot(y, x) <= self.params.probe_support * self.n / 2
            self._support_mask = self.xp.asarray(mask.astype(np.float32))
        return self._support_mask

    def _prepare(self) -> None:
        xp, n = self.xp, self.n
        self.psi = xp.empty((len(self.ix_np), n, n), np.complex64)
        self.psi_ready = np.zeros(len(self.ix_np), bool)

    def _rephase_waves(self, factors) -> None:
        self.psi *= factors[:, None, None]
        if getattr(self, "reflected", None) is not None:
            self.reflected *= factors[:, None, None]

    def _chunks(self, active, fn) -> list:
        """``fn(idx)`` on chunks of the frames, spread over the threads (each chunk's waves are its own)."""
        parts = [self.xp.asarray(active[i : i + self.params.chunk]) for i in range(0, len(active), self.params.chunk)]
        return self._map(fn, parts)

    def _views(self, idx):
        return self._probes(idx) * self._patches(self.obj, idx)

    def _seed(self, active) -> None:
        """Exit waves of frames seen for the first time start from the current estimate."""
        fresh = active[~self.psi_ready[active]]

        def seed(idx):
            self.psi[idx] = self._views(idx)

        self._chunks(fresh, seed)
        self.psi_ready[fresh] = True

    def _overlap(self, active, target) -> None:
        """Object and probe that best explain the waves ``target(idx)`` (least squares, alternating)."""
        xp, p = self.xp, self.params
        update_probe = self.iteration >= p.probe_update_start

        def object_terms(idx):
            num, illum = xp.zeros_like(self.obj), xp.zeros(self.obj.shape, np.float32)
            probes = self._probes(idx)
            w = self.weights[idx][:, None, None]
            self._scatter(num, idx, w * probes.conj() * target(idx))
            self._scatter(illum, idx, w * (probes.real**2 + probes.imag**2))
            return num, illum

        def probe_terms(idx):
            patches = self._patches(self.obj, idx)
            w = self.weights[idx][:, None, None]
            return self._unshift_sum(w * patches.conj() * target(idx), idx), (w * (patches.real**2 + patches.imag**2)).sum(axis=0)

        for _ in range(p.overlap_loops if update_probe else 1):
            parts = self._chunks(active, object_terms)
            num, illum = sum(a for a, _ in parts), sum(b for _, b in parts)
            mu = p.reg * illum.max()  # Tikhonov towards the current estimate: no drift where coverage is thin
            self.obj = (num + mu * self.obj) / (illum + mu)
            if not update_probe:
                break
            parts = self._chunks(active, probe_terms)
            pnum, pden = sum(a for a, _ in parts), sum(b for _, b in parts)
            mu = p.reg * pden.max()
            self.probe = (pnum + mu * self.probe) / (pden + mu)
            if p.probe_support:
                self.probe *= self._support()


@register
class DM(_Projection):
    """Difference map (Thibault et al., Ultramicroscopy 109, 2009): psi += P_M(2 P_O psi - psi) - P_O psi."""

    name = "dm"

    def _iterate(self, active: np.ndarray) -> float:
        self._seed(active)
        self._overlap(active, lambda idx: self.psi[idx])
        a = self.params.alpha

        def update(idx):
            z = self._views(idx)
            err = self._misfit(z, idx)  # of the estimate, not of the reflected point DM iterates on
            m, _ = self._modulus((1 + a) * z - a * self.psi[idx], idx)
            self.psi[idx] += m - z
            return err

        return sum(self._chunks(active, update))


class DMParams(ProjectionParams):
    alpha: float = Field(1.0, ge=0, le=1, description="1: the difference map; smaller damps it towards alternating projections (PtyPy's alpha)")


DM.Params = DMParams


class RAARParams(ProjectionParams):
    beta: float = Field(0.6, gt=0, le=1, description="relaxation; 1 is the difference map (SHARP's default 0.6)")


@register
class RAAR(_Projection):
    """RAAR (Luke, Inverse Problems 21, 2005): psi <- beta (psi + P_O(2 P_M psi - psi) - P_M psi) + (1 - beta) P_M psi."""

    name = "raar"
    Params = RAARParams

    def _iterate(self, active: np.ndarray) -> float:
        # with m = P_M psi and r = 2 m - psi, the update is psi <- m + beta (P_O r - r)
        if getattr(self, "reflected", None) is None:
            self.reflected = self.xp.empty_like(self.psi)
        self._seed(active)

        def project(idx):
            m, err = self._modulus(self.psi[idx], idx)
            self.reflected[idx] = 2 * m - self.psi[idx]
            self.psi[idx] = m
            return err

        def relax(idx):
            self.psi[idx] += self.params.beta * (self._views(idx) - self.reflected[idx])

        err = sum(self._chunks(active, project))
        self._overlap(active, lambda idx: self.reflected[idx])
        self._chunks(active, relax)
        return err
