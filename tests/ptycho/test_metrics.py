"""metrics.relative_ramp: the linear phase between two objects, found where the mean phase step is biased."""

import numpy as np
import pytest

from ns_bluesky.ptycho.metrics import nrmse, relative_ramp, shift_image
from ns_bluesky.sim.sample import resample, transmission
from ns_bluesky.sim.sample import test_pattern as star_pattern  # (not collected as a test)


@pytest.mark.parametrize("ramp", [(0.0, 0.0), (0.004, -0.0025)])
def test_relative_ramp_is_found_on_a_sharp_phase_object_a_fraction_of_a_pixel_off(ramp):
    shape = (300, 280)
    obj = transmission(resample(star_pattern((512, 512)), shape), energy_eV=800.0, delta=2e-3, beta=1e-3, thickness_m=50e-9)
    rows, cols = np.indices(shape)
    mask = np.hypot(rows - 150, cols - 140) < 120
    # b: the object 0.2 / -0.15 px off, with the ramp taken away; the mean phase step between neighbours
    # (the estimate this replaced) reads (-0.0023, 0.0019) rad/px here where there is no ramp at all
    b = shift_image(obj, (0.2, -0.15)) * np.exp(-1j * (ramp[0] * rows + ramp[1] * cols))
    gy, gx = relative_ramp(obj, b, mask)
    assert abs(gy - ramp[0]) < 1e-4 and abs(gx - ramp[1]) < 1e-4
    # with the ramp removed the comparison sees only the sub-pixel shift, which nrmse registers
    assert nrmse(b * np.exp(1j * (gy * rows + gx * cols)), obj, mask) < 0.02
