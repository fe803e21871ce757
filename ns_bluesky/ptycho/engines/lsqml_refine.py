"""What LSQ-ML refines besides the object and the main probe, as functions of arrays: further incoherent
probe modes (a mixed state, Thibault & Menzel 2013), the frames' positions (Odstrčil et al. 2018, sec. 4)
and the object's momentum (after PtychoShelves). :mod:`.lsqml` calls them between its iterations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import asnumpy


# ----------------------------------------------------------------------------------------- probe modes
def start_modes(probe: np.ndarray, count: int, power: float) -> tuple[np.ndarray, np.ndarray]:
    """The main probe and ``count`` further modes from it times low-order polynomials across the beam (x, y,
    xy, x², ...), each with ``power`` of the total; the total power stays the start probe's. Host, complex64."""
    n = probe.shape[-1]
    probe = probe.astype(np.complex128)
    i = np.abs(probe) ** 2
    y, x = np.indices((n, n), dtype=np.float64)
    total = i.sum()
    cy, cx = (i * y).sum() / total, (i * x).sum() / total
    sy = np.sqrt((i * (y - cy) ** 2).sum() / total) + 1e-9
    sx = np.sqrt((i * (x - cx) ** 2).sum() / total) + 1e-9
    u, v = (x - cx) / sx, (y - cy) / sy
    shapes = [u, v, u * v, u**2 - 1, v**2 - 1, u**3 - 3 * u, v**3 - 3 * v]
    modes = []
    for k in range(count):
        m = probe * shapes[k]
        modes.append(m * np.sqrt(power * total / max((np.abs(m) ** 2).sum(), 1e-30)))
    main = (probe * np.sqrt(max(1 - power * len(modes), 0.05))).astype(np.complex64)
    return main, np.stack(modes).astype(np.complex64)


def orthogonal_modes(xp, modes):
    """Unitary mixing of the modes (K, n, n) changes no intensity: the same mixed state in orthogonal modes,
    strongest first (the main probe the strongest), so that power cannot hide in correlated modes."""
    k, n = len(modes), modes.shape[-1]
    m = modes.reshape(k, -1)
    gram = asnumpy(m.conj() @ m.T).astype(np.complex128)  # <m_i, m_j>
    vecs = np.linalg.eigh(gram)[1][:, ::-1]  # strongest first
    # each new mode's phase as that of the old mode it mostly came from: no jumps in the main probe's phase
    overlap = (gram @ vecs).diagonal()  # <m_i, new_i>
    vecs = vecs * (np.conj(overlap) / np.maximum(np.abs(overlap), 1e-300))[None, :]
    return (xp.asarray(vecs.T.astype(np.complex64)) @ m).reshape(-1, n, n)


def drop_weak_modes(xp, probe, modes, min_power: float) -> tuple:
    """(probe, modes) without the further modes below ``min_power`` of the total (modes None when none is
    left); their power goes to the main probe, so the total intensity stays the data's."""
    power = asnumpy(xp.sum(xp.abs(xp.concatenate([probe[None], modes])) ** 2, axis=(-2, -1))).astype(np.float64)
    keep = power[1:] >= min_power * power.sum()
    if keep.all():
        return probe, modes
    probe *= np.float32(np.sqrt(1 + power[1:][~keep].sum() / power[0]))
    return probe, modes[xp.asarray(np.flatnonzero(keep))] if keep.any() else None


