"""Tally: consumes another module's results and reports, at the end of a run, what reached it.

It proves module-to-module routing: every echo result of a run reaches it exactly
once, and the run's end reaches it only after the last of them.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..stream.protocol import Message
from ..stream.stage import Stage


class TallyStage(Stage):
    name = "tally"
    description = "counts the echo results of a run and their checksum; one tally result at its end (run 1 worker)"
    inputs = ("echo",)
    outputs = ("tally",)

    def __init__(self, params=None, **worker):
        super().__init__(params, **worker)
        self.seen: dict[str, list[int]] = defaultdict(list)
        self.checksum: dict[str, float] = defaultdict(float)

    def process(self, msg: Message) -> None:
        self.seen[msg.run].append(msg.seq)
        self.checksum[msg.run] += float(sum(np.asarray(a, np.float64).sum() for a in msg.arrays.values()))

    def end_run(self, run: str) -> Message:
        seqs = sorted(self.seen.pop(run, []))
        checksum = self.checksum.pop(run, 0.0)
        meta = {"seqs": seqs, "checksum": checksum, "scalars": {"count": len(seqs), "checksum": checksum}}
        return Message("result", run=run, seq=-1, stage="tally", meta=meta)

    def abort_run(self, run: str) -> None:
        self.seen.pop(run, None)
        self.checksum.pop(run, None)
