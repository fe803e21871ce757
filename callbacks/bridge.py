"""Bridge: the RunEngine's documents (and the frames they point at) into the pipeline's ingest port.

The RunEngine only ever puts a document reference on a queue: it is never blocked
by a slow or absent pipeline. A sender thread pairs each ``stream_datum`` with its
event, reads the frame from the detector's HDF5 file (SWMR), and sends one
``frame`` message carrying the raw frame and the event's readings (the stage
positions). Every message is kept until the handler acknowledges it and resent if
it goes unanswered, so frames sent while the handler was down go through once it
is back (the handler drops repeats). ``lag`` tells how far behind the bridge is.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

import h5py
import numpy as np
from event_model import DocumentRouter

from ns_bluesky.stream.client import IngestClient
from ns_bluesky.stream.config import PipelineConfig
from ns_bluesky.stream.protocol import Message, jsonable, start_message

log = logging.getLogger(__name__)

WINDOW = 64  # unacknowledged messages held (raw frames: about 150 MB)


class _FrameFiles:
    """Open SWMR readers of the detector files, by stream_resource uid."""

    def __init__(self):
        self.resources: dict[str, dict] = {}
        self.datasets: dict[str, tuple[h5py.Dataset, bool]] = {}  # open SWMR, and whether a frame is one raw chunk

    def add(self, doc: dict) -> None:
        self.resources[doc["uid"]] = doc

    def _dataset(self, resource_uid: str) -> tuple[h5py.Dataset, bool]:
        if resource_uid not in self.datasets:
            res = self.resources[resource_uid]
            path = Path(res["uri"].removeprefix("file://localhost"))
            ds = h5py.File(path, "r", libver="latest", swmr=True)[res["parameters"]["dataset"]]
            raw_chunks = ds.chunks == (1, *ds.shape[1:]) and ds.id.get_create_plist().get_nfilters() == 0
            self.datasets[resource_uid] = (ds, raw_chunks)
        return self.datasets[resource_uid]

    def read(self, resource_uid: str, index: int, timeout_s: float = 10.0) -> np.ndarray:
        ds, raw_chunks = self._dataset(resource_uid)
        deadline = time.monotonic() + timeout_s
        while True:
            ds.refresh()
            if ds.shape[0] > index:
                if raw_chunks:  # the frame's bytes as filed: half the cost of h5py's selection machinery
                    _, data = ds.id.read_direct_chunk((index, *(0,) * (ds.ndim - 1)))
                    return np.frombuffer(data, dtype=ds.dtype).reshape(ds.shape[1:])
                return ds[index]
            if time.monotonic() > deadline:
                raise TimeoutError(f"frame {index} never appeared in {self.resources[resource_uid]['uri']}")
            time.sleep(0.005)

    def close(self) -> None:
        """Close the files and forget the run's resources (at its stop: a long session does not grow)."""
        for ds, _ in self.datasets.values():
            ds.file.close()
        self.datasets.clear()
        self.resources.clear()


class _Translator(DocumentRouter):
    """Documents to stream messages, on the sender thread: the frame files, each datum paired with its
    event, the run's frame count. One method per document name, as event-model routes them."""

    def __init__(self, send, lag):
        super().__init__()
        self._send, self._lag = send, lag
        self.files = _FrameFiles()
        self.datums: dict[tuple[str, int], tuple[str, int]] = {}  # (descriptor, seq_num) -> (resource, index)
        self.streams: dict[str, str] = {}  # descriptor uid -> stream name
        self.run = ""
        self.sent_frames = 0
        self.skipped = 0

    def start(self, doc):
        self.run = doc["uid"]
        self.datums.clear()
        self.sent_frames = 0
        self._send(start_message(doc))

    def stream_resource(self, doc):
        self.files.add(doc)

    def descriptor(self, doc):
        self.streams[doc["uid"]] = doc.get("name", "primary")

    def stream_datum(self, doc):
        first = doc["seq_nums"]["start"]
        for k, index in enumerate(range(doc["indices"]["start"], doc["indices"]["stop"])):
            self.datums[(doc["descriptor"], first + k)] = (doc["stream_resource"], index)

    def event(self, doc):
        if self.streams.get(doc["descriptor"], "primary") != "primary":
            self.skipped += 1  # baseline and monitor streams number their events apart: not frames
            return
        arrays = {}
        where = self.datums.pop((doc["descriptor"], doc["seq_num"]), None)
        if where is not None:
            try:
                arrays["raw"] = self.files.read(*where)
            except Exception as exc:
                log.error("frame %s of run %s unreadable: %s", doc["seq_num"], self.run[:8], exc)
        kind = "frame" if arrays else "event"
        meta = {"data": jsonable(doc["data"]), "time": doc["time"], "lag": self._lag()}
        self._send(Message(kind, run=self.run, seq=doc["seq_num"], meta=meta, arrays=arrays))
        self.sent_frames += 1

    def stop(self, doc):
        meta = {"exit_status": doc.get("exit_status"), "reason": doc.get("reason", ""), "num_frames": self.sent_frames}
        self._send(Message("stop", run=self.run, meta=meta))
        self.files.close()
        self.datums.clear()  # a datum whose event never came
        self.streams.clear()


