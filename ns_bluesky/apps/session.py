"""A private pipeline for one program (the demo, ``replay``): started, watched, recorded, stopped.

Starts the handler and its local workers on free loopback ports, records the results
as derived runs in the catalog, shows live progress, and on leaving (also after an
error or Ctrl-C) stops all of it; a derived run still open gets a stop document
saying why.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..io.catalog import detector_dir, make_tiled_writer
from ..stream.config import PipelineConfig


class PipelineSession:
    """``with PipelineSession(cat, cat_dir, cfg, workdir) as s:`` then ``s.monitor``, ``s.recorder``, ``s.finish(uid)``."""

    def __init__(self, cat, cat_dir, cfg: PipelineConfig, workdir, *, progress: bool = True, total: int | None = None,
                 own_pipeline: bool = True, batch_size: int = 25, detectors=None):
        self.cat, self.cfg, self.workdir = cat, cfg, Path(workdir)
        self.cat_dir = None if cat_dir is None else Path(cat_dir)
        # where derived arrays go: the catalog's server must read them (catalog.data_dir for a served catalog)
        self.detectors = Path(detectors) if detectors is not None else detector_dir(self.cat_dir)
        self.own_pipeline = own_pipeline  # False: record and watch a pipeline that runs already
        self.progress, self.total = progress, total
        self.batch_size = batch_size  # the derived run's events per catalog request (catalog.writer_batch)
        self.pipe = self.recorder = self.monitor = self._writer = None

    def __enter__(self) -> PipelineSession:
        from ..callbacks import ThreadedCallback
        from ..callbacks.live import LiveMonitor
        from ..callbacks.recorder import ResultsRecorder
        from ..stream.launcher import PipelineProcess

        try:
            if self.own_pipeline:
                self.pipe = PipelineProcess(self.cfg, self.workdir).start()
            self._writer = ThreadedCallback(make_tiled_writer(self.cat, batch_size=self.batch_size), name="derived-catalog")
            self.recorder = ResultsRecorder(self.cfg, self._writer, self.detectors / "derived")
            self.monitor = LiveMonitor(self.cfg, progress=self.progress, total=self.total)
        except BaseException:
            self.__exit__()
            raise
        return self

    def finish(self, raw_uid: str, timeout_s: float):
        """Wait for the pipeline's end of ``raw_uid`` and for its derived run to be in the catalog; returns
        the monitor's view."""
        view = self.monitor.wait_end(raw_uid, timeout_s)
        deadline = time.monotonic() + 30
        while view.ended is not None and raw_uid not in self.recorder.finished and time.monotonic() < deadline:
            time.sleep(0.05)
        self._writer.flush()  # the derived run's last documents are in the catalog when this returns
        return view

    def __exit__(self, *exc) -> None:
        """Close every part even when one fails (a catalog write error must not leave the workers running)."""
        errors = []
        for part in (self.monitor, self.recorder, self.pipe, self._writer):
            if part is None:
                continue
            try:
                part.stop() if part is self.pipe else part.close()
            except Exception as err:
                errors.append(err)
        if errors:
            raise errors[0]
