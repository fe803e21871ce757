"""Iterate an engine within a budget of seconds (or iterations) and keep the best state seen.

Users think in time ("the best image in 30 s"), and the last iterate is not always the
best (difference map wanders; a long run on noisy data can climb): the state after the
iteration with the lowest data residual is what comes back. An iteration's residual is
measured during its pass, so "best" means the state after the iteration that scored
lowest. A residual that is not finite, or that runs away to many times the best and
above what an empty image scores (1), is a
divergence: :class:`~ns_bluesky.errors.ReconstructionError` says so, where it happened
and what to check, instead of a garbage image coming back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ParameterError, ReconstructionError
from .backend import asnumpy

RUNAWAY = 10.0  # a residual this many times the best seen (after the first few iterations), and worse than an
# empty image (residual 1), is a divergence; below 1 a climb is wandering (difference map does), not garbage
SETTLE = 3  # iterations before a runaway counts: the first ones may rise while the probe starts to move


@dataclass
class Budgeted:
    """The best state and how it was reached."""

    obj: np.ndarray
    probe: np.ndarray
    residuals: list[float]  # every iteration run here
    best_residual: float
    best_iteration: int  # 1-based, among those run here
    iterations: int
    seconds: float
    stopped_by: str  # "seconds", "iterations" or "stop"


def iterate_within(
    eng,
    *,
    seconds: float | None = None,
    iterations: int | None = None,
    on_iteration: Callable[[int, float, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    runaway: float = RUNAWAY,
) -> Budgeted:
    """Iterate the prepared engine ``eng`` until ``seconds`` have passed (an iteration that would end past
    them is not started; at least one runs) or ``iterations`` are done, whichever comes first.

    ``on_iteration(done, residual, best)`` is called after each (for progress). Returns the object and probe
    after the iteration with the lowest residual. Raises ReconstructionError when the residual, the object or
    the probe stops being finite, the residual exceeds ``runaway`` times the best (and 1) after the first iterations,
    or the best residual is still 1 or more at the end (no better than an empty image).
    """
    if seconds is None and iterations is None:
        raise ParameterError("give a budget: seconds, iterations or both")
    if seconds is not None and not (seconds > 0 and math.isfinite(seconds)):
        raise ParameterError(f"seconds must be a positive number, got {seconds!r}")
    if iterations is not None and iterations < 1:
        raise ParameterError(f"iterations must be >= 1, got {iterations}")
    xp = eng.xp
    t0 = time.monotonic()
    last = 0.0
    residuals: list[float] = []
    best, best_at, best_obj, best_probe = math.inf, 0, None, None
    stopped_by = "iterations"
    while True:
        done = len(residuals)
        if iterations is not None and done >= iterations:
            break
        if done and seconds is not None and time.monotonic() - t0 + last > seconds:
            stopped_by = "seconds"
            break
        if done and should_stop is not None and should_stop():
            stopped_by = "stop"
            break
        t = time.monotonic()
        (res,) = eng.iterate(1)
        last = time.monotonic() - t
        residuals.append(res)
        k = len(residuals)
        if not math.isfinite(res) or not (bool(xp.isfinite(eng.obj).all()) and bool(xp.isfinite(eng.probe).all())):
            raise ReconstructionError(
                f"the reconstruction diverged at iteration {k}: residual {res:.4g}, object or probe not finite "
                f"({_before(best, best_at)}); check the data for NaN or negative counts and the "
                "starting probe's scale (sum |P|^2 should be the mean counts per frame)"
            )
        if k > SETTLE and res > max(runaway * best, 1.0):
            raise ReconstructionError(
                f"the reconstruction diverged at iteration {k}: residual {res:.4g} is over {runaway:g} times the best "
                f"{best:.4g} (iteration {best_at}); try another engine or fewer probe modes, and check the positions' "
                "convention (--positions) and the starting probe"
            )
        if res < best:
            best, best_at = res, k
            best_obj, best_probe = eng.obj.copy(), eng.probe.copy()
        if on_iteration is not None:
            on_iteration(k, res, best)
    if best >= 1.0:
        raise ReconstructionError(
            f"the reconstruction never fitted the data: best residual {best:.4g} after {len(residuals)} iterations, where an "
            "empty image scores 1; check the starting probe's scale and position (sum |P|^2 should be the mean counts "
            "per frame) and the positions' convention (--positions)"
        )
    return Budgeted(asnumpy(best_obj), asnumpy(best_probe), residuals, best, best_at, len(residuals),
                    time.monotonic() - t0, stopped_by)


def _before(best: float, at: int) -> str:
    return f"best residual {best:.4g} at iteration {at}" if at else "no finite residual before it"
