"""Decisions as pure functions of the pipeline's results.

The region of interest from a coarse pass, the reference patch for the drift check,
the drift itself (registration on a reconstruction of the patch), each frame's local
error, and the scores the tests and the benchmark use.
"""

from __future__ import annotations

import numpy as np

from ..instrument.probe import zone_plate_probe
from .engines import PtychoData, engine
from .layout import grid_origins, with_counts


def coarse_points(shape: tuple[int, int], every: int) -> np.ndarray:
    """Grid indices (row-major) of the coarse pass: every ``every``-th row and column from the first."""
    ny, nx = shape
    rows, cols = np.arange(0, ny, every), np.arange(0, nx, every)
    return (rows[:, None] * nx + cols[None, :]).ravel()


def region_of_interest(
    shape: tuple[int, int],
    every: int,
    coarse: np.ndarray,
    values: dict[int, dict],
    *,
    tolerance: float = 0.03,
    dpc_tolerance: float = 0.1,
    free_transmission: float | None = None,
) -> tuple[np.ndarray, dict]:
    """Fine-grid points worth measuring, from the coarse pass's QC (``values`` by grid index).

    Each coarse point gets an *occupancy*: how much of the beam the sample took,
    ``1 - transmission / free``, or the DPC's share, ``tolerance * |dpc| / dpc_tolerance``,
    whichever is larger (a pure phase object bends the beam without absorbing it). Free
    space is ``free_transmission`` or, by default, the 90th percentile of the coarse
    transmissions (a field with less than a tenth of it empty keeps nearly everything).
    A coarse point without a usable frame counts as fully occupied: unknown is kept. A
    fine point is measured when the occupancy interpolated to it (bilinear between its
    coarse neighbours) reaches ``tolerance``: the beam's footprint reaches past a point,
    so the empty side of an edge keeps the points whose footprint still sees sample.
    Returns the boolean mask over the fine grid (row-major) and what it rested on.
    """
    ny, nx = shape
    usable = [int(g) for g in coarse if g in values and values[g].get("usable", 0)]
    trans = np.array([values[g]["transmission"] for g in usable], float)
    free = float(free_transmission) if free_transmission is not None else (float(np.percentile(trans, 90)) if len(trans) else np.inf)
    rows, cols = np.arange(0, ny, every), np.arange(0, nx, every)
    occ = np.full((len(rows), len(cols)), np.inf)
    for g in usable:
        v = values[g]
        occ[g // nx // every, g % nx // every] = max(1 - v["transmission"] / free,
                                                     tolerance * np.hypot(v["dpc_y"], v["dpc_x"]) / dpc_tolerance)
    fy, fx = _weights(ny, rows), _weights(nx, cols)
    with np.errstate(invalid="ignore"):  # 0 * inf: a zero weight on an unknown point says nothing
        fine = np.einsum("ia,ab,jb->ij", fy, np.where(np.isfinite(occ), occ, 0), fx)
        unknown = np.einsum("ia,ab,jb->ij", fy, ~np.isfinite(occ), fx) > 0
    keep = (fine >= tolerance) | unknown
    keep.ravel()[np.asarray(coarse)] = True  # measured already: part of the data either way
    info = {
        "free_transmission": free,
        "tolerance": tolerance,
        "dpc_tolerance": dpc_tolerance,
        "coarse_occupancy": np.where(np.isfinite(occ), occ, -1.0).round(4),
        "empty_coarse_points": sorted(g for g in usable if occ[g // nx // every, g % nx // every] < tolerance),
        "unknown_coarse_points": sorted(int(g) for g in coarse if int(g) not in usable),
    }
    return keep.ravel(), info


def _weights(n: int, nodes: np.ndarray) -> np.ndarray:
    """(n, len(nodes)) linear-interpolation weights from coarse nodes to every fine index (nearest beyond the last)."""
    w = np.zeros((n, len(nodes)))
    for i in range(n):
        k = min(np.searchsorted(nodes, i, side="right") - 1, len(nodes) - 1)
        if k == len(nodes) - 1 or nodes[k] == i:
            w[i, k] = 1.0
        else:
            t = (i - nodes[k]) / (nodes[k + 1] - nodes[k])
            w[i, k], w[i, k + 1] = 1 - t, t
    return w


def reference_patch(shape: tuple[int, int], keep: np.ndarray, values: dict[int, dict], radius: int = 2) -> np.ndarray | None:
    """Grid indices of the (2 radius + 1)^2 patch to check drift against, or None when none fits.

    Inside the region of interest, where the coarse pass's DPC (the sample's phase
    gradient) points in every direction: the smaller eigenvalue of its structure tensor
    over the patch and its rim. A patch of parallel edges (a star's spokes) would hide a
    drift along them.
    """
    ny, nx = shape
    inside = keep.reshape(ny, nx)
    best, best_score = None, -1.0
    for i in range(radius, ny - radius):
        for j in range(radius, nx - radius):
            if not inside[i - radius : i + radius + 1, j - radius : j + radius + 1].all():
                continue
            rim = [g for g in patch_around(shape, i, j, radius + 1) if 0 <= g < ny * nx]
            g_yx = np.array([(values[g]["dpc_y"], values[g]["dpc_x"]) for g in rim if g in values and values[g].get("usable", 0)])
            if len(g_yx) < 2:
                continue
            score = float(np.linalg.eigvalsh(g_yx.T @ g_yx)[0])
            if score > best_score:
                best, best_score = (i, j), score
    return None if best is None else patch_around(shape, *best, radius)


def patch_around(shape: tuple[int, int], i: int, j: int, radius: int) -> np.ndarray:
    """Row-major grid indices of the square around (i, j); rows or columns off the grid are left out."""
    rows = [i + r for r in range(-radius, radius + 1) if 0 <= i + r < shape[0]]
    cols = [j + r for r in range(-radius, radius + 1) if 0 <= j + r < shape[1]]
    return (np.array(rows)[:, None] * shape[1] + np.array(cols)[None, :]).ravel()


def _window(obj_shape, fprobe: np.ndarray, k: np.ndarray, origin: np.ndarray) -> tuple[int, int, np.ndarray] | None:
    """Integer corner of the probe window at ``origin`` (object pixels) and the probe shifted by its
    fraction of a pixel (Fourier ramp on ``fprobe``, the probe's FFT); None for a window off the object."""
    n = fprobe.shape[-1]
    (y0, x0), (fy, fx) = np.floor(origin).astype(int), origin - np.floor(origin)
    if y0 < 0 or x0 < 0 or y0 + n > obj_shape[0] or x0 + n > obj_shape[1]:
        return None
    return y0, x0, np.fft.ifft2(fprobe * np.exp(-2j * np.pi * (fy * k[:, None] + fx * k[None, :])))


def _misfit(obj: np.ndarray, window: tuple[int, int, np.ndarray], amp: np.ndarray) -> float:
    """sum (|F(P O)| - amp)^2 over one window (``amp``: the measured amplitudes, unshifted)."""
    y0, x0, p = window
    n = p.shape[-1]
    return float(((np.abs(np.fft.fft2(p * obj[y0 : y0 + n, x0 : x0 + n], norm="ortho")) - amp) ** 2).sum())


def local_errors(obj: np.ndarray, probe: np.ndarray, patterns: np.ndarray, origins_px: np.ndarray) -> np.ndarray:
    """Each frame's misfit to a reconstruction, ``sum (|F(P O)| - sqrt(I))^2 / sum I`` over its window:
    where the reconstruction does not explain the data (a bad frame, a wrong position, too little
    overlap). NaN for a window off the object."""
    fprobe, k = np.fft.fft2(probe), np.fft.fftfreq(probe.shape[-1])
    out = np.full(len(patterns), np.nan)
    for j, (o, pattern) in enumerate(zip(np.asarray(origins_px, float), patterns, strict=True)):
        w = _window(obj.shape, fprobe, k, o)
        if w is None:
            continue
        amp = np.fft.ifftshift(np.sqrt(np.maximum(np.asarray(pattern, np.float32), 0)))
        out[j] = _misfit(obj, w, amp) / max(float((amp**2).sum()), 1e-30)
    return out


def estimate_drift(obj: np.ndarray, probe: np.ndarray, patterns: np.ndarray, origins_px: np.ndarray,
                   max_shift_px: float) -> tuple[np.ndarray, float]:
    """How far (object pixels, row and column) the probe windows of new frames sit from where their
    stage readings put them, on a reconstruction of the reference patch.

    Why this way: the STXM signals of a fine-featured sample change faster than the scan
    step, so they cannot be interpolated between points; the reconstruction holds the
    sample at pixel resolution. Whole-pixel window shifts within ``max_shift_px`` are tried on
    all frames at once (the shift the far-field amplitudes ``|F(P O)|`` fit best; a coarse
    grid, then every pixel around its best), then refined to a fraction of a pixel
    (Nelder-Mead, the probe moved by Fourier ramps).
    Returns the shift and the best fit's relative misfit.
    """
    from scipy.optimize import minimize

    n = probe.shape[-1]
    amps = np.fft.ifftshift(np.sqrt(np.maximum(np.asarray(patterns, np.float32), 0)), axes=(-2, -1))
    origins = np.asarray(origins_px, float)
    fprobe = np.fft.fft2(probe)
    k = np.fft.fftfreq(n)
    norm = max(float((amps**2).sum()), 1e-30)

    def misfit_at(windows) -> float:
        if any(w is None for w in windows):
            return np.inf
        return sum(_misfit(obj, w, a) for w, a in zip(windows, amps, strict=True)) / norm

    def misfit(shift) -> float:
        return misfit_at([_window(obj.shape, fprobe, k, o) for o in origins + np.asarray(shift, float)])

    home = [_window(obj.shape, fprobe, k, o) for o in origins]  # whole-pixel shifts keep each window's sub-pixel probe

    def misfit_whole(sy: int, sx: int) -> float:
        moved = [None if w is None else (w[0] + sy, w[1] + sx, w[2]) for w in home]
        if any(w is not None and (w[0] < 0 or w[1] < 0 or w[0] + n > obj.shape[0] or w[1] + n > obj.shape[1]) for w in moved):
            return np.inf
        return misfit_at(moved)

    r = int(np.ceil(max_shift_px))
    stride = max(1, r // 4)  # coarse to fine: every stride-th pixel, then every pixel around the best
    coarse = [(sy, sx) for sy in range(-r, r + 1, stride) for sx in range(-r, r + 1, stride)]
    best = min(coarse, key=lambda s: misfit_whole(*s))
    near = [(best[0] + dy, best[1] + dx) for dy in range(-stride, stride + 1) for dx in range(-stride, stride + 1)]
    start = min(near, key=lambda s: misfit_whole(*s))
    fit = minimize(misfit, np.array(start, float), method="Nelder-Mead",
                   options={"xatol": 0.02, "fatol": 1e-9, "initial_simplex": np.array(start) + [[0, 0], [0.7, 0], [0, 0.7]]})
    return np.asarray(fit.x, float), float(fit.fun)


def data_frames(qc: dict[int, dict], patterns: dict[int, np.ndarray], grid_m: np.ndarray,
                decisions=()) -> dict[int, tuple[np.ndarray, dict]]:
    """Grid point -> (pattern, QC) of the latest usable frame that is scan data: what to reconstruct
    an adaptive run from. ``decisions``: its ``adaptive`` events with ``seqs`` and ``detail`` decoded;
    events they name ``superseded`` and drift-check frames (``detail["data"] is False``, registered on the
    reference) are left out. Each frame goes to the grid point nearest its measured position."""
    not_data: set[int] = set()
    for d in decisions:
        not_data.update(d["detail"].get("superseded", []))
        if d["detail"].get("data") is False:
            not_data.update(d["seqs"])
    grid = np.asarray(grid_m, float)
    out = {}
    for seq in sorted(qc):
        s = qc[seq]
        if s["usable"] and seq not in not_data:
            point = int(np.argmin(np.hypot(*(grid - (s["position_y"], s["position_x"])).T)))
            out[point] = (patterns[seq], s)
    return out


def audit_reconstruction(
    patterns: np.ndarray,
    positions_m: np.ndarray,
    grid_m: np.ndarray,
    dx: float,
    energy_eV: float,
    optics,
    *,
    iterations: int = 60,
    engine_name: str = "lsqml",
    threads: int = 0,
    probe_update_start: int = 2,
    with_probe: bool = False,
):
    """The object from exactly these frames, reconstructed offline the same way for any scan.

    Why: a live reconstruction depends on when frames arrived; to compare an adaptive scan
    with a full one at equal quality both are solved from the same start (zone-plate
    probe, flat object, ``iterations`` of ``engine_name``) on the grid laid out for
    ``grid_m`` (so both objects share pixels with the truth of ``ns_bluesky.sim.scoring.score``).
    """
    patterns = np.asarray(patterns, np.float32)
    n = patterns.shape[-1]
    origins = grid_origins(-np.asarray(positions_m, float), dx, (-np.asarray(grid_m, float)).min(axis=0))
    probe = zone_plate_probe(n, dx, energy_eV, optics)
    probe = with_counts(probe, patterns)
    eng = engine(engine_name, threads=threads, probe_update_start=probe_update_start)
    eng.prepare(PtychoData(patterns, origins), probe.astype(np.complex64))
    eng.iterate(iterations)
    obj, probe, _ = eng.finalize()
    return (obj, probe) if with_probe else obj
