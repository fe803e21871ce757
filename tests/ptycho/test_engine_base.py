"""The engine base: options per engine that refuse what they do not know, the registry, an engine's state
declared before prepare, and the hooks through which the base tells an engine what changed."""


import numpy as np
import pytest
from pydantic import Field, ValidationError

from ns_bluesky.ptycho.engines import (
    DM,
    EPIE,
    LSQML,
    RAAR,
    RPIE,
    DMParams,
    Engine,
    EngineParams,
    EPIEParams,
    LSQMLParams,
    RAARParams,
    RPIEParams,
    base,
    engine,
    engine_names,
    register,
)
from tests.support.ptycho_set import small_set as _data


def test_each_engine_has_its_own_options():
    for cls, params in ((LSQML, LSQMLParams), (RPIE, RPIEParams), (EPIE, EPIEParams), (DM, DMParams), (RAAR, RAARParams)):
        assert cls.Params is params and issubclass(params, EngineParams)
        assert isinstance(engine(cls.name).params, params)
    assert engine("epie").params.alpha == 1.0 and engine("rpie").params.alpha == 0.1
    assert engine_names() == ["dm", "epie", "lsqml", "raar", "rpie"]


@pytest.mark.parametrize("name, params, message", [
    ("lsqml", {"batchsize": 4}, "batchsize\n  Extra inputs are not permitted"),
    ("dm", {"beta": 0.5}, "beta\n  Extra inputs are not permitted"),  # RAAR's, not DM's
    ("raar", {"alpha": 0.5}, "alpha\n  Extra inputs are not permitted"),  # DM's, not RAAR's
    ("rpie", {"alpha": 2}, "alpha\n  Input should be less than or equal to 1"),
    ("lsqml", {"likelihood": "gauss"}, "likelihood\n  String should match pattern"),
    ("lsqml", {"probe_modes": 0}, "probe_modes\n  Input should be greater than or equal to 1"),
    ("dm", {"chunk": "many"}, "chunk\n  Input should be a valid integer"),
])
def test_options_refuse_unknown_and_bad_fields_naming_them(name, params, message):
    with pytest.raises(ValidationError, match=message):
        engine(name, **params)


class _ShrinkParams(EngineParams):
    gain: float = Field(0.5, gt=0, le=1, description="step towards the modulus projection")


class _Shrink(Engine):
    """A minimal engine: the object moves part way towards each frame's modulus projection, frame by frame."""

    name = "test-shrink"
    Params = _ShrinkParams

    def __init__(self, params=None):
        super().__init__(params)
        self.moved: list[int] = []
        self.passes = 0

    def _iterate(self, active):
        err = 0.0
        for j in active:
            sl, idx = self.win.slices(j), [j]
            probe = self._probes(idx)
            psi = probe * self.obj[sl]
            new, e = self._modulus(psi, idx)
            p2 = np.abs(probe[0]) ** 2
            self.obj[sl] += self.params.gain * probe[0].conj() * (new - psi)[0] / p2.max()
            err += e
        self.passes += 1
        return err

    def _frames_moved(self, host):
        self.moved += list(host)


def test_an_engine_registered_elsewhere_is_made_by_name(monkeypatch):
    monkeypatch.setattr(base, "_ENGINES", dict(base._ENGINES))  # the registry as it was, after the test
    assert register(_Shrink) is _Shrink
    assert "test-shrink" in engine_names()
    with pytest.raises(ValidationError, match="gain\n  Input should be less than or equal to 1"):
        engine("test-shrink", gain=2)
    eng = engine("test-shrink", gain=0.8)
    assert isinstance(eng, _Shrink) and eng.params.gain == 0.8
    data, _, probe, _ = _data()
    eng.prepare(data, probe)
    res = eng.iterate(4)
    assert eng.passes == 4 and res == eng.residuals and res[-1] < 0.5 * res[0]
    eng.add_frames([3, 5], origins_px=np.asarray(data.origins_px)[[3, 5]] + 0.5)
    assert eng.moved == [3, 5]
    obj, out_probe, residuals = eng.finalize()
    assert obj.shape == eng.obj.shape and residuals == res


@pytest.mark.parametrize("name", ["lsqml", "rpie", "epie", "dm", "raar"])
def test_an_engine_declares_all_its_state_before_prepare(name):
    eng = engine(name, probe_update_start=0, **({"momentum": 0.5, "position_start": 1, "position_every": 1}
                                                  if name == "lsqml" else {}))
    declared = set(vars(eng))
    data, _, probe, _ = _data()
    eng.prepare(data, probe)
    eng.iterate(4)
    eng.add_frames([1], np.asarray(data.patterns)[[1]], np.asarray(data.origins_px)[[1]] + 0.3)
    eng.iterate(1)
    assert set(vars(eng)) == declared


@pytest.mark.parametrize("name", ["dm", "raar"])
def test_moved_frames_start_their_exit_waves_again(name):
    eng = engine(name)
    data, _, probe, _ = _data()
    eng.prepare(data, probe)
    eng.iterate(1)
    assert eng.psi_ready.all()
    eng.add_frames([2, 9], origins_px=np.asarray(data.origins_px)[[2, 9]] + 0.25)
    assert np.flatnonzero(~eng.psi_ready).tolist() == [2, 9]
    eng.iterate(1)
    assert eng.psi_ready.all()
