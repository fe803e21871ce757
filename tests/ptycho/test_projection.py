"""DM and RAAR (engines/projection.py): on noise-free data with sub-pixel positions they settle, not diverge."""

import numpy as np
import pytest

from ns_bluesky.ptycho.engines import engine
from ns_bluesky.ptycho.metrics import nrmse
from tests.support.ptycho_set import small_set


@pytest.mark.parametrize("name", ["dm", "raar"])
def test_the_projection_engines_settle_on_noise_free_sub_pixel_data(name):
    # measured before the probe update's denominator was unshifted like its numerator: DM 0.0041 at iteration 4,
    # then 1.7 at 11 and 1e6 by 24 (the probe grew a spike; on whole-pixel positions it settled). Now: DM 0.0018,
    # RAAR 0.0044 after 40 iterations, both still falling or flat
    data, obj, probe, mask = small_set()
    eng = engine(name, threads=2)
    eng.prepare(data, probe)
    res = np.array(eng.iterate(40))
    assert np.isfinite(res).all()
    assert res[10:].max() < 0.02 and res[-1] < 0.006
    assert res[-1] < 1.5 * res[10:].min()  # no runaway at the end either
    est = eng.finalize()[0][: obj.shape[0], : obj.shape[1]]
    assert nrmse(est, obj, mask) < 0.2
