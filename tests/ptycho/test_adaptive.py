"""The adaptive plan's decisions on scattered points (a Fermat spiral), as pure functions: the coarse pass,
the region of interest and the drift reference. The raster's are tested with the plan (tests/plans)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import LinearNDInterpolator
from scipy.spatial import Delaunay

from ns_bluesky.instrument.scan import fermat_spiral, raster
from ns_bluesky.ptycho.adaptive import (
    coarse_points,
    coarse_subset,
    reference_patch_scattered,
    region_of_interest_scattered,
    scattered_weights,
)


def _holes(pos: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """Each point's distance to the nearest point of ``subset``."""
    return np.hypot(*(pos[:, None] - pos[None, subset]).transpose(2, 0, 1)).min(axis=1)


@pytest.mark.parametrize(("shape", "every"), [((16, 16), 3), ((10, 10), 3), ((20, 20), 3), ((13, 9), 2), ((5, 5), 1)])
def test_the_coarse_subset_of_a_raster_is_its_coarse_grid(shape, every):
    step = 70e-9
    assert np.array_equal(coarse_subset(raster(shape, step), every * step), coarse_points(shape, every))


def test_the_coarse_subset_covers_a_fermat_spiral_evenly_where_every_kth_point_does_not():
    pos = fermat_spiral(144, 1.0)
    coarse = coarse_subset(pos, 3.0, outside_in=True)
    assert len(coarse) == 18  # tests/plans/test_adaptive.py schedules its faults on this
    d = np.hypot(*(pos[coarse, None] - pos[None, coarse]).transpose(2, 0, 1)) + 10 * np.eye(len(coarse))
    assert d.min() >= 3.0  # no two coarse frames closer than the spacing
    assert _holes(pos, coarse).max() < 3.0  # no point farther than the spacing from a coarse one
    # every 13th point in spiral order (a Fibonacci number: the points line up on spiral arms) leaves a hole
    # more than twice as wide with fewer points
    every13 = np.arange(0, 144, 13)
    assert _holes(pos, every13).max() > 2 * 3.0 and len(every13) < len(coarse)
    # from the rim inwards, the coarse points' triangles cover more of the spiral than in spiral order
    outside = [(Delaunay(pos[c]).find_simplex(pos) < 0).sum() for c in (coarse, coarse_subset(pos, 3.0))]
    assert outside[0] < 0.5 * outside[1], outside


def test_scattered_weights_interpolate_linearly_inside_and_along_the_rim_outside():
    rng = np.random.default_rng(0)
    nodes = rng.uniform(-1, 1, (30, 2))
    points = rng.uniform(-1.3, 1.3, (200, 2))
    w = scattered_weights(points, nodes)
    assert np.allclose(w.sum(axis=1), 1) and (w >= 0).all()
    values = rng.normal(size=len(nodes))
    expected = LinearNDInterpolator(nodes, values)(points)
    inside = np.isfinite(expected)
    assert np.allclose(w[inside] @ values, expected[inside])
    # outside: the value at the nearest point of the hull's rim, linear between the edge's two nodes
    hull = Delaunay(nodes).convex_hull
    for p, row in zip(points[~inside], w[~inside], strict=True):
        a, b = nodes[hull[:, 0]], nodes[hull[:, 1]]
        t = np.clip(((p - a) * (b - a)).sum(1) / ((b - a) ** 2).sum(1), 0, 1)
        e = np.argmin(np.hypot(*(a + t[:, None] * (b - a) - p).T))
        assert np.count_nonzero(row) <= 2 and row @ values == pytest.approx((1 - t[e]) * values[hull[e, 0]] + t[e] * values[hull[e, 1]])
    assert np.allclose(scattered_weights(points, nodes[:2]).sum(axis=1), 1)  # two nodes: the nearest


def _half_occupied(pos: np.ndarray, coarse: np.ndarray, edge: float) -> dict[int, dict]:
    """Coarse QC of a sample that fills x > ``edge`` (80 % transmission) and leaves the rest empty."""
    return {int(g): {"transmission": 80.0 if pos[g, 1] > edge else 100.0, "dpc_y": 0.0, "dpc_x": 0.0, "usable": 1}
            for g in coarse}


