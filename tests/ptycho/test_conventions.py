"""Position conventions: the eight orientations and the choice among them, on a small set made here
(the measured star's three orientations are in tests/apps/test_reconstruct_conventions.py)."""

import numpy as np
import pytest

from ns_bluesky.errors import ParameterError
from ns_bluesky.ptycho.conventions import ORIENTATIONS, choose_orientation, orientation
from tests.support.ptycho_set import small_set


def test_the_eight_orientations_are_distinct_and_named():
    names = {o.name for o in ORIENTATIONS}
    assert len(names) == 8 and {"probe", "sample", "probe, x/y swapped", "sample, x/y swapped"} <= names
    p = np.array([[1.0, 2.0], [3.0, -5.0]])  # (y, x)
    np.testing.assert_array_equal(orientation("probe").apply(p), p)
    np.testing.assert_array_equal(orientation("sample").apply(p), -p)
    swapped = next(o for o in ORIENTATIONS if o.name == "probe, x/y swapped")
    np.testing.assert_array_equal(swapped.apply(p), p[:, ::-1])
    for o in ORIENTATIONS:  # each is a signed permutation: applying its transpose undoes it
        np.testing.assert_array_equal(o.apply(p) @ o.matrix, p)
    with pytest.raises(ParameterError, match="auto, probe or sample"):
        orientation("stage")


@pytest.mark.parametrize("declared", ["probe", "sample", "probe, x/y swapped, -x"])
def test_the_choice_undoes_how_the_file_wrote_the_positions(declared):
    data, _, probe, _ = small_set()
    written = next(o for o in ORIENTATIONS if o.name == declared)
    # a file that wrote M @ probe positions: the orientation that reads them back is M's inverse (its transpose)
    file_positions = written.apply(data.origins_px)
    choice = choose_orientation(data.patterns, file_positions, probe, frames=64, iterations=6)
    np.testing.assert_array_equal(choice.best.matrix, written.matrix.T)
    assert choice.clear and choice.margin > 0.5, choice.summary()  # measured: > 100 % on this noise-free set
    assert len(choice.residuals) == 8 and "margin" in choice.summary()


def test_the_margin_is_reported(capsys):
    data, _, probe, _ = small_set()
    lines = []
    choice = choose_orientation(data.patterns, data.origins_px, probe, frames=64, iterations=4, progress=lines.append)
    assert len(lines) == 8 and lines[0].startswith("1/8 ")
    ranked = sorted(choice.residuals.values())
    assert choice.margin == pytest.approx((ranked[1] - ranked[0]) / ranked[0])


def test_a_probe_that_is_its_own_twin_leaves_the_sign_to_the_declaration():
    """Positions r -> -r are fitted exactly by the twin (object and probe conjugated, turned 180°): a real,
    centrosymmetric starting probe (from the mean pattern) cannot tell probe from sample, only the axes."""
    from ns_bluesky.ptycho.conventions import twin_symmetry
    from ns_bluesky.ptycho.layout import with_counts
    from ns_bluesky.ptycho.stxm import probe_from_patterns

    data, _, probe, _ = small_set()
    assert twin_symmetry(probe) < 0.9  # the set's probe has a curved phase
    start = with_counts(probe_from_patterns(data.patterns.mean(axis=0)), data.patterns).astype(np.complex64)
    assert twin_symmetry(start) > 0.99
    swapped = next(o for o in ORIENTATIONS if o.name == "probe, x/y swapped")
    choice = choose_orientation(data.patterns, orientation("sample").apply(swapped.apply(data.origins_px)), start)
    assert choice.twins and choice.clear and len(choice.candidates) == 4
    assert choice.best.name == "probe, x/y swapped"  # the axes found, the sign the declared one
    assert choice.residuals["probe"] == pytest.approx(choice.residuals["sample"])  # exact twins


@pytest.mark.parametrize("size", [96, 64])
def test_a_coarser_trial_grid_sees_the_same_window(size):
    """``size`` < n cuts the patterns and the probe alike to their central far field (the same window on a coarser
    grid, the positions scaled with it): on tike's measured star (128², positions as the probe's) the choice holds,
    margins 0.36 and 0.45 (0.35 at 128²). FFT-downsampled patterns (a smaller window) beside a probe cut in the
    far field chose wrong there: 'probe, x/y swapped, -y' at 96² (margin 0.000), 'probe, -x' at 64²."""
    from tests.support.star import star

    patterns, scan, probe = star()
    choice = choose_orientation(patterns, scan, probe, size=size)
    assert choice.best.name == "probe" and choice.clear and choice.size == size, choice.summary()
