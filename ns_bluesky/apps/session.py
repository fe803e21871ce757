"""A private pipeline for one program (the demo, ``replay``): started, watched, recorded, stopped.

Starts the handler and its local workers on free loopback ports, records the results
as derived runs in the catalog's ``processed`` node (beside the raw runs of ``cat``), shows live progress, and on leaving (also after an
error or Ctrl-C) stops all of it; a derived run still open gets a stop document
saying why.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from ..errors import ParameterError, PipelineError
from ..io.catalog import detector_dir
from ..io.catalog_layout import PROCESSED_CONTAINER
from ..io.terminal import POLL_S, TELL_S, last_output
from ..stream.config import PipelineConfig

#: how often the session looks at its handler process: the user hears of its death within this (and a print)
WATCH_S = 0.25


class PipelineSession:
    """``with PipelineSession(cat, cat_dir, cfg, workdir) as s:`` then ``s.monitor``, ``s.recorder``, ``s.finish(uid)``.

    ``cat``: the raw runs' node (:func:`~ns_bluesky.io.catalog.open_catalog`); the derived runs go beside it,
    through the catalog's spool (:func:`~ns_bluesky.callbacks.spool.catalog_writer` of ``catalog_target``, by
    default ``cat_dir``): one writer for every run, so a catalog server that dies loses no derived document either.
    """

    def __init__(self, cat, cat_dir, cfg: PipelineConfig, workdir, *, progress: bool = True, total: int | None = None,
                 own_pipeline: bool = True, batch_size: int = 25, detectors=None, catalog_target=None,
                 say=None):
        self.cat, self.cfg, self.workdir = cat, cfg, Path(workdir)
        self.cat_dir = None if cat_dir is None else Path(cat_dir)
        # where derived arrays go: the catalog's server must read them (catalog.data_dir for a served catalog)
        self.detectors = Path(detectors) if detectors is not None else detector_dir(self.cat_dir)
        self.own_pipeline = own_pipeline  # False: record and watch a pipeline that runs already
        self.progress, self.total = progress, total
        self.batch_size = batch_size  # the derived run's events per catalog request (catalog.writer_batch)
        self.pipe = self.recorder = self.monitor = self._writer = None
        # the catalog's directory or URI: derived runs are spooled on disk first (callbacks/spool.py)
        self.catalog_target = catalog_target if catalog_target is not None else cat_dir
        if self.catalog_target is None:
            raise ParameterError("PipelineSession needs the catalog's directory or URI (cat_dir or catalog_target) "
                                 "to record derived runs through its spool")
        self.say = say
        self.died: str | None = None  # how the handler ended, if it ended before the session
        self._closing = threading.Event()

    def __enter__(self) -> PipelineSession:
        from ..callbacks.live import LiveMonitor
        from ..callbacks.recorder import ResultsRecorder
        from ..callbacks.spool import catalog_writer
        from ..stream.launcher import PipelineProcess

        try:
            if self.own_pipeline:
                self.pipe = PipelineProcess(self.cfg, self.workdir).start()
            # derived runs beside the raw ones, never among them
            self._writer = catalog_writer(self.catalog_target, batch_size=self.batch_size, name="derived-catalog",
                                          container=PROCESSED_CONTAINER, say=self.say)
            self.recorder = ResultsRecorder(self.cfg, self._writer, self.detectors / "derived")
            self.monitor = LiveMonitor(self.cfg, progress=self.progress, total=self.total, say=self.say)
            if self.pipe is not None:
                threading.Thread(target=self._watch, name="pipeline-watch", daemon=True).start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _watch(self) -> None:
        """The handler's death is told at once, in one line: the scan goes on (the RunEngine never waits on
        the pipeline, the catalog keeps every frame), and the user knows the live view has stopped and why."""
        proc = self.pipe.proc if self.pipe is not None else None
        while proc is not None and not self._closing.wait(WATCH_S):
            code = proc.poll()
            if code is None:
                continue
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            self.died = f"the pipeline's handler (pid {proc.pid}) ended during the run ({how})"
            print(f"pipeline: {self.died}; the scan goes on and the catalog keeps every frame, but nothing is "
                  f"processed live any more (log: {self.workdir / 'logs'})", file=sys.stderr, flush=True)
            return

    def check(self, raw_uid: str | None = None) -> None:
        """``PipelineError`` if the handler died: what was lost (the processing) and how to get it back."""
        if self.died is None:
            return
        again = (f"; the raw run {raw_uid[:8]} is complete in the catalog: process it again with "
                 f"'ns-bluesky replay {raw_uid[:8]}'") if raw_uid else ""
        raise PipelineError(self.died + again)

    def _tell(self, line: str) -> None:
        (self.say or (lambda text: print(text, file=sys.stderr, flush=True)))(line)

    def flush(self, bridge, raw_uid: str, timeout_s: float) -> None:
        """The bridge's documents all acknowledged by the pipeline, in slices, so that a dead handler ends the
        wait at once instead of at the timeout; a line every ``TELL_S`` while it stands still."""
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        lag, told = None, t0
        while True:
            self.check(raw_uid)
            try:
                bridge.flush(timeout_s=min(POLL_S * 3, max(deadline - time.monotonic(), 0.0)))
                return
            except TimeoutError:
                now = time.monotonic()
                if now >= deadline:
                    raise
                if bridge.lag != lag:
                    lag, told = bridge.lag, now
                elif now - last_output(told) >= TELL_S:
                    told = now
                    self._tell(f"pipeline: waiting for it to take {lag} message(s) of run {raw_uid[:8]} "
                               f"({now - t0:.0f} s); the catalog has the run")

    def finish(self, raw_uid: str, timeout_s: float):
        """Wait for the pipeline's end of ``raw_uid`` and for its derived run to be in the catalog; returns
        the monitor's view. ``PipelineError`` as soon as the handler is found dead."""
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        view = self.monitor.view(raw_uid)
        seen, told = None, t0
        while view.ended is None and time.monotonic() < deadline:
            self.check(raw_uid)
            view = self.monitor.wait_end(raw_uid, min(POLL_S * 3, max(deadline - time.monotonic(), 0.0)))
            now, iteration = time.monotonic(), (view.recon or {}).get("scalars", {}).get("iteration")
            if view.processed != seen:  # the progress bar moved: the user saw something
                seen, told = view.processed, now
            elif view.ended is None and now - last_output(told) >= TELL_S:
                told = now
                self._tell(f"pipeline: waiting for the end of run {raw_uid[:8]} ({now - t0:.0f} s): {view.processed} "
                           f"frames processed" + (f", reconstruction at iteration {iteration}" if iteration else ""))
        deadline = time.monotonic() + 30
        while view.ended is not None and raw_uid not in self.recorder.finished and time.monotonic() < deadline:
            time.sleep(0.05)
        self._writer.flush()  # the derived run's last documents are in the catalog when this returns
        return view

    def __exit__(self, *exc) -> None:
        """Close every part even when one fails (a catalog write error must not leave the workers running)."""
        self._closing.set()
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