def test_the_scattered_region_keeps_the_sample_the_footprint_reach_and_unknown_points():
    pos = fermat_spiral(300, 1.0)
    coarse = coarse_subset(pos, 3.0, outside_in=True)
    values = _half_occupied(pos, coarse, edge=1.0)
    lost = int(coarse[np.argmin(np.hypot(pos[coarse, 0] - 0, pos[coarse, 1] + 7))])  # far on the empty side
    values[lost]["usable"] = 0  # a coarse frame without usable QC
    keep, info = region_of_interest_scattered(pos, coarse, values, free_transmission=100.0)
    assert keep[pos[:, 1] > 1.0 + 3.0].all()  # the sample, well inside
    reach = (pos[:, 1] < 1.0) & (pos[:, 1] > 0.0)
    assert keep[reach].any()  # the empty side of the edge, where the beam's footprint still sees sample
    far = (pos[:, 1] < -3.0) & (np.hypot(*(pos - pos[lost]).T) > 2 * 3.0)  # beyond the unknown one's triangles
    assert not keep[far & ~np.isin(np.arange(len(pos)), coarse)].any()  # among empty coarse points only
    assert keep[np.hypot(*(pos - pos[lost]).T) < 1.0].all()  # next to the unknown one
    assert info["unknown_coarse_points"] == [lost] and keep[coarse].all()
    assert set(info["empty_coarse_points"]) == {int(g) for g in coarse if pos[g, 1] <= 1.0} - {lost}


def test_the_scattered_reference_patch_is_compact_inside_the_region_and_where_gradients_point_every_way():
    pos = fermat_spiral(300, 1.0)
    keep = pos[:, 1] > -1.0
    rng = np.random.default_rng(1)
    centre = np.array([2.0, 4.0])
    values = {}
    for g, p in enumerate(pos):
        near = np.hypot(*(p - centre)) < 3.0
        angle = rng.uniform(0, 2 * np.pi) if near else 0.3  # isotropic there, parallel edges elsewhere
        values[g] = {"dpc_y": 0.1 * np.sin(angle), "dpc_x": 0.1 * np.cos(angle), "usable": 1, "transmission": 90.0}
    patch = reference_patch_scattered(pos, keep, values)
    assert patch is not None and len(patch) == 25 and len(set(patch.tolist())) == 25 and keep[patch].all()
    d = np.hypot(*(pos[patch] - pos[patch[0]]).T)
    assert np.all(np.diff(d) >= 0)  # the centre first, then by distance: the first nine are the inner points
    assert np.hypot(*(pos[patch[0]] - centre)) < 2.0
    assert d.max() < 4.0  # compact: the 25 nearest of a spiral with unit spacing lie within about 3 steps
    assert reference_patch_scattered(pos, pos[:, 1] > 9.0, values) is None  # no 25 compact points fit there


def test_on_the_simulators_truth_a_fermat_region_saves_about_what_a_raster_region_saves():
    # the half-empty sample of tests/plans/test_adaptive.py, each coarse point's QC read off the truth: the share
    # of the beam the sample takes there; a point may be skipped when it takes less than the tolerance
    from ns_bluesky.instrument.scan import ScanPattern, positions
    from ns_bluesky.ptycho.adaptive import region_of_interest
    from ns_bluesky.sim import sample as sim_sample
    from ns_bluesky.sim.experiment import PtychoSimulation
    from ns_bluesky.sim.settings import SimConfig

    cfg = SimConfig(scan=ScanPattern(shape=(16, 16), overlap=0.7))
    sim = PtychoSimulation(cfg, image=sim_sample.with_empty_region(sim_sample.test_pattern(), "right"))
    beam, free = cfg.optics.beam_diameter_m(cfg.energy_eV), float((np.abs(sim.probe) ** 2).sum())

    def taken(grid):
        return np.array([1 - float((np.abs(sim.exit_wave(t)) ** 2).sum()) / free for t in grid])

    def qc(t):
        return {g: {"transmission": 100 * (1 - t[g]), "dpc_y": 0.0, "dpc_x": 0.0, "usable": 1} for g in range(len(t))}

    ras = positions(ScanPattern(shape=(16, 16), overlap=0.7), beam)
    fer = positions(ScanPattern(kind="fermat", num_points=144, overlap=0.7), beam)
    t_ras, t_fer = taken(ras), taken(fer)
    keep_ras, _ = region_of_interest((16, 16), 3, coarse_points((16, 16), 3), qc(t_ras), free_transmission=100.0)
    coarse = coarse_subset(fer, 3 * 0.3 * beam, outside_in=True)
    keep_fer, _ = region_of_interest_scattered(fer, coarse, qc(t_fer), free_transmission=100.0)
    for keep, t in ((keep_ras, t_ras), (keep_fer, t_fer)):
        assert (keep | (t < 0.03)).all()  # nothing the beam sees is skipped
    saved = [(~k).sum() / (t < 0.03).sum() for k, t in ((keep_ras, t_ras), (keep_fer, t_fer))]
    assert saved[1] >= 0.8 * saved[0], saved  # of what the truth lets each skip (raster 0.82, spiral 0.71)
