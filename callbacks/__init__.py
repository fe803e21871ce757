"""Event-model callbacks: progress, catalog writing off the RunEngine thread, the bridge into the
pipeline (``bridge.PipelineBridge``) and the pipeline's results as a derived run (``derived.DerivedRun``)."""

from .progress import ProgressBar
from .threaded import ThreadedCallback

__all__ = ["ProgressBar", "ThreadedCallback"]
