"""Image: the STXM transmission and DPC images growing on the scan grid, and the first probe guess.

Run one worker. Every cleaned frame adds its bright-field counts and its centre-of-mass
shift to the pixel where it was measured (its stage readback, so a plan that skips or
repeats points, like ``adaptive_ptycho``, still fills the right pixels; its planned
point when the frame carries no position); the images go out every ``every_s``
seconds while the scan runs and once more at its end, with the mean pattern's probe
guess (COSMIC's: the inverse transform of its square root).
"""

from __future__ import annotations

import time

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..ptycho.stxm import probe_from_patterns
from ..stream.protocol import Message
from ..stream.stage import Stage
from .scaninfo import scan_info


class ImageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    every_s: float = Field(1.0, gt=0, description="publish the growing images at most this often")


class _Grid:
    """Per-scan-point sums on the grid of the planned positions (a raster's own grid; a spiral's nearest pixel)."""

    def __init__(self, planned_m: np.ndarray, step_m: float | None):
        pos = np.asarray(planned_m, float)
        step = step_m or (float(np.median(np.abs(np.diff(pos, axis=0)).max(axis=1))) if len(pos) > 1 else 1.0)
        self.origin, self.step = pos.min(axis=0), max(step, 1e-12)
        idx = np.rint((pos - self.origin) / self.step).astype(np.int64)
        self.shape = tuple(int(v) + 1 for v in idx.max(axis=0))
        self.planned = pos
        size = self.shape[0] * self.shape[1]
        self.sums = {k: np.zeros(size) for k in ("transmission", "dpc_y", "dpc_x")}
        self.count = np.zeros(size)
        self.pattern_sum = None
        self.frames = 0

    def pixel(self, position_m) -> int | None:
        iy, ix = (int(v) for v in np.rint((np.asarray(position_m, float) - self.origin) / self.step))
        if 0 <= iy < self.shape[0] and 0 <= ix < self.shape[1]:
            return iy * self.shape[1] + ix
        return None  # off the scanned field

    def add(self, position_m, values: dict, pattern: np.ndarray) -> None:
        pixel = self.pixel(position_m)
        if pixel is None:
            return
        for k, total in self.sums.items():
            total[pixel] += values[k]
        self.count[pixel] += 1
        self.pattern_sum = pattern.astype(np.float64) if self.pattern_sum is None else self.pattern_sum + pattern
        self.frames += 1

    def images(self) -> dict[str, np.ndarray]:
        seen = self.count > 0
        out = {}
        for k, total in self.sums.items():
            img = np.full(total.shape, np.nan, np.float32)
            img[seen] = total[seen] / self.count[seen]
            out[k] = img.reshape(self.shape)
        return out


class ImageStage(Stage):
    name = "image"
    description = "STXM transmission and DPC images on the scan grid, and the mean pattern's probe guess (run 1 worker)"
    inputs = ("clean",)
    outputs = ("stxm",)
    Params = ImageParams

    def __init__(self, params=None, **worker):
        super().__init__(params, **worker)
        self.grids: dict[str, _Grid] = {}
        self.updates: dict[str, int] = {}
        self.last: dict[str, float] = {}

    def start_run(self, msg: Message) -> None:
        info = scan_info(msg)
        if info.planned_m is not None and len(info.planned_m):
            self.grids[msg.run] = _Grid(info.planned_m, info.step_m)
            self.updates[msg.run], self.last[msg.run] = 0, 0.0

    def process(self, msg: Message) -> Message | None:
        grid = self.grids.get(msg.run)
        if grid is None:
            return None
        scalars = msg.meta.get("scalars") or {}
        if scalars.get("usable", 1):
            if "position_y" in scalars and "position_x" in scalars:
                position = (scalars["position_y"], scalars["position_x"])
            elif 0 < msg.seq <= len(grid.planned):
                position = grid.planned[msg.seq - 1]
            else:
                position = None
            if position is not None:
                grid.add(position, scalars, msg.arrays["pattern"])
        if time.monotonic() - self.last[msg.run] >= self.params.every_s and grid.frames:
            return self._publish(msg.run, final=False)
        return None

    def _publish(self, run: str, final: bool) -> Message:
        grid = self.grids[run]
        self.updates[run] += 1
        self.last[run] = time.monotonic()
        mean = (grid.pattern_sum / max(grid.frames, 1)).astype(np.float32)
        probe = probe_from_patterns(mean)
        arrays = {**grid.images(), "mean_pattern": mean, "probe_amplitude": np.abs(probe), "probe_phase": np.angle(probe)}
        scalars = {"frames": grid.frames, "update": self.updates[run], "final": int(final)}
        return Message("result", run=run, seq=self.updates[run], stage="stxm", meta={"scalars": scalars}, arrays=arrays)

    def end_run(self, run: str) -> Message | None:
        grid = self.grids.get(run)
        out = self._publish(run, final=True) if grid is not None and grid.frames else None
        self.abort_run(run)
        return out

    def abort_run(self, run: str) -> None:
        self.grids.pop(run, None)
        self.updates.pop(run, None)
        self.last.pop(run, None)
