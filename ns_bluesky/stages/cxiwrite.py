"""CXI writer: the raw, cleaned and reconstructed stages of each scan as CXI files, each switchable.

Run one worker. The cleaned file is what ``ns-bluesky reconstruct`` (or ptychodus, or
any CXI reader) takes: photon patterns with the zero frequency centred, translations
(the probe's position on the sample: minus the stage's), energy, distance and the
effective pixel size; at the end of the run the reconstruction's last estimate is
added as ``image_1`` (probe) and ``image_2`` (object).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..io.cxi import CXIWriter
from ..io.product import write_positions_convention, write_product
from ..stream.protocol import Message
from ..stream.stage import Stage
from .scaninfo import ScanInfo, scan_info


class CXIWriteParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out_dir: str = Field("cxi-output", description="directory of the files (scan_NNNNN_{raw,clean}.cxi)")
    raw: bool = Field(False, description="write the raw readout frames (2.4 MB each)")
    clean: bool = Field(True, description="write the cleaned patterns")
    recon: bool = Field(True, description="add the final reconstruction to the cleaned file")


#: frames reach the file in blocks of this many bytes, frames or seconds, whichever comes first:
#: four HDF5 calls per 64 KB pattern cost about as much as receiving it
FLUSH_BYTES, FLUSH_FRAMES, FLUSH_S = 8 << 20, 64, 1.0


class _Run:
    def __init__(self, info: ScanInfo, out_dir: Path):
        self.info = info
        stem = f"scan_{info.scan_id:05d}" if isinstance(info.scan_id, int) else f"run_{info.uid[:8]}"
        self.paths = {kind: out_dir / f"{stem}_{kind}.cxi" for kind in ("raw", "clean")}
        self.writers: dict[str, CXIWriter] = {}
        self.recon: dict | None = None
        self.residuals: list[float] = []
        self.written = {"raw": 0, "clean": 0}
        self.pending: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}  # not in the file yet
        self.pending_bytes, self.last_flush = 0, time.monotonic()

    def add(self, kind: str, frame: np.ndarray, translation: np.ndarray, pixel_size_m: float) -> None:
        """Queue a frame for the ``kind`` file (a copy: the message's buffer is reused once processed)."""
        self.writer(kind, frame.shape, frame.dtype, pixel_size_m)
        frames, translations = self.pending.setdefault(kind, ([], []))
        frames.append(np.array(frame))
        translations.append(translation)
        self.pending_bytes += frame.nbytes
        self.written[kind] += 1
        if self.pending_bytes >= FLUSH_BYTES or len(frames) >= FLUSH_FRAMES or time.monotonic() - self.last_flush >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        for kind, (frames, translations) in self.pending.items():
            if frames:
                self.writers[kind].append(np.stack(frames), np.concatenate(translations))
        self.pending.clear()
        self.pending_bytes, self.last_flush = 0, time.monotonic()

    def writer(self, kind: str, shape, dtype, pixel_size_m: float) -> CXIWriter:
        if kind not in self.writers:
            info = self.info
            md = {"sample_name": info.sample_name, "raw_uid": info.uid, "frame_layout": "readout" if kind == "raw" else "clean",
                  "experiment_identifier": info.uid, "title": f"{info.sample_name} ({kind})"}
            if kind == "raw":
                md["detector_geometry"] = info.geometry.model_dump(mode="json")
            self.writers[kind] = CXIWriter(
                self.paths[kind], frame_shape=shape, frame_dtype=dtype, energy_J=info.energy_J,
                distance_m=info.geometry.distance_m, pixel_size_m=(pixel_size_m, pixel_size_m), metadata=md,
            )
        return self.writers[kind]

    def close(self) -> list[str]:
        self.flush()  # also on an abort: what arrived is kept
        for w in self.writers.values():
            w.close()
        return [str(self.paths[k]) for k in self.writers]


def _translation(position_yx) -> np.ndarray:
    y, x = position_yx
    return np.array([[-x, -y, 0.0]])  # CXI: the probe's position on the sample, (x, y, z)


class CXIWriteStage(Stage):
    name = "cxiwrite"
    description = "CXI files of the raw, cleaned and reconstructed stages, each switched on or off (run 1 worker)"
    inputs = ("frame", "clean", "recon")
    outputs = ("cxi",)
    purposes = ("ptychography",)
    keeps_inputs = False
    Params = CXIWriteParams

    @classmethod
    def inputs_for(cls, params: CXIWriteParams) -> tuple[str, ...]:
        return tuple(k for k, on in (("frame", params.raw), ("clean", params.clean), ("recon", params.recon)) if on)

    def __init__(self, params=None, **worker):
        super().__init__(params, **worker)
        self.runs: dict[str, _Run] = {}

    def start_run(self, msg: Message) -> None:
        info = scan_info(msg)
        if info.purpose in self.purposes and info.energy_J is not None:
            out = Path(os.path.expanduser(self.params.out_dir))
            out.mkdir(parents=True, exist_ok=True)
            self.runs[msg.run] = _Run(info, out)

    def process(self, msg: Message) -> None:
        run = self.runs.get(msg.run)
        if run is None:
            return
        if msg.kind == "frame" and self.params.raw and "raw" in msg.arrays:
            raw = msg.arrays["raw"]
            run.add("raw", raw, _translation(run.info.position(msg.meta.get("data") or {}, msg.seq)), run.info.geometry.pixel_size_m)
        elif msg.stage == "clean" and self.params.clean and (msg.meta.get("scalars") or {}).get("usable", 1):
            pattern = msg.arrays["pattern"]
            run.add("clean", pattern, _translation(msg.meta["position_m"]), float(msg.meta["pixel_size_m"]))
        elif msg.stage == "recon":
            run.recon = {**msg.arrays, "dx": float(msg.meta["object_pixel_size_m"]), "engine": msg.meta.get("engine", ""),
                         "positions": msg.meta.get("positions")}
            run.residuals.append(float((msg.meta.get("scalars") or {}).get("residual", np.nan)))

    def end_run(self, run_id: str) -> Message | None:
        run = self.runs.pop(run_id, None)
        if run is None:
            return None
        paths = run.close()
        if run.recon is not None and self.params.recon and "clean" in run.writers:
            r = run.recon
            obj = (r["object_amplitude"] * np.exp(1j * r["object_phase"])).astype(np.complex64)
            probe = (r["probe_amplitude"] * np.exp(1j * r["probe_phase"])).astype(np.complex64)
            positions = r.get("positions")
            write_product(run.paths["clean"], obj, probe, r["dx"], run.residuals, r["engine"],
                          positions_matrix=positions["matrix"] if positions else None)
            if positions:  # how the reconstruction read the translations (docs/conventions.md)
                write_positions_convention(run.paths["clean"], positions["convention"], positions["matrix"],
                                           positions.get("details", {}))
        scalars = {"raw_frames": run.written["raw"], "clean_frames": run.written["clean"], "files": ";".join(paths)}
        return Message("result", run=run_id, seq=0, stage="cxi", meta={"scalars": scalars, "paths": paths})

    def abort_run(self, run_id: str) -> None:
        run = self.runs.pop(run_id, None)
        if run is not None:
            run.close()
