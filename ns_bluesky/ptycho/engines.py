"""Reconstruction engines (so far rPIE/ePIE; RAAR, DM and LSQ-ML to come) with PtyPy's shape (prepare / iterate / finalize) and pty-chi's
separation of data (:class:`PtychoData`), parameters (pydantic, per engine) and engine.

Every frame carries a weight: 0 until it has arrived (SHARP's streaming trick), so an
engine iterates on "all frames so far" and frames join while it runs
(:meth:`Engine.add_frames`). Positions are sub-pixel: the probe is shifted by the
fractional part with a Fourier phase ramp, never rounded. Every iteration records the
Fourier-space data residual.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ParameterError


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


_ENGINES: dict[str, type[Engine]] = {}


def register(cls):
    _ENGINES[cls.name] = cls
    return cls


def engine(name: str, **params) -> Engine:
    if name not in _ENGINES:
        raise ParameterError(f"unknown engine {name!r}; known: {', '.join(sorted(_ENGINES))}")
    cls = _ENGINES[name]
    return cls(cls.Params(**params))


@dataclass
class _State:
    obj: np.ndarray
    probe: np.ndarray
    amp: np.ndarray  # sqrt(intensity), FFT order
    iy: np.ndarray
    ix: np.ndarray
    ramps: np.ndarray  # (N, n, n) sub-pixel shift ramps for the probe
    weights: np.ndarray
    residuals: list = field(default_factory=list)


class Engine:
    """Public methods do the bookkeeping; subclasses implement ``_iterate`` (one pass over the frames)."""

    name: ClassVar[str]
    Params: ClassVar[type[EngineParams]] = EngineParams

    def __init__(self, params: EngineParams | None = None):
        self.params = params or self.Params()
        self.iteration = 0
        self.s: _State | None = None

    def prepare(self, data: PtychoData, probe: np.ndarray, obj: np.ndarray | None = None) -> None:
        patterns = np.asarray(data.patterns, dtype=np.float32)
        n = patterns.shape[-1]
        if probe.shape != (n, n):
            raise ParameterError(f"probe must be {n} x {n} like the patterns, got {probe.shape}")
        origins = np.asarray(data.origins_px, dtype=np.float64)
        if origins.min() < 0:
            raise ParameterError("origins_px must be >= 0: shift the positions so the object grid holds them")
        shape = tuple(int(np.ceil(v)) + n + 1 for v in origins.max(axis=0))
        if obj is None:
            obj = np.ones(shape, np.complex64)
        elif obj.shape[0] < shape[0] or obj.shape[1] < shape[1]:
            raise ParameterError(f"object {obj.shape} is too small for the positions (needs {shape})")
        iy, ix = np.floor(origins).astype(int).T
        fy, fx = (origins - np.floor(origins)).T
        k = np.fft.fftfreq(n)
        ramps = np.exp(-2j * np.pi * (fy[:, None, None] * k[None, :, None] + fx[:, None, None] * k[None, None, :]))
        amp = np.fft.ifftshift(np.sqrt(np.maximum(patterns, 0)), axes=(-2, -1))
        self.s = _State(obj.astype(np.complex64), probe.astype(np.complex64), amp, iy, ix, ramps.astype(np.complex64),
                        np.asarray(data.weights, np.float32).copy())
        self._prepare()

    def add_frames(self, indices, patterns=None) -> None:
        """Frames that arrived: weight 1 (and their data, if not given at prepare)."""
        idx = np.atleast_1d(indices)
        if patterns is not None:
            self.s.amp[idx] = np.fft.ifftshift(np.sqrt(np.maximum(np.asarray(patterns, np.float32), 0)), axes=(-2, -1))
        self.s.weights[idx] = 1.0

    def iterate(self, n: int = 1) -> list[float]:
        """Run ``n`` iterations; returns the data residual of each (0 frames: nothing to fit, residual nan)."""
        if self.s is None:
            raise RuntimeError("prepare() first")
        out = []
        for _ in range(n):
            res = self._iterate() if self.s.weights.sum() > 0 else float("nan")
            self.iteration += 1
            self.s.residuals.append(res)
            out.append(res)
        return out

    def finalize(self) -> tuple[np.ndarray, np.ndarray, list[float]]:
        return self.s.obj, self.s.probe, list(self.s.residuals)

    # helpers shared by the engines ------------------------------------------------
    def _probe_at(self, j: int) -> np.ndarray:
        return np.fft.ifft2(np.fft.fft2(self.s.probe) * self.s.ramps[j])

    def _patch(self, j: int) -> tuple[slice, slice]:
        n = self.s.probe.shape[0]
        return slice(self.s.iy[j], self.s.iy[j] + n), slice(self.s.ix[j], self.s.ix[j] + n)

    def _modulus(self, psi: np.ndarray, j: int) -> tuple[np.ndarray, float]:
        """Fourier-modulus projection of one exit wave, and its squared amplitude misfit."""
        f = np.fft.fft2(psi, norm="ortho")
        mag = np.abs(f)
        err = float(((mag - self.s.amp[j]) ** 2).sum())
        return np.fft.ifft2(self.s.amp[j] * f / np.maximum(mag, 1e-12), norm="ortho"), err

    def _residual_norm(self) -> float:
        w = self.s.weights > 0
        return float((self.s.amp[w] ** 2).sum())

    def _prepare(self) -> None:
        pass

    def _iterate(self) -> float:
        raise NotImplementedError


class RPIEParams(EngineParams):
    alpha: float = Field(0.1, gt=0, le=1, description="rPIE object regularisation (1: ePIE)")
    probe_alpha: float = Field(1.0, gt=0, le=1, description="the same for the probe update")
    probe_step: float = Field(1.0, gt=0, le=1)
    seed: int = 0


@register
class RPIE(Engine):
    """rPIE (Maiden et al., Optica 4, 2017): frame-by-frame object and probe updates."""

    name = "rpie"
    Params = RPIEParams

    def _iterate(self) -> float:
        s, p = self.s, self.params
        rng = np.random.default_rng([p.seed, self.iteration])
        err = 0.0
        update_probe = self.iteration >= p.probe_update_start
        for j in rng.permutation(np.flatnonzero(s.weights > 0)):
            sl = self._patch(j)
            probe = self._probe_at(j)
            o = s.obj[sl]
            psi = probe * o
            new, e = self._modulus(psi, j)
            err += e
            d = (new - psi) * s.weights[j]
            p2 = np.abs(probe) ** 2
            s.obj[sl] = o + np.conj(probe) * d / ((1 - p.alpha) * p2 + p.alpha * p2.max())
            if update_probe:
                o2 = np.abs(o) ** 2
                dp = p.probe_step * np.conj(o) * d / ((1 - p.probe_alpha) * o2 + p.probe_alpha * o2.max())
                s.probe = s.probe + np.fft.ifft2(np.fft.fft2(dp) * np.conj(s.ramps[j]))
        return float(np.sqrt(err / max(self._residual_norm(), 1e-30)))


class EPIEParams(RPIEParams):
    alpha: float = Field(1.0, gt=0, le=1, description="1: the plain ePIE update (Maiden & Rodenburg 2009)")


@register
class EPIE(RPIE):
    """ePIE: rPIE with alpha = 1."""

    name = "epie"
    Params = EPIEParams
