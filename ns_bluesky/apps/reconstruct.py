"""Offline reconstruction of a CXI file written by anyone: ``ns-bluesky reconstruct IN.cxi``.

Reads frames (zero frequency centred), translations in metres, energy, distance and
pixel size; subtracts ``data_dark`` when present (and turns an FCCD scan exported by
``nsraw2cxi`` into photon counts); FFT-downsamples to ``--size``
(same scattering angle, so the object pixel z lambda / (N p) is unchanged); starts
from ``source_1/illumination`` (cropped to the window) or from the mean pattern; and
writes the result back as ``image_1`` (probe) and ``image_2`` (object), as ptychodus
reads them, with the residual per iteration and a PNG.

Positions: ``positions="auto"`` (the default) lets the data decide which way round the
file's translations are (:mod:`..ptycho.conventions`: the probe's position as this project
writes them, the sample's translation, or any sign flip or x/y swap of them), prints the
choice and its margin, warns when it is not clear (then the file's declared convention,
the probe's position, is kept) and records it in the output. A budget of ``seconds``
iterates until it is spent (:mod:`..ptycho.budget`) and returns the best state seen; a
diverging reconstruction fails with :class:`~..errors.ReconstructionError`.

Under ``mpiexec -n N`` the frames are split over the N ranks by position, SHARP's way
(:mod:`ns_bluesky.ptycho.engines.split`): each rank reads the file, keeps its frames and
its part of the object grid; rank 0 decides the positions' convention and when the
budget is spent (both broadcast, so every rank runs the same iterations), shows the
progress, gathers the object and writes the output; the others write nothing.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import CXIError, ParameterError
from ..instrument.detector import DetectorGeometry
from ..io.cxi import read_cxi
from ..io.product import write_positions_convention, write_product
from ..ptycho.budget import iterate_within
from ..ptycho.conventions import Choice, Orientation, choose_orientation, orientation
from ..ptycho.engines import Communicator, PtychoData, SerialComm, engine, gather_object, prepare_split
from ..ptycho.layout import MARGIN_PX, grid_origins, with_counts
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
    orientation: Orientation  # how the file's translations were read (probe (y, x) = matrix @ file (y, x))
    choice: Choice | None  # what auto measured (None when the convention was given)
    best_iteration: int  # 1-based: the state returned is the one after this iteration
    best_residual: float
    seconds: float  # spent iterating
    stopped_by: str  # "seconds" or "iterations"


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
    bad = ~np.isfinite(frames).all(axis=(-2, -1))
    if bad.any():
        raise CXIError(f"{path}: {int(bad.sum())} frames hold NaN or inf (the first is frame {int(np.argmax(bad))}); "
                       "mask or drop them before reconstructing")
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
    iterations: int | None = None,
    seconds: float | None = None,
    size: int | None = None,
    png: str | os.PathLike | None = None,
    progress: bool = True,
    backend: str = "numpy",
    positions: str = "auto",
    say=print,
    comm: Communicator | None = None,
    threads: int = 0,
    probe_start: str | None = None,
) -> Reconstruction:
    """Reconstruct ``path`` into ``out``: ``iterations`` (default 100 without ``seconds``) or until ``seconds``
    are spent, whichever comes first; the best state seen comes back. ``positions``: auto, probe or sample.
    With ``comm`` of several ranks, this rank's share of it (every rank calls ``run`` alike). ``probe_start``: lsqml's
    start (None: its default, auto)."""
    if iterations is None and seconds is None:
        iterations = 100
    if iterations is not None and iterations < 1:
        raise ParameterError(f"--iterations must be >= 1, got {iterations}")
    if seconds is not None and not (seconds > 0 and np.isfinite(seconds)):
        raise ParameterError(f"--seconds must be > 0, got {seconds}")
    if positions != "auto":
        orientation(positions)  # refuse a bad name before any work
    comm = comm or SerialComm()
    lead = comm.rank == 0
    data, probe, dx = prepare_data(path, size)
    choice = None
    if positions == "auto":
        if lead:
            choice = choose_orientation(data.patterns, data.origins_px, probe, backend=backend)
            say(choice.summary())
            if choice.clear:
                orient = choice.best
            else:
                orient = orientation("probe")
                warnings.warn(f"{path}: no position convention fits clearly better than the others (margin {choice.margin:.1%}); "
                              "kept the file's declared one, the probe's position: give --positions if you know it",
                              stacklevel=2)
        matrix = np.array(orient.matrix if lead else np.zeros((2, 2)), np.float64)
        comm.bcast(matrix)  # one convention for every rank
        orient = orient if lead else Orientation.from_matrix(matrix)
    else:
        orient = orientation(positions)
    oriented = orient.apply(data.origins_px)
    data = PtychoData(data.patterns, oriented - oriented.min(axis=0) + MARGIN_PX)
    start = {"probe_start": probe_start} if probe_start else {}
    if seconds is not None and engine_name == "lsqml":
        # the search for a start probe and the probe modes' trial take their shares of the budget
        start.update(start_search_s=seconds / 4, mode_trial_s=seconds / 10)
    eng = engine(engine_name, backend=backend, threads=threads, **start)
    t0 = time.monotonic()
    share = prepare_split(eng, data, probe, comm)
    # the start's search came out of the budget
    iterate_s = None if seconds is None else max(seconds - (time.monotonic() - t0), 1e-3)
    del data  # this rank's frames are in the engine
    if lead and getattr(eng, "start_choice", None) is not None:
        say(eng.start_choice.summary())
    label = f"{engine_name}" + (f" ({comm.size} ranks)" if comm.size > 1 else "") + (f" ({seconds:g} s)" if seconds is not None else "")
    with tqdm(total=iterations, desc=label, unit="it", disable=not progress or not lead) as bar:
        def show(done, res, best):
            bar.set_postfix_str(f"residual {res:.4f} best {best:.4f}")
            bar.update(1)

        if comm.size == 1:
            budget = iterate_within(eng, seconds=iterate_s, iterations=iterations, on_iteration=show)
        else:
            budget = _iterate_ranks(eng, comm, iterate_s, iterations, show)
    if lead and getattr(eng, "mode_choice", None) is not None:
        say(eng.mode_choice.summary())
    probe, residuals = budget.probe, budget.residuals
    if comm.size == 1:
        obj = budget.obj
    else:
        eng.obj = eng.xp.asarray(budget.obj)  # this rank's part of the best state, for the gather
        obj = gather_object(eng, share, comm)
    out = Path(out)
    result = Reconstruction(obj, probe, residuals, dx, out, None, orient, choice, budget.best_iteration,
                            budget.best_residual, budget.seconds, budget.stopped_by)
    if not lead:
        return result
    if Path(path).resolve() != out.resolve():
        shutil.copyfile(path, out)
    write_product(out, obj, probe, dx, residuals, engine_name, positions_matrix=orient.matrix)
    details = {"decided_by": "auto" if choice else "given", "best_iteration": budget.best_iteration,
               "best_residual": budget.best_residual, "iterations": budget.iterations, "seconds": round(budget.seconds, 3),
               "stopped_by": budget.stopped_by, "ranks": comm.size}
    if choice:
        details.update(margin=choice.margin, clear=choice.clear, residuals=choice.residuals, trial_frames=choice.frames,
                       trial_iterations=choice.iterations)
    write_positions_convention(out, orient.name, orient.matrix, details)
    if png:
        result.png = Path(png)
        _picture(result.png, obj, probe, residuals, dx, engine_name)
    return result


def _iterate_ranks(eng, comm: Communicator, seconds: float | None, iterations: int | None, show):
    """``iterate_within`` over split ranks: rank 0's clock decides when the budget is spent and tells the
    others before every iteration (a rank that stopped alone would leave its peers waiting in a reduction).
    The residual is reduced over the ranks, so all of them agree which iteration was best."""
    t0, last = time.monotonic(), [0.0]
    stamp = [t0]

    def on_iteration(done, res, best):
        now = time.monotonic()
        last[0], stamp[0] = now - stamp[0], now
        show(done, res, best)

    def spent() -> bool:
        flag = np.array([seconds is not None and time.monotonic() - t0 + last[0] > seconds], np.uint8)
        comm.bcast(flag)
        return bool(flag[0])

    budget = iterate_within(eng, iterations=iterations or 10**9, on_iteration=on_iteration, should_stop=spent)
    if budget.stopped_by == "stop":
        budget.stopped_by = "seconds"
    return budget


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
