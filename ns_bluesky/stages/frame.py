"""Frame: the nine pre-processing steps on each raw frame, and its quality control.

Run as many workers as the frame rate needs. Each keeps the darks it was handed
(shared ``dark`` results) and cleans the frames of the runs that name them; the
handler holds a run's frames until its dark has arrived. A frame that cannot be
used (wrong shape, NaN, dropped packets, no flux) is not an error: it goes out
flagged, with ``usable = 0``, so ``frames_qc`` counts it and the run goes on.
"""

from __future__ import annotations

import time
from typing import ClassVar

import numpy as np
from pydantic import Field

from ..instrument.detector import beamstop_transmission
from ..ptycho import preprocess as pp
from ..ptycho.backend import fft_module, set_fft_threads
from ..ptycho.stxm import bright_field_mask, stxm_signals
from ..stream.protocol import Message
from ..stream.stage import Stage
from .scaninfo import ScanInfo, scan_info

#: flags that make a frame unusable for the reconstruction ("no_dark" only lowers its quality)
BLOCKING = frozenset({"shape", "nan", "zeros", "saturated", "no_flux"})


class FrameParams(pp.Settings):
    """The cleaning steps' settings (:class:`~ns_bluesky.ptycho.preprocess.Settings`), the live defaults, and QC."""

    crop: int = Field(480, ge=16, description="detector pixels kept around the centre (sets the object pixel size)")
    out_size: int = Field(128, ge=16, description="side of the cleaned pattern (FFT downsampling of the crop)")
    zeros_fraction: float = Field(0.01, gt=0, le=1, description="flag a frame with more zero pixels than this (dropped packets)")
    no_flux_fraction: float = Field(0.2, ge=0, le=1, description="flag a frame with fewer photons than this part of the run's median")
    preview_every_s: float = Field(1.0, ge=0, description="attach a 4 x 4-binned raw frame for the screens this often (0: never)")
    fft_threads: int | None = Field(None, ge=1, le=256, description="FFT threads of this worker (None: every core; 1 where several frame workers share them)")


class _Run:
    def __init__(self, info: ScanInfo, params: FrameParams):
        self.info = info
        self.photons: list[float] = []
        self.last_preview = -np.inf
        self.transmission = beamstop_transmission(info.geometry) if params.beamstop else None
        # the direct beam's disc on the cleaned pattern: the zone plate's numerical aperture, else a tenth
        radius = 0.1 * params.out_size
        if info.optics is not None and info.energy_J is not None:
            na = info.optics.numerical_aperture(info.energy_eV)
            radius = na * info.geometry.distance_m / (info.geometry.pixel_size_m * params.crop / params.out_size)
        self.bright_field = bright_field_mask((params.out_size, params.out_size), radius)
        self.cleaner: pp.Preprocessor | None = None
        self.cleaner_dark: object = None  # the dark the cleaner was prepared with

    def prepared(self, dark, params: FrameParams) -> pp.Preprocessor:
        """The run's :class:`Preprocessor`, made again only when its dark changes."""
        if self.cleaner is None or self.cleaner_dark is not dark:
            settings = params.model_copy(update={"dark": params.dark and dark is not None})  # FrameParams is Settings
            self.cleaner = pp.Preprocessor(
                self.info.geometry,
                dark_mean=None if dark is None else dark["mean"],
                bad_pixels=None if dark is None else dark["bad_pixels"],
                adu_per_photon=self.info.adu_per_photon,
                transmission_map=self.transmission,
                settings=settings,
            )
            self.cleaner_dark = dark
        return self.cleaner


