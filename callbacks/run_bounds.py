"""How many runs' state a long session keeps: the callbacks of a beamtime see thousands of runs.

A subscriber that keeps something per run (the live monitor's views, the plan's feedback) keeps it
while the run is under way and for the last few ended runs (a command reads a run's view just
after its end, and the soak one scan later), and forgets the rest. Runs that never end (asked
about but never seen, or whose end never came) are bounded too, oldest first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

V = TypeVar("V")

#: ended runs whose state is kept after their end
KEEP_ENDED = 8
#: runs whose state is kept at all (under way, ended, or never seen to end)
MAX_RUNS = 64


def forget_old_runs(runs: dict[str, V], ended: Callable[[V], bool], *, keep_ended: int = KEEP_ENDED,
                    max_runs: int = MAX_RUNS) -> list[str]:
    """Drop from ``runs`` (oldest first, by insertion) the ended runs beyond the last ``keep_ended``, then any
    beyond ``max_runs``; returns the runs dropped."""
    done = [run for run, state in runs.items() if ended(state)]
    dropped = done[:max(len(done) - keep_ended, 0)]
    for run in dropped:
        del runs[run]
    while len(runs) > max_runs:
        run = next(iter(runs))
        del runs[run]
        dropped.append(run)
    return dropped
