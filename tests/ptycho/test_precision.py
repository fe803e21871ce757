"""Single precision throughout: an engine's state and what flows through its FFTs and step sizes stay
complex64 / float32 (a silent upcast to complex128 doubles the memory traffic and halves the FFT speed)."""

import numpy as np
import pytest

from ns_bluesky.ptycho.engines import engine
from tests.support.ptycho_set import small_set

SINGLE = {np.dtype(np.complex64), np.dtype(np.float32)}


def _recording(eng, seen: list):
    """Wrap the engine's FFT entry points and (LSQ-ML) its step sizes so every array they see is recorded."""
    arrays = eng.arrays
    inplace = arrays.fft2_inplace

    def fft2_inplace(a, inverse, kw):
        seen.append(("fft2_inplace", a.dtype))
        inplace(a, inverse, kw)

    arrays.fft2_inplace = fft2_inplace
    for name in ("_fft2", "_ifft2"):
        fn = getattr(eng, name)

        def wrapped(a, fn=fn, name=name):
            out = fn(a)
            seen.append((name, a.dtype))
            seen.append((name + " out", out.dtype))
            return out

        setattr(eng, name, wrapped)
    if hasattr(eng, "_steps"):
        steps = eng._steps

        def wrapped_steps(*products):
            seen.extend(("step products", p.dtype) for p in products)
            out = steps(*products)
            seen.extend(("steps", a.dtype) for a in out if a is not None)
            return out

        eng._steps = wrapped_steps


@pytest.mark.parametrize("name, params", [
    ("lsqml", {"position_start": 1, "position_every": 1, "probe_update_start": 1}),
    ("lsqml", {"likelihood": "amplitude", "probe_modes": 1, "momentum": 0.5}),
    ("dm", {}), ("raar", {}), ("epie", {}),
])
def test_state_and_intermediates_stay_single_precision(name, params):
    data, _, probe, _ = small_set()
    eng = engine(name, threads=2, **params)
    eng.prepare(data, probe)
    seen: list = []
    _recording(eng, seen)
    eng.iterate(4)
    state = {"obj": eng.obj, "probe": eng.probe, "amp": eng.amp, "ry": eng.ry, "rx": eng.rx, "weights": eng.weights}
    for extra in ("modes", "_num", "_ill", "psi", "reflected"):
        if getattr(eng, extra, None) is not None:
            state[extra] = getattr(eng, extra)
    for buf in getattr(eng, "_store", None) or ():
        state["_store"] = buf
    wide = {k: v.dtype for k, v in state.items() if v.dtype not in SINGLE}
    assert not wide, f"{name}: state in double precision: {wide}"
    assert {k for k, _ in seen} >= ({"fft2_inplace", "steps"} if name == "lsqml" else {"_fft2"})
    wide = sorted({(k, str(d)) for k, d in seen if d not in SINGLE})
    assert not wide, f"{name}: intermediates in double precision: {wide}"


def test_the_check_catches_an_upcast():
    """The recorder sees what the engine passes: a complex128 probe slipped in would be reported."""
    data, _, probe, _ = small_set()
    eng = engine("dm", threads=1)
    eng.prepare(data, probe)
    seen: list = []
    _recording(eng, seen)
    eng.probe = eng.probe.astype(np.complex128)
    eng.iterate(1)
    assert ("_fft2", np.dtype(np.complex128)) in seen
