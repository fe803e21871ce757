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


def fft_workers(xp: ModuleType) -> dict:
    return {"workers": os.cpu_count() or 1} if xp is np else {}


def asnumpy(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)
