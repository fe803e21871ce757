"""Backend selection; the cupy path matches numpy to float32 tolerance where a GPU is present."""

import numpy as np
import pytest

from ns_bluesky.errors import ParameterError
from ns_bluesky.ptycho import preprocess as pp
from ns_bluesky.ptycho.backend import get_xp


def test_numpy_is_the_default_and_unknown_names_are_refused():
    assert get_xp() is np
    with pytest.raises(ParameterError, match="unknown backend 'torch'"):
        get_xp("torch")


def test_fft_threads_are_set_per_process_and_change_no_value():
    import os

    import scipy.fft

    from ns_bluesky.ptycho.backend import fft_workers, set_fft_threads

    x = np.random.default_rng(1).random((64, 480)).astype(np.float32)
    assert fft_workers(np) == {"workers": os.cpu_count()}
    every_core = scipy.fft.rfft(x, axis=-1, **fft_workers(np))
    try:
        set_fft_threads(1)
        assert fft_workers(np) == {"workers": 1}
        np.testing.assert_array_equal(scipy.fft.rfft(x, axis=-1, **fft_workers(np)), every_core)
        with pytest.raises(ParameterError, match="FFT threads must be >= 1"):
            set_fft_threads(0)
    finally:
        set_fft_threads(None)
    assert fft_workers(np) == {"workers": os.cpu_count()}


def _cupy_or_skip():
    try:
        return get_xp("cupy")
    except ParameterError as exc:
        pytest.skip(f"cupy path not tested here: {exc}")


def test_cupy_preprocessing_matches_numpy():
    cp = _cupy_or_skip()
    from ns_bluesky.instrument.detector import DetectorGeometry
    from ns_bluesky.sim import PtychoSimulation

    geom = DetectorGeometry()
    sim = PtychoSimulation()
    raw = np.stack([sim.raw_frame(sim.planned[i], i) for i in range(2)])
    for step in (lambda a, xp: pp.overscan_correct(a, geom, xp=xp), lambda a, xp: pp.remove_spikes(a, geom, xp=xp)):
        want = step(raw, np)
        got = cp.asnumpy(step(cp.asarray(raw), cp))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-2)
    img = sim.expected_photons(sim.planned[0])[None]
    np.testing.assert_allclose(cp.asnumpy(pp.fft_downsample(cp.asarray(img), 256, xp=cp)), pp.fft_downsample(img, 256), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", ["lsqml", "raar", "dm", "epie"])
def test_cupy_engines_match_numpy(name):
    _cupy_or_skip()
    from ns_bluesky.ptycho.engines import engine
    from tests.support.ptycho_set import small_set as _data

    data, obj, probe, mask = _data()
    results = {}
    for backend in ("numpy", "cupy"):
        eng = engine(name, backend=backend, probe_update_start=1)
        eng.prepare(data, (probe * 0.7).astype(np.complex64))
        res = eng.iterate(5)
        results[backend] = (eng.finalize()[0], res)
    np.testing.assert_allclose(results["cupy"][1], results["numpy"][1], rtol=2e-3)
    np.testing.assert_allclose(results["cupy"][0], results["numpy"][0], rtol=2e-3, atol=2e-3)
