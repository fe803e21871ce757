"""Event-model callbacks: progress, catalog writing off the RunEngine thread, and (later) the pipeline bridge."""

from .progress import ProgressBar
from .threaded import ThreadedCallback

__all__ = ["ProgressBar", "ThreadedCallback"]
