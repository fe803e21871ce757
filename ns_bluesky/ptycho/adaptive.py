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


def coarse_subset(positions_m: np.ndarray, spacing_m: float, *, outside_in: bool = False) -> np.ndarray:
    """Indices (ascending) of the coarse pass over scattered points: a maximal subset whose points are at
    least ``spacing_m`` apart, taken greedily in the order given, or from the rim inwards (``outside_in``:
    farthest from the points' centroid first).

    Why this and not every k-th point: a Fermat spiral's every k-th point (angle k times the
    golden angle) lines up on spiral arms; for a Fibonacci k (8, 13, 21) they are few, with
    empty wedges between them that a sample could hide in, and how even a given k is has to
    be worked out for each. A maximal ``spacing_m``-separated set is even in area whatever the
    pattern: no two coarse points closer than ``spacing_m`` (no wasted frames) and every point
    of the scan within ``spacing_m`` of one (no hole wider than that). The raster's coarse grid
    (:func:`coarse_points`) is exactly this set with ``spacing_m`` = every steps. From the rim
    inwards (for a spiral) the coarse points reach the field's edge, so that few points lie
    outside their triangles, where the region of interest can only extrapolate.
    """
    pos = np.asarray(positions_m, float).reshape(-1, 2)
    order = np.argsort(-np.hypot(*(pos - pos.mean(axis=0)).T), kind="stable") if outside_in else np.arange(len(pos))
    limit = (float(spacing_m) * (1 - 1e-9)) ** 2  # grid points exactly spacing_m apart both count
    chosen: list[int] = []
    for i in order:
        if not chosen or (((pos[chosen] - pos[i]) ** 2).sum(axis=1) >= limit).all():
            chosen.append(int(i))
    return np.sort(np.array(chosen, int))


def occupancy(coarse: np.ndarray, values: dict[int, dict], *, tolerance: float = 0.03, dpc_tolerance: float = 0.1,
              free_transmission: float | None = None) -> tuple[np.ndarray, float]:
    """Each coarse point's occupancy (how much of the beam the sample took; ``inf``: unknown) and free space.

    ``max(1 - transmission / free, tolerance * |dpc| / dpc_tolerance)``: a pure phase object bends
    the beam without absorbing it. Free space is ``free_transmission`` or the 90th percentile of
    the usable coarse transmissions. A coarse point without a usable frame is unknown.
    """
    usable = [(k, values[int(g)]) for k, g in enumerate(coarse) if int(g) in values and values[int(g)].get("usable", 0)]
    trans = np.array([v["transmission"] for _, v in usable], float)
    free = float(free_transmission) if free_transmission is not None else (float(np.percentile(trans, 90)) if len(trans) else np.inf)
    occ = np.full(len(coarse), np.inf)
    for k, v in usable:
        occ[k] = max(1 - v["transmission"] / free, tolerance * np.hypot(v["dpc_y"], v["dpc_x"]) / dpc_tolerance)
    return occ, free


def keep_reached(weights: np.ndarray, occ: np.ndarray, tolerance: float) -> np.ndarray:
    """The rule of the region of interest, for any interpolation: a point is kept when the occupancy
    interpolated to it (``weights``: points x coarse points) reaches ``tolerance``, or when an unknown
    coarse point has a weight on it (unknown is kept)."""
    known = np.isfinite(occ)
    return (weights @ np.where(known, occ, 0.0) >= tolerance) | ((weights @ (~known).astype(float)) > 0)


def scattered_weights(points_m: np.ndarray, nodes_m: np.ndarray) -> np.ndarray:
    """(points, nodes) weights of piecewise-linear interpolation from scattered nodes: barycentric on their
    Delaunay triangles (as ``scipy.interpolate.LinearNDInterpolator``); a point outside their hull takes the
    value at the nearest point of the hull's rim (linear along that edge), as the raster's bilinear
    interpolation takes its last coarse row or column beyond it. Fewer than three nodes, or nodes on a
    line: the nearest node."""
    from scipy.spatial import Delaunay, cKDTree

    pts, nodes = np.asarray(points_m, float).reshape(-1, 2), np.asarray(nodes_m, float).reshape(-1, 2)
    w = np.zeros((len(pts), len(nodes)))
    inside = np.zeros(len(pts), bool)
    if len(nodes) >= 3 and np.linalg.matrix_rank(nodes - nodes.mean(axis=0)) == 2:
        tri = Delaunay(nodes)
        simplex = tri.find_simplex(pts)
        inside = simplex >= 0
        t = tri.transform[simplex[inside]]
        b = np.einsum("nij,nj->ni", t[:, :2], pts[inside] - t[:, 2])
        bary = np.c_[b, 1 - b.sum(axis=1)]
        rows = np.nonzero(inside)[0]
        for k in range(3):
            w[rows, tri.simplices[simplex[inside], k]] = np.clip(bary[:, k], 0.0, 1.0)
        outside = np.nonzero(~inside)[0]
        if len(outside):
            a, b = nodes[tri.convex_hull[:, 0]], nodes[tri.convex_hull[:, 1]]  # the rim's edges
            ab = b - a
            rel = pts[outside, None, :] - a[None]
            t = np.clip((rel * ab[None]).sum(-1) / (ab**2).sum(-1)[None], 0.0, 1.0)
            edge = np.argmin(((rel - t[..., None] * ab[None]) ** 2).sum(-1), axis=1)
            t = t[np.arange(len(outside)), edge]
            w[outside, tri.convex_hull[edge, 0]] += 1 - t
            w[outside, tri.convex_hull[edge, 1]] += t
        return w
    w[np.arange(len(pts)), cKDTree(nodes).query(pts)[1]] = 1.0
    return w


