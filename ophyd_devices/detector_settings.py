"""The exposure/period rule every FCCD device keeps (simulated or EPICS), checked before a run opens.

A module of its own because the EPICS devices must not import the simulated one (the
"real-data path without simulator" contract), yet both must refuse the same settings the same way.
"""

from __future__ import annotations

import math

from ns_bluesky.errors import ParameterError


def check_exposure_and_period(name: str, exposure_s: float, period_s: float) -> None:
    """``ParameterError`` naming the detector unless exposure > 0, period >= 0 (0: free-run), period >= exposure."""
    if not (math.isfinite(exposure_s) and exposure_s > 0):
        raise ParameterError(f"{name}.acquire_time (exposure) must be > 0 s, got {exposure_s}")
    if not (math.isfinite(period_s) and period_s >= 0):
        raise ParameterError(f"{name}.acquire_period must be >= 0 s (0 = free-run), got {period_s}")
    if 0 < period_s < exposure_s:
        raise ParameterError(
            f"{name}: frame period {period_s} s (rate {1 / period_s:g} Hz) is shorter than the "
            f"exposure {exposure_s} s; lower the rate or the exposure"
        )