class PipelineBridge:
    """Subscribe to a RunEngine: ``RE.subscribe(PipelineBridge(cfg))``."""

    def __init__(self, cfg: PipelineConfig | None = None, *, max_queue: int = 1_000_000, warn_after_s: float = 5.0):
        self.cfg = cfg or PipelineConfig()
        self.warn_after_s = warn_after_s
        self.unprocessed: list[str] = []  # runs whose start the pipeline never acknowledged: replay them
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.sent = 0
        self.refused = 0
        self._stop = threading.Event()
        # immediate: while the handler is away, messages wait in ``unacked`` (resent when it is
        # back), not in a socket queue that would block
        self._client = IngestClient(self.cfg, window=WINDOW, immediate=True)
        self._translate = _Translator(self._send, lambda: self.lag)  # used on the sender thread only
        self._thread = threading.Thread(target=self._run, name="pipeline-bridge", daemon=True)
        self._thread.start()

    # RunEngine side: never blocks --------------------------------------------
    def __call__(self, name: str, doc: dict, validate: bool = False):
        try:
            self._queue.put_nowait((name, doc))
        except queue.Full:
            self.refused += 1
            log.error("bridge queue full (%d documents); %s document not forwarded", self._queue.maxsize, name)
        return name, doc

    @property
    def skipped(self) -> int:
        """Events of other streams than ``primary`` (baseline, monitors): not frames, not sent."""
        return self._translate.skipped

    @property
    def lag(self) -> int:
        """Documents not yet handed to the pipeline, plus messages it has not acknowledged."""
        return self._queue.qsize() + len(self._client.unacked)

    # sender thread -------------------------------------------------------------
    def _run(self) -> None:
        translate = self._translate
        started = None  # (when, key) of the last start sent, until the pipeline acknowledges it
        try:
            while not self._stop.is_set() or not self._queue.empty():
                try:
                    name, doc = self._queue.get(timeout=0.1)
                except queue.Empty:
                    name = None
                if name is not None:
                    translate(name, doc)
                    if name == "start":
                        started = (time.monotonic(), ("start", translate.run, -1))
                self._client.tick()
                if started is not None and started[1] not in self._client.unacked:
                    started = None
                elif started is not None and time.monotonic() - started[0] > self.warn_after_s:
                    self._tell_unprocessed(started[1][1])
                    started = None
        finally:
            translate.files.close()

    def _tell_unprocessed(self, run: str) -> None:
        self.unprocessed.append(run)
        log.error(
            "the pipeline at %s does not answer: run %s is recorded in the catalog but not processed live. Its frames "
            "wait here and go through if the pipeline comes back; or process it later with 'ns-bluesky replay %s'",
            self.cfg.address(self.cfg.ingest_port, connect=True), run[:8], run,
        )

    def _send(self, msg: Message) -> None:
        self._client.send(msg, timeout_s=None, cancel=self._stop)  # waits (resending) while the window is full
        self.sent += 1

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait until every document was sent and acknowledged (raises if the pipeline stays away)."""
        deadline = time.monotonic() + timeout_s
        while (self._queue.qsize() or self._client.unacked) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._queue.qsize() or self._client.unacked:
            raise TimeoutError(f"bridge: {self.lag} documents/messages still not acknowledged after {timeout_s:g} s")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._client.close()
