"""The engines' array namespace (backend.arrays): the numpy path's window operations against plain slicing,
and the cupy path's (all windows at once by fancy indexing) run on numpy arrays against the numpy path."""

import gc
import sys
import weakref
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.fft

from ns_bluesky.ptycho import backend
from ns_bluesky.ptycho.backend import CupyArrays, CupyWindows, NumpyArrays, arrays
from tests.support.ptycho_set import small_set as _data

N, GRID = 8, (40, 44)


@pytest.fixture
def fake_cupyx(monkeypatch):
    """cupyx.scatter_add is numpy's unbuffered add.at: the cupy windows then run on numpy arrays."""
    monkeypatch.setitem(sys.modules, "cupyx", SimpleNamespace(scatter_add=np.add.at))


def _setup(seed=0, frames=12):
    rng = np.random.default_rng(seed)
    corners = np.floor(rng.uniform(0, [GRID[0] - N - 1, GRID[1] - N - 1], (frames, 2)))
    grid = (rng.normal(size=GRID) + 1j * rng.normal(size=GRID)).astype(np.complex64)
    a = (rng.normal(size=(frames, N, N)) + 1j * rng.normal(size=(frames, N, N))).astype(np.complex64)
    return corners, grid, a


def _windows(kind, corners):
    return (NumpyArrays(np) if kind == "numpy" else CupyArrays(np)).windows(corners, N)


def _reference(corners, grid):
    return np.stack([grid[int(y) : int(y) + N, int(x) : int(x) + N] for y, x in corners])


