"""Event-model callbacks: progress, the catalog writer (``spool.catalog_writer``: on disk first, off the
RunEngine thread), the bridge into the pipeline (``bridge.PipelineBridge``) and the pipeline's results as a
derived run (``derived.DerivedRun``)."""

from .progress import ProgressBar

__all__ = ["ProgressBar"]
