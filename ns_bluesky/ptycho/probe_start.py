"""A starting probe with the far field the data measured, from one that may be the wrong size.

A probe guessed from the optics can have the wrong far field (the beam's aperture on the
detector): in the engine matrix (issue 20) a start 1.5 times too wide (its far field 1.5
times too narrow) left LSQ-ML stalled at residual 0.11 without an image. The mean
diffraction pattern measures that far field: :func:`far_field_from_data` keeps the start's
far-field phase (its defocus) and takes the root of the mean pattern as its far-field
amplitude inside the pattern's bright region, which also gives it the measured power.

What the mean pattern cannot tell is the defocus (the far field's phase): the autocorrelation
of the probe, which is all it holds, is the same for every defocus. The data as a whole can:
:func:`search_defocus` adds quadratic far-field phases c k^2 over the range a probe inside the
window can have and keeps the one whose trial (a few iterations of the engine on the scan's
middle, run by the caller: LSQ-ML refines the probe in trials about the given probe and holds it
in trials of the data's far field) leaves the lowest data residual, on a fine grid and then
halves and quarters of its step about the best.

The grid's step must be finer than the residual's basins, which are not all alike: measured
(LSQ-ML's trial, 10 iterations on 24 frames, phases in a 128² window about a 48-pixel bright
disc, where the range is +-135), the project's set (start 20 % off in defocus) is best at +16
(0.0051) and doubles its residual 16 away (0.0109 at 0); a start 60 % off is best at +48,
doubling 16 away as well; the 256² set of the engine matrix (its far field cut to 128², below)
is best at +8 (0.0055) and nearly doubles 4 away (0.0096 at +4, 0.0106 at +12), with a second,
shallower basin at +36 (0.0108). The first grid of 17 phases (+-8
steps of 17) stepped over the narrow basin, chose the far one (+152 at 256²) and left the fit
stalled at NRMSE 0.26; a grid of +-:data:`COARSE` steps of 4 finds it (+30 at 256²: NRMSE
0.023 after 300 s and falling). What keeps that many trials cheap: they are short (10 iterations on 24 frames
rank the candidates as 20 on 48 did on every set above and tike's star: -18 best), and they run
on the patterns' central :func:`trial_window` (the bright disc with room to spare, at least
:data:`TRIAL_WINDOW`): a far field cut to the middle is the same window on a coarser grid,
where the trial of a 256² set costs what a 128² one does. The short trials screen; where their
best is not phase 0, a longer one (20 iterations on 48 frames) runs for it and phase 0 and
decides (``confirm``): the least of 65 short residuals beats phase 0 by 3 % by chance more
often than the least of 17 did. Tike's measured star from its own
probe: -18 chosen, whose image is the given probe's (half-scan FRC 0.423 both). A trial with
the probe held was misled on the star: it chose +76, whose image does not hold (0.08).

Pure arrays (numpy), host side.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import ParameterError
from .preprocess import crop_center

BRIGHT = 0.05  # the mean pattern's bright region: above this part of its peak
#: a start whose far field holds less than this part of the mean pattern's counts has the wrong size. Measured: the
#: simulated sets 0.99 (right size, any defocus), a start 1.5x too wide 0.36, tike's measured star with its own
#: probe 0.73 (a strongly scattering object puts counts outside the beam's far field)
WRONG_SIZE = 0.5
#: the search keeps a start (no defocus added; the probe as given) unless a candidate's trial residual is under this
#: part of the start's: one rule for both, so a near tie never moves the start
KEEP = 0.97
#: the search's grid: 2 COARSE + 1 phases over +-defocus_range (a step of 4 rad about a 48-pixel disc in 128²)
COARSE = 32
#: the smallest far field (side, pixels) the search's trials are cut to: the test of a defocus needs the bright disc,
#: not the high angles that hold the object's detail
TRIAL_WINDOW = 128


def far_field_share(probe: np.ndarray, mean_pattern: np.ndarray) -> float:
    """The part of ``mean_pattern``'s counts inside ``probe``'s bright far field (above BRIGHT of its peak)."""
    far = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(np.asarray(probe, np.complex128))))) ** 2
    mean = np.maximum(np.asarray(mean_pattern, np.float64), 0)
    return float(mean[far > BRIGHT * far.max()].sum() / max(mean.sum(), 1e-300))


def far_field_from_data(probe: np.ndarray, mean_pattern: np.ndarray) -> np.ndarray:
    """``probe`` (n, n, centred) with the far-field amplitude sqrt(``mean_pattern``) (zero frequency centred,
    like the patterns) inside the pattern's bright region and zero outside, its far-field phase kept: the
    measured aperture and power, the start's defocus. Orthonormal FFTs: sum |P|^2 = the bright region's sum of
    the mean pattern (the mean photons per frame, but for the few scattered outside it)."""
    n = probe.shape[-1]
    mean = np.maximum(np.asarray(mean_pattern, np.float64), 0)
    if mean.shape != (n, n) or probe.shape != (n, n):
        raise ParameterError(f"mean pattern {mean.shape} and probe {probe.shape} must both be {n} x {n}")
    if not np.isfinite(mean).all() or mean.max() <= 0:
        raise ParameterError("the mean pattern must be finite with some counts to give the probe its far field")
    amp = np.fft.ifftshift(np.sqrt(mean) * (mean > BRIGHT * mean.max()))  # FFT order
    far = np.fft.fft2(np.fft.ifftshift(probe.astype(np.complex128)), norm="ortho")
    out = np.fft.fftshift(np.fft.ifft2(amp * np.exp(1j * np.angle(far)), norm="ortho"))
    return out.astype(np.complex64)


@dataclass
class DefocusChoice:
    """The start chosen and how: ``phase`` is the added far-field phase at the window's half width (radians) of
    the far-field-corrected candidate chosen, or None where the probe as given was kept."""

    probe: np.ndarray
    phase: float | None
    residuals: dict[float, float]  # each candidate's trial residual, by its added phase
    seconds: float
    given_residual: float | None = None  # the probe as given, where it was a candidate beside the others
    far_field: bool = True  # the candidates: the data's far field with the given probe's phase, else the given probe
    skipped: int = 0  # trials not run: the search's time budget was spent
    #: the decisive trial's residuals, by phase: the screening's best and phase 0, where a confirming trial ran
    confirmed: dict[float, float] = field(default_factory=dict)

    def residual(self, phase: float) -> float:
        """The residual a decision rested on: the confirming trial's where it ran, else the screening's."""
        return self.confirmed.get(phase, self.residuals[phase])

    def summary(self) -> str:
        count = len(self.residuals) + (self.given_residual is not None and self.far_field)  # else phase 0 is the given
        trials = f"{count} trials in {self.seconds:.1f} s"
        if self.confirmed:
            trials += f", {len(self.confirmed)} of them again with the longer trial"
        if self.skipped:
            trials += f", {self.skipped} more cut by the time budget"
        given = f"{self.given_residual:.4g}" if self.given_residual is not None else "not tried"
        if self.phase is None and (not self.residuals or (self.far_field and self.given_residual is None)):
            return f"start probe: as given (the time budget held no comparison; {trials})"
        if self.phase is None:
            best = min(self.residuals, key=self.residuals.get)
            kind = "far-field candidate" if self.far_field else "other candidate"
            return (f"start probe: as given (residual {given}; the best {kind}, defocus phase "
                    f"{best:+.0f}, {self.residual(best):.4g}; {trials})")
        if not self.far_field:
            at_zero = f"{self.residual(0.0):.4g}" if 0.0 in self.residuals else "not tried"
            return (f"start probe: as given, defocus phase {self.phase:+.0f} rad at the window's half width added "
                    f"(residual {self.residual(self.phase):.4g}, as given {at_zero}; {trials})")
        return (f"start probe: far field from the mean pattern, defocus phase {self.phase:+.0f} rad at the window's "
                f"half width (residual {self.residual(self.phase):.4g}, as given {given}; {trials})")


def with_defocus(probe: np.ndarray, phase: float) -> np.ndarray:
    """``probe`` (centred) with the far-field phase ``phase`` (k / (n/2))^2 added: a propagation (defocus)."""
    n = probe.shape[-1]
    k = np.fft.fftfreq(n) * n
    quad = (k[:, None] ** 2 + k[None, :] ** 2) / (n / 2) ** 2
    far = np.fft.fft2(np.fft.ifftshift(probe.astype(np.complex128)), norm="ortho") * np.exp(1j * phase * quad)
    return np.fft.fftshift(np.fft.ifft2(far, norm="ortho")).astype(np.complex64)


def bright_radius(mean_pattern: np.ndarray) -> float:
    """The radius (pixels, at least 1) of a disc as large as the mean pattern's bright region (above BRIGHT of its
    peak)."""
    mean = np.asarray(mean_pattern, np.float64)
    return max(float(np.sqrt((mean > BRIGHT * mean.max()).sum() / np.pi)), 1.0)


def defocus_range(mean_pattern: np.ndarray) -> float:
    """The largest added phase (at the window's half width) that keeps a beam through the pattern's bright
    disc inside the window: a ray at far-field pixel k lands at x = 4 c k / (pi n) pixels from the centre."""
    n = np.asarray(mean_pattern).shape[-1]
    return float(np.pi * n * (n / 2) / (4 * bright_radius(mean_pattern)))


def trial_window(mean_pattern: np.ndarray) -> int:
    """The side of the far field the start's trials need: the bright disc and a quarter of its radius around it, at
    least :data:`TRIAL_WINDOW`, even, at most the patterns' own."""
    n = np.asarray(mean_pattern).shape[-1]
    return min(n, max(TRIAL_WINDOW, 2 * int(np.ceil(1.25 * bright_radius(mean_pattern)))))


def cropped_far_field(probe: np.ndarray, size: int) -> np.ndarray:
    """``probe`` (n, n, centred) with its far field cut to the central ``size``²: the same window on a grid n/size
    times coarser, as a pattern cut to its central ``size``² sees it (orthonormal FFTs: the power inside is kept).
    A far-field phase c (k / (n/2))^2 is c (size/n)^2 (k / (size/2))^2 there."""
    n = probe.shape[-1]
    if size == n:
        return np.asarray(probe, np.complex64)
    far = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(np.asarray(probe, np.complex64)), norm="ortho"))
    far = crop_center(far, (n // 2, n // 2), size)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(far), norm="ortho")).astype(np.complex64)


def search_defocus(
    probe: np.ndarray,
    mean_pattern: np.ndarray,
    trial: Callable[[np.ndarray], float],
    *,
    given: np.ndarray | None = None,
    coarse: int = COARSE,
    progress: Callable[[str], None] | None = None,
    far_field: bool = True,
    workers: int = 1,
    seconds: float | None = None,
    confirm: Callable[[np.ndarray], float] | None = None,
) -> DefocusChoice:
    """``probe`` with the added defocus phase whose ``trial(probe)`` residual is lowest: ``2 coarse + 1``
    phases evenly over +-:func:`defocus_range`, then halves and quarters of that step about the best. The
    phase 0 (no defocus added) is one candidate and is kept unless another is 3 % better. ``given``, the start
    before its far field was taken from the data, is a candidate too and is kept unless the best of the others
    is 3 % better: a start that already fits (a probe reconstructed before, measured optics) loses nothing.
    ``far_field``: whether ``probe`` is the data's far field (the summary says which start the phases were added to).
    ``workers``: trials run side by side (each trial one thread). ``seconds``: no trial starts after this (the
    nearest phases are tried first, phase 0 among them, so a cut search still chooses among those it tried).
    ``confirm``: a longer trial that decides, where the screening's best is not phase 0: both run it again (if the
    budget has time left) and the 3 % rule holds on its residuals. Many short trials screen well, but the least of
    65 noisy residuals beats phase 0 by 3 % by chance more often than the least of 17 did: on the test set of 32²,
    whose start is the true probe, the screening (10 iterations on 24 frames) found +13 rad 4 % better, where 20
    iterations on 48 frames keep the probe as given."""
    t0 = time.monotonic()
    deadline = t0 + (seconds if seconds is not None else float("inf"))
    skipped = []

    def residual_of(run: Callable[[np.ndarray], float], candidate: np.ndarray) -> float:
        value = float(run(candidate.astype(np.complex64)))
        return value if np.isfinite(value) else float("inf")

    def tried(candidate: np.ndarray, label: str) -> float | None:
        if time.monotonic() > deadline:
            skipped.append(label)
            return None
        value = residual_of(trial, candidate)
        if progress:
            progress(f"{label}: residual {value:.4g}")
        return value

    top = defocus_range(mean_pattern)
    step = top / coarse
    residuals: dict[float, float] = {}

    def phased(p: float) -> np.ndarray:  # the candidate of added phase p
        return probe if p == 0 else with_defocus(probe, p)

    with ThreadPoolExecutor(max(int(workers), 1), thread_name_prefix="defocus-trial") as pool:
        given_trial = None if given is None else pool.submit(tried, given, "as given")

        def score(phases) -> None:
            todo = [p for p in dict.fromkeys(float(round(p, 3)) for p in phases) if p not in residuals]
            runs = [pool.submit(tried, phased(p), f"defocus phase {p:+.0f}") for p in todo]
            residuals.update((p, v) for p, r in zip(todo, runs, strict=True) if (v := r.result()) is not None)

        score(j * step for j in sorted(range(-coarse, coarse + 1), key=abs))  # the nearest first: a budget cuts the far
        for frac in (0.5, 0.25):
            if residuals and time.monotonic() < deadline:
                best = min(residuals, key=residuals.get)
                score((best - frac * step, best + frac * step))
        given_residual = None if given_trial is None else given_trial.result()
        confirmed: dict[float, float] = {}
        proposal = min(residuals, key=residuals.get) if residuals else 0.0
        if confirm is not None and proposal != 0.0 and 0.0 in residuals and time.monotonic() < deadline:
            runs = {p: pool.submit(residual_of, confirm, phased(p)) for p in (proposal, 0.0)}
            confirmed = {p: r.result() for p, r in runs.items()}
            if progress:
                progress(f"defocus phase {proposal:+.0f} again: residual {confirmed[proposal]:.4g}, phase 0 "
                         f"{confirmed[0.0]:.4g}")

    def chosen(start: np.ndarray, phase: float | None, start_residual: float | None,
               from_far_field: bool = far_field) -> DefocusChoice:
        return DefocusChoice(start.astype(np.complex64), phase, residuals, time.monotonic() - t0, start_residual,
                             from_far_field, len(skipped), confirmed)

    if not residuals or (given is not None and given_residual is None):  # the budget held no comparison: as given
        return chosen(probe if given is None else given, None, given_residual)
    scores = {**residuals, **confirmed}
    best = proposal
    if scores[best] > KEEP * scores.get(0.0, float("inf")):
        best = 0.0
    if given is not None and scores[best] > KEEP * given_residual:
        return chosen(given, None, given_residual)
    if best == 0 and not far_field:  # the probe as given: said so
        return chosen(probe, None, scores[0.0], False)
    return chosen(phased(best), best, given_residual)
