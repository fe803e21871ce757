"""Engines that keep one exit wave per frame and alternate the modulus and overlap projections: the
difference map (DM; Thibault et al. 2009) and RAAR (Luke 2005), both on all exit waves at once, with the
object and probe solved jointly in the overlap projection."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from .base import Engine, EngineParams, register


class ProjectionParams(EngineParams):
    """Options of the projection engines (each engine's own add to these)."""

    chunk: int = Field(128, ge=1, description="frames per vectorised chunk (memory against speed)")
    overlap_loops: int = Field(2, ge=1, description="object/probe alternations in each overlap projection")
    probe_support: float = Field(0.8, ge=0, le=1.5, description="probe confined to this fraction of the window radius (0: none)")
    reg: float = Field(0.01, gt=0, description="inertia of object and probe in the overlap projection, relative to the peak illumination")


class _Projection(Engine):
    """Engines that keep one exit wave per frame and alternate the modulus and overlap projections."""

    Params = ProjectionParams

    def __init__(self, params: ProjectionParams | None = None):
        super().__init__(params)
        self.psi = None  # (N, n, n) the exit waves
        self.psi_ready: np.ndarray | None = None  # (N,) whether a frame's wave has been seeded
        self.support = None  # (n, n) the probe's support (probe_support > 0)

    def _prepare(self) -> None:
        xp, n = self.xp, self.n
        self.psi = xp.empty((len(self.origins), n, n), np.complex64)
        self.psi_ready = np.zeros(len(self.origins), bool)
        if self.params.probe_support:
            y, x = np.indices((n, n)) - (n - 1) / 2
            self.support = xp.asarray((np.hypot(y, x) <= self.params.probe_support * n / 2).astype(np.float32))

    def _frames_moved(self, host: np.ndarray) -> None:
        self.psi_ready[host] = False  # their exit waves start again

    def _rephase_waves(self, factors) -> None:
        self.psi *= factors[:, None, None]

    def _chunks(self, active, fn) -> list:
        """``fn(idx)`` on chunks of the frames, spread over the threads (each chunk's waves are its own)."""
        parts = [self.xp.asarray(active[i : i + self.params.chunk]) for i in range(0, len(active), self.params.chunk)]
        return self._map(fn, parts)

    def _views(self, idx):
        return self._probes(idx) * self.win.patches(self.obj, idx)

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
            self.win.scatter_add(num, idx, w * probes.conj() * target(idx))
            self.win.scatter_add(illum, idx, w * (probes.real**2 + probes.imag**2))
            return num, illum

        def probe_terms(idx):
            # numerator and denominator both in the probe's frame: each frame's sum is unshifted by its sub-pixel
            # position. (The denominator was summed in the windows' frame, up to a pixel off the numerator: the
            # difference map's reflection amplified that misfit into a probe that grew without bound on
            # noise-free data with sub-pixel positions, residual 0.004 -> 1e6 in 20 iterations.)
            patches = self.win.patches(self.obj, idx)
            w = self.weights[idx][:, None, None]
            ramps = self._ramps(idx)
            o2 = (w * (patches.real**2 + patches.imag**2)).astype(np.complex64)
            den = xp.maximum(self._unshift_sum(o2, idx, ramps).real, 0)  # the shift rings a little below 0
            return self._unshift_sum(w * patches.conj() * target(idx), idx, ramps), den

        for _ in range(p.overlap_loops if update_probe else 1):
            # a rank without frames adds zeros: the sums are reduced over the ranks, overlaps seeing every frame
            parts = self._chunks(active, object_terms)
            num = sum((a for a, _ in parts), xp.zeros_like(self.obj))
            illum = sum((b for _, b in parts), xp.zeros(self.obj.shape, np.float32))
            illum_max = self._reduce(num, illum)[1]
            mu = p.reg * illum_max  # Tikhonov towards the current estimate: no drift where coverage is thin
            self.obj = (num + mu * self.obj) / (illum + mu)
            if not update_probe:
                break
            parts = self._chunks(active, probe_terms)
            pnum = sum((a for a, _ in parts), xp.zeros((self.n, self.n), np.complex64))
            pden = sum((b for _, b in parts), xp.zeros((self.n, self.n), np.float32))
            self._reduce(pnum, pden)
            mu = p.reg * pden.max()
            self.probe = (pnum + mu * self.probe) / (pden + mu)
            if p.probe_support:
                self.probe *= self.support


class DMParams(ProjectionParams):
    alpha: float = Field(1.0, ge=0, le=1, description="1: the difference map; smaller damps it towards alternating projections (PtyPy's alpha)")


@register
class DM(_Projection):
    """Difference map (Thibault et al., Ultramicroscopy 109, 2009): psi += P_M(2 P_O psi - psi) - P_O psi."""

    name = "dm"
    Params = DMParams

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


class RAARParams(ProjectionParams):
    beta: float = Field(0.6, gt=0, le=1, description="relaxation; 1 is the difference map (SHARP's default 0.6)")


@register
class RAAR(_Projection):
    """RAAR (Luke, Inverse Problems 21, 2005): psi <- beta (psi + P_O(2 P_M psi - psi) - P_M psi) + (1 - beta) P_M psi."""

    name = "raar"
    Params = RAARParams

    def __init__(self, params: RAARParams | None = None):
        super().__init__(params)
        self.reflected = None  # (N, n, n) 2 P_M psi - psi

    def _prepare(self) -> None:
        super()._prepare()
        self.reflected = self.xp.empty_like(self.psi)

    def _rephase_waves(self, factors) -> None:
        super()._rephase_waves(factors)
        self.reflected *= factors[:, None, None]

    def _iterate(self, active: np.ndarray) -> float:
        # with m = P_M psi and r = 2 m - psi, the update is psi <- m + beta (P_O r - r)
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
