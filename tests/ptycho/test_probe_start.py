"""The start probe from the data: the measured far field (the mean pattern), and the defocus a trial search picks."""

import numpy as np
import pytest
from scipy import ndimage

from ns_bluesky.errors import ParameterError
from ns_bluesky.ptycho import probe_start
from ns_bluesky.ptycho.engines import PtychoData, engine
from ns_bluesky.ptycho.metrics import nrmse
from ns_bluesky.ptycho.probe_start import (
    BRIGHT,
    COARSE,
    KEEP,
    WRONG_SIZE,
    cropped_far_field,
    defocus_range,
    far_field_from_data,
    far_field_share,
    trial_window,
    with_defocus,
)
from ns_bluesky.sim.farfield import farfield_set
from tests.support.ptycho_set import small_set


@pytest.fixture(scope="module")
def sim():
    """The engine tests' set: 144 frames of 64², a 20-pixel zone-plate beam, 10⁶ photons, start 20 % off in defocus."""
    return farfield_set(grid=12, frame=64, probe_diameter_px=20.0)


def _wider(probe: np.ndarray, factor: float) -> np.ndarray:
    """The probe magnified about the window's centre (as benchmarks/matrix.py's size1.5 start), same power."""
    n = probe.shape[-1]
    big = ndimage.zoom(probe.real, factor, order=1) + 1j * ndimage.zoom(probe.imag, factor, order=1)
    lo = (big.shape[0] - n) // 2
    out = big[lo : lo + n, lo : lo + n]
    return (out * np.sqrt((np.abs(probe) ** 2).sum() / (np.abs(out) ** 2).sum())).astype(np.complex64)


def _far(p):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(p), norm="ortho"))


def test_the_far_field_comes_from_the_mean_pattern_and_the_phase_from_the_start(sim):
    start = _wider(sim.probe_start, 1.5)
    mean = sim.patterns.mean(axis=0)
    probe = far_field_from_data(start, mean)
    bright = mean > BRIGHT * mean.max()
    np.testing.assert_allclose(np.abs(_far(probe))[bright], np.sqrt(mean[bright]), rtol=1e-3)
    assert np.abs(_far(probe))[~bright].max() < 1e-3 * np.sqrt(mean.max())
    lit = bright & (np.abs(_far(start)) > 1e-3 * np.abs(_far(start)).max())
    assert np.abs(np.angle(_far(probe)[lit] * np.conj(_far(start)[lit]))).max() < 1e-3  # the start's phase kept
    with pytest.raises(ParameterError, match="must both be"):
        far_field_from_data(start, mean[:32, :32])
    with pytest.raises(ParameterError, match="some counts"):
        far_field_from_data(start, np.zeros_like(mean))


def test_a_defocus_changes_the_far_fields_phase_only_and_undoes():
    rng = np.random.default_rng(0)
    p = (rng.normal(size=(32, 32)) + 1j * rng.normal(size=(32, 32))).astype(np.complex64)
    q = with_defocus(p, 40.0)
    np.testing.assert_allclose(np.abs(_far(q)), np.abs(_far(p)), rtol=1e-4, atol=1e-5)
    assert np.abs(q - p).max() > 0.1 * np.abs(p).max()
    np.testing.assert_allclose(with_defocus(q, -40.0), p, atol=1e-4)


def _nrmse_after(sim, start, iterations, **params):
    eng = engine("lsqml", threads=1, **params)
    eng.prepare(PtychoData(sim.patterns, sim.origins), start)
    eng.iterate(iterations)
    return nrmse(eng.finalize()[0][: sim.obj.shape[0], : sim.obj.shape[1]], sim.obj, sim.mask), eng


def test_a_start_probe_too_wide_converges_once_the_search_picks_its_defocus(sim):
    """From a start 1.5 times too wide LSQ-ML stalls (NRMSE 0.256 after 20 iterations, measured); with the
    far field from the data and the defocus the trials pick, 0.044 (0.033 after 40; the right size 0.010)."""
    start = _wider(sim.probe_start, 1.5)
    assert far_field_share(start, sim.patterns.mean(axis=0)) < WRONG_SIZE < far_field_share(sim.probe_start, sim.patterns.mean(axis=0))
    given, _ = _nrmse_after(sim, start, 20, probe_start="given")
    searched, eng = _nrmse_after(sim, start, 20)  # the default, auto: the start's far field is the wrong size
    assert given > 0.2
    assert searched < 0.06, eng.start_choice.summary()
    choice = eng.start_choice
    assert choice.phase not in (None, 0) and choice.residuals[choice.phase] < min(choice.residuals[0.0], choice.given_residual)
    assert "far field from the mean pattern" in choice.summary()


def test_a_start_that_already_fits_is_kept_as_given(sim):
    """The true probe is phase 0 of the default's (auto's) candidates, or a candidate of its own beside the data's
    far field (search), and none beats it by 3 %: it starts unchanged."""
    for how in ("auto", "search"):
        eng = engine("lsqml", threads=1, probe_start=how)
        eng.prepare(PtychoData(sim.patterns, sim.origins), sim.probe.astype(np.complex64))
        choice = eng.start_choice
        assert choice.phase is None and choice.given_residual <= 1.03 * min(choice.residuals.values()), choice.summary()
        np.testing.assert_array_equal(choice.probe, sim.probe.astype(np.complex64))
        assert "as given" in choice.summary()


