"""Adaptive acquisition: the pipeline's results steer the scan (Nanosurveyor's future work).

- :mod:`.feedback`: :class:`AdaptiveFeedback`, what the plan reads from the pipeline without waiting on it;
- :mod:`.decisions`: the region of interest, reference patch, drift and local error, as pure functions;
- :mod:`.plan`: :func:`adaptive_ptycho`, whose every decision is an event of the run's ``adaptive`` stream.
"""

from .decisions import (
    audit_reconstruction,
    coarse_points,
    data_frames,
    estimate_drift,
    local_errors,
    occupied_nrmse,
    reference_patch,
    region_of_interest,
)
from .feedback import AdaptiveFeedback
from .plan import DecisionLog, adaptive_ptycho

__all__ = [
    "AdaptiveFeedback",
    "DecisionLog",
    "adaptive_ptycho",
    "audit_reconstruction",
    "coarse_points",
    "data_frames",
    "estimate_drift",
    "local_errors",
    "occupied_nrmse",
    "reference_patch",
    "region_of_interest",
]
