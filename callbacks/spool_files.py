"""A run's spool file, and what reads spool files back: the catalog writes of a session that is gone.

One file per run, one JSON line per document, appended in the RunEngine's thread and locked while the run is
open (``ns-bluesky catalog flush`` leaves a live run alone). A full disk must not cost a document: when an
append fails (no space, a quota, an I/O error) the file is cut back to its last whole line and the run's later
documents are kept in memory instead, so the catalog still gets every one of them and a catalog outage can
still be met by writing the run again (:meth:`RunSpool.documents`). Only a crash of the session while both
the disk is full and the catalog is down would lose the documents held in memory; the user is told so.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path


def _plain(value):
    """numpy scalars and arrays as JSON (documents from devices may carry them)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class RunSpool:
    """One run's spool file; ``on_full(error)`` is called once when the disk refuses a document."""

    def __init__(self, path: Path, on_full: Callable[[OSError], None]):
        self.path, self.on_full = path, on_full
        self.count = 0  # documents of the run so far
        self.on_disk = 0  # of which whole lines in the file
        self.memory: list[tuple[str, dict]] | None = None  # the documents after ``on_disk``, once the disk was full
        self._fd: int | None = None
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._good = os.fstat(self._fd).st_size  # the offset after the last whole line
        except OSError as exc:
            self._to_memory(exc)

    def _to_memory(self, exc: OSError) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, self._good)  # no half line left for a reader to trip on
            except (OSError, AttributeError):
                pass
        self.memory = []
        self.on_full(exc)

    def append(self, name: str, doc: dict) -> int:
        index = self.count
        self.count += 1
        if self.memory is None:
            line = (json.dumps([name, doc], default=_plain) + "\n").encode()
            try:
                left = memoryview(line)
                while left:  # to the OS now (a crash of this process keeps it); to the disk at the next sync
                    left = left[os.write(self._fd, left):]
                self._good += len(line)
                self.on_disk += 1
                return index
            except OSError as exc:
                self._to_memory(exc)
        self.memory.append((name, doc))
        return index

    def documents(self) -> list[tuple[str, dict]]:
        """Every document of the run so far, in order: the file's, then those held in memory."""
        on_disk = read_spool(self.path)[: self.on_disk] if self.on_disk else []
        return on_disk + (self.memory or [])

    def sync(self) -> None:
        if self._fd is not None and self.memory is None:
            try:
                os.fsync(self._fd)
            except OSError as exc:  # what is written stays in the page cache; later documents go to memory
                self._to_memory(exc)

    def close(self, remove: bool) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None
        if remove or (self.on_disk == 0 and self.memory is not None):
            self.path.unlink(missing_ok=True)


def read_spool(path: Path) -> list[tuple[str, dict]]:
    """The documents of a spool file, in order; a last line cut short by a crash is left out."""
    docs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                name, doc = json.loads(line)
            except ValueError:
                break
            docs.append((name, doc))
    return docs


def rewrite_run(catalog, writer: Callable, run: str, docs: list[tuple[str, dict]], *, close: bool = False) -> int:
    """Remove what the catalog holds of ``run`` and write ``docs`` again through ``writer``; returns how many
    were written. ``close``: a run whose session ended before its stop document gets one (exit status 'abort',
    saying so), so it does not read 'running'."""
    if run in catalog:
        catalog.delete_contents(run, recursive=True, external_only=False)
    docs = list(docs)
    if close and docs and docs[-1][0] != "stop":
        docs.append(("stop", closing_stop(docs)))
    for name, doc in docs:
        writer(name, doc)
    return len(docs)


def closing_stop(docs: list[tuple[str, dict]]) -> dict:
    """The stop document a run cut short by its session's end never got."""
    start = docs[0][1]
    streams = {d["uid"]: d.get("name", "primary") for name, d in docs if name == "descriptor"}
    counts: dict[str, int] = {}
    for name, d in docs:
        if name == "event":
            counts[streams[d["descriptor"]]] = counts.get(streams[d["descriptor"]], 0) + 1
        elif name == "event_page":
            counts[streams[d["descriptor"]]] = counts.get(streams[d["descriptor"]], 0) + len(d["seq_num"])
    last = max(float(d.get("time", start["time"])) for _, d in docs)
    return {"uid": str(uuid.uuid4()), "time": last, "run_start": start["uid"], "exit_status": "abort",
            "reason": "the session that took this run ended before the run did; written by 'ns-bluesky catalog flush'",
            "num_events": {**{n: 0 for n in streams.values()}, **counts}}


def flush_spool(catalog, make_writer: Callable[[object], Callable], spool_dir: str | os.PathLike) -> list[tuple[str, int]]:
    """Write every run spooled in ``spool_dir`` that no live session holds: (run uid, documents) each."""
    done = []
    for path in sorted(Path(spool_dir).glob("*.jsonl"), key=lambda p: p.stat().st_mtime):
        with open(path, encoding="utf-8") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a session is writing it now
            run = path.name.split(".")[0]
            n = rewrite_run(catalog, make_writer(catalog), run, read_spool(path), close=True)
        path.unlink()
        done.append((run, n))
    return done
