"""Documents for the catalog go through a spool on disk first, so a catalog that dies loses nothing.

A catalog server that stops answering in the middle of a scan used to cost the scan: the queued documents
were dropped, the run stayed 'running' with no events, and the command sat silent for minutes in the tiled
client's retries. Here every document is appended to its run's spool file (JSON lines, fsynced in batches)
in the RunEngine's thread, which never waits on the catalog, and one writer thread delivers them in order.
A health check tells the user within a second or two when the catalog stops answering and when it is back.
When the writer finds the catalog gone, it reopens it (for an embedded catalog that restarts its server),
removes what it had written of the runs not yet complete, and writes those runs again from their spool, in
order: each document lands exactly once. A run's spool file is removed once its stop document is in the
catalog; files left by a session that crashed are written by ``ns-bluesky catalog flush``.

A full disk under the spool costs nothing either: the run's later documents are held in memory and written
to the catalog as before (:mod:`.spool_files`), and the user is told in one line. A document the catalog
refuses (it answers, but says no) stops the scan at the RunEngine's next document, as a run the catalog
cannot hold should not scan on; the document itself stays in the spool. While :meth:`SpooledWriter.flush`
waits, a line every ``TELL_S`` says what for, so a command never sits silent.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ns_bluesky.io.terminal import TELL_S, last_output

from .spool_files import RunSpool, flush_spool, read_spool, rewrite_run

__all__ = ["SpooledWriter", "catalog_writer", "flush_spool", "read_spool", "rewrite_run"]

log = logging.getLogger(__name__)

_STOP = object()
_RECOVER = object()  # from the health check: the catalog is down while the writer is idle
#: how often the spool is fsynced, and how often the catalog's health is checked
SYNC_S = 0.5
HEALTH_S = 0.4
#: how long a health check waits for the server's answer: two failed in a row (the second at once) tell the
#: user, within HEALTH_S + 2 x HEALTH_TIMEOUT_S = 1.8 s of the server's last answer
HEALTH_TIMEOUT_S = 0.7


class SpooledWriter:
    """``RE.subscribe(SpooledWriter(open_catalog, make_writer, spool_dir))``: ``open_catalog()`` returns the
    catalog node (and restarts an embedded server that died), ``make_writer(node)`` a document callback
    into it (bluesky's TiledWriter); then ``flush``, ``close``, ``pending``. The one way documents reach the
    catalog: raw runs from the RunEngine, derived runs from the results recorder."""

    def __init__(self, open_catalog: Callable[[], object], make_writer: Callable[[object], Callable],
                 spool_dir: str | os.PathLike, *, name: str = "catalog", say: Callable[[str], None] | None = None,
                 health: Callable[[object], None] | None = None, reopen_every_s: float = 1.0):
        self.open_catalog, self.make_writer, self.name = open_catalog, make_writer, name
        self.spool_dir = Path(spool_dir)
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:  # a full disk: the first run's spool says so, and its documents are held in memory
            log.warning("%s: cannot make the spool directory %s", name, self.spool_dir)
        self.say = say or (lambda line: log.warning(line))
        self.health, self.reopen_every_s = health, reopen_every_s
        self.catalog = open_catalog()
        self._writer = make_writer(self.catalog)
        self._queue: queue.Queue = queue.Queue()
        self._runs: dict[str, RunSpool] = {}  # open runs, by start uid (RunEngine thread)
        self._run_of: dict[str, str] = {}  # descriptor / resource uid -> run uid
        self._written: dict[str, int] = {}  # documents of each open run in the catalog (writer thread)
        self._errors: list[BaseException] = []
        self._refused: set[str] = set()  # runs with a document the catalog refused
        self.delivered = 0
        self.outages = 0  # times the catalog stopped answering
        self.down_since: float | None = None
        self._told_down = False
        self._cut = False  # the health watch closed the writer's HTTP client: the writer reopens the catalog
        self.disk_full = 0  # runs whose spool file the disk refused; their documents were held in memory
        self._told_full = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"spooled-{name}", daemon=True)
        self._thread.start()
        self._watch = threading.Thread(target=self._watch_health, name=f"health-{name}", daemon=True)
        if health is not None:
            self._watch.start()

    # RunEngine side: a file append, never the network ------------------------------------------------
    def __call__(self, name: str, doc: dict) -> None:
        run = self._run_uid(name, doc)
        spool = self._runs.get(run)
        if spool is None:
            if name != "start":
                raise RuntimeError(f"{self.name}: a {name} document of a run this writer never saw start")
            spool = self._runs[run] = RunSpool(self.spool_dir / f"{run}.jsonl", self._full)
            if spool.memory is None and self._told_full:
                self._told_full = False
                self.say(f"{self.name}: the spool writes to {self.spool_dir} again")
        index = spool.append(name, doc)
        if name == "stop":
            spool.sync()  # the run is on disk whole before anyone is told it ended
        self._queue.put((run, index, name, doc))
        if name == "stop":  # its descriptors and resources are done with: a long session does not grow
            for key in [k for k, r in self._run_of.items() if r == run]:
                del self._run_of[key]
        if self._errors and name != "stop":  # the catalog refuses this run: stop the scan now, not at its end
            raise RuntimeError(f"{self.name}: {len(self._errors)} document(s) refused; first: {self._errors[0]!r}")

    def _full(self, exc: OSError) -> None:
        """The spool's disk refused a document: told once, in one line; nothing is dropped."""
        self.disk_full += 1
        if not self._told_full:
            self._told_full = True
            self.say(f"{self.name}: cannot write the spool in {self.spool_dir} ({exc.strerror or exc}); the documents "
                     f"are held in memory and still go to the catalog, none is dropped; free space there")

    def _run_uid(self, name: str, doc: dict) -> str:
        if name == "start":
            return doc["uid"]
        if name in ("stop", "descriptor", "resource", "stream_resource"):
            run = doc["run_start"]
            if name != "stop":
                self._run_of[doc["uid"]] = run
            return run
        if name in ("event", "event_page", "stream_datum"):
            return self._run_of[doc["descriptor"]]
        if name in ("datum", "datum_page"):
            return self._run_of[doc["resource"]]
        raise RuntimeError(f"{self.name}: unknown document kind {name!r}")

    # writer thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        last_sync = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=SYNC_S)
            except queue.Empty:
                item = None
            try:
                if time.monotonic() - last_sync >= SYNC_S:
                    for spool in list(self._runs.values()):
                        spool.sync()
                    last_sync = time.monotonic()
                if item is _STOP:
                    return
                if item is _RECOVER:
                    if self._cut or not self._answers():
                        self._recover(None, None, None)
                    elif self.down_since is not None:  # it was only slow to answer
                        self.say(f"{self.name}: answering again after {time.monotonic() - self.down_since:.1f} s")
                        self.down_since, self._told_down = None, False
                elif item is not None:
                    self._deliver(*item)
            except Exception as exc:  # a bug here must not kill the thread silently
                log.exception("%s: writer failed", self.name)
                self._errors.append(exc)
            finally:
                if item is not None:
                    self._queue.task_done()

    #: a server error (5xx) on a document is met by writing the open runs again this many times, then counted
    SERVER_ERROR_RETRIES = 3

    def _deliver(self, run: str, index: int, name: str, doc: dict) -> None:
        server_errors = 0
        while True:
            try:
                self._writer(name, doc)
                break
            except Exception as exc:
                if self._cut or not self._answers():
                    self._recover(exc, run, index)
                    continue  # the runs were written again up to this document; now this one
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if status is not None and status >= 500 and server_errors < self.SERVER_ERROR_RETRIES:
                    # it answers, but failed on its side (seen: 500 on a frame-reference append under load):
                    # what it holds of the open runs is no longer sure, so they are written again
                    server_errors += 1
                    log.warning("%s: server error %s on a %s document of run %s; writing the open runs again "
                                "(%d of %d)", self.name, status, name, run[:8], server_errors, self.SERVER_ERROR_RETRIES)
                    time.sleep(1.0)
                    self._rewrite_open(run, index)
                    continue
                log.exception("%s refused a %s document of run %s", self.name, name, run[:8])
                self._errors.append(exc)  # the catalog answers but refuses it: not an outage
                self._refused.add(run)  # its spool file stays, whole, for whoever looks into it
                break
        self._written[run] = index + 1
        self.delivered += 1
        if name == "stop":
            spool = self._runs.pop(run, None)
            self._written.pop(run, None)
            if spool is not None:
                spool.close(remove=run not in self._refused)

    def _answers(self) -> bool:
        if self.health is None:
            return True
        try:
            self.health(self.catalog)
            return True
        except Exception:
            return False

    def _tell_down(self, why: str) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.outages += 1
        if not self._told_down:
            self._told_down = True
            self.say(f"{self.name}: not answering ({why}); the scan goes on and its documents are kept in "
                     f"{self.spool_dir}")

    def _recover(self, exc: BaseException | None, run: str | None, index: int | None) -> None:
        """The catalog is gone: tell, reopen it until it answers (an embedded server is started again), and
        write the open runs again from their spool, ``run`` up to (not including) its document ``index``."""
        self._tell_down(type(exc).__name__ if exc is not None else "its health check failed")
        while not self._closed.is_set():
            try:
                catalog = self.open_catalog()
                if self.health is not None:
                    self.health(catalog)
                break
            except Exception as err:  # still down
                log.info("%s: still down: %s", self.name, err)
                time.sleep(self.reopen_every_s)
        else:
            raise RuntimeError(f"{self.name}: closed while the catalog was down")
        self.catalog, self._cut = catalog, False
        again = self._rewrite_open(run, index)
        down = time.monotonic() - self.down_since
        self.down_since, self._told_down = None, False
        self.say(f"{self.name}: back after {down:.1f} s; {sum(again.values())} documents of {len(again)} open "
                 f"run(s) written again from the spool")

    def _rewrite_open(self, run: str | None, index: int | None) -> dict[str, int]:
        """A new writer, and the open runs written again from their spool (``run`` up to its document
        ``index``, the others up to what was delivered); returns how many documents each."""
        self._writer = self.make_writer(self.catalog)
        again = {r: self._written.get(r, 0) for r in self._runs}
        if run is not None:
            again[run] = index
        for uid, upto in again.items():
            rewrite_run(self.catalog, self._writer, uid, self._runs[uid].documents()[:upto])
            self._written[uid] = upto
        return again

    def _watch_health(self) -> None:
        """Tell the user within about a second when the catalog stops answering and when it is back,
        whatever the writer is doing (it may be deep in the client's retries)."""
        while not self._closed.wait(HEALTH_S):
            if self.down_since is not None or self._answers():
                continue
            if self._answers():  # asked again at once: one slow answer on a loaded host is not an outage
                continue
            self._tell_down("its health check failed twice")
            self._cut_client()
            self._queue.put(_RECOVER)  # the writer reopens it even if no document is waiting

    def _cut_client(self) -> None:
        """Close the writer's HTTP client. A document being written when the server died sits in the tiled
        client's retries (10 attempts over up to 45 s): in the faults benchmark the derived runs' writer came
        back 18 s after the raw runs' idle one. Closed, the client fails its next attempt at once (not an HTTP
        error, so not retried) and the writer reopens the catalog and writes the open runs again."""
        self._cut = True
        try:
            self.catalog.context.http_client.close()
        except Exception:  # noqa: BLE001  a client already closed or of another kind: the writer's next try tells
            log.debug("%s: closing the HTTP client failed", self.name, exc_info=True)

    # caller side -----------------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def flush(self, timeout: float = 120.0) -> None:
        """Wait until every document is in the catalog; raise the first refusal, if any. ``TimeoutError`` when
        nothing moved for ``timeout`` s (no document delivered, the catalog not back): a catalog server that
        takes minutes to start again on a loaded host is waited for, one that never answers is not."""
        last, quiet_since = None, time.monotonic()
        told = quiet_since
        while self._queue.unfinished_tasks:
            now = time.monotonic()
            moved = (self.delivered, self.down_since is None)
            if moved != last:
                last, quiet_since, told = moved, now, now
            elif now - last_output(told) >= TELL_S:
                told = now
                down = "" if self.down_since is None else f", the catalog not answering for {now - self.down_since:.0f} s"
                self.say(f"{self.name}: waiting for {self._queue.unfinished_tasks} document(s) to reach the catalog"
                         f"{down}; they are kept in {self.spool_dir}")
            if now - quiet_since > timeout:
                where = ", ".join(str(s.path) for s in self._runs.values()) or str(self.spool_dir)
                raise TimeoutError(f"{self.name}: {self._queue.unfinished_tasks} document(s) not yet in the catalog, "
                                   f"nothing moved for {timeout:g} s; they are kept in {where}: 'ns-bluesky catalog "
                                   f"flush' writes them")
            time.sleep(0.01)
        if self._errors:
            errors, self._errors = self._errors, []
            raise RuntimeError(f"{self.name}: {len(errors)} document(s) failed; first: {errors[0]!r}") from errors[0]

    def close(self, timeout: float = 120.0) -> None:
        """Flush, then stop the threads; spool files of runs not in the catalog stay for 'catalog flush'."""
        try:
            self.flush(timeout)
        finally:
            self._closed.set()
            self._queue.put(_STOP)
            self._thread.join(timeout=5)
            for spool in self._runs.values():
                spool.close(remove=False)


def catalog_writer(target, *, batch_size: int = 25, name: str = "catalog", container: str | None = None,
                   say: Callable[[str], None] | None = None) -> SpooledWriter:
    """The spooled TiledWriter into the catalog at ``target`` (a directory or a URI), as every program
    writes runs: reopening ``target`` after an outage restarts its embedded server if it died."""
    from ns_bluesky.io.catalog import check_catalog, make_tiled_writer, open_catalog, spool_dir

    where = {} if container is None else {"container": container}
    return SpooledWriter(lambda: open_catalog(target, **where), lambda node: make_tiled_writer(node, batch_size=batch_size),
                         spool_dir(target), name=name, say=say,
                         health=lambda node: check_catalog(node, HEALTH_TIMEOUT_S))
