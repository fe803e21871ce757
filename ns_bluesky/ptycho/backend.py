"""Array backends: numpy (scipy.fft on all cores) or cupy, chosen by name, and the engines' array namespace
(:func:`arrays`): every difference between the two that the reconstruction engines see."""

from __future__ import annotations

import os
import threading
from types import ModuleType
from typing import ClassVar

import numpy as np

from ..errors import ParameterError

_pyfftw: ModuleType | bool | None = None  # None: not tried yet; False: not installed


def fftw_module() -> ModuleType | None:
    """pyfftw (the 'fftw' extra, which both make targets install) for the engines' transforms on numpy, or None
    without it (scipy.fft then). Imported on first use, not with this module: it takes 0.6-0.8 s here (its
    interfaces import dask), which a process that never reconstructs should not pay."""
    global _pyfftw
    if _pyfftw is None:
        try:
            import pyfftw
        except ImportError:  # pragma: no cover - installed by both make targets
            pyfftw = False
        _pyfftw = pyfftw
    return _pyfftw or None


def get_xp(name: str = "numpy") -> ModuleType:
    """The array module for ``--backend``; cupy needs the ``gpu`` extra and a GPU."""
    if name == "numpy":
        return np
    if name == "cupy":
        try:
            import cupy
        except ImportError:
            raise ParameterError("backend 'cupy' needs the gpu extra: pip install 'ns-bluesky[gpu]'") from None
        try:
            cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:
            raise ParameterError(f"backend 'cupy': no usable GPU ({exc})") from None
        return cupy
    raise ParameterError(f"unknown backend {name!r}; use 'numpy' or 'cupy'")


def fft_module(xp: ModuleType):
    """scipy.fft for numpy (all cores), cupyx.scipy.fft for cupy."""
    if xp is np:
        import scipy.fft

        return scipy.fft
    import cupyx.scipy.fft

    return cupyx.scipy.fft


_fft_threads: int | None = None  # this process's FFT threads; None: every core


def set_fft_threads(n: int | None) -> None:
    """Run this process's scipy FFTs on ``n`` threads (None: all cores).

    A frame worker is one of several processes sharing the cores: a second FFT thread
    in each only adds hand-offs (one thread: frame-worker CPU -7 % on a 30 x 30 rate-0
    demo, 6.64-6.66 against 7.06-7.31 s). pocketfft splits a batch of 1-D transforms
    between threads, so the values do not change.
    """
    global _fft_threads
    if n is not None and n < 1:
        raise ParameterError(f"FFT threads must be >= 1 (or None for all cores), got {n}")
    _fft_threads = n


def fft_workers(xp: ModuleType) -> dict:
    return {"workers": _fft_threads or os.cpu_count() or 1} if xp is np else {}