def test_a_start_out_of_focus_is_brought_back_by_the_default_search(sim):
    """The true probe propagated by a far-field phase of +60 rad: as given LSQ-ML is lost (NRMSE 0.30 after 20
    iterations, measured); auto adds back -60 to within a fine step (-59 measured) and reaches 0.009."""
    start = with_defocus(sim.probe.astype(np.complex64), 60.0)
    given, _ = _nrmse_after(sim, start, 20, probe_start="given")
    searched, eng = _nrmse_after(sim, start, 20)
    choice = eng.start_choice
    step = defocus_range(sim.patterns.mean(axis=0)) / COARSE / 4
    assert given > 0.2 and searched < 0.02, choice.summary()
    assert abs(choice.phase + 60.0) <= step, choice.summary()
    assert "as given, defocus phase" in choice.summary()


def test_the_trials_of_a_larger_window_run_on_its_central_far_field(monkeypatch):
    """A beam 80 pixels wide in 128² (its bright disc 24 pixels across the far field, as the 256² set of the engine
    matrix has 48 in 256²): with trials cut to 64² (the same window on a grid twice as coarse, where a far-field
    phase is a quarter as large) the search still brings a start 240 rad out of focus back to within a fine step."""
    monkeypatch.setattr(probe_start, "TRIAL_WINDOW", 64)
    sim = farfield_set(grid=8, frame=128, probe_diameter_px=80.0)
    mean = sim.patterns.mean(axis=0)
    assert trial_window(mean) == 64
    start = with_defocus(sim.probe.astype(np.complex64), 240.0)
    eng = engine("lsqml", threads=1, probe_start="search")
    eng.prepare(PtychoData(sim.patterns, sim.origins), start)
    choice = eng.start_choice
    assert abs(choice.phase + 240.0) <= defocus_range(mean) / COARSE / 4, choice.summary()
    probe = cropped_far_field(sim.probe.astype(np.complex64), 64)
    assert probe.shape == (64, 64)
    power = (np.abs(sim.probe) ** 2).sum()
    np.testing.assert_allclose((np.abs(probe) ** 2).sum(), power, rtol=1e-3)  # the beam is inside the cut


def test_a_longer_trial_decides_what_the_short_screening_proposes():
    """The least of 65 short trials can beat phase 0 by the 3 % rule by chance: from the true probe of the MPI tests'
    set (32², one batch of its 64 frames) the screening found +13 rad 4 % better (measured); the longer trial,
    run for that proposal and phase 0 alone, keeps the probe as given."""
    data, _, probe, _ = small_set()
    eng = engine("lsqml", threads=1, batch_size=64, batch_doubling=0)
    eng.prepare(data, probe)
    choice = eng.start_choice
    proposal = min(choice.residuals, key=choice.residuals.get)
    assert proposal != 0 and choice.residuals[proposal] < KEEP * choice.residuals[0.0], choice.summary()
    assert set(choice.confirmed) == {proposal, 0.0} and choice.phase is None, choice.summary()
    assert "again with the longer trial" in choice.summary()
    np.testing.assert_array_equal(choice.probe, probe)


def test_a_start_with_an_object_takes_the_probe_as_given(sim):
    """A probe passed with its object (a refinement of a live image) belongs to it: no search, no new far field."""
    start = _wider(sim.probe_start, 1.5)
    obj = np.ones((sim.obj.shape[0] + 8, sim.obj.shape[1] + 8), np.complex64)
    probes = []
    for how in ("search", "given"):
        eng = engine("lsqml", threads=1, probe_start=how)
        eng.prepare(PtychoData(sim.patterns, sim.origins), start, obj)
        assert eng.start_choice is None
        probes.append(eng.finalize()[1])
    np.testing.assert_array_equal(*probes)


def test_the_search_keeps_to_its_time_budget_and_chooses_among_the_trials_it_ran(sim):
    """A budget too short for the grid: the trials nearest the start ran (phase 0 first), the rest are counted as cut,
    and the summary says so; a budget that holds not even one comparison keeps the probe as given."""
    start = with_defocus(sim.probe.astype(np.complex64), 60.0)
    eng = engine("lsqml", threads=1, start_search_s=0.3)
    eng.prepare(PtychoData(sim.patterns, sim.origins), start)
    choice = eng.start_choice
    assert choice.skipped > 0 and 0.0 in choice.residuals and len(choice.residuals) < 17, choice.summary()
    assert "cut by the time budget" in choice.summary()
    assert choice.seconds < 0.3 + 5  # a trial that started in time runs to its end
    eng = engine("lsqml", threads=1, probe_start="search", start_search_s=1e-9)
    eng.prepare(PtychoData(sim.patterns, sim.origins), start)
    assert eng.start_choice.phase is None and "held no comparison" in eng.start_choice.summary()
    np.testing.assert_array_equal(eng.start_choice.probe, start)
