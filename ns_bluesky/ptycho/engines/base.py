"""The engine base, :class:`Engine`: PtyPy's shape (:meth:`~Engine.prepare`, :meth:`~Engine.iterate`,
:meth:`~Engine.finalize`) over hooks an engine fills (``_prepare``, ``_iterate``, and ``_frames_moved`` /
``_rephase_waves`` where it keeps per-frame state); its options, :class:`EngineParams`; and the registry
of engines by name (:func:`register`, :func:`engine`, :func:`engine_names`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from types import ModuleType
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ...errors import ParameterError
from ..backend import Arrays, Windows, arrays, asnumpy
from .comm import Communicator, SerialComm
from .data import PtychoData


class EngineParams(BaseModel):
    """Options every engine takes; an engine's own options subclass these, next to it (unknown ones are refused)."""

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


def register(cls: type[Engine]) -> type[Engine]:
    """Class decorator: the engine is made by :func:`engine` under its ``name``."""
    _ENGINES[cls.name] = cls
    return cls


def engine(name: str, **params) -> Engine:
    """The engine ``name`` with its options ``params`` (checked by its ``Params`` model)."""
    if name not in _ENGINES:
        raise ParameterError(f"unknown engine {name!r}; known: {', '.join(sorted(_ENGINES))}")
    cls = _ENGINES[name]
    return cls(cls.Params(**params))


def engine_names() -> list[str]:
    return sorted(_ENGINES)


def _shift_ramps(xp, frac: np.ndarray, n: int) -> tuple:
    """Fourier ramps along the rows and the columns that shift by ``frac`` (B, 2) pixels: (B, n) each."""
    k = np.fft.fftfreq(n)
    return tuple(xp.asarray(np.exp(-2j * np.pi * frac[:, a : a + 1] * k[None, :]).astype(np.complex64)) for a in (0, 1))


_DOT_PIECE = 8192  # floats per BLAS dot in Engine._rdot: under OpenBLAS's threading threshold (10000)


def outer_ramps(xp, ry, rx, out=None):
    """Each frame's 2-D Fourier ramp, the outer product of its row and column ramps ``ry``, ``rx`` (B, n):
    (B, n, n) complex64, into ``out`` where given.

    Written as one batched real matrix product, [Re ry, Im ry] (n x 2) times [[Re rx, Im rx], [-Im rx, Re rx]]
    interleaved (2 x 2n), into the output's float view: numpy's complex product of broadcast operands
    (``ry[:, :, None] * rx[:, None, :]``) runs its inner loop one 128-element row at a time, 3-4 times slower."""
    b, n = ry.shape
    left = xp.stack([ry.real, ry.imag], axis=-1)  # (B, n, 2)
    right = xp.empty((b, 2, n, 2), np.float32)
    right[:, 0, :, 0] = rx.real
    right[:, 0, :, 1] = rx.imag
    right[:, 1, :, 0] = -rx.imag
    right[:, 1, :, 1] = rx.real
    if out is None:
        out = xp.empty((b, n, n), np.complex64)
    xp.matmul(left, right.reshape(b, 2, 2 * n), out=out.view(np.float32))
    return out


def _centre_of_mass(power, xp) -> np.ndarray:
    """(row, col) centre of an intensity in FFT order, in signed frequency pixels."""
    k = xp.asarray(np.fft.fftfreq(power.shape[-1]) * power.shape[-1], dtype=np.float32)
    total = float(power.sum())
    return np.array([float((power.sum(axis=1) * k).sum()), float((power.sum(axis=0) * k).sum())]) / max(total, 1e-30)


