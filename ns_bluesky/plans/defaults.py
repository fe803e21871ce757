"""What a beamline session lends its plans: the beamline's optics, and the dark run it took last.

Why: the IPython profile knows the beamline's zone-plate optics and sees every dark run
it takes, yet each scan had to be told both (``optics=optics, dark_uid=dark``), and a scan
typed without them failed. A session calls :func:`use_session_defaults` once (the profile
does, with its ``optics``); from then on ``RE(ptycho_scan(fccd, stage, shutter,
shape=(10, 10)))`` takes those optics, and the latest dark run of the same detector at the
same exposure, as if they were passed. The start document records them as before, and
``session_defaults`` in it names what came from the session.

A script that never calls :func:`use_session_defaults` sees nothing here: it passes
``optics`` (or gets the :class:`~ns_bluesky.errors.ParameterError` that says so) and its
dark runs are not remembered. Arguments always win over the session's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DarkRecord", "SessionDefaults", "clear_session_defaults", "remember_dark", "resolve_dark", "resolve_feedback", "resolve_optics",
           "session_defaults", "use_session_defaults"]


@dataclass(frozen=True)
class DarkRecord:
    """A dark run the session took: its uid, and the exposure it was taken at (a dark matches only that)."""

    uid: str
    exposure_s: float


@dataclass
class SessionDefaults:
    """The session's optics device (None: none lent) and its latest dark run per detector name."""

    optics: Any = None
    feedback: Any = None
    remember_darks: bool = False
    darks: dict[str, DarkRecord] = field(default_factory=dict)


_session = SessionDefaults()


def use_session_defaults(*, optics=None, feedback=None, remember_darks: bool = True) -> SessionDefaults:
    """Lend ``optics`` (and the pipeline's ``feedback``, for ``adaptive_ptycho``) to every plan of this process
    that is not given its own, and (``remember_darks``) let each successful ``dark_frames`` run become the dark
    of later scans; returns the defaults."""
    global _session
    _session = SessionDefaults(optics=optics, feedback=feedback, remember_darks=remember_darks)
    return _session


def clear_session_defaults() -> None:
    """Back to no defaults: plans need their optics passed again, and no dark is remembered."""
    global _session
    _session = SessionDefaults()


def session_defaults() -> SessionDefaults:
    return _session


def _exposure_s(det) -> float | None:
    try:
        return float(det.acquire_time.get())
    except (AttributeError, TypeError, ValueError):
        return None


def remember_dark(det, uid: str) -> None:
    """Called by ``dark_frames`` when its run has closed: the session's dark for ``det`` from now on."""
    exposure = _exposure_s(det)
    if _session.remember_darks and uid and exposure is not None:
        _session.darks[det.name] = DarkRecord(uid, exposure)


def resolve_optics(optics, used: dict[str, str]):
    """``optics`` when given, else the session's (noted in ``used``); None when neither."""
    if optics is None and _session.optics is not None:
        used["optics"] = f"session: {getattr(_session.optics, 'name', type(_session.optics).__name__)}"
        return _session.optics
    return optics


def resolve_feedback(feedback, used: dict[str, str]):
    """``feedback`` when given, else the session's (noted in ``used``); None when neither."""
    if feedback is None and _session.feedback is not None:
        used["feedback"] = f"session: {type(_session.feedback).__name__}"
        return _session.feedback
    return feedback


def resolve_dark(det, dark_uid: str | None, used: dict[str, str]) -> str | None:
    """``dark_uid`` when given, else the session's latest dark of ``det`` taken at its present exposure."""
    if dark_uid is not None or not _session.remember_darks:
        return dark_uid
    record, exposure = _session.darks.get(det.name), _exposure_s(det)
    if record is None:
        used["dark_uid"] = "none: the session has taken no dark run of this detector"
        return None
    if exposure is None or not math.isclose(record.exposure_s, exposure, rel_tol=1e-6):
        now = "an unknown time" if exposure is None else f"{exposure:g} s"
        used["dark_uid"] = (f"none: the session's dark {record.uid[:8]} was taken at {record.exposure_s:g} s, "
                            f"the detector now exposes {now}")
        return None
    used["dark_uid"] = f"session: the latest dark run of {det.name}"
    return record.uid
