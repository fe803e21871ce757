"""Dark: statistics and bad maps of a dark run, handed to every frame worker as shared state.

Run one worker: the dark frames of a run are folded into one running mean and
variance (Welford), and at the run's end the mean, the read noise and the bad-pixel
and bad-channel maps go out as a shared ``dark`` result. The handler gives it to
every frame worker (also to one that starts later) and holds the light run that
names this dark (``dark_uid``) until it has.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..ptycho.dark import DarkStatistics, bad_maps
from ..stream.protocol import Message
from ..stream.stage import Stage
from .scaninfo import ScanInfo, scan_info


class DarkParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hot_sigma: float = Field(8.0, gt=0, description="a pixel this many channel spreads above its channel's median is hot")
    noisy_factor: float = Field(4.0, gt=1, description="a pixel whose variance is this many times its channel's is noisy")


class DarkStage(Stage):
    name = "dark"
    description = "dark statistics (mean, read noise) and bad-pixel/channel maps of each dark run; shared with every frame worker (run 1 worker)"
    inputs = ("frame",)
    outputs = ("dark",)
    shared_outputs = ("dark",)
    purposes = ("dark",)
    Params = DarkParams

    def __init__(self, params=None, **worker):
        super().__init__(params, **worker)
        self.runs: dict[str, tuple[ScanInfo, DarkStatistics]] = {}
        self.refused: dict[str, int] = {}

    def start_run(self, msg: Message) -> None:
        info = scan_info(msg)
        if info.purpose == "dark":
            self.runs[msg.run] = (info, DarkStatistics(info.geometry.raw_shape))
            self.refused[msg.run] = 0

    def process(self, msg: Message) -> None:
        if msg.run not in self.runs:
            return
        info, stats = self.runs[msg.run]
        raw = msg.arrays.get("raw")
        if raw is None or raw.shape != info.geometry.raw_shape or not np.isfinite(raw).all():
            self.refused[msg.run] += 1  # one bad dark must not spoil the statistics of all
            what = "no frame" if raw is None else f"shape {raw.shape}" if raw.shape != info.geometry.raw_shape else "non-finite values"
            raise ValueError(f"dark frame {msg.seq} refused ({what}; expected {info.geometry.raw_shape})")
        stats.update(raw)

    def end_run(self, run: str) -> Message | None:
        if run not in self.runs:
            return None
        info, stats = self.runs.pop(run)
        refused = self.refused.pop(run, 0)
        if stats.count < 2:
            raise ValueError(f"dark run {run[:8]}: {stats.count} usable dark frames; statistics need at least 2")
        maps = bad_maps(stats, info.geometry, hot_sigma=self.params.hot_sigma, noisy_factor=self.params.noisy_factor)
        std = np.sqrt(stats.variance).astype(np.float32)
        scalars = {
            "frames": int(stats.count),
            "refused": int(refused),
            "read_noise_adu": float(np.median(std)),
            "bad_pixel_count": int(np.count_nonzero(maps.pixels)),
            "bad_channel_count": int(np.count_nonzero(maps.channels)),
        }
        arrays = {"mean": stats.mean.astype(np.float32), "std": std, "bad_pixels": maps.pixels.astype(np.uint32),
                  "bad_channels": maps.channels.astype(np.uint8)}
        return Message("result", run=run, seq=0, stage="dark", meta={"scalars": scalars}, arrays=arrays)

    def abort_run(self, run: str) -> None:
        self.runs.pop(run, None)
        self.refused.pop(run, None)