def asnumpy(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


# ------------------------------------------------------------------------------------- the engines' namespace
def arrays(name: str = "numpy") -> Arrays:
    """The array namespace of the backend ``name``: everything the engines do differently on numpy and cupy."""
    xp = get_xp(name)
    return NumpyArrays(xp) if xp is np else CupyArrays(xp)


class Arrays:
    """What differs between numpy and cupy for the reconstruction engines, in one place.

    ``xp`` is the array module, ``fft`` its scipy-like FFT module and ``fft_kw`` the FFTs' keywords.
    The engines write one code path against this; a subclass per backend says how.
    """

    #: keywords for FFTs run one at a time in one thread (a thread's part of a batch, a single frame's)
    serial_fft_kw: ClassVar[dict] = {}

    def __init__(self, xp: ModuleType):
        self.xp = xp
        self.fft = fft_module(xp)
        self.fft_kw = fft_workers(xp)

    def thread_parts(self, count: int, threads: int) -> int:
        """Parts to split ``count`` frames into, one per thread."""
        raise NotImplementedError

    def chunk_size(self, requested: int, whole: int) -> int:
        """Frames per vectorised step in a thread's part of ``whole`` frames."""
        raise NotImplementedError

    def empty(self, shape: tuple, dtype) -> object:
        """An uninitialised array for the engines' transforms (numpy: on a cache line, where FFTW runs fastest)."""
        return self.xp.empty(shape, dtype)

    def fft2(self, a, inverse: bool, kw: dict):
        """Orthonormal 2-D FFT of each frame of ``a``, a new array."""
        fn = self.fft.ifft2 if inverse else self.fft.fft2
        return fn(a, axes=(-2, -1), norm="ortho", **kw)

    def fft2_inplace(self, a, inverse: bool, kw: dict) -> None:
        """2-D FFT of each frame of ``a``, written back into ``a``, unnormalised either way (as FFTW's): a forward
        and an inverse transform multiply by the frame's pixel count. Its caller folds the scale into a product
        it computes anyway: a pass over the frames is a tenth of an engine's time per transform."""
        fn = self.fft.ifft2 if inverse else self.fft.fft2
        r = fn(a, axes=(-2, -1), norm="forward" if inverse else "backward", overwrite_x=True, **kw)
        if self._address(r) != self._address(a):
            a[...] = r

    @staticmethod
    def _address(a) -> int:
        raise NotImplementedError

    def windows(self, corners: np.ndarray, n: int) -> Windows:
        """The ``n`` x ``n`` windows of frames on a grid whose top-left corners are ``corners`` (N, 2)."""
        raise NotImplementedError


class NumpyArrays(Arrays):
    """numpy: the element-wise work split over threads (numpy releases the GIL in its loops and FFTs) in
    cache-sized chunks, each thread's FFTs on one worker, and windows taken one by one as views."""

    serial_fft_kw: ClassVar[dict] = {"workers": 1}

    def __init__(self, xp: ModuleType):
        super().__init__(xp)
        fftw_module()  # its import now, where an engine is made, not in its first transform
        self._fftw = _FFTWPlans()  # an engine's own: its plans hold its buffers, which go with it

    def thread_parts(self, count: int, threads: int) -> int:
        return threads if count >= 2 * threads else 1

    def chunk_size(self, requested: int, whole: int) -> int:
        return requested

    @staticmethod
    def _address(a) -> int:
        return a.__array_interface__["data"][0]

    ALIGN = 64  # bytes: a cache line (FFTW, 16 frames of 128²: 0.51 ms at 64, 0.65 at 16 bytes past it)

    def empty(self, shape: tuple, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        raw = np.empty(nbytes + self.ALIGN, np.uint8)
        start = -raw.ctypes.data % self.ALIGN
        return raw[start : start + nbytes].view(dtype).reshape(shape)

    def fft2(self, a, inverse: bool, kw: dict) -> np.ndarray:
        a = np.asarray(a)
        if _FFTWPlans.takes(a):  # else no copy: scipy.fft below
            out = self.empty(a.shape, a.dtype)
            np.copyto(out, a)
            if self._fftw.run(out, inverse, kw.get("workers", 1)):
                real = out.view(out.real.dtype)  # the scale on the float view: half the multiplies
                real *= real.dtype.type(1 / np.sqrt(a.shape[-1] * a.shape[-2]))
                return out
        return super().fft2(a, inverse, kw)

    def fft2_inplace(self, a, inverse: bool, kw: dict) -> None:
        if self._fftw.run(a, inverse, kw.get("workers", 1)):
            return
        fn = self.fft.ifft2 if inverse else self.fft.fft2
        r = fn(a, axes=(-2, -1), norm="forward" if inverse else "backward", overwrite_x=True, **kw)
        if not np.may_share_memory(r, a):  # a bounds check, not a dict per call as _address builds
            a[...] = r

    def windows(self, corners: np.ndarray, n: int) -> Windows:
        return NumpyWindows(self.xp, corners, n)


class _FFTWPlans:
    """FFTW plans of the engines' in-place batched 2-D transforms, each thread its own.

    FFTW takes a 128² complex64 batch in half of pocketfft's time on this kind of host (16 frames, one
    thread: 0.51 against 1.05 ms), and the engines spend about half their time in these transforms.
    Plans are made with FFTW_ESTIMATE, which never writes the array it plans on (the engines' buffers
    hold data), and kept by everything a plan depends on: shape, strides, dtype, alignment, direction,
    threads. A plan's arrays are changed before each run, so two threads must not share one: each
    thread keeps its own. A plan holds the last arrays it ran on, so the plans are an engine's (its
    array namespace's), not the process's: a live worker's old engines' buffers must not outlive them.
    An array FFTW would take without its vector instructions (a view 8 bytes off their alignment runs
    3x slower) goes to scipy.fft instead, as does every array without pyfftw.
    """

    MAX_PLANS = 64  # per thread: the engines use a handful of chunk shapes; a caller cycling through more replans

    def __init__(self):
        self._tls = threading.local()

    @staticmethod
    def takes(a: np.ndarray) -> bool:
        """Whether FFTW is here and ``a`` is an array it transforms (complex frames); its alignment is run's to see."""
        return fftw_module() is not None and a.ndim >= 2 and a.dtype in (np.complex64, np.complex128) and a.size > 0

    def run(self, a: np.ndarray, inverse: bool, threads: int) -> bool:
        """Transform ``a`` in place (unnormalised); False where FFTW is not used for it (nothing done)."""
        if not self.takes(a):
            return False
        pyfftw = fftw_module()
        plans = getattr(self._tls, "plans", None)
        if plans is None:
            plans = self._tls.plans = {}
        key = (a.shape, a.strides, a.dtype.char, a.ctypes.data % 64, inverse, threads)
        plan = plans.get(key, False)
        if plan is False:
            if len(plans) >= self.MAX_PLANS:
                plans.clear()
            with _planning:
                plan = pyfftw.FFTW(a, a, axes=(-2, -1), direction="FFTW_BACKWARD" if inverse else "FFTW_FORWARD",
                                   flags=("FFTW_ESTIMATE",), threads=threads)
            plans[key] = plan = plan if plan.simd_aligned else None
        if plan is None:
            return False
        plan.update_arrays(a, a)
        plan.execute()
        return True


_planning = threading.Lock()  # FFTW's planner is not thread-safe


class CupyArrays(Arrays):
    """cupy: one part, the whole of it at once, windows by fancy indexing."""

    def thread_parts(self, count: int, threads: int) -> int:
        return 1

    def chunk_size(self, requested: int, whole: int) -> int:
        return whole

    @staticmethod
    def _address(a) -> int:
        return a.data.ptr

    def windows(self, corners: np.ndarray, n: int) -> Windows:
        return CupyWindows(self.xp, corners, n)


class Windows:
    """The ``n`` x ``n`` windows of N frames on an object-sized grid, at whole-pixel corners.

    ``y``, ``x``: the corners on the host (int64); ``dy``, ``dx``: the same on the device. Frame indices
    come as ``idx_h`` (host) and ``idx`` (device) where the caller has both, as ``idx`` (either) otherwise.
    """

    def __init__(self, xp: ModuleType, corners: np.ndarray, n: int):
        self.xp, self.n = xp, n
        self.y, self.x = corners.astype(np.int64).T
        self.dy, self.dx = xp.asarray(self.y), xp.asarray(self.x)

    def move(self, host: np.ndarray, corners: np.ndarray) -> None:
        """New corners for the frames ``host``."""
        self.y[host], self.x[host] = corners.astype(np.int64).T
        self.dy, self.dx = self.xp.asarray(self.y), self.xp.asarray(self.x)

    def slices(self, j: int) -> tuple[slice, slice]:
        """Frame ``j``'s window on the grid."""
        y, x, n = self.y[j], self.x[j], self.n
        return slice(y, y + n), slice(x, x + n)

    def at_corners(self, grid):
        """The grid's value at every frame's corner: (N,)."""
        return grid[self.dy, self.dx]

    def patches(self, grid, idx):
        """Copies of the frames' windows: (B, n, n)."""
        raise NotImplementedError

    def scatter_add(self, target, idx, values) -> None:
        """target[window_j] += values[j] for every frame j (overlapping windows add up)."""
        raise NotImplementedError

    def apply(self, fn, a, grid, idx_h, idx, out) -> None:
        """out[k] = fn(a[k], window of frame k on the grid), or fn(window) if ``a`` is None; ``a`` may
        have one frame for all."""
        raise NotImplementedError

    def dots(self, grid, a, idx_h, idx) -> np.ndarray:
        """Per frame k, Re sum conj(window of frame k on the grid) a[k] (``a`` may have one frame for all),
        as a host array."""
        raise NotImplementedError

    def gather(self, grid, idx_h, idx, out, scales=None) -> None:
        """out[k] = window of frame k on the grid, times ``scales[k]`` where given."""
        raise NotImplementedError


class NumpyWindows(Windows):
    """Window by window, as views of the grid: no copies of the windows, no index arrays. The corners come as
    Python ints (:meth:`_corners`): slicing with numpy integers costs several times more, per window."""

    def _corners(self, idx):
        idx = np.asarray(idx)
        return zip(self.y[idx].tolist(), self.x[idx].tolist(), strict=True)

    def patches(self, grid, idx):
        idx = np.asarray(idx)  # whole-window copies: far faster than element-wise fancy indexing
        windows = np.lib.stride_tricks.sliding_window_view(grid, (self.n, self.n))
        return windows[self.y[idx], self.x[idx]]

    def scatter_add(self, target, idx, values) -> None:
        n = self.n
        for k, (y, x) in enumerate(self._corners(idx)):
            target[y : y + n, x : x + n] += values[k]

    def apply(self, fn, a, grid, idx_h, idx, out) -> None:
        n, one = self.n, a is not None and len(a) == 1
        for k, (y, x) in enumerate(self._corners(idx_h)):
            win = grid[y : y + n, x : x + n]
            if a is None:
                fn(win, out=out[k])
            else:
                fn(a[0 if one else k], win, out=out[k])

    def dots(self, grid, a, idx_h, idx) -> np.ndarray:
        n = self.n  # straight from the windows, as float views
        one, w = len(a) == 1, 2 if grid.dtype.kind == "c" else 1
        gv, av = (grid.view(np.float32), a.view(np.float32)) if w == 2 else (grid, a)
        out = np.empty(len(idx_h))
        for k, (y, x) in enumerate(self._corners(idx_h)):
            out[k] = np.einsum("ij,ij->", gv[y : y + n, w * x : w * (x + n)], av[0 if one else k])
        return out

    def gather(self, grid, idx_h, idx, out, scales=None) -> None:
        n = self.n
        for k, (y, x) in enumerate(self._corners(idx_h)):
            out[k] = grid[y : y + n, x : x + n]
        if scales is not None:  # after the copies: numpy's products over a window's strided rows are slow
            np.multiply(out[: len(idx_h)], np.asarray(scales, out.dtype)[:, None, None], out=out[: len(idx_h)])


class CupyWindows(Windows):
    """All windows at once by fancy indexing (a loop over frames would launch a kernel per frame);
    overlapping windows add up with cupyx.scatter_add."""

    def __init__(self, xp: ModuleType, corners: np.ndarray, n: int):
        super().__init__(xp, corners, n)
        self.ar = xp.arange(n)

    def _index(self, idx):
        ar = self.ar
        return self.dy[idx][:, None, None] + ar[None, :, None], self.dx[idx][:, None, None] + ar[None, None, :]

    def patches(self, grid, idx):
        rows, cols = self._index(idx)
        return grid[rows, cols]

    def scatter_add(self, target, idx, values) -> None:
        import cupyx

        rows, cols = self._index(idx)
        if target.dtype.kind == "c":
            cupyx.scatter_add(target.real, (rows, cols), values.real)
            cupyx.scatter_add(target.imag, (rows, cols), values.imag)
        else:
            cupyx.scatter_add(target, (rows, cols), values)

    def apply(self, fn, a, grid, idx_h, idx, out) -> None:
        rows, cols = self._index(idx)
        win = grid[rows, cols]
        if a is None:
            fn(win, out=out)
        else:
            fn(a, win, out=out)

    def dots(self, grid, a, idx_h, idx) -> np.ndarray:
        rows, cols = self._index(idx)
        return asnumpy((self.xp.conj(grid[rows, cols]) * a).real.sum(axis=(-2, -1)))

    def gather(self, grid, idx_h, idx, out, scales=None) -> None:
        rows, cols = self._index(idx)
        if scales is None:
            out[...] = grid[rows, cols]
        else:
            self.xp.multiply(grid[rows, cols], scales[:, None, None], out=out)
