"""The pipeline's results as a run of their own, linked to the raw run they came from.

One derived run per processed raw run, composed with event-model's ``compose_run`` (so
every document is validated) and handed to whatever writes runs (``TiledWriter`` into
the catalog's ``processed`` node, beside the raw runs). Its start document names the raw
run (``parent_uid``) and the dark run, so ``derived_runs(cat, raw_uid)``
(:mod:`ns_bluesky.io.catalog_layout`) finds it years later. Scalars go
in events; arrays (object, probe, STXM images) go to one HDF5 file per data key,
announced by ``stream_resource``/``stream_datum`` like the detector's frames, so the
catalog stays light and the arrays stay lazily readable. A run that stops early (an
abort, a crash of the pipeline) still gets a stop document that says why.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from event_model import compose_run

from ns_bluesky.errors import ParameterError
from ns_bluesky.io.frame_writer import HDF5FrameWriter

Emit = Callable[[str, dict], None]


class _Stream:
    def __init__(self, bundle, writers: dict[str, HDF5FrameWriter]):
        self.bundle, self.writers = bundle, writers
        self.seq = 0


class DerivedRun:
    """Compose a derived run: ``add(stream, scalars, arrays)`` per result, then ``close``.

    ``emit(name, doc)`` receives every document in order (e.g. a ``TiledWriter``).
    A stream's data keys are fixed by its first result: later results must carry the
    same keys, shapes and dtypes (a mismatch is an error, not a silently broken run).
    """

    def __init__(
        self,
        emit: Emit,
        write_dir: str | os.PathLike,
        *,
        parent_uid: str,
        dark_uid: str | None = None,
        md: dict | None = None,
    ):
        if not parent_uid:
            raise ParameterError("a derived run needs the uid of the raw run it comes from")
        self.emit, self.write_dir = emit, Path(write_dir)
        metadata = {"plan_name": "ns_bluesky_pipeline", "purpose": "derived", **(md or {})}
        metadata.update(parent_uid=parent_uid, dark_uid=dark_uid)
        self.run = compose_run(metadata=metadata)
        self.uid = self.run.start_doc["uid"]
        self.emit("start", self.run.start_doc)
        self.streams: dict[str, _Stream] = {}
        self.closed = False

    def add(self, stream: str, scalars: dict | None = None, arrays: dict[str, np.ndarray] | None = None, *, timestamp: float | None = None) -> int:
        """One event of ``stream``; returns its sequence number (from 1)."""
        if self.closed:
            raise RuntimeError(f"derived run {self.uid[:8]} is closed")
        # NaN travels the wire as JSON null: a None scalar is a number that is not known (yet)
        scalars = {k: float("nan") if v is None else v for k, v in (scalars or {}).items()}
        arrays = {k: np.ascontiguousarray(v) for k, v in (arrays or {}).items()}
        if set(scalars) & set(arrays):
            raise ParameterError(f"stream {stream!r}: {sorted(set(scalars) & set(arrays))} given both as a scalar and an array")
        now = time.time() if timestamp is None else timestamp
        s = self.streams.get(stream) or self._describe(stream, scalars, arrays)
        keys = set(s.bundle.descriptor_doc["data_keys"])
        if keys != set(scalars) | set(arrays):
            raise ParameterError(f"stream {stream!r}: keys {sorted(set(scalars) | set(arrays))}, its first event had {sorted(keys)}")
        s.seq += 1
        for key, arr in arrays.items():
            writer = s.writers[key]
            writer.write(arr.astype(writer.dtype, copy=False))
            for name, doc in writer.collect_docs():
                if name == "stream_resource":  # the RunEngine adds this for a device; here the run does
                    doc = {**doc, "run_start": self.uid}
                elif name == "stream_datum":
                    doc = {**doc, "descriptor": s.bundle.descriptor_doc["uid"], "seq_nums": {"start": s.seq, "stop": s.seq + 1}}
                self.emit(name, doc)
        if scalars:
            # the schema checks the event against its descriptor; the keys are checked above for every
            # event, so only the stream's first pays for the full check (about 0.3 ms each)
            event = s.bundle.compose_event(data=scalars, timestamps=dict.fromkeys(scalars, now), seq_num=s.seq, time=now,
                                           validate=s.seq == 1)
            self.emit("event", event)
        return s.seq

    def _describe(self, stream: str, scalars: dict, arrays: dict) -> _Stream:
        data_keys = {}
        for key, value in scalars.items():
            kind = "integer" if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else (
                "number" if isinstance(value, (float, np.floating)) else "string" if isinstance(value, str) else None
            )
            if kind is None:
                raise ParameterError(f"stream {stream!r}: {key} must be a number or a string, got {type(value).__name__}")
            data_keys[key] = {"source": "ns-bluesky pipeline", "dtype": kind, "shape": []}
        writers = {}
        for key, arr in arrays.items():
            data_keys[key] = {
                "source": "ns-bluesky pipeline", "dtype": "array", "dtype_numpy": arr.dtype.str,
                "shape": list(arr.shape), "external": "STREAM:",
            }
            writers[key] = HDF5FrameWriter(self.write_dir, key, arr.shape, arr.dtype.str)
        for writer in writers.values():  # first: a disk with no room for them leaves no descriptor behind
            writer.open()
        bundle = self.run.compose_descriptor(name=stream, data_keys=data_keys)
        self.emit("descriptor", bundle.descriptor_doc)
        s = self.streams[stream] = _Stream(bundle, writers)
        return s

    def close(self, exit_status: str = "success", reason: str = "") -> dict:
        """The stop document (also after an abort or a failure: ``exit_status`` and ``reason`` say so)."""
        if self.closed:
            raise RuntimeError(f"derived run {self.uid[:8]} is closed already")
        for s in self.streams.values():
            for writer in s.writers.values():
                writer.close()
        stop = self.run.compose_stop(exit_status=exit_status, reason=reason)
        self.emit("stop", stop)
        self.closed = True
        return stop
