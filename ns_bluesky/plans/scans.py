"""Bluesky plans for ptychography: dark frames and the ptychographic scan.

Small generators in the style of ``bluesky.plans``: parameters are checked before a run
opens, metadata is merged into ``_md`` with the caller's ``md`` winning, and the start
document carries everything a reconstruction needs, in SI units with the unit in each name.
The annotations are real types (no ``from __future__ import annotations``): the queue server
checks a queued plan's parameters against them before it runs (``ns-bluesky queue add``).
"""

from collections.abc import Sequence
from typing import Literal

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator

from .defaults import remember_dark, resolve_dark, resolve_optics
from .stubs import (
    check_count,
    check_detector,
    check_room,
    detector_metadata,
    merge_caller_md,
    ptycho_step,
    scan_layout,
    scan_metadata,
)

__all__ = ["dark_frames", "ptycho_scan"]


def dark_frames(det, shutter, num: int, *, md: dict | None = None) -> MsgGenerator[str]:
    """Take ``num`` frames with the shutter closed: the dark run a ptycho scan refers to.

    In a session with defaults (:func:`~ns_bluesky.plans.defaults.use_session_defaults`,
    as the IPython profile has), the run becomes the dark of later scans of ``det`` at the
    same exposure once it has closed.

    See Also
    --------
    ptycho_scan
    """
    num = check_count(num)
    check_detector(det)
    check_room(det, num)
    _md = {
        "plan_name": "dark_frames",
        "plan_args": {"det": repr(det), "shutter": repr(shutter), "num": num},
        "detectors": [det.name],
        "num_points": num,
        "num_intervals": num - 1,
        "purpose": "dark",
        "hints": {"dimensions": [(("time",), "primary")]},
        **detector_metadata(det),
    }
    _md.update(md or {})

    @bpp.stage_decorator([det])
    @bpp.run_decorator(md=_md)
    def inner():
        yield from bps.mv(shutter, "close")
        for _ in range(num):
            yield from bps.checkpoint()
            yield from bps.trigger_and_read([det])

    uid = yield from inner()  # raises, and nothing is remembered, when the run failed or was aborted
    remember_dark(det, uid)
    return uid


def ptycho_scan(
    det,
    stage,
    shutter,
    *,
    pattern: Literal["raster", "fermat"] = "raster",
    shape: Sequence[int] = (40, 40),
    num_points: int | None = None,
    step: float | None = None,
    overlap: float | None = None,
    jitter: float = 0.0,
    center: Sequence[float] = (0.0, 0.0),
    optics=None,  # required, unless the session lends its own (use_session_defaults)
    sample: str | None = None,
    dark_uid: str | None = None,
    md: dict | None = None,
) -> MsgGenerator[str]:
    """Ptychographic step scan: move the stage through a raster or Fermat spiral, one frame per point.

    Lengths are metres. ``step`` or ``overlap`` (fraction of the beam footprint, needs
    ``optics``) sets the spacing. The start document records the planned positions,
    the detector geometry, energy and probe optics, the sample name and ``dark_uid``
    (the dark run to subtract), so a reconstruction needs nothing else. In a session with
    defaults (the IPython profile), ``optics`` and ``dark_uid`` left out are the session's
    optics and its latest dark of ``det`` at this exposure; ``session_defaults`` in the
    start document says which.

    See Also
    --------
    dark_frames
    """
    used: dict[str, str] = {}
    optics, dark_uid = resolve_optics(optics, used), resolve_dark(det, dark_uid, used)
    _, spec, planned, scan_md = scan_layout(
        det, stage, optics, pattern, shape=shape, num_points=num_points, step=step, overlap=overlap, jitter=jitter, center=center
    )
    _md = {
        "plan_name": "ptycho_scan",
        "plan_args": {
            "det": repr(det),
            "stage": repr(stage),
            "shutter": repr(shutter),
            "pattern": pattern,
            "shape": list(shape),
            "num_points": num_points,
            "step": step,
            "overlap": overlap,
            "jitter": jitter,
            "center": list(center),
        },
        "num_points": len(planned),
        "num_intervals": len(planned) - 1,
        **scan_metadata(det, stage, optics, scan_md, planned, sample, dark_uid),
    }
    check_room(det, len(planned))
    if spec.kind == "raster":
        _md["shape"] = list(spec.shape)
    if used:
        _md["session_defaults"] = used
    _md = merge_caller_md(_md, md)

    @bpp.stage_decorator([det, stage])
    @bpp.run_decorator(md=_md)
    def inner():
        yield from bps.mv(shutter, "open")
        for y, x in planned:
            yield from ptycho_step(det, stage, y, x)
        yield from bps.mv(shutter, "close")

    def close_shutter():
        yield from bps.mv(shutter, "close")

    return (yield from bpp.finalize_wrapper(inner(), close_shutter()))
