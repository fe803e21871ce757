"""Which way round are the positions? Decided from the data, not assumed.

CXI writers disagree on what ``translation`` means: the sample's translation (the probe
at minus it) or the probe's position on the sample, and on which image axis is +x
(tike's notebook: "try all combinations of swapping and flipping the sign(s) of the x and
y axes"). A wrong guess still gives a plausible-looking image, so the choice is made by
the data: each of the eight orientations (optional x/y swap, then a sign per axis) gets
the same few iterations of the same engine on the same central patch of the scan, and
the one that explains the patterns best (the lowest data residual) wins. The margin is
how much worse the runner-up fits: ``(r2 - r1) / r1``; below :data:`CLEAR_MARGIN` the
choice is reported as unclear and the caller keeps the declared convention.

What the data cannot tell: positions r -> -r (probe <-> sample) are fitted exactly by the
twin, object and probe conjugated and turned by 180° (the same |F psi|). Only the
starting probe breaks the tie, through its known phase (a defocus has a sign). A starting
probe that is its own twin (a real, centrosymmetric one, as made from the mean pattern)
cannot: then each orientation and its negative count as one candidate and the declared
sign is kept (``Choice.twins``); the image is the same up to that twin.

Measured on tike's Siemens star (``benchmarks/conventions.py``): at the full 128² the right
orientation fits with a residual 30 % or more below every other after 5 iterations on 64
frames. ``size`` cuts patterns and probe to their central far field (the same window on a
coarser grid): margins 0.36 at 96² and 0.45 at 64² against 0.35 at 128² (6 iterations). An
earlier version FFT-downsampled the patterns (a smaller window) beside the cut probe, a
mismatch that chose wrong at 96² (margin 0) and 64²; the trial runs at full size unless asked
otherwise, since the star is the one measured set this was tried on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import ParameterError
from .engines import PtychoData, engine
from .layout import MARGIN_PX, central_patch
from .preprocess import crop_center
from .probe_start import cropped_far_field

# the two conventions a user names; the other six are what auto may also find
NAMED = {"probe": (False, 1, 1), "sample": (False, -1, -1)}
CLEAR_MARGIN = 0.05  # the runner-up's residual at least 5 % above the best: a clear choice
TWIN_LIMIT = 0.9  # a starting probe this close to its own twin cannot tell an orientation from its negative


@dataclass(frozen=True)
class Orientation:
    """Maps a file's positions (y, x) to the probe's position on the sample: swap the two axes
    first (if ``swap``), then multiply rows and columns by ``signs``."""

    swap: bool
    signs: tuple[int, int]

    @property
    def name(self) -> str:
        for name, (swap, sy, sx) in NAMED.items():
            if (self.swap, self.signs) == (swap, (sy, sx)):
                return name
        base, signs = ("sample", (-self.signs[0], -self.signs[1])) if self.signs == (-1, -1) else ("probe", self.signs)
        flips = [f"-{axis}" for axis, s in zip(("y", "x"), signs) if s < 0]
        return ", ".join([base] + (["x/y swapped"] if self.swap else []) + flips)

    @property
    def matrix(self) -> np.ndarray:
        """2 x 2: probe (y, x) = matrix @ file (y, x)."""
        m = np.array([[0, 1], [1, 0]]) if self.swap else np.eye(2, dtype=int)
        return np.diag(self.signs) @ m

    @classmethod
    def from_matrix(cls, matrix) -> Orientation:
        m = np.asarray(matrix).round().astype(int)
        for o in ORIENTATIONS:
            if np.array_equal(o.matrix, m):
                return o
        raise ParameterError(f"not a signed permutation of (y, x): {m.tolist()}")

    def apply(self, positions_yx: np.ndarray) -> np.ndarray:
        return np.asarray(positions_yx, float) @ self.matrix.T


ORIENTATIONS = tuple(Orientation(swap, (sy, sx)) for swap in (False, True) for sy in (1, -1) for sx in (1, -1))


def orientation(name: str) -> Orientation:
    """The orientation a user names: ``probe`` (the file holds the probe's position) or ``sample``."""
    if name not in NAMED:
        raise ParameterError(f"positions must be auto, probe or sample, got {name!r}")
    swap, sy, sx = NAMED[name]
    return Orientation(swap, (sy, sx))


@dataclass
class Choice:
    """The orientation that fits, the residual of every candidate and how clear the choice was."""

    best: Orientation
    residuals: dict[str, float]
    margin: float  # (second-best residual - best) / best
    clear: bool
    frames: int = 0  # frames of the patch that decided
    size: int = 0  # their side after downsampling
    iterations: int = 0
    candidates: list[Orientation] = field(default_factory=list)
    twins: bool = False  # the starting probe is its own twin: an orientation and its negative were not told apart

    def summary(self) -> str:
        ranked = sorted(self.residuals.items(), key=lambda kv: kv[1])
        runner = ranked[1][0] if len(ranked) > 1 else "-"
        verdict = "clear" if self.clear else f"NOT clear (below {CLEAR_MARGIN:.0%})"
        if self.twins:
            ranked = [(c.name, self.residuals[c.name]) for c in self.candidates]
            runner = ranked[1][0] if len(ranked) > 1 else "-"
        twins = ("; the starting probe is its own twin, so the sign (probe or sample) is the declared one"
                 if self.twins else "")
        return (f"positions: {self.best.name} fits best (residual {ranked[0][1]:.4g}; next {runner} {ranked[1][1]:.4g}, "
                f"margin {self.margin:.1%}, {verdict}; {self.iterations} iterations on {self.frames} frames at {self.size}²"
                f"{twins})")


def choose_orientation(
    patterns: np.ndarray,
    positions_px: np.ndarray,
    probe: np.ndarray,
    *,
    candidates: tuple[Orientation, ...] = ORIENTATIONS,
    frames: int = 64,
    size: int | None = None,
    iterations: int = 6,
    engine_name: str = "lsqml",
    backend: str = "numpy",
    progress: Callable[[str], None] | None = None,
) -> Choice:
    """Fit each candidate orientation of ``positions_px`` ((N, 2) probe positions, object pixels (y, x), as the
    file declares them) to the same central patch of ``patterns`` ((N, n, n), zero frequency centred) from the
    same starting ``probe`` and compare the data residuals (the mean of the last two iterations)."""
    patterns = np.asarray(patterns, np.float32)
    n = patterns.shape[-1]
    if len(candidates) < 2:
        raise ParameterError("choose_orientation needs at least two candidates")
    idx = central_patch(positions_px, min(frames, len(patterns)))
    size = min(size or n, n)
    sub = patterns[idx]
    scale = n / size
    start = np.asarray(probe, np.complex64)
    if size < n:  # the same window on a coarser object grid: patterns and probe cut to their central far field
        sub = crop_center(sub, (n // 2, n // 2), size)
        start = cropped_far_field(start, size)
    positions = np.asarray(positions_px, float)[idx] / scale
    residuals: dict[str, float] = {}
    for k, cand in enumerate(candidates):
        p = cand.apply(positions)
        origins = p - p.min(axis=0) + MARGIN_PX
        eng = engine(engine_name, backend=backend, **_quick(engine_name))
        eng.prepare(PtychoData(sub, origins), start)
        res = eng.iterate(iterations)
        residuals[cand.name] = float(np.mean(res[-2:])) if np.all(np.isfinite(res[-2:])) else float("inf")
        if progress:
            progress(f"{k + 1}/{len(candidates)} {cand.name}: residual {residuals[cand.name]:.4g}")
    twins = twin_symmetry(start) > TWIN_LIMIT
    if twins:  # an orientation and its negative are one candidate: the first listed (the declared sign) with the lower residual
        pairs: dict[tuple, Orientation] = {}
        for c in candidates:
            key = min(tuple(c.matrix.ravel()), tuple((-c.matrix).ravel()))
            first = pairs.setdefault(key, c)
            residuals[first.name] = min(residuals[first.name], residuals[c.name])
        ranked = sorted(pairs.values(), key=lambda c: residuals[c.name])
    else:
        ranked = sorted(candidates, key=lambda c: residuals[c.name])
    if len(ranked) < 2:
        return Choice(ranked[0], residuals, 0.0, False, len(idx), size, iterations, list(ranked), twins)
    r1, r2 = residuals[ranked[0].name], residuals[ranked[1].name]
    margin = (r2 - r1) / r1 if r1 > 0 and np.isfinite(r1) else 0.0
    return Choice(ranked[0], residuals, float(margin), bool(margin >= CLEAR_MARGIN), len(idx), size, iterations,
                  list(ranked), twins)


def twin_symmetry(probe: np.ndarray) -> float:
    """|<P, P_twin>| / |P|^2 with P_twin(r) = conj(P(-r)) about the window's centre: 1 for a real, centrosymmetric
    probe (which cannot tell positions r from -r), near 0 for a defocused one."""
    p = np.asarray(probe, np.complex128)
    twin = np.conj(np.roll(p[::-1, ::-1], 1, axis=(0, 1)))  # r -> -r about pixel n/2
    return float(abs(np.vdot(p, twin)) / max(np.vdot(p, p).real, 1e-300))


def _quick(engine_name: str) -> dict:
    """Options that keep the short trial fits comparable: one probe mode, positions held where declared, every
    candidate from the one start probe (a start search per candidate would cost 20 trials each)."""
    if engine_name == "lsqml":
        return {"probe_modes": 1, "position_correction": False, "threads": 1, "probe_start": "given"}
    return {"threads": 1}
