"""The embedded catalog's tiled server, in a process of its own.

``open_catalog(directory)`` starts ``python -m ns_bluesky.io.catalog_server DIRECTORY``:
tiled's ``SimpleTiledServer`` (SQLite + files) on 127.0.0.1, one per catalog
directory. In the RunEngine's own process the server shared one GIL with the
RunEngine, the detector and the pipeline bridge, and every request (SQLAlchemy and
FastAPI, about 10 ms of Python) held up the scan: on a 30 x 30 rate-0 demo, the same
catalog served from another process gave 95-101 frames/s against 83-85.

The server takes ``server.lock`` in the directory (another process serving it already:
it prints ``{"busy": true}`` and exits, and the caller connects to that one), writes
its address to ``server.json``, prints ``{"uri": ...}`` and serves until its standard
input closes: when the process that started it closes it or dies, so a killed scan
never leaves a server behind. It ignores Ctrl-C, which the terminal sends to every
process of the scan's group: the scan's stop document still has to reach it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import signal
import sys
import threading
from pathlib import Path

from .catalog import detector_dir


class _HeldConnection:
    """A storage connection that holds its storage's lock until closed."""

    def __init__(self, conn, lock: threading.RLock):
        self._conn, self._lock = conn, lock

    def __getattr__(self, name: str):
        return getattr(self._conn, name)

    def close(self) -> None:
        try:
            self._conn.close()
        finally:
            self._lock.release()


def _serialize_connections(storage) -> None:
    """One request at a time on the embedded server's tabular storage.

    SimpleTiledServer keeps its tables in DuckDB through one shared ADBC connection
    (tiled pools DuckDB with a StaticPool), and the server calls it from several worker
    threads at once. DuckDB connections are not thread-safe: two writers appending
    together (the raw run's and the derived run's TiledWriter) made ``commit()`` hang
    or the append fail with HTTP 500 within seconds. tiled's adapters open the
    connection with ``closing(storage.connect())``, so holding a lock from ``connect``
    to ``close`` serializes every read and write without touching tiled itself.
    """
    lock = threading.RLock()  # re-entrant: an adapter may open a second connection while holding one
    connect = storage.connect

    def locked_connect():
        lock.acquire()
        try:
            return _HeldConnection(connect(), lock)
        except BaseException:
            lock.release()
            raise

    object.__setattr__(storage, "connect", locked_connect)  # tiled's storage is a frozen dataclass


def _register_document_export() -> None:
    """Let the embedded server replay a run's documents (``run.documents()``), as a configured server does."""
    from bluesky_tiled_plugins.exporters import json_seq_exporter
    from tiled.media_type_registration import default_serialization_registry as registry

    if "application/json-seq" not in registry.media_types("BlueskyRun"):
        registry.register("BlueskyRun", "application/json-seq", json_seq_exporter)


def _initialised_here(directory: Path) -> None:
    """Create (or check) the catalog's SQLite tables in this process, and keep tiled from doing it in another.

    ``SimpleTiledServer`` has tiled initialise its catalog in a fresh interpreter (``python -m tiled catalog
    init --if-not-exists``: SQLite and threads do not mix), on every start, existing catalog or not: 1.5-3 s
    of each server's start on 2 cores, which a scan waits out before its first document. Here the same
    command's function runs in the main thread before the server's threads exist, which is what the
    subprocess was for; the server's own call then skips it.
    """
    import tiled.catalog
    from tiled.commandline._catalog import init

    init(str(directory / "catalog.db"), if_not_exists=True)
    from_uri = tiled.catalog.from_uri

    def initialised_from_uri(*args, **kwargs):
        return from_uri(*args, **{**kwargs, "init_if_not_exists": False})

    tiled.catalog.from_uri = initialised_from_uri


def serve(directory: Path) -> int:
    """Serve ``directory`` until standard input closes; 3 if another process serves it already."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    directory.mkdir(parents=True, exist_ok=True)
    lock = open(directory / "server.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(json.dumps({"busy": True}), flush=True)
        return 3
    from tiled.server import SimpleTiledServer

    _register_document_export()
    _initialised_here(directory)
    detectors = detector_dir(directory)
    detectors.mkdir(exist_ok=True)
    server = SimpleTiledServer(directory=directory, readable_storage=[detectors], api_key=secrets.token_hex(16))
    _serialize_connections(server.storage)
    info = directory / "server.json"
    try:
        info.write_text(json.dumps({"uri": server.uri, "pid": os.getpid()}))
        print(json.dumps({"uri": server.uri}), flush=True)  # BrokenPipeError: the caller is gone already
        sys.stdin.read()  # until the process that started this one closes the pipe (or dies)
    finally:
        info.unlink(missing_ok=True)
        try:
            server.close()
        except Exception as exc:  # the process ends below all the same
            print(f"catalog server: closing failed: {exc!r}", file=sys.stderr, flush=True)
        lock.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory", type=Path)
    return serve(ap.parse_args(argv).directory.resolve())


if __name__ == "__main__":
    try:
        code = main()
    except BaseException as exc:  # e.g. the caller gone before the address was said: end all the same
        print(f"catalog server: {exc!r}", file=sys.stderr, flush=True)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a closed pipe
            pass
    # not sys.exit: a server thread that outlives a failed close() (seen: one left serving a deleted catalog
    # for minutes after its test, the interpreter waiting on it), or an exception out of main() (seen: a
    # caller that exited before reading the address left the server up), must not keep the process alive
    os._exit(code)