def region_of_interest_scattered(
    positions_m: np.ndarray,
    coarse: np.ndarray,
    values: dict[int, dict],
    *,
    tolerance: float = 0.03,
    dpc_tolerance: float = 0.1,
    free_transmission: float | None = None,
) -> tuple[np.ndarray, dict]:
    """:func:`region_of_interest` for scattered points (a Fermat spiral): the same occupancy and rule, the
    occupancy interpolated linearly over the Delaunay triangles of the coarse points
    (:func:`scattered_weights`) instead of bilinearly on the coarse grid. ``values`` by point index.
    Returns the boolean mask over ``positions_m`` and what it rested on."""
    pos = np.asarray(positions_m, float).reshape(-1, 2)
    coarse = np.asarray(coarse, int)
    occ, free = occupancy(coarse, values, tolerance=tolerance, dpc_tolerance=dpc_tolerance,
                          free_transmission=free_transmission)
    keep = keep_reached(scattered_weights(pos, pos[coarse]), occ, tolerance)
    keep[coarse] = True  # measured already: part of the data either way
    return keep, _region_details(coarse, occ, occ, free, tolerance, dpc_tolerance)


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

    Each coarse point gets an *occupancy* (:func:`occupancy`): how much of the beam the sample
    took, ``1 - transmission / free``, or the DPC's share, ``tolerance * |dpc| / dpc_tolerance``,
    whichever is larger (a pure phase object bends the beam without absorbing it). Free
    space is ``free_transmission`` or, by default, the 90th percentile of the coarse
    transmissions (a field with less than a tenth of it empty keeps nearly everything).
    A coarse point without a usable frame counts as fully occupied: unknown is kept. A
    fine point is measured when the occupancy interpolated to it (bilinear between its
    coarse neighbours) reaches ``tolerance`` (:func:`keep_reached`): the beam's footprint
    reaches past a point, so the empty side of an edge keeps the points whose footprint
    still sees sample. Scattered points: :func:`region_of_interest_scattered`.
    Returns the boolean mask over the fine grid (row-major) and what it rested on.
    """
    ny, nx = shape
    coarse = np.asarray(coarse, int)
    found, free = occupancy(coarse, values, tolerance=tolerance, dpc_tolerance=dpc_tolerance,
                            free_transmission=free_transmission)
    rows, cols = np.arange(0, ny, every), np.arange(0, nx, every)
    occ = np.full((len(rows), len(cols)), np.inf)
    for g, o in zip(coarse, found, strict=True):
        occ[g // nx // every, g % nx // every] = o
    keep = keep_reached(np.kron(_weights(ny, rows), _weights(nx, cols)), occ.ravel(), tolerance)
    keep[coarse] = True  # measured already: part of the data either way
    return keep, _region_details(coarse, found, occ, free, tolerance, dpc_tolerance)


def _region_details(coarse: np.ndarray, found: np.ndarray, occ: np.ndarray, free: float, tolerance: float,
                    dpc_tolerance: float) -> dict:
    """What a region of interest rested on: ``found`` is each coarse point's occupancy in ``coarse``'s
    order, ``occ`` the same laid out as the caller keeps it (a grid for a raster)."""
    return {
        "free_transmission": free,
        "tolerance": tolerance,
        "dpc_tolerance": dpc_tolerance,
        "coarse_occupancy": np.where(np.isfinite(occ), occ, -1.0).round(4),
        "empty_coarse_points": sorted(int(g) for g, o in zip(coarse, found, strict=True) if o < tolerance),
        "unknown_coarse_points": sorted(int(g) for g, o in zip(coarse, found, strict=True) if not np.isfinite(o)),
    }


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
            score = _isotropy(values, [g for g in patch_around(shape, i, j, radius + 1) if 0 <= g < ny * nx])
            if score is not None and score > best_score:
                best, best_score = (i, j), score
    return None if best is None else patch_around(shape, *best, radius)


def _isotropy(values: dict[int, dict], points) -> float | None:
    """The smaller eigenvalue of the DPC structure tensor over the usable ``points`` (None: fewer than two):
    large only where the sample's phase gradients point every way."""
    g_yx = np.array([(values[g]["dpc_y"], values[g]["dpc_x"]) for g in points if g in values and values[g].get("usable", 0)])
    return None if len(g_yx) < 2 else float(np.linalg.eigvalsh(g_yx.T @ g_yx)[0])


def reference_patch_scattered(positions_m: np.ndarray, keep: np.ndarray, values: dict[int, dict],
                              size: int = 25, rim: int = 49) -> np.ndarray | None:
    """:func:`reference_patch` for scattered points: the ``size`` points nearest a centre (the centre first,
    then by distance, so the first nine are the patch's inner points), or None when none fits.

    The centre is a point of the region of interest whose ``size`` nearest neighbours are all
    in it and lie within 1.2 times the median such radius over the scan (a compact patch, not
    one spread along the field's edge); among those, the one whose ``rim`` nearest neighbours
    carry the most isotropic DPC (:func:`_isotropy`), as on the raster.
    """
    from scipy.spatial import cKDTree

    pos = np.asarray(positions_m, float).reshape(-1, 2)
    if len(pos) < size:
        return None
    tree = cKDTree(pos)
    dist, near = tree.query(pos, k=min(rim, len(pos)))
    reach = dist[:, size - 1]
    compact = reach <= 1.2 * np.median(reach)
    best, best_score = None, -1.0
    for c in np.nonzero(compact & np.asarray(keep, bool))[0]:
        if not np.asarray(keep, bool)[near[c, :size]].all():
            continue
        score = _isotropy(values, near[c].tolist())
        if score is not None and score > best_score:
            best, best_score = c, score
    return None if best is None else near[best, :size].astype(int)


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