@pytest.mark.parametrize("kind", ["numpy", "cupy"])
def test_window_operations_give_what_slicing_gives(kind, fake_cupyx):
    corners, grid, a = _setup()
    win = _windows(kind, corners)
    assert isinstance(win, CupyWindows) == (kind == "cupy")
    idx = np.array([3, 0, 7, 7, 11])  # a frame twice: its windows add up twice
    ref = _reference(corners[idx], grid)
    np.testing.assert_array_equal(win.patches(grid, idx), ref)
    out = np.empty((len(idx), N, N), np.complex64)
    win.gather(grid, idx, idx, out)
    np.testing.assert_array_equal(out, ref)
    win.apply(np.multiply, a[idx], grid, idx, idx, out)
    np.testing.assert_array_equal(out, a[idx] * ref)
    win.apply(np.multiply, a[:1], grid, idx, idx, out)  # one frame for all
    np.testing.assert_array_equal(out, a[:1] * ref)
    real = np.empty((len(idx), N, N), np.float32)
    win.apply(np.abs, None, grid, idx, idx, real)
    np.testing.assert_array_equal(real, np.abs(ref))
    np.testing.assert_allclose(win.dots(grid, a[idx], idx, idx), (ref.conj() * a[idx]).real.sum(axis=(-2, -1)), rtol=1e-5)
    np.testing.assert_allclose(win.dots(grid.real.copy(), real, idx, idx), (ref.real * real).sum(axis=(-2, -1)), rtol=1e-5)
    for target, values in ((np.zeros(GRID, np.complex64), a[idx]), (np.zeros(GRID, np.float32), real)):
        want = target.copy()
        for (y, x), v in zip(corners[idx].astype(int), values, strict=True):
            want[y : y + N, x : x + N] += v
        win.scatter_add(target, idx, values)
        np.testing.assert_allclose(target, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(win.at_corners(grid), grid[corners[:, 0].astype(int), corners[:, 1].astype(int)])


@pytest.mark.parametrize("kind", ["numpy", "cupy"])
def test_moved_windows_follow_their_corners(kind, fake_cupyx):
    corners, grid, _ = _setup()
    win = _windows(kind, corners)
    corners[[2, 5]] = [[1, 2], [30, 31]]
    win.move(np.array([2, 5]), corners[[2, 5]])
    np.testing.assert_array_equal(win.patches(grid, np.arange(len(corners))), _reference(corners, grid))
    assert win.slices(5) == (slice(30, 30 + N), slice(31, 31 + N))


def test_in_place_ffts_and_the_backends_policies():
    ns = arrays("numpy")
    assert isinstance(ns, NumpyArrays) and ns.xp is np and ns.fft is scipy.fft
    assert ns.serial_fft_kw == {"workers": 1} and CupyArrays.serial_fft_kw == {}  # cupyx's FFTs take no workers
    a = np.random.default_rng(1).normal(size=(3, N, N)).astype(np.complex64)
    b = a.copy()
    ns.fft2_inplace(b, False, {})  # unnormalised both ways, as FFTW's
    np.testing.assert_allclose(b, scipy.fft.fft2(a), rtol=1e-5, atol=1e-5)
    ns.fft2_inplace(b, True, {"workers": 1})
    np.testing.assert_allclose(b, a * N * N, rtol=1e-5, atol=1e-4)
    gpu = CupyArrays(np)  # one part, all of it at once
    assert ns.thread_parts(7, 4) == 1 and ns.thread_parts(8, 4) == 4 and gpu.thread_parts(100, 4) == 1
    assert ns.chunk_size(16, 100) == 16 and gpu.chunk_size(16, 100) == 100


@pytest.fixture(params=["fftw", "scipy"])
def fft_library(request, monkeypatch):
    """The numpy path's transforms on FFTW (skipped without pyfftw), then on scipy.fft (as without pyfftw)."""
    if request.param == "fftw" and backend.fftw_module() is None:
        pytest.skip("pyfftw is not installed (the 'fftw' extra)")
    if request.param == "scipy":
        monkeypatch.setattr(backend, "_pyfftw", False)
    return request.param


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_the_in_place_transform_is_the_same_with_fftw_or_without(fft_library, dtype):
    """FFTW where pyfftw is installed, scipy.fft where not or where FFTW would run without its vector
    instructions (a view off their alignment): the same transform on every layout the engines hand it."""
    ns, rng = arrays("numpy"), np.random.default_rng(2)
    tol = 1e-4 if dtype == np.complex64 else 1e-10
    whole = ns.empty((6, 32, 48), dtype)
    assert whole.ctypes.data % NumpyArrays.ALIGN == 0
    whole[:] = rng.normal(size=whole.shape) + 1j * rng.normal(size=whole.shape)
    raw = np.empty(whole.size + 1, dtype)  # one element off: 8 or 16 bytes past the vector alignment
    raw[1:] = whole.ravel()
    views = {"chunk": whole[2:5], "strided": whole[:, ::2], "off alignment": raw[1:].reshape(whole.shape)}
    for name, view in views.items():
        want = scipy.fft.fft2(view)
        ns.fft2_inplace(view, False, {"workers": 1})
        np.testing.assert_allclose(view, want, rtol=tol, atol=tol * np.abs(want).max(), err_msg=name)
        back = scipy.fft.ifft2(want) * (32 * 48 if name != "strided" else 16 * 48)
        ns.fft2_inplace(view, True, {"workers": 2})
        np.testing.assert_allclose(view, back, rtol=tol, atol=tol * np.abs(back).max(), err_msg=name)


def test_the_orthonormal_transform_leaves_its_input_alone(fft_library):
    """The engines' other transforms (single probes, the projection engines' stacks): orthonormal, a new array,
    from complex, real or broadcast input."""
    ns, rng = arrays("numpy"), np.random.default_rng(4)
    probe = (rng.normal(size=(N, N)) + 1j * rng.normal(size=(N, N))).astype(np.complex64)
    for a in (probe, probe[None] * np.ones((3, 1, 1), np.complex64), np.broadcast_to(probe, (2, N, N)),
              probe.real.copy(), probe.astype(np.complex128)):
        kept = np.array(a)
        got = ns.fft2(a, False, {"workers": 1})
        np.testing.assert_allclose(got, scipy.fft.fft2(kept, norm="ortho"), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ns.fft2(got, True, {}), kept, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(a, kept)


def test_the_plans_go_with_the_engines_buffers():
    """A plan holds the last arrays it ran on: a live worker that makes engine after engine must not keep the old
    ones' buffers (hundreds of MB at 1024 frames) alive through plans of its own."""
    if backend.fftw_module() is None:
        pytest.skip("pyfftw is not installed (the 'fftw' extra)")
    ns = arrays("numpy")
    buf = ns.empty((4, 32, 32), np.complex64)
    buf[:] = 1
    ns.fft2_inplace(buf[:2], False, {"workers": 1})
    ns.fft2_inplace(buf, True, {"workers": 2})
    assert buf[0, 5, 5] == 1024 and buf[2, 0, 0] == 1024 and buf[2, 5, 5] == 0  # unnormalised both ways
    root = buf
    while root.base is not None:
        root = root.base
    kept = weakref.ref(root)
    del buf, root, ns
    gc.collect()
    assert kept() is None


def test_threads_transform_at_once_each_with_its_own_plans():
    """A plan's arrays are swapped before each run: threads running the same shape at once must not share one."""
    ns, rng = arrays("numpy"), np.random.default_rng(3)
    frames = [(rng.normal(size=(4, 64, 64)) + 1j * rng.normal(size=(4, 64, 64))).astype(np.complex64)
              for _ in range(8)]
    want = [scipy.fft.fft2(f) for f in frames]

    def run(f):
        for _ in range(20):
            ns.fft2_inplace(f, False, {"workers": 1})
            ns.fft2_inplace(f, True, {"workers": 1})
            f /= np.float32(64 * 64)
        ns.fft2_inplace(f, False, {"workers": 1})
        return f

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(run, frames))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-3 * np.abs(w).max())