def _fft_order_counts(patterns: np.ndarray) -> np.ndarray:
    """``ifftshift(max(patterns, 0))`` over the last two axes, written straight into one new array.

    A streaming reconstruction prepares the whole scan's slots at its first frame; the temporaries of
    ``ifftshift(sqrt(max(p, 0)))`` and the two sums beside it were six frame-stack-sized arrays whose fresh
    memory's page faults made most of that set-up (1600 x 128²: 1.6 s of 2 s on a loaded machine)."""
    out = np.empty(patterns.shape, np.float32)
    (n0, n1), (h0, h1) = patterns.shape[-2:], (patterns.shape[-2] // 2, patterns.shape[-1] // 2)
    # ifftshift: out[i] = p[(i + n // 2) % n] along each axis
    for (o0, p0), (o1, p1) in (
        ((slice(0, n0 - h0), slice(h0, n0)), (slice(0, n1 - h1), slice(h1, n1))),
        ((slice(0, n0 - h0), slice(h0, n0)), (slice(n1 - h1, n1), slice(0, h1))),
        ((slice(n0 - h0, n0), slice(0, h0)), (slice(0, n1 - h1), slice(h1, n1))),
        ((slice(n0 - h0, n0), slice(0, h0)), (slice(n1 - h1, n1), slice(0, h1))),
    ):
        np.maximum(patterns[..., p0, p1], 0, out=out[..., o0, o1])
    return out


def empty_slots(frames: int, n: int) -> np.ndarray:
    """``frames`` empty (n, n) patterns without memory of their own: what a streaming reconstruction prepares
    its engine with before the frames arrive (:meth:`Engine.prepare` then makes no pass over them)."""
    return np.broadcast_to(np.zeros((1, n, n), np.float32), (frames, n, n))


def _empty_slots(patterns: np.ndarray) -> bool:
    """Whether ``patterns`` is one zero frame broadcast over every slot (:func:`empty_slots`)."""
    return patterns.ndim == 3 and len(patterns) > 0 and patterns.strides[0] == 0 and not patterns[0].any()


def _floats(a: np.ndarray) -> np.ndarray:
    """A flat float view (or copy) of ``a``: complex64 as pairs of float32."""
    a = np.ascontiguousarray(a)
    return a.view(np.float32).ravel() if a.dtype == np.complex64 else a.ravel()


class Engine:
    """Public methods do the bookkeeping; subclasses implement ``_iterate`` (one pass over the frames) and,
    for state of their own, ``_prepare`` (declared as None in their ``__init__``)."""

    name: ClassVar[str]
    Params: ClassVar[type[EngineParams]] = EngineParams

    def __init__(self, params: EngineParams | None = None):
        self.params = params or self.Params()
        self._tls = threading.local()  # per thread: its FFT keywords (and an engine's scratch buffers)
        self.threads = max(1, min(self.params.threads or (os.cpu_count() or 1), 16))
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self.iteration = 0
        self.data_changed_at = 0
        self._added = 0  # frames added since the schedule last restarted
        self.residuals: list[float] = []
        # called between mini-batches: a streaming reconstruction publishes its estimate on time even when
        # one pass over many frames takes longer than the screens may wait
        self.on_batch: Callable[[], None] | None = None
        # the estimate, from prepare on
        self.obj = self.probe = None
        self.modes = None  # further incoherent probe modes (K - 1, n, n), for engines that fit a mixed state
        # the data and where it was measured, from prepare on
        self.arrays: Arrays | None = None  # the backend's array namespace
        self.xp: ModuleType | None = None  # and its array module
        self.n = 0  # frame size
        self.origins: np.ndarray | None = None  # (N, 2) probe-window origins, object pixels (row, col)
        self.win: Windows | None = None  # the frames' windows on the object grid, at the origins' whole pixels
        self.ry = self.rx = None  # (N, n) Fourier ramps that shift the probe by each frame's fractional pixels
        self.amp = None  # (N, n, n) measured amplitudes, FFT order
        self.weights = None  # (N,) 0 until a frame has arrived
        self.arrived: np.ndarray | None = None  # (N,) the iteration each frame joined
        self.energy: np.ndarray | None = None  # (N,) sum I per frame, for the residual
        self._pattern_sum: np.ndarray | None = None  # sum of the arrived patterns
        self.data_centre: np.ndarray | None = None  # its centre of mass: where the probe's far field belongs
        # split over ranks (:mod:`.split`): this rank's frames on a part of the object grid whose corner is at
        # ``offset`` on the whole grid; sums over frames and the object's overlaps are reduced with ``comm``
        self.comm: Communicator = SerialComm()
        self.offset = np.zeros(2, np.int64)
        self._active_total = 0  # frames in the fit over all ranks, this iteration
        self.neighbours: dict[int, tuple[slice, slice]] = {}  # rank -> where its part overlaps this rank's, local

    # ------------------------------------------------------------------ public
    def prepare(self, data: PtychoData, probe: np.ndarray, obj: np.ndarray | None = None) -> None:
        self.arrays = arrays(self.params.backend)
        xp = self.xp = self.arrays.xp
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
        self.win = self.arrays.windows(whole, n)
        self.ry, self.rx = _shift_ramps(xp, origins - whole, n)
        if _empty_slots(patterns):
            # a streaming reconstruction's slots, before their frames arrive: no pass over them (the zeros are
            # mapped lazily; add_frames writes each frame's own): 0.77 of 1.0 s of the first live image's set-up
            # on a loaded machine went into passes over 1600 x 128² zeros
            self.energy = np.zeros(len(patterns))
            self._pattern_sum = np.zeros((n, n))
            self.amp = xp.zeros(patterns.shape, np.float32)
        else:
            amp = _fft_order_counts(patterns)
            self.energy = amp.sum(axis=(-2, -1), dtype=np.float64)  # sum I per frame, for the residual
            self._pattern_sum = np.fft.fftshift(amp.sum(axis=0, dtype=np.float64))
            self.amp = xp.asarray(np.sqrt(amp, out=amp))
            del amp
        self.origins = origins
        self.weights = xp.asarray(np.asarray(data.weights, np.float32).copy())
        self.arrived = np.where(np.asarray(data.weights) > 0, 0, np.iinfo(np.int64).max // 2)  # iteration each frame joined
        self.obj = xp.asarray(obj.astype(np.complex64))
        self.probe = xp.asarray(probe.astype(np.complex64))
        self._reduce(self._pattern_sum)  # every rank's frames: the probe is centred on all the data
        self.data_centre = _centre_of_mass(np.fft.ifftshift(self._pattern_sum), np)  # FFT order, like the probe's far field
        self._prepare()

    def add_frames(self, indices, patterns=None, origins_px=None) -> None:
        """Frames that arrived: weight 1, their data (if not given at prepare) and where they were measured
        (``origins_px``, when the stage's reading differs from the plan the grid was laid out for)."""
        xp = self.xp
        host = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        idx = xp.asarray(host)
        if patterns is not None:
            counts = _fft_order_counts(np.asarray(patterns, np.float32))
            self.energy[host] = counts.sum(axis=(-2, -1), dtype=np.float64)
            self.amp[idx] = xp.asarray(np.sqrt(counts, out=counts))
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
        self.origins[host] = origins
        self.win.move(host, whole)
        self.ry[xp.asarray(host)], self.rx[xp.asarray(host)] = _shift_ramps(xp, origins - whole, n)
        self._frames_moved(host)

    def iterate(self, n: int = 1) -> list[float]:
        """Run ``n`` iterations; returns the data residual of each (0 frames: nothing to fit, residual nan)."""
        if self.obj is None:
            raise RuntimeError("prepare() first")
        out = []
        for _ in range(n):
            active = np.flatnonzero(asnumpy(self.weights) > 0)
            # over the ranks: every rank iterates while any has frames (each collective needs them all)
            count, energy = self._sum([len(active), float(self.energy[active].sum())])
            self._active_total = int(count)  # frames in the fit on every rank, for the engines' batch schedules
            if count:
                err = self._sum([self._iterate(active)])[0]
                if self.iteration >= self.params.probe_update_start:
                    self._fix_ambiguities()
                self._share_probe()
                res = err / max(energy, 1e-30)
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
        # on the whole grid's coordinates: a rank's part of the object takes its part of the one ramp
        r0, c0 = (float(v) for v in self.offset)
        self.obj *= ramp(xp.arange(self.obj.shape[0], dtype=np.float64) + r0, xp.arange(self.obj.shape[1], dtype=np.float64) + c0, 1)
        self._rephase_waves(xp.asarray(np.exp(2j * np.pi * ((self.origins + self.offset) @ c) / n).astype(np.complex64)))

    def _far_field_centre(self, probe) -> np.ndarray:
        return _centre_of_mass(self.xp.abs(self._fft2(probe)) ** 2, self.xp)

    # ----------------------------------------------------------- over the ranks
    def _sum(self, values: list[float]) -> list[float]:
        """Scalars summed over the ranks (one reduction for all of them)."""
        if self.comm.size == 1:
            return [float(v) for v in values]
        buf = np.array(values, np.float64)
        self.comm.allreduce(buf)
        return buf.tolist()

    def _reduce(self, *arrays) -> list[float | None]:
        """Each array summed over the ranks, in place. Object-sized ones (this rank's part of the grid,
        ``self.obj.shape``) are summed where the parts overlap only, with each neighbouring rank (SHARP's way:
        a pixel outside every other rank's part has no other rank's frames); small ones (probe-sized, counts)
        in one allreduce. Returns, for each real object-sized array, its maximum over the whole grid (None for
        the others), carried by that same allreduce."""
        on_grid = [self._on_grid(a) for a in arrays]
        real = [g and a.dtype.kind == "f" for g, a in zip(on_grid, arrays, strict=True)]
        if self.comm.size == 1:
            return [float(a.max()) if r else None for a, r in zip(arrays, real, strict=True)]
        host = [asnumpy(a) for a in arrays]
        grids = [h for h, g in zip(host, on_grid, strict=True) if g]
        if grids and self.neighbours:
            # pack before adding anything: every neighbour gets this rank's own sums
            sends = {r: np.concatenate([_floats(g[box]) for g in grids]) for r, box in self.neighbours.items()}
            recvs = {r: np.empty_like(buf) for r, buf in sends.items()}
            self.comm.exchange(sends, recvs)
            for r, box in self.neighbours.items():
                at = 0
                for g in grids:
                    part = g[box]
                    size = part.size * (2 if part.dtype.kind == "c" else 1)
                    got = recvs[r][at : at + size]
                    g[box] += got.view(np.complex64).reshape(part.shape) if part.dtype.kind == "c" else got.reshape(part.shape)
                    at += size
        smalls = [h for h, g in zip(host, on_grid, strict=True) if not g]
        slots = np.zeros((sum(real), self.comm.size))  # each rank's maximum in its own slot: summed, then the max
        slots[:, self.comm.rank] = [float(h.max()) for h, r in zip(host, real, strict=True) if r]
        wide = any(h.dtype == np.float64 for h in smalls) or bool(len(slots))
        buf = np.concatenate([_floats(h).astype(np.float64 if wide else np.float32) for h in smalls]
                             + [slots.ravel().astype(np.float64 if wide else np.float32)])
        if len(buf):
            self.comm.allreduce(buf)
        at, k, maxima = 0, 0, []
        tops = buf[len(buf) - slots.size :].reshape(slots.shape).max(axis=1) if slots.size else []
        for a, h, g, r in zip(arrays, host, on_grid, real, strict=True):
            maxima.append(float(tops[k]) if r else None)
            k += int(r)
            if not g:
                size = h.size * (2 if h.dtype.kind == "c" else 1)
                out = buf[at : at + size].astype(np.float32 if h.dtype == np.complex64 else h.dtype)
                h[...] = out.view(np.complex64).reshape(h.shape) if h.dtype == np.complex64 else out.reshape(h.shape)
                at += size
            if not isinstance(a, np.ndarray):  # a device array: the sums go back onto the device
                a[...] = self.xp.asarray(h)
        return maxima

    @property
    def global_shape(self) -> tuple[int, int]:
        """The whole object grid's shape (this rank's when it is alone)."""
        return getattr(self, "_global_shape", None) or tuple(self.obj.shape)

    @global_shape.setter
    def global_shape(self, shape: tuple[int, int]) -> None:
        self._global_shape = tuple(int(v) for v in shape)

    def _on_grid(self, a) -> bool:
        return a.ndim == 2 and tuple(a.shape) == tuple(self.obj.shape)

    def _share_probe(self) -> None:
        """Every rank takes rank 0's probe (and modes): they are computed from the same reduced sums, but a
        reduction need not give the last bit alike everywhere, and the ranks must not drift apart."""
        if self.comm.size == 1:
            return
        for name in ("probe", "modes"):
            a = getattr(self, name)
            if a is not None:
                host = np.ascontiguousarray(asnumpy(a))
                self.comm.bcast(host)
                setattr(self, name, self.xp.asarray(host))

    # ------------------------------------------------------ hooks for the engines
    def _prepare(self) -> None:
        """The engine's own state, once the data is in."""

    def _iterate(self, active: np.ndarray) -> float:
        """One pass over the ``active`` frames; returns the summed squared amplitude misfit."""
        raise NotImplementedError

    def _frames_moved(self, host: np.ndarray) -> None:
        """Frames ``host`` were moved: engines that keep per-frame state from the old positions drop it."""

    def _rephase_waves(self, factors) -> None:
        """The ambiguity fix moved object and probe: engines that keep exit waves multiply each frame's by
        its factor (N,)."""

    # ----------------------------------------------------- batched array helpers
    def _fft_kw(self) -> dict:
        """This thread's FFT keywords: one worker in a thread of :meth:`_map` or inside :meth:`_serial_ffts`."""
        return getattr(self._tls, "fft_kw", self.arrays.fft_kw)

    def _fft2(self, a):
        return self.arrays.fft2(a, False, self._fft_kw())

    def _ifft2(self, a):
        return self.arrays.fft2(a, True, self._fft_kw())

    @contextmanager
    def _serial_ffts(self):
        """This thread's FFTs on one worker meanwhile: for single small FFTs threads would only add overhead."""
        self._tls.fft_kw = self.arrays.serial_fft_kw
        try:
            yield
        finally:
            self._tls.__dict__.pop("fft_kw", None)

    def _map(self, fn, items: list) -> list:
        """``fn`` on each of the parts of a batch, in threads (numpy releases the GIL in its loops and FFTs):
        the element-wise work, single-threaded in numpy, then uses every core."""
        if len(items) == 1 or self._pool is None:
            return [fn(item) for item in items]

        def run(item):
            self._tls.fft_kw = self.arrays.serial_fft_kw
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
        length = x.size // max(b, 1) * (2 if x.dtype.kind == "c" else 1)
        # a batched matrix product of (1, L) and (L, 1) float views: BLAS dots, 3x faster than einsum here; in
        # pieces of _DOT_PIECE (a frame of 128²: 4), whose sums are added after: OpenBLAS runs a dot of more
        # than 10000 elements on its own threads, which on numpy's side are the engine's threads' cores, and
        # the waking and spinning of its threads cost more than the dot (perf: 2.6 % of an iteration)
        parts = length // _DOT_PIECE if length % _DOT_PIECE == 0 and length > _DOT_PIECE else 1
        xv = x.view(np.float32).reshape(b, parts, 1, -1)
        yv = y.view(np.float32).reshape(b, parts, -1, 1)
        return (xv @ yv).reshape(b, parts).sum(axis=1) if parts > 1 else (xv @ yv).reshape(b)

    def _magnitudes(self, f, idx):
        """|F psi|, the measured amplitudes and the squared misfit between them."""
        mag = self.xp.abs(f)
        amp = self.amp[idx]
        diff = mag - amp
        return mag, amp, float(self.xp.square(diff, out=diff).sum(dtype=np.float64))

    def _misfit(self, psi, idx) -> float:
        return self._magnitudes(self._fft2(psi), idx)[2]