@dataclass
class ModeChoice:
    """What the trial of the further probe modes found: the data residual a short fit from the same state leaves
    with them (``with_modes``) and with the main probe alone carrying their power (``one_mode``)."""

    modes: int  # probe modes in the trial, the main one included
    with_modes: float
    one_mode: float
    margin: float  # the modes stay where one mode's residual is over (1 + margin) times theirs
    frames: int
    seconds: float
    decided: bool = True  # False: too few frames, or the time budget held too few iterations; the modes stay
    iterations: int | None = None  # each side's (one rank)

    @property
    def keep(self) -> bool:
        return not self.decided or self.one_mode > (1 + self.margin) * self.with_modes

    def summary(self) -> str:
        if not self.decided:
            return (f"probe modes: {self.modes - 1} further kept, undecided (the trial's {self.seconds:.1f} s held too "
                    f"few iterations or frames to compare: {self.iterations if self.iterations is not None else '-'} "
                    f"iterations on {self.frames} frames)")
        ratio = self.one_mode / max(self.with_modes, 1e-30)
        its = f"{self.iterations} iterations" if self.iterations is not None else "its iterations"
        return (f"probe modes: {self.modes - 1} further {'kept' if self.keep else 'dropped'} (trial, {its} on "
                f"{self.frames} frames: residual {self.with_modes:.4g} with them, {self.one_mode:.4g} with the main "
                f"probe alone, x{ratio:.3f}; {self.seconds:.1f} s)")


# ------------------------------------------------------------------------------------------- positions
def gradient_norms(xp, fft, fft_kw: dict, probe, grads: list, win) -> np.ndarray:
    """(N, 2): |P_j g|^2 for every frame and g = dO/dy, dO/dx, as the correlation of |g|^2 with the probe's
    intensity (the sub-pixel shift left out of this norm), by FFTs over the object grid (``win``: the frames'
    windows on it)."""
    shape, n = grads[0].shape, probe.shape[-1]
    fp = xp.zeros(shape, np.float32)
    fp[:n, :n] = xp.abs(probe) ** 2
    fp = xp.conj(fft.rfft2(fp, **fft_kw))
    out = [win.at_corners(fft.irfft2(fft.rfft2(xp.abs(g) ** 2, **fft_kw) * fp, s=shape, **fft_kw)) for g in grads]
    return asnumpy(xp.stack(out, axis=1)).astype(np.float64)


def position_steps(dots: np.ndarray, norms: np.ndarray, max_step: float, mean=None) -> np.ndarray:
    """(B, 2): each frame's least-squares shift (rows, cols) from its products <P dO/dy, chi>, <P dO/dx, chi>
    over |P dO/dy|^2, |P dO/dx|^2, bounded, less the mean shift (a translation of everything is invisible).
    ``mean(a)``: the mean of the rows of ``a`` over all frames (over every rank's, when split); numpy's by default."""
    mean = mean or (lambda a: a.mean(axis=0))
    step = dots / (norms + 1e-3 * mean(norms) + 1e-30)
    step = np.clip(step, -max_step, max_step)
    step -= mean(step)
    return step


# -------------------------------------------------------------------------------------------- momentum
class Momentum:
    """The object's momentum (after Odstrčil's PtychoShelves): while the last iterations' updates correlate,
    they add up in a velocity, with a friction from how fast the correlation decays."""

    def __init__(self, xp, velocity):
        self.xp = xp
        self.updates: list = []  # the last three updates, normalised
        self.residuals: list[float] = []  # and the residuals after them
        self.velocity = velocity  # zeros like the object at the start

    def step(self, upd, residual: float, rdot):
        """Take this iteration's object update ``upd`` and data residual; the velocity to move the object by
        as well (its gain applied by the caller), or None. ``rdot(x, y)``: per row, Re sum conj(x) y."""
        norm = float(self.xp.sqrt(rdot(upd.reshape(1, -1), upd.reshape(1, -1))[0]))
        self.updates = [*self.updates, upd / max(norm, 1e-30)][-3:]
        self.residuals = [*self.residuals, residual][-3:]
        if len(self.updates) < 3:
            return None
        u2, u1, u0 = self.updates
        corr = [float(rdot(u.reshape(1, -1), u0.reshape(1, -1))[0]) for u in (u1, u2)]
        r2, r1, r0 = self.residuals
        if max(r2, r1) > min(r1, r0) and min(corr) > 0:
            slope = np.polyfit([0, 1, 2], [0, np.log(corr[0]), np.log(corr[1])], 1)[0]
            self.velocity *= 1 - 0.5 * max(-slope, 0.0)
            self.velocity += upd
            return self.velocity
        self.velocity *= 0.5
        return None
