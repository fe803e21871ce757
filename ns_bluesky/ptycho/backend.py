"""Array backends: numpy (scipy.fft on all cores) or cupy, chosen by name."""

from __future__ import annotations

import os
from types import ModuleType

import numpy as np

from ..errors import ParameterError


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
