"""Offline reconstruction of a CXI file written by anyone: ``ns-bluesky reconstruct IN.cxi``.

Reads frames (zero frequency centred), translations in metres, energy, distance and
pixel size; subtracts ``data_dark`` when present (and turns an FCCD scan exported by
``nsraw2cxi`` into photon counts); FFT-downsamples to ``--size``
(same scattering angle, so the object pixel z lambda / (N p) is unchanged); starts
from ``source_1/illumination`` (cropped to the window) or from the mean pattern; and
writes the result back as ``image_1`` (probe) and ``image_2`` (object), as ptychodus
reads them, with the residual per iteration and a PNG.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from ..config import ELECTRON_VOLT_J, DetectorGeometry
from ..errors import ParameterError
from ..io.cxi import ENTRY, EXTRAS, TRANSLATION, CXIImage, put_image, read_cxi
from .engines import PtychoData, engine
from .preprocess import background_threshold, crop_center, fft_downsample, to_photons
from .stxm import probe_from_patterns

HC_J_M = 6.62607015e-34 * 299792458.0
READ_NOISE_ADU = 5.0  # the FCCD's, when a file brings no dark frames to measure it
MARGIN_PX = 2.0  # object pixels between the outermost probe window and the object's edge


PTYCHODUS = f"{ENTRY}/ptychodus"
PTYCHODUS_KEYS = (
    "object_pixel_width_m", "object_pixel_height_m", "probe_pixel_width_m", "probe_pixel_height_m",
    "object_center_x_m", "object_center_y_m", "loss_values", "loss_epochs",
)


@dataclass
class Reconstruction:
    obj: np.ndarray
    probe: np.ndarray
    residuals: list[float]
    pixel_size_m: float
    out: Path
    png: Path | None


def fccd_photons(frames: np.ndarray, geom: DetectorGeometry, energy_J: float, noise_adu: float) -> np.ndarray:
    """Dark-subtracted assembled FCCD frames (ADU) to photon counts, in place.

    The overscan is gone from assembled frames, so each ADC channel's residual offset is
    taken as the median of each column of each half (the diffraction covers few of its
    480 rows); values within 3 sigma of the read noise are zeroed (at 0.5 photon alone a
    5 ADU noise would pass 7 % of the pixels as photons), then ADU to photons.
    """
    half = frames.shape[-2] // 2
    for part in (frames[:, :half], frames[:, half:]):
        part -= np.median(part, axis=1, keepdims=True)
    background_threshold(frames, 3 * noise_adu, xp=np, inplace=True)
    return to_photons(frames, geom.adu_per_eV * energy_J / ELECTRON_VOLT_J, xp=np, inplace=True)


def grid_origins(probe_yx_m: np.ndarray, dx: float, lowest_yx_m: np.ndarray | None = None, margin_px: float = MARGIN_PX) -> np.ndarray:
    """Probe-window corners (row, col) in object pixels for probe positions on the sample (y, x, metres):
    the lowest position (``lowest_yx_m``, default the lowest of these) sits ``margin_px`` in from the edge."""
    probe = np.asarray(probe_yx_m, dtype=float)
    lowest = probe.min(axis=0) if lowest_yx_m is None else np.asarray(lowest_yx_m, dtype=float)
    return (probe - lowest) / dx + margin_px


def prepare_data(path: str | os.PathLike, size: int | None = None) -> tuple[PtychoData, np.ndarray, float]:
    """Engine input from a CXI file: data, starting probe and object pixel size (m)."""
    cxi = read_cxi(path)
    frames = np.asarray(cxi.frames, dtype=np.float32)
    if cxi.dark is not None:
        dark = np.asarray(cxi.dark, dtype=np.float32)
        frames -= dark.mean(axis=0) if dark.ndim == 3 else dark
    md = cxi.metadata or {}
    if md.get("frame_layout") == "assembled" and "detector_geometry" in md:  # an FCCD scan from nsraw2cxi
        noise = float(np.median(dark.std(axis=0))) if cxi.dark is not None and dark.ndim == 3 and len(dark) > 1 else READ_NOISE_ADU
        frames = fccd_photons(frames, DetectorGeometry(**md["detector_geometry"]), cxi.energy_J, noise)
    np.maximum(frames, 0, out=frames)
    n_det = frames.shape[-1]
    if frames.shape[-2] != n_det:
        raise ParameterError(f"{path}: frames must be square, got {frames.shape[-2:]}")
    n = size or n_det
    if n > n_det or n % 2:
        raise ParameterError(f"--size must be even and at most the frame side {n_det}, got {n}")
    if n < n_det:
        frames = np.concatenate([fft_downsample(frames[i : i + 64], n) for i in range(0, len(frames), 64)])
    wavelength = HC_J_M / cxi.energy_J
    dx = cxi.distance_m * wavelength / (n_det * cxi.pixel_size_m[1])
    origins = grid_origins(cxi.translations_m[:, [1, 0]], dx)  # CXI translations: the probe on the sample, (x, y)
    start = cxi.probe
    if start is None:  # a product written by ptychodus or by us: image_1 is the probe
        start = next((im.data for im in cxi.images[:1] if im.data_type == "probe"), None)
    if start is not None:
        start = np.asarray(start, np.complex64).reshape(-1, *np.shape(start)[-2:])[0]  # the first mode
    if start is not None and start.shape[-1] >= n:
        probe = crop_center(start, (start.shape[-2] // 2, start.shape[-1] // 2), n)
    else:
        probe = probe_from_patterns(frames.mean(axis=0))
    return PtychoData(frames, origins), with_counts(probe, frames).astype(np.complex64), dx


def run(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    engine_name: str = "lsqml",
    iterations: int = 100,
    size: int | None = None,
    png: str | os.PathLike | None = None,
    progress: bool = True,
    backend: str = "numpy",
) -> Reconstruction:
    if iterations < 1:
        raise ParameterError(f"--iterations must be >= 1, got {iterations}")
    data, probe, dx = prepare_data(path, size)
    eng = engine(engine_name, backend=backend)
    eng.prepare(data, probe)
    with tqdm(total=iterations, desc=f"{engine_name}", unit="it", disable=not progress) as bar:
        for _ in range(iterations):
            (res,) = eng.iterate(1)
            bar.set_postfix_str(f"residual {res:.4f}")
            bar.update(1)
    obj, probe, residuals = eng.finalize()
    out = Path(out)
    if Path(path).resolve() != out.resolve():
        shutil.copyfile(path, out)
    write_product(out, obj, probe, dx, residuals, engine_name)
    png_path = Path(png) if png else None
    if png_path:
        _picture(png_path, obj, probe, residuals, dx, engine_name)
    return Reconstruction(obj, probe, residuals, dx, out, png_path)


def with_counts(probe: np.ndarray, patterns: np.ndarray) -> np.ndarray:
    """The start probe scaled to the measured counts (sum |P|^2 = mean photons per frame): a guess from
    optics or from the mean pattern knows the shape of the beam, not its flux."""
    return probe * np.sqrt(patterns.sum(axis=(-2, -1)).mean() / max(float((np.abs(probe) ** 2).sum()), 1e-30))


def write_product(path: str | os.PathLike, obj: np.ndarray, probe: np.ndarray, dx: float, residuals, engine_name: str) -> None:
    """Object and probe into a CXI file that holds the frames and translations, as ptychodus reads them.

    ``image_1`` is the probe and ``image_2`` the object; the object's centre and the pixel
    sizes go where ptychodus looks (it ignores ``image_N`` pixel sizes), with the residual
    per iteration as its loss curve.
    """
    put_image(path, 1, CXIImage(probe, "probe", (dx, dx)))
    put_image(path, 2, CXIImage(obj, "object", (dx, dx)))
    with h5py.File(path, "a") as f:
        # the object's centre in metres: the first probe window's corner sits MARGIN_PX in (x, y order)
        lowest = f[TRANSLATION][:, :2].min(axis=0)
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


def _picture(path: Path, obj, probe, residuals, dx, name) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(18, 4.5), constrained_layout=True)
    ext = (0, obj.shape[1] * dx * 1e6, obj.shape[0] * dx * 1e6, 0)
    ax[0].imshow(np.abs(obj), cmap="gray", extent=ext)
    ax[0].set_title("object amplitude (µm)")
    ax[1].imshow(np.angle(obj), cmap="gray", extent=ext)
    ax[1].set_title("object phase")
    ax[2].imshow(np.abs(probe), cmap="magma")
    ax[2].set_title("probe amplitude")
    ax[3].semilogy(np.arange(1, len(residuals) + 1), residuals)
    ax[3].set_xlabel("iteration")
    ax[3].set_title(f"{name}: data residual")
    fig.savefig(path, dpi=80)
    plt.close(fig)
