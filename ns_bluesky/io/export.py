"""Raw runs from the catalog to CXI: what Nanosurveyor's ``nsraw2cxi`` script did.

Frames are read from the catalog in blocks (tiled fetches them lazily from the
detector's HDF5 files), assembled from raw readout order to the 960 x 960 image
(unless ``raw=True``), and written with the dark frames of the run's ``dark_uid`` and
the stage readback positions.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import CatalogError
from ..instrument.detector import DetectorGeometry, assemble
from ..instrument.optics import ZonePlateOptics
from ..instrument.probe import zone_plate_probe
from .catalog import get_run
from .cxi import CXIWriter

BLOCK = 32


def _image_key(start: dict) -> str:
    det = start.get("detector_name") or (start.get("detectors") or [None])[0]
    if det is None:
        raise CatalogError(f"run {start['uid'][:8]} names no detector; is it a ptycho_scan run?")
    return f"{det}_image"


def _frames(run, key: str):
    try:
        return run["primary"][key]
    except KeyError:
        raise CatalogError(f"run {run.metadata['start']['uid'][:8]} has no '{key}' in its primary stream") from None


def export_run(cat, run_key: str | int, out: str | os.PathLike, *, raw: bool = False, progress: bool = True) -> Path:
    """Write one ptycho run (scan_id, uid or uid prefix) as CXI; returns the path written."""
    run = get_run(cat, run_key)
    start = run.metadata["start"]
    if start.get("parent_uid"):
        raise CatalogError(f"run {start['uid'][:8]} is a derived run (processed from raw run {start['parent_uid'][:8]}); "
                           f"export the raw run: nsraw2cxi {start['parent_uid'][:8]}")
    if "detector_geometry" not in start or "energy_J" not in start:
        raise CatalogError(
            f"run {start['uid'][:8]} ({start.get('plan_name', '?')}) lacks detector geometry or energy; "
            "only ptycho_scan runs can be exported"
        )
    stop = run.metadata.get("stop") or {}
    geom = DetectorGeometry(**start["detector_geometry"])
    key = _image_key(start)
    frames = _frames(run, key)
    n = frames.shape[0]
    if n == 0:
        raise CatalogError(f"run {start['uid'][:8]} holds no frames")
    stream = run["primary"]
    y_name, x_name = start["motors"]
    ty, tx = np.asarray(stream[y_name].read()), np.asarray(stream[x_name].read())
    # CXI translations: the probe on the sample, minus the stage translation (docs/conventions.md)
    translations = np.stack([-tx, -ty, np.zeros_like(tx)], axis=1)
    shape = geom.raw_shape if raw else geom.image_shape
    md = {
        "title": f"scan {start.get('scan_id')} {start.get('sample_name', '')}".strip(),
        "experiment_identifier": start["uid"],
        "sample_name": start.get("sample_name", "unnamed"),
        "start_time": datetime.fromtimestamp(start["time"], timezone.utc).isoformat(),
        "raw_uid": start["uid"],
        "dark_uid": start.get("dark_uid"),
        "exit_status": stop.get("exit_status"),
        "frame_layout": "fccd_raw_readout" if raw else "assembled",
        "scan": start.get("scan"),
        "detector_geometry": start["detector_geometry"],
    }
    p = float(start["detector_pixel_size_m"][0])
    out = Path(out)
    partial = out.with_name(out.name + ".partial")  # renamed when complete: no half-written CXI under the real name
    with CXIWriter(
        partial,
        frame_shape=shape,
        frame_dtype="<u2",
        energy_J=float(start["energy_J"]),
        distance_m=float(start["detector_distance_m"]),
        pixel_size_m=(p, p),
        metadata=md,
    ) as w:
        with tqdm(total=n, desc=f"export scan {start.get('scan_id')}", unit="frame", disable=not progress) as bar:
            for i in range(0, n, BLOCK):
                block = np.asarray(frames[i : i + BLOCK])
                w.append(block if raw else assemble(block, geom), translations[i : i + len(block)])
                bar.update(len(block))
        if start.get("dark_uid"):
            dark_run = get_run(cat, start["dark_uid"])
            dark = np.asarray(_frames(dark_run, key).read())
            w.write_dark(dark if raw else assemble(dark, geom))
        optics = start.get("probe_optics")
        if optics and not raw:
            zp = ZonePlateOptics(**{k: v for k, v in optics.items() if k in ZonePlateOptics.model_fields})
            dx = float(start["object_pixel_size_m"])
            w.write_probe(zone_plate_probe(geom.image_shape[0], dx, float(start["energy_eV"]), zp))
        w.write_extra("positions_planned_m", np.asarray(start.get("planned_positions_m", []), dtype=float))
    partial.replace(out)
    return out
