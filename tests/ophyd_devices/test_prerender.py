"""The simulated IOC's frames drawn ahead (``ophyd_devices/ioc/prerender.py``) are the frames it would draw at
the trigger, bit for bit, and are used only when they are exactly those."""

from __future__ import annotations

import numpy as np

from ns_bluesky.ophyd_devices.ioc.prerender import Prerendered
from ns_bluesky.sim import PtychoSimulation
from ns_bluesky.sim.settings import SimConfig


def test_a_frame_drawn_ahead_is_the_frame_drawn_at_the_trigger():
    sim = PtychoSimulation(SimConfig(seed=3))
    ahead = Prerendered(sim)
    where = sim.planned[5]
    ahead.draw(tuple(where), 7, 0.05)
    taken = ahead.raw_frame(np.array(where), 7, 0.05)
    assert ahead.hits == 1
    np.testing.assert_array_equal(taken, sim.raw_frame(np.array(where), 7, 0.05))


def test_anything_else_is_drawn_as_before():
    sim = PtychoSimulation(SimConfig(seed=3))
    ahead = Prerendered(sim)
    where = sim.planned[5]
    for asked in [(sim.planned[6], 7, 0.05), (where, 8, 0.05), (where, 7, 0.06), (where + 1e-9, 7, 0.05)]:
        ahead.draw(tuple(where), 7, 0.05)
        got = ahead.raw_frame(np.array(asked[0]), asked[1], asked[2])
        np.testing.assert_array_equal(got, sim.raw_frame(np.array(asked[0]), asked[1], asked[2]))
    assert ahead.hits == 0 and ahead.drawn_ahead == 4
    dark = ahead.raw_frame(None, 2, 0.05)  # a dark frame never comes from ahead
    np.testing.assert_array_equal(dark, sim.raw_frame(None, 2, 0.05))
    assert ahead.planned is sim.planned  # the rest is the simulation's