def binned(raw: np.ndarray, n: int) -> np.ndarray:
    """``raw`` averaged over n x n blocks: a raw frame small enough to show live."""
    h, w = raw.shape[0] // n * n, raw.shape[1] // n * n
    return raw[:h, :w].reshape(h // n, n, w // n, n).mean(axis=(1, 3), dtype=np.float32)


def _raw_checks(raw: np.ndarray, saturation_adu: float, bad_index: np.ndarray | None) -> dict:
    """Zeroed (dropped packets) and saturated pixels, the dark's bad pixels left out.

    Counted over the whole frame, then taken back at the few bad pixels: a good-pixel
    mask would be a second full pass per frame.
    """
    zeros, saturated = raw == 0, raw >= saturation_adu
    counts = {"zeros": int(np.count_nonzero(zeros)), "saturated": int(np.count_nonzero(saturated))}
    if bad_index is not None and bad_index.size:
        counts["zeros"] -= int(np.count_nonzero(zeros.ravel()[bad_index]))
        counts["saturated"] -= int(np.count_nonzero(saturated.ravel()[bad_index]))
    return counts


class FrameStage(Stage):
    name = "frame"
    description = "pre-processing (dark, overscan, spikes, photons, beamstop, crop, downsampling) and per-frame QC of light runs"
    inputs = ("frame", "dark")
    outputs = ("clean",)
    purposes = ("ptychography",)
    waits_for: ClassVar[dict[str, str]] = {"dark": "dark_uid"}
    Params = FrameParams

    def __init__(self, params=None, **worker):
        super().__init__(params, **worker)
        set_fft_threads(self.params.fft_threads)  # one process per worker: the setting is this stage's
        # scipy.fft's import (1.2-1.7 s on a loaded machine, most of it its docstrings) now, before the worker says
        # it is ready, not in the scan's first frame: it held the first live image back by that much
        fft_module(np)
        self.darks: dict[str, dict[str, np.ndarray]] = {}
        self.runs: dict[str, _Run] = {}

    def start_run(self, msg: Message) -> None:
        info = scan_info(msg)
        if info.purpose in self.purposes:
            self.runs[msg.run] = _Run(info, self.params)

    def process(self, msg: Message) -> Message | None:
        if msg.kind == "result" and msg.stage == "dark":
            self.darks[msg.run] = dict(msg.arrays)
            while len(self.darks) > 4:
                del self.darks[next(iter(self.darks))]
            return None
        run = self.runs.get(msg.run)
        if run is None:
            return None
        info, p = run.info, self.params
        raw = msg.arrays.get("raw")
        flags: list[str] = []
        dark = self.darks.get(info.dark_uid or "")
        if dark is None:
            flags.append("no_dark")
        pattern = np.zeros((p.out_size, p.out_size), np.float32)
        qc = {"saturated": 0, "zeros": 0}
        if raw is None or raw.shape != info.geometry.raw_shape:
            flags.append("shape")
        elif raw.dtype.kind == "f" and not np.isfinite(raw).all():
            flags.append("nan")
        else:
            cleaner = run.prepared(dark, p)
            qc = _raw_checks(raw, info.geometry.saturation_adu, cleaner.bad_index)
            if qc["zeros"] > p.zeros_fraction * raw.size:
                flags.append("zeros")
            if qc["saturated"]:
                flags.append("saturated")
            pattern = cleaner(raw)
        photons = float(pattern.sum())
        if "shape" not in flags and "nan" not in flags:
            run.photons.append(photons)
            if photons < p.no_flux_fraction * float(np.median(run.photons)):
                flags.append("no_flux")
        sig = stxm_signals(pattern[None], run.bright_field)
        com = sig["dpc"][0]
        position = info.position(msg.meta.get("data") or {}, msg.seq)
        scalars = {
            "seq": int(msg.seq),
            "photons": photons,
            "transmission": float(sig["transmission"][0]),
            "dpc_y": float(np.nan_to_num(com[0])),
            "dpc_x": float(np.nan_to_num(com[1])),
            "saturated": int(qc["saturated"]),
            "zeros": int(qc["zeros"]),
            "position_y": float(position[0]),
            "position_x": float(position[1]),
            "usable": int(not BLOCKING.intersection(flags)),
            "flags": ",".join(flags),
        }
        dx = info.geometry.distance_m * info.wavelength_m / (p.crop * info.geometry.pixel_size_m)
        meta = {
            "scalars": scalars,
            "position_m": [float(v) for v in position],
            "object_pixel_size_m": dx,
            "pixel_size_m": info.geometry.pixel_size_m * p.crop / p.out_size,
        }
        arrays = {"pattern": pattern}
        now = time.monotonic()
        if p.preview_every_s and raw is not None and raw.ndim == 2 and now - run.last_preview >= p.preview_every_s:
            run.last_preview = now
            arrays["raw_preview"] = binned(raw, 4)
        return Message("result", run=msg.run, seq=msg.seq, stage="clean", meta=meta, arrays=arrays)

    def end_run(self, run: str) -> None:
        self.runs.pop(run, None)

    def abort_run(self, run: str) -> None:
        self.runs.pop(run, None)
