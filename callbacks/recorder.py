"""Record the pipeline's results: every raw run's results become one derived run in the catalog.

A background thread subscribes to the handler's results port. A result of stage S for
run R goes to a stream of the derived run whose ``parent_uid`` is R (the bridge names
pipeline runs by their raw run's uid): ``STREAMS`` names it (the frame workers'
``clean`` results become ``frames_qc``, their scalars only: the patterns are in the
CXI file) and other stages keep their name. ``meta["scalars"]`` become the event's
values and its arrays go to HDF5. The handler announces each run's start document, so
the derived run names the dark run and its parent's scan id and sample name. The
handler's end of run closes the derived run (``abort`` when the run was aborted; a
reconstruction cut short, ``cut_short`` in its result's meta, is said in the stop's ``reason``);
module errors are kept in an ``errors`` stream. A result that does not fit its stream
is logged and counted (``rejected``), never fatal. A result whose arrays find the disk full is not
lost silently: it gets a row in the ``errors`` stream saying so (the catalog needs no disk of this
host for it), the first one is told on stderr in one line, and ``disk_full`` counts them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ns_bluesky.stream.config import PipelineConfig
from ns_bluesky.stream.protocol import start_document

from ..errors import DiskFullError
from ..stream.subscriber import ResultsSubscriber
from .derived import DerivedRun, Emit

#: stage -> (stream of the derived run, whether its arrays are recorded too)
log = logging.getLogger(__name__)

STREAMS = {
    "clean": ("frames_qc", False),
    "stxm": ("stxm", True),
    "recon": ("reconstruction", True),
    "dark": ("dark", True),
    "cxi": ("cxi", False),
}
#: scalars a stage's results carry only sometimes (the reconstruction's refinement says how it went, its
#: earlier results do not): recorded as NaN until known, so a stream keeps the keys of its first event and
#: the refined reconstruction, the best one, is not refused as a result of another shape
OPTIONAL_SCALARS = {"recon": ("refine_iterations", "refine_best_iteration", "refine_seconds")}
#: raw runs whose derived run's uid is kept after its end (``finished``): a beamtime has thousands of runs
KEEP_FINISHED = 256


class ResultsRecorder(ResultsSubscriber):
    """``ResultsRecorder(cfg, emit, write_dir)``; ``close()`` ends what is still open as ``fail``."""

    def __init__(
        self,
        cfg: PipelineConfig,
        emit: Emit,
        write_dir: str | os.PathLike,
        *,
        dark_uid_of: Callable[[str], str | None] | None = None,
        md: dict | None = None,
    ):
        self.emit, self.write_dir = emit, Path(write_dir)
        self.dark_uid_of = dark_uid_of or (lambda raw_uid: None)
        self.md = md or {}
        self.runs: dict[str, DerivedRun] = {}
        self.starts: dict[str, dict] = {}  # start documents the handler announced, until their first result
        self.finished: dict[str, str] = {}  # raw uid -> derived uid, the last KEEP_FINISHED
        self.notes: dict[str, str] = {}  # raw uid -> what its stop document says (a reconstruction cut short), until then
        self.disk_full = 0  # results whose arrays the disk had no room for
        super().__init__(cfg, name="results-recorder")

    def _derived(self, raw_uid: str) -> DerivedRun:
        if raw_uid not in self.runs:
            start = self.starts.pop(raw_uid, {})
            dark_uid = self.dark_uid_of(raw_uid) or start.get("dark_uid")
            # under parent_*: scan_id and sample_name stay the raw run's own, so cat[scan_id] finds the scan
            md = {**{f"parent_{k}": start[k] for k in ("scan_id", "sample_name") if k in start}, **self.md}
            self.runs[raw_uid] = DerivedRun(self.emit, self.write_dir, parent_uid=raw_uid, dark_uid=dark_uid, md=md)
        return self.runs[raw_uid]

    def _on_message(self, msg) -> None:
        if msg.kind == "start":
            self.starts[msg.run] = start_document(msg)
            while len(self.starts) > 100:  # runs that never had a result
                del self.starts[next(iter(self.starts))]
        elif msg.kind == "result":
            scalars = msg.meta.get("scalars") or {}
            optional = OPTIONAL_SCALARS.get(msg.stage, ())
            if optional:  # floats throughout: a table column keeps the type of its first value
                scalars = {**scalars, **{k: float("nan") if scalars.get(k) is None else float(scalars[k]) for k in optional}}
            stream, with_arrays = STREAMS.get(msg.stage, (msg.stage, True))
            try:
                self._derived(msg.run).add(stream, scalars, msg.arrays if with_arrays else None)
                if msg.meta.get("cut_short"):  # said in its stop document: the catalog tells why the image is partial
                    self.notes[msg.run] = str(msg.meta["cut_short"])[:1000]
            except DiskFullError as exc:
                self.disk_full += 1
                if self.disk_full == 1:
                    print(f"results-recorder: {exc}; results with arrays are not stored until there is room, "
                          f"each one noted in its derived run's errors stream", file=sys.stderr, flush=True)
                log.error("result of %s (seq %s) of run %s not stored: %s", msg.stage, msg.seq, msg.run[:8], exc)
                self._derived(msg.run).add("errors", {"seq": msg.seq, "module": msg.stage,
                                                      "error": f"not stored, disk full: {exc}"[:500]})
        elif msg.kind == "error":
            run = self._derived(msg.run)
            run.add("errors", {"seq": msg.seq, "module": msg.stage, "error": str(msg.meta.get("error", ""))[:500]})
        elif msg.kind == "end_of_run" and msg.run in self.runs:
            aborted = bool(msg.meta.get("aborted"))
            run = self.runs[msg.run]
            if "planned" in msg.meta:  # what never arrived or arrived twice: counted once per run
                m = msg.meta
                run.add("run_qc", {"planned": int(m["planned"]), "frames": int(m.get("frames", 0)), "missing": int(m.get("missing", 0)),
                                   "duplicates": int(m.get("duplicates", 0)), "missing_seqs": ",".join(map(str, m.get("missing_seqs", [])))})
            self.runs.pop(msg.run)
            note = self.notes.pop(msg.run, "")
            run.close("abort" if aborted else "success", "the pipeline aborted the run" if aborted else note)
            self._finished(msg.run, run.uid)

    def _finished(self, raw_uid: str, derived_uid: str) -> None:
        self.finished[raw_uid] = derived_uid
        while len(self.finished) > KEEP_FINISHED:
            del self.finished[next(iter(self.finished))]

    def close(self, timeout_s: float = 5.0) -> None:
        super().close(timeout_s)
        for raw_uid, run in list(self.runs.items()):
            run.close("fail", "the results recorder stopped before the pipeline ended this run")
            self._finished(raw_uid, run.uid)
        self.runs.clear()
        self.notes.clear()
