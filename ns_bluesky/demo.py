"""The main job: a simulated ptychography scan end to end on the embedded defaults.

Darks, then the scan, on a real RunEngine over the simulated beamline's Ophyd devices;
both runs stored in the embedded tiled catalog; the scan exported to CXI from the
catalog (proving the round trip); a quick-look PNG and a summary JSON. Everything it
starts it stops, also on Ctrl-C (the open run is closed with a stop document saying so).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .catalog import default_catalog_dir, detector_dir, last_scan_id, make_tiled_writer, open_catalog
from .config import SampleModel, ScanPattern, SimConfig
from .errors import ParameterError

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    frames: int
    dark_frames: int
    acquisition_s: float
    frames_per_s: float
    raw_uid: str
    dark_uid: str
    scan_id: int
    catalog: str
    cxi: str
    png: str
    exit_status: str


def parse_scan(text: str) -> tuple[int, int]:
    """``"40x40"`` to (rows, columns)."""
    try:
        ny, nx = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ParameterError(f"--scan must look like 40x40 (rows x columns), got {text!r}") from None
    if ny < 1 or nx < 1:
        raise ParameterError(f"--scan needs at least 1x1 points, got {text!r}")
    return ny, nx


def quicklook_png(path: Path, sim, raw: np.ndarray, positions_m: np.ndarray, pattern: np.ndarray, title: str) -> Path:
    """One raw frame (readout order), the mean dark-subtracted pattern, the scan over the true object."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 5), constrained_layout=True)
    axes[0].imshow(raw, cmap="gray", vmin=np.percentile(raw, 1), vmax=np.percentile(raw, 99.9))
    axes[0].set_title("raw FCCD frame (readout order, ADU)")
    axes[1].imshow(np.log10(np.maximum(pattern, 0.1)), cmap="magma", vmin=-1)
    axes[1].set_title("mean frame - mean dark - column median (log10 ADU)")
    obj = sim.object
    extent_px = np.asarray(obj.shape)
    dx = sim.dx
    axes[2].imshow(np.angle(obj), cmap="gray", extent=(0, extent_px[1] * dx * 1e6, extent_px[0] * dx * 1e6, 0))
    origins = np.array([sim.probe_origin_px(p) for p in positions_m]) + sim.n / 2
    axes[2].plot(origins[:, 1] * dx * 1e6, origins[:, 0] * dx * 1e6, ".", ms=2, color="lime")
    axes[2].set_title("true object phase, probe positions (µm)")
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def run_demo(
    *,
    scan: tuple[int, int] = (40, 40),
    rate_hz: float = 10.0,
    darks: int = 20,
    pattern: str = "raster",
    out: str | os.PathLike = "demo-output",
    catalog: str | os.PathLike | None = None,
    sample_image: str | None = None,
    sample_name: str | None = None,
    exposure_s: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> DemoResult:
    """Run the demo; returns what it made (and writes ``summary.json`` next to the CXI)."""
    from bluesky import RunEngine
    from bluesky.utils import RunEngineInterrupted

    from .callbacks import ProgressBar, ThreadedCallback
    from .io.cxi import read_cxi
    from .io.export import export_run
    from .ophyd_devices import make_sim_beamline
    from .plans import dark_frames, ptycho_scan

    if rate_hz < 0:
        raise ParameterError(f"--rate must be >= 0 frames/s (0 = as fast as possible), got {rate_hz}")
    if darks < 1:
        raise ParameterError(f"--darks must be >= 1, got {darks}")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if exposure_s is None:  # COSMIC's 100 ms, shortened when the rate asks for more frames per second
        exposure_s = min(0.1, 1.0 / rate_hz) if rate_hz > 0 else 0.1
    if not exposure_s > 0:
        raise ParameterError(f"--exposure must be > 0 s, got {exposure_s}")
    image = None
    sample = SampleModel(name=sample_name or "siemens-star")
    if sample_image:
        from .io.images import read_grayscale

        image = read_grayscale(sample_image)
        sample = SampleModel(image=str(Path(sample_image).resolve()), name=sample_name or Path(sample_image).stem)
    cfg = SimConfig(seed=seed, exposure_s=exposure_s, sample=sample, scan=ScanPattern(kind=pattern, shape=scan, overlap=0.7))
    if catalog is not None and str(catalog).startswith(("http://", "https://")):
        raise ParameterError("--catalog for the demo must be a directory: the server has to read the detector files")
    cat_dir = (default_catalog_dir() if catalog is None else Path(catalog)).expanduser().resolve()
    cat = open_catalog(cat_dir)
    beamline = make_sim_beamline(detector_dir(cat_dir), cfg, image=image, rate_hz=rate_hz)
    RE = RunEngine({"scan_id": last_scan_id(cat)}, call_returns_result=False)
    writer = ThreadedCallback(make_tiled_writer(cat), name="catalog")
    RE.subscribe(writer)
    RE.subscribe(ProgressBar(disable=not progress))
    try:
        (dark_uid,) = RE(dark_frames(beamline.fccd, beamline.shutter, darks, md={"sample_name": cfg.sample.name}))
        t0 = time.monotonic()
        (raw_uid,) = RE(
            ptycho_scan(
                beamline.fccd,
                beamline.stage,
                beamline.shutter,
                pattern=pattern,
                shape=scan,
                overlap=0.7,
                optics=beamline.optics,
                sample=cfg.sample.name,
                dark_uid=dark_uid,
                md={"simulation": {"seed": seed, "config": cfg.model_dump(mode="json")}},
            )
        )
        acquisition_s = time.monotonic() - t0
    except (RunEngineInterrupted, KeyboardInterrupt):
        if RE.state != "idle":
            RE.abort("interrupted by the user (Ctrl-C)")
        writer.flush()
        raise KeyboardInterrupt from None
    finally:
        writer.close()
    run = cat[raw_uid]
    n = int(run.metadata["start"]["num_points"])
    cxi = out / f"scan_{run.metadata['start']['scan_id']:05d}.cxi"
    export_run(cat, raw_uid, cxi, progress=progress)
    data = read_cxi(cxi, lazy=True)
    try:
        frames_sum = np.zeros(data.frames.shape[1:], dtype=np.float64)
        for i in range(0, data.frames.shape[0], 64):
            frames_sum += data.frames[i : i + 64].sum(axis=0)
        pattern = frames_sum / data.frames.shape[0] - data.dark.mean(axis=0)
        half = pattern.shape[0] // 2  # baseline drift since the darks: per column of each half (ADC channel)
        pattern[:half] -= np.median(pattern[:half], axis=0)
        pattern[half:] -= np.median(pattern[half:], axis=0)
        positions = -np.stack([data.translations_m[:, 1], data.translations_m[:, 0]], axis=1)  # stage (y, x)
    finally:
        data.frames.file.close()
    raw0 = np.asarray(run["primary"][f"{beamline.fccd.name}_image"][0])
    png = quicklook_png(
        out / f"scan_{run.metadata['start']['scan_id']:05d}.png",
        beamline.sim,
        raw0,
        positions,
        pattern,
        f"scan {run.metadata['start']['scan_id']}: {n} frames, {n / acquisition_s:.1f} frames/s",
    )
    result = DemoResult(
        frames=n,
        dark_frames=darks,
        acquisition_s=round(acquisition_s, 3),
        frames_per_s=round(n / acquisition_s, 2),
        raw_uid=raw_uid,
        dark_uid=dark_uid,
        scan_id=int(run.metadata["start"]["scan_id"]),
        catalog=str(cat_dir),
        cxi=str(cxi),
        png=str(png),
        exit_status=run.metadata["stop"]["exit_status"],
    )
    (out / "summary.json").write_text(json.dumps(asdict(result), indent=2))
    return result
