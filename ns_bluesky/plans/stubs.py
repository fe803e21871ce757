"""Plan stubs every ptychography plan shares: the scan's layout, the start document's metadata, one step.

Public, as ``bluesky.plan_stubs`` is, so that ``ptycho_scan``, ``adaptive_ptycho`` and a
facility's own plans lay out, describe and measure a point the same way (bluesky's
``one_nd_step`` serves its scans likewise). Parameters are checked before a run opens,
so a typo never leaves a half-written run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from bluesky.utils import Msg, MsgGenerator
from ophyd.utils import LimitError

from ..errors import ParameterError
from ..instrument.optics import ZonePlateOptics
from ..instrument.scan import ScanPattern
from ..instrument.scan import positions as pattern_positions
from ..instrument.units import ELECTRON_VOLT_J, wavelength_m

__all__ = ["check_count", "check_detector", "detector_metadata", "merge_caller_md", "ptycho_metadata", "ptycho_step", "scan_layout", "scan_metadata",
           "scan_positions"]


def detector_metadata(det) -> dict[str, Any]:
    g = det.geometry
    return {
        "detector_name": det.name,
        "detector_distance_m": g.distance_m,
        "detector_pixel_size_m": [g.pixel_size_m, g.pixel_size_m],
        "detector_raw_shape": list(g.raw_shape),
        "detector_image_shape": list(g.image_shape),
        "detector_geometry": g.model_dump(mode="json"),
        "exposure_s": det.acquire_time.get(),
        "frame_period_s": det.acquire_period.get(),
    }


def ptycho_metadata(det, optics=None) -> dict[str, Any]:
    """What a reconstruction needs from the devices: geometry, exposure, energy and probe optics."""
    md = detector_metadata(det)
    if optics is not None:
        energy = optics.energy.get()
        d, dr = optics.diameter.get(), optics.outer_zone_width.get()
        lam = wavelength_m(energy)
        md.update(
            energy_eV=energy,
            energy_J=energy * ELECTRON_VOLT_J,
            wavelength_m=lam,
            probe_optics={
                "kind": "fresnel_zone_plate",
                "diameter_m": d,
                "outer_zone_width_m": dr,
                "central_stop_diameter_m": optics.central_stop_diameter.get(),
                "defocus_m": optics.defocus.get(),
                "focal_length_m": d * dr / lam,
            },
        )
        g = det.geometry
        md["object_pixel_size_m"] = g.distance_m * lam / (g.image_shape[0] * g.pixel_size_m)
    return md


def check_count(num: Any, name: str = "num") -> int:
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
        raise ParameterError(f"{name} must be a whole number of frames >= 1, got {num!r}")
    return int(num)


def check_detector(det) -> None:
    validate = getattr(det, "validate_settings", None)
    if validate is not None:
        validate()


def check_room(det, frames: int) -> None:
    """Before a run opens: a detector that writes files (``det.check_room``) refuses a run whose ``frames``
    do not fit on its disk (``DiskFullError``), instead of failing in the middle of it."""
    room = getattr(det, "check_room", None)
    if callable(room):
        room(int(frames))


def scan_positions(
    pattern: str = "raster",
    *,
    shape: Sequence[int] = (40, 40),
    num_points: int | None = None,
    step: float | None = None,
    overlap: float | None = None,
    jitter: float = 0.0,
    center: Sequence[float] = (0.0, 0.0),
    beam_diameter_m: float | None = None,
    seed: int = 0,
) -> tuple[ScanPattern, np.ndarray]:
    """Validated pattern and its planned (y, x) positions in metres, for a plan or a preview."""
    if pattern not in ("raster", "fermat"):
        raise ParameterError(f"pattern must be 'raster' or 'fermat', got {pattern!r}")
    if len(shape) != 2 or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in shape):
        raise ParameterError(f"shape must be two whole numbers >= 1 (rows, columns), got {tuple(shape)!r}")
    if num_points is not None:
        check_count(num_points, "num_points")
    if step is not None and not (np.isfinite(step) and step > 0):
        raise ParameterError(f"step must be a positive length in metres, got {step!r}")
    if overlap is not None and not 0 <= overlap < 1:
        raise ParameterError(f"overlap must be a fraction in [0, 1), got {overlap!r}")
    if step is not None and overlap is not None:
        raise ParameterError("give step or overlap, not both")
    if jitter < 0:
        raise ParameterError(f"jitter must be >= 0 m, got {jitter!r}")
    spec = ScanPattern(
        kind=pattern,
        shape=tuple(int(n) for n in shape),
        num_points=num_points,
        step_m=step,
        overlap=overlap,
        jitter_m=jitter,
        center_m=tuple(float(c) for c in center),
    )
    return spec, pattern_positions(spec, beam_diameter_m or 0.0, seed=seed)


def ptycho_step(det, stage, y: float, x: float) -> MsgGenerator:
    """One point: checkpoint, move both axes, expose, record detector and stage readbacks.

    The messages ``bps.checkpoint``, ``bps.mv`` and ``bps.trigger_and_read`` would send,
    yielded directly: each stub call formats the whole Python stack (bluesky's
    ``Plan`` wrapper), which costs about a tenth of a 100 frames/s budget.
    """
    yield Msg("checkpoint")  # Ctrl-C pauses here, between points, not at the end of the scan
    yield Msg("set", stage.y, y, group="ptycho-move")
    yield Msg("set", stage.x, x, group="ptycho-move")
    yield Msg("wait", None, group="ptycho-move")
    yield Msg("trigger", det, group="ptycho-trigger")
    yield Msg("wait", None, group="ptycho-trigger")
    yield Msg("create", name="primary")
    yield Msg("read", det)
    yield Msg("read", stage)
    yield Msg("save")


def scan_layout(det, stage, optics, pattern: str, **scan) -> tuple[ZonePlateOptics, ScanPattern, np.ndarray, dict]:
    """What every ptychography plan settles before a run opens: the detector's settings, the probe optics
    (required: a reconstruction needs them), the positions (within the stage's limits) and the step."""
    check_detector(det)
    if optics is None:
        raise ParameterError(
            "optics is required: the start document must record the energy and probe optics a reconstruction "
            "needs (pass the beamline's ZonePlateOptics device, e.g. optics=bl.optics, or lend it to every plan of "
            "the session once: ns_bluesky.plans.use_session_defaults(optics=bl.optics))"
        )
    zp = ZonePlateOptics(
        diameter_m=optics.diameter.get(),
        outer_zone_width_m=optics.outer_zone_width.get(),
        central_stop_diameter_m=optics.central_stop_diameter.get(),
        defocus_m=optics.defocus.get(),
    )
    beam = zp.beam_diameter_m(optics.energy.get())
    spec, planned = scan_positions(pattern, beam_diameter_m=beam, **scan)
    try:
        stage.check_positions(planned)
    except LimitError as exc:
        raise ParameterError(f"positions beyond the stage limits: {exc}") from None
    scan_md = spec.model_dump(mode="json")
    step, overlap = scan.get("step"), scan.get("overlap")
    scan_md["step_m"] = step if step is not None else beam * (1 - (0.7 if overlap is None else overlap))
    scan_md["beam_diameter_m"] = beam
    return zp, spec, planned, scan_md


def scan_metadata(det, stage, optics, scan_md: dict, planned: np.ndarray, sample: str | None, dark_uid: str | None) -> dict:
    """The start document's part every ptychography plan shares: what a reconstruction reads."""
    return {
        "detectors": [det.name],
        "motors": [stage.y.name, stage.x.name],
        "purpose": "ptychography",
        "sample_name": sample,
        "dark_uid": dark_uid,
        "scan": scan_md,
        "planned_positions_m": planned.tolist(),
        "positions_order": ["y", "x"],
        "positions_convention": "sample translation; the probe's position on the sample is minus this",
        "hints": {"dimensions": [([stage.x.name], "primary"), ([stage.y.name], "primary")]},
        **ptycho_metadata(det, optics),
    }


def merge_caller_md(md: dict, caller: dict | None) -> dict:
    """The caller's ``md`` wins; a sample given as ``sample`` there still names the run."""
    md = {**md, **(caller or {})}
    if md.get("sample_name") is None:
        md["sample_name"] = md.get("sample", "unnamed")
    return md
