"""Bluesky plans for ptychography: dark frames and the ptychographic scan.

Small generators in the style of ``bluesky.plans``: parameters are checked before a run
opens (so a typo never leaves a half-written run), metadata is merged into ``_md``
with the caller's ``md`` winning, and the start document carries everything a
reconstruction needs, in SI units with the unit in each name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.utils import Msg, MsgGenerator
from ophyd.utils import LimitError

from .adaptive import adaptive_ptycho  # noqa: F401  (re-exported: the plans live together)
from .config import ELECTRON_VOLT_J, ScanPattern, ZonePlateOptics, wavelength_m
from .errors import ParameterError
from .sim.scan import positions as pattern_positions

__all__ = ["dark_frames", "ptycho_scan", "ptycho_metadata", "scan_positions"]


def _detector_md(det) -> dict[str, Any]:
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
    md = _detector_md(det)
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


def _check_count(num: Any, name: str = "num") -> int:
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
        raise ParameterError(f"{name} must be a whole number of frames >= 1, got {num!r}")
    return int(num)


def _check_detector(det) -> None:
    validate = getattr(det, "validate_settings", None)
    if validate is not None:
        validate()


def dark_frames(det, shutter, num: int, *, md: dict | None = None) -> MsgGenerator[str]:
    """Take ``num`` frames with the shutter closed: the dark run a ptycho scan refers to.

    See Also
    --------
    ptycho_scan
    """
    num = _check_count(num)
    _check_detector(det)
    _md = {
        "plan_name": "dark_frames",
        "plan_args": {"det": repr(det), "shutter": repr(shutter), "num": num},
        "detectors": [det.name],
        "num_points": num,
        "num_intervals": num - 1,
        "purpose": "dark",
        "hints": {"dimensions": [(("time",), "primary")]},
        **_detector_md(det),
    }
    _md.update(md or {})

    @bpp.stage_decorator([det])
    @bpp.run_decorator(md=_md)
    def inner():
        yield from bps.mv(shutter, "close")
        for _ in range(num):
            yield from bps.checkpoint()
            yield from bps.trigger_and_read([det])

    return (yield from inner())


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
        _check_count(num_points, "num_points")
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


def _step(det, stage, y: float, x: float) -> MsgGenerator:
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


def _layout(det, stage, optics, pattern: str, **scan) -> tuple[ZonePlateOptics, ScanPattern, np.ndarray, dict]:
    """What every ptychography plan settles before a run opens: the detector's settings, the probe optics
    (required: a reconstruction needs them), the positions (within the stage's limits) and the step."""
    _check_detector(det)
    if optics is None:
        raise ParameterError(
            "optics is required: the start document must record the energy and probe optics a reconstruction "
            "needs (pass the beamline's ZonePlateOptics device, e.g. optics=bl.optics)"
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


def _scan_md(det, stage, optics, scan_md: dict, planned: np.ndarray, sample: str | None, dark_uid: str | None) -> dict:
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


def _with_caller_md(md: dict, caller: dict | None) -> dict:
    """The caller's ``md`` wins; a sample given as ``sample`` there still names the run."""
    md = {**md, **(caller or {})}
    if md.get("sample_name") is None:
        md["sample_name"] = md.get("sample", "unnamed")
    return md


def ptycho_scan(
    det,
    stage,
    shutter,
    *,
    pattern: str = "raster",
    shape: Sequence[int] = (40, 40),
    num_points: int | None = None,
    step: float | None = None,
    overlap: float | None = None,
    jitter: float = 0.0,
    center: Sequence[float] = (0.0, 0.0),
    optics=None,  # required; keyword for symmetry with the other settings
    sample: str | None = None,
    dark_uid: str | None = None,
    md: dict | None = None,
) -> MsgGenerator[str]:
    """Ptychographic step scan: move the stage through a raster or Fermat spiral, one frame per point.

    Lengths are metres. ``step`` or ``overlap`` (fraction of the beam footprint, needs
    ``optics``) sets the spacing. The start document records the planned positions,
    the detector geometry, energy and probe optics, the sample name and ``dark_uid``
    (the dark run to subtract), so a reconstruction needs nothing else.

    See Also
    --------
    dark_frames
    """
    _, spec, planned, scan_md = _layout(
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
        **_scan_md(det, stage, optics, scan_md, planned, sample, dark_uid),
    }
    if spec.kind == "raster":
        _md["shape"] = list(spec.shape)
    _md = _with_caller_md(_md, md)

    @bpp.stage_decorator([det, stage])
    @bpp.run_decorator(md=_md)
    def inner():
        yield from bps.mv(shutter, "open")
        for y, x in planned:
            yield from _step(det, stage, y, x)
        yield from bps.mv(shutter, "close")

    def close_shutter():
        yield from bps.mv(shutter, "close")

    return (yield from bpp.finalize_wrapper(inner(), close_shutter()))
