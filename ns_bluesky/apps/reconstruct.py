"""Offline reconstruction of a CXI file written by anyone: ``ns-bluesky reconstruct IN.cxi``.

Reads frames (zero frequency centred), translations in metres, energy, distance and
pixel size; subtracts ``data_dark`` when present (and turns an FCCD scan exported by
``nsraw2cxi`` into photon counts); FFT-downsamples to ``--size``
(same scattering angle, so the object pixel z lambda / (N p) is unchanged); starts
from ``source_1/illumination`` (cropped to the window) or from the mean pattern; and
writes the result back as ``image_1`` (probe) and ``image_2`` (object), as ptychodus
reads them, with the residual per iteration and a PNG.

Under ``mpiexec -n N`` the frames are split over the N ranks by position, SHARP's way
(:mod:`ns_bluesky.ptycho.engines.split`): each rank reads the file, keeps its frames and
its part of the object grid; rank 0 shows the progress, gathers the object and writes
the output, the others write nothing.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import ParameterError
from ..instrument.detector import DetectorGeometry
from ..io.cxi import read_cxi
from ..io.product import write_product
from ..ptycho.engines import Communicator, PtychoData, SerialComm, engine, gather_object, prepare_split
from ..ptycho.layout import grid_origins, with_counts
from ..ptycho.photons import READ_NOISE_ADU, fccd_photons
from ..ptycho.preprocess import crop_center, fft_downsample
from ..ptycho.stxm import probe_from_patterns

HC_J_M = 6.62607015e-34 * 299792458.0


@dataclass
class Reconstruction:
    """What ``run`` made; on ranks other than 0 of a split run ``obj`` is None and nothing was written."""

    obj: np.ndarray | None
    probe: np.ndarray
    residuals: list[float]
    pixel_size_m: float
    out: Path
    png: Path | None


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
    comm: Communicator | None = None,
    threads: int = 0,
) -> Reconstruction:
    """Reconstruct ``path`` into ``out``; with ``comm`` of several ranks, this rank's share of it (every rank
    calls ``run`` alike)."""
    if iterations < 1:
        raise ParameterError(f"--iterations must be >= 1, got {iterations}")
    comm = comm or SerialComm()
    lead = comm.rank == 0
    data, probe, dx = prepare_data(path, size)
    eng = engine(engine_name, backend=backend, threads=threads)
    share = prepare_split(eng, data, probe, comm)
    del data  # this rank's frames are in the engine
    label = f"{engine_name}" + (f" ({comm.size} ranks)" if comm.size > 1 else "")
    with tqdm(total=iterations, desc=label, unit="it", disable=not progress or not lead) as bar:
        for _ in range(iterations):
            (res,) = eng.iterate(1)
            bar.set_postfix_str(f"residual {res:.4f}")
            bar.update(1)
    _, probe, residuals = eng.finalize()
    obj = gather_object(eng, share, comm)
    out = Path(out)
    if not lead:
        return Reconstruction(None, probe, residuals, dx, out, None)
    if Path(path).resolve() != out.resolve():
        shutil.copyfile(path, out)
    write_product(out, obj, probe, dx, residuals, engine_name)
    png_path = Path(png) if png else None
    if png_path:
        _picture(png_path, obj, probe, residuals, dx, engine_name)
    return Reconstruction(obj, probe, residuals, dx, out, png_path)


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
