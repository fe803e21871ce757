"""A reconstruction's object and probe written into its CXI file, where ptychodus looks for them."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np

from ..ptycho.layout import MARGIN_PX
from .cxi import ENTRY, EXTRAS, TRANSLATION, CXIImage, put_image

PTYCHODUS = f"{ENTRY}/ptychodus"
PTYCHODUS_KEYS = (
    "object_pixel_width_m", "object_pixel_height_m", "probe_pixel_width_m", "probe_pixel_height_m",
    "object_center_x_m", "object_center_y_m", "loss_values", "loss_epochs",
)


def write_product(path: str | os.PathLike, obj: np.ndarray, probe: np.ndarray, dx: float, residuals, engine_name: str,
                  positions_matrix: np.ndarray | None = None) -> None:
    """Object and probe into a CXI file that holds the frames and translations, as ptychodus reads them.

    ``image_1`` is the probe and ``image_2`` the object; the object's centre and the pixel
    sizes go where ptychodus looks (it ignores ``image_N`` pixel sizes), with the residual
    per iteration as its loss curve. ``positions_matrix``: how the file's translations were read when not as
    the probe's position (probe (y, x) = matrix @ file (y, x); :func:`write_positions_convention`).
    """
    put_image(path, 1, CXIImage(probe, "probe", (dx, dx)))
    put_image(path, 2, CXIImage(obj, "object", (dx, dx)))
    with h5py.File(path, "a") as f:
        # the object's centre in metres: the first probe window's corner sits MARGIN_PX in (x, y order)
        xy = f[TRANSLATION][()][:, :2]
        if positions_matrix is not None:  # probe (y, x) = M @ file (y, x)
            xy = (xy[:, ::-1] @ np.asarray(positions_matrix, float).T)[:, ::-1]
        lowest = xy.min(axis=0)
        centre = lowest + ((np.array(obj.shape[::-1]) - probe.shape[-1]) / 2 - MARGIN_PX) * dx
        g = f.require_group(EXTRAS)
        p = f.require_group(PTYCHODUS)
        for group, key in ((g, "reconstruction_residual"), (g, "reconstruction_engine")) + tuple((p, k) for k in PTYCHODUS_KEYS):
            if key in group:
                del group[key]
        for what in ("object", "probe"):
            p[f"{what}_pixel_width_m"] = p[f"{what}_pixel_height_m"] = dx
        p["object_center_x_m"], p["object_center_y_m"] = (float(v) for v in centre)
        p["loss_values"] = np.asarray(residuals, np.float64)
        p["loss_epochs"] = np.arange(1, len(residuals) + 1)
        g["reconstruction_residual"] = np.asarray(residuals, np.float64)
        g["reconstruction_engine"] = engine_name


def write_positions_convention(path: str | os.PathLike, name: str, matrix: np.ndarray, details: dict) -> None:
    """How the translations were read: ``positions_convention`` (probe, sample, or a flip/swap of them),
    ``positions_matrix`` (probe (y, x) = matrix @ file (y, x)) and ``positions_choice_json`` (how it was decided)."""
    with h5py.File(path, "a") as f:
        g = f.require_group(EXTRAS)
        for key in ("positions_convention", "positions_matrix", "positions_choice_json"):
            if key in g:
                del g[key]
        g["positions_convention"] = name
        g["positions_matrix"] = np.asarray(matrix, np.int8)
        g["positions_choice_json"] = json.dumps(details)
