"""What an adaptive plan asks of the pipeline while it scans, as a Protocol.

The plan depends on these three questions, not on who answers them: the live pipeline's
results subscriber (``ns_bluesky.callbacks.feedback.AdaptiveFeedback``), a replay, or a
test's stand-in. So plans import no stream, no stage and no callback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Feedback(Protocol):
    def qc(self, run: str) -> dict[int, dict]:
        """Frame number -> the pipeline's QC of it so far (``usable``, ``flags``, ``position_y/x``, ...)."""
        ...

    def keep(self, run: str, seqs: Sequence[int]) -> None:
        """Keep the cleaned patterns of these frames (a reference patch to reconstruct)."""
        ...

    def patterns(self, run: str) -> tuple[dict[int, np.ndarray], float | None]:
        """The kept patterns by frame number and the object pixel size (m), None before one is known."""
        ...