class _CupyOnNumpy(CupyArrays):
    """The cupy path's code on numpy arrays (numpy's own data addresses)."""

    _address = staticmethod(NumpyArrays._address)


# LSQ-ML: one thread (on numpy, threads scatter in whichever order they come) and the amplitude update (the
# Poisson one's I / |F psi|^2 magnifies rounding in the dark pixels of this noise-free set to ~1e-3)
LSQML = {"threads": 1, "likelihood": "amplitude", "position_start": 2, "position_every": 2}


@pytest.mark.parametrize("name, params", [("lsqml", LSQML), ("lsqml", {**LSQML, "probe_modes": 1, "momentum": 0.5}),
                                          ("rpie", {}), ("dm", {"chunk": 24, "threads": 2}), ("raar", {"threads": 2})])
def test_engines_on_the_cupy_path_agree_with_the_numpy_path(name, params, fake_cupyx, monkeypatch):
    """Every call the cupy branch makes, but on numpy arrays: whole slots at once, one thread part, windows by
    fancy indexing, scatter-adds. LSQ-ML's summation orders differ (chunks), so it agrees to float rounding only.
    Both on scipy.fft: FFTW's rounding differs, and this noise-free set's dark pixels magnify any rounding to ~1 %
    of the residual (measured: noise of 1e-7 on each transform's output does as much as FFTW)."""
    from ns_bluesky.ptycho.engines import base, engine

    monkeypatch.setattr(backend, "_pyfftw", False)

    data, _, probe, _ = _data()
    results = {}
    for kind in ("numpy", "cupy"):
        if kind == "cupy":
            monkeypatch.setattr(base, "arrays", lambda name: _CupyOnNumpy(np))
        eng = engine(name, probe_update_start=1, **params)
        eng.prepare(data, (probe * 0.7).astype(np.complex64))
        assert isinstance(eng.arrays, _CupyOnNumpy) == (kind == "cupy")
        res = eng.iterate(6)
        results[kind] = (eng.finalize()[0], res, eng.origins.copy())
    # measured: rPIE, DM and RAAR identical; LSQ-ML to 5e-6 (object), 5e-7 (residuals), 8e-7 px (positions)
    np.testing.assert_allclose(results["cupy"][1], results["numpy"][1], rtol=1e-5)
    np.testing.assert_allclose(results["cupy"][0], results["numpy"][0], rtol=0, atol=1e-4)
    np.testing.assert_allclose(results["cupy"][2], results["numpy"][2], rtol=0, atol=1e-4)

