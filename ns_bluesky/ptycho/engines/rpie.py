"""rPIE and ePIE: frame-by-frame object and probe updates."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from .base import Engine, EngineParams, register


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
        p = self.params
        rng = np.random.default_rng([p.seed, self.iteration])
        err = 0.0
        update_probe = self.iteration >= p.probe_update_start
        with self._serial_ffts():  # one 2-D FFT at a time
            for j in rng.permutation(active):
                err += self._update_frame(int(j), update_probe)
        return err

    def _update_frame(self, j: int, update_probe: bool) -> float:
        xp, p = self.xp, self.params
        sl = self.win.slices(j)
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
