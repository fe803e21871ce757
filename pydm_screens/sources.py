"""What the viewer shows, read from a CXI file or a catalog run (raw or derived), without Qt.

A scientist opens yesterday's result either as the CXI file the pipeline wrote or as a
run in the catalog; both give one :class:`ViewData`: named images, the error curve,
and the scan positions in the pixel coordinates of the image they are drawn on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ns_bluesky.errors import ParameterError
from ns_bluesky.io.cxi import read_cxi
from ns_bluesky.ptycho.layout import grid_origins


@dataclass
class ViewData:
    title: str
    images: dict[str, np.ndarray] = field(default_factory=dict)  # name -> 2-D float image, in display order
    residuals: np.ndarray = field(default_factory=lambda: np.zeros(0))
    positions_px: np.ndarray | None = None  # (N, 2) row, column on ``positions_on``
    positions_on: str | None = None
    notes: list[str] = field(default_factory=list)


def _on_grid(positions_m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Positions (y, x in metres) onto an image that spans them edge to edge (the STXM grid)."""
    lo, hi = positions_m.min(axis=0), positions_m.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return (positions_m - lo) / span * (np.array(shape) - 1)


def from_cxi(path: str | os.PathLike) -> ViewData:
    path = Path(path)
    data = read_cxi(path, lazy=True)
    view = ViewData(title=path.name)
    by_type = {img.data_type: img for img in data.images}
    obj, probe = by_type.get("object"), by_type.get("probe")
    if obj is not None:
        view.images["object phase"] = np.angle(obj.data).astype(np.float32)
        view.images["object amplitude"] = np.abs(obj.data).astype(np.float32)
    if probe is not None:
        p = probe.data[0] if probe.data.ndim == 3 else probe.data
        view.images["probe amplitude"] = np.abs(p).astype(np.float32)
    for img in data.images:
        if img.data_type not in ("object", "probe"):
            view.images[img.data_type] = np.abs(img.data).astype(np.float32)
    frames = data.frames
    if len(frames):
        view.images["first frame"] = np.asarray(frames[0], np.float32)
    with h5py.File(path) as f:
        key = "entry_1/ns_bluesky/reconstruction_residual"
        if key in f:
            view.residuals = np.asarray(f[key][()], np.float64)
    if obj is not None and probe is not None and len(data.translations_m):
        # where each probe window's centre lies on the object (the reconstruction's own grid)
        corners = grid_origins(data.translations_m[:, [1, 0]], obj.pixel_size_m[1])  # CXI translations: (x, y)
        view.positions_px = corners + view.images["probe amplitude"].shape[-1] / 2
        view.positions_on = "object phase"
    if not view.images:
        raise ParameterError(f"{path}: no object, probe, image or frames to show")
    return view


def _last(stream, key: str) -> np.ndarray | None:
    try:
        node = stream[key]
    except KeyError:
        return None
    return np.asarray(node[-1], np.float32) if node.shape[0] else None


def from_run(run) -> ViewData:
    """A derived run shows its last reconstruction and STXM; a raw run its first frame and positions."""
    start = run.metadata["start"]
    streams = set(run)
    if "parent_uid" in start:
        view = ViewData(title=f"derived run {start['uid'][:8]} of scan {start.get('parent_scan_id', '?')}")
        if "reconstruction" in streams:
            rec = run["reconstruction"]
            for key, name in (("object_phase", "object phase"), ("object_amplitude", "object amplitude"), ("probe_amplitude", "probe amplitude")):
                image = _last(rec, key)
                if image is not None:
                    view.images[name] = image
            view.residuals = np.asarray(rec["residual"].read(), np.float64)
        if "stxm" in streams:
            for key in ("transmission", "dpc_x", "dpc_y"):
                image = _last(run["stxm"], key)
                if image is not None:
                    view.images[f"STXM {key}"] = image
        if "frames_qc" in streams and "STXM transmission" in view.images:
            qc = run["frames_qc"].read()
            pos = np.stack([np.asarray(qc["position_y"]), np.asarray(qc["position_x"])], axis=1)
            view.positions_px = _on_grid(pos, view.images["STXM transmission"].shape)
            view.positions_on = "STXM transmission"
            bad = int(len(pos) - np.asarray(qc["usable"]).sum())
            view.notes.append(f"{len(pos)} frames, {bad} flagged")
    else:
        view = ViewData(title=f"scan {start.get('scan_id', '?')} ({start.get('purpose', 'raw')}) {start['uid'][:8]}")
        primary = run["primary"]
        det = (start.get("detectors") or ["fccd"])[0]
        frames = primary[f"{det}_image"]
        if frames.shape[0]:
            view.images["first frame"] = np.asarray(frames[0], np.float32)
            if frames.shape[0] > 1:
                view.images["last frame"] = np.asarray(frames[-1], np.float32)
        motors = start.get("motors") or []
        if len(motors) == 2 and "first frame" in view.images:
            pos = np.stack([np.asarray(primary[m].read()) for m in motors], axis=1)
            view.images["positions"] = np.zeros((64, 64), np.float32)
            view.positions_px, view.positions_on = _on_grid(pos, (64, 64)), "positions"
    if not view.images:
        raise ParameterError(f"run {start['uid']}: nothing to show (no reconstruction, STXM or frames)")
    return view


def open_source(source: str, catalog: str | os.PathLike | None = None) -> ViewData:
    """``source``: a CXI file, or a run of ``catalog``: a scan id (a raw run), or the uid or uid prefix of a
    raw or a derived run. A raw run's view names its derived runs, to open them by uid."""
    if source.endswith((".cxi", ".h5")) or Path(source).is_file():
        return from_cxi(source)
    from ns_bluesky.io.catalog import get_run, open_catalog
    from ns_bluesky.io.catalog_layout import derived_runs

    cat = open_catalog(catalog, create=False)
    run = get_run(cat, source)
    view = from_run(run)
    if "parent_uid" not in run.metadata["start"]:
        derived = [r.metadata["start"]["uid"][:8] for r in derived_runs(cat, run)]
        if derived:
            view.notes.append(f"derived runs (open by uid): {', '.join(derived)}")
    return view
