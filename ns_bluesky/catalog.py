"""The run catalog: an embedded tiled server (SQLite + files) by default, any tiled server by URI.

``open_catalog(directory)`` starts tiled's ``SimpleTiledServer`` on 127.0.0.1 in a
background thread of this process and returns the ``CatalogOfBlueskyRuns`` node that
runs are written to, so ``cat[scan_id]``, ``cat[uid]``, ``cat[uid[:8]]``, ``cat[-1]``
and ``cat.search(...)`` work; ``open_catalog("http://host:8000?api_key=...")`` gives
the same node of a standalone server with the same code. The node needs the spec
``CatalogOfBlueskyRuns`` version 3.0, or scan_id and partial-uid lookups fail (see
``shared/reference/stack.md``).
"""

from __future__ import annotations

import atexit
import os
import secrets
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import platformdirs

from .errors import CatalogError

RUNS_CONTAINER = "runs"
DETECTOR_SUBDIR = "detector"
CATALOG_ENV = "NS_BLUESKY_CATALOG"

_servers: dict[Path, Any] = {}
_PROCESS_API_KEY = secrets.token_hex(16)
_servers_lock = threading.Lock()


def default_catalog_dir() -> Path:
    """``$NS_BLUESKY_CATALOG``, else the user's data directory (``~/.local/share/ns-bluesky/catalog``)."""
    env = os.environ.get(CATALOG_ENV)
    return Path(env) if env else platformdirs.user_data_path("ns-bluesky") / "catalog"


def detector_dir(catalog_dir: str | os.PathLike) -> Path:
    """Where detectors write their HDF5 files for an embedded catalog (tiled may read them)."""
    return Path(catalog_dir).resolve() / DETECTOR_SUBDIR


def _is_uri(path_or_uri: str | os.PathLike) -> bool:
    return str(path_or_uri).startswith(("http://", "https://"))


def _runs_node(client, container: str):
    from tiled.structures.core import Spec

    if container not in client:
        client.create_container(container, specs=[Spec("CatalogOfBlueskyRuns", version="3.0")])
    node = client[container]
    if not any(s.name == "CatalogOfBlueskyRuns" for s in node.specs):
        raise CatalogError(f"node {container!r} exists but is not a CatalogOfBlueskyRuns; choose another name")
    return node


def _register_document_export() -> None:
    """Let the embedded server replay a run's documents (``run.documents()``), as a configured server does."""
    from bluesky_tiled_plugins.exporters import json_seq_exporter
    from tiled.media_type_registration import default_serialization_registry as registry

    if "application/json-seq" not in registry.media_types("BlueskyRun"):
        registry.register("BlueskyRun", "application/json-seq", json_seq_exporter)


def _embedded_server_uri(directory: Path, create: bool = True) -> str:
    """URI of the one server for ``directory``: ours, or the one another process runs.

    tiled's embedded storage (SQLite + DuckDB) admits one server per directory, so the
    first process to open it takes ``server.lock``, serves it on 127.0.0.1 and writes
    its address to ``server.json``; later processes (a second terminal, ``nsraw2cxi``
    during a scan) connect there instead of starting a second server.
    """
    import fcntl
    import json

    from tiled.server import SimpleTiledServer

    with _servers_lock:
        if directory in _servers:
            return _servers[directory].uri
        if not (directory / "catalog.db").exists():
            if not create:
                raise CatalogError(f"no catalog at {directory} (check --catalog; 'ns-bluesky demo' creates one)")
            directory.mkdir(parents=True, exist_ok=True)
        lock = open(directory / "server.lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            info = directory / "server.json"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    uri = json.loads(info.read_text())["uri"]
                    _check_reachable(uri)
                    return uri
                except (OSError, ValueError, KeyError, CatalogError):
                    time.sleep(0.2)
            raise CatalogError(f"another process holds the catalog at {directory} but does not answer; see {info}") from None
        _register_document_export()
        detector_dir(directory).mkdir(exist_ok=True)
        # one API key for every embedded server of this process: tiled keeps the single-user key in
        # process-wide settings, so a second server with a key of its own locks the first one's clients out
        server = SimpleTiledServer(directory=directory, readable_storage=[detector_dir(directory)], api_key=_PROCESS_API_KEY)
        _serialize_connections(server.storage)
        server._ns_lock = lock  # held (and the lock with it) for the life of this process's server
        (directory / "server.json").write_text(json.dumps({"uri": server.uri, "pid": os.getpid()}))
        _servers[directory] = server
        return server.uri


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


def _check_reachable(uri: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, not after the client's long retry schedule, when nothing answers at ``uri``."""
    from urllib.parse import urlsplit

    import httpx

    parts = urlsplit(uri)
    try:
        httpx.get(f"{parts.scheme}://{parts.netloc}/healthz", timeout=timeout_s, trust_env=False)
    except httpx.HTTPError as exc:
        raise CatalogError(f"cannot reach the tiled server at {uri}: {exc}") from None


def open_catalog(path_or_uri: str | os.PathLike | None = None, *, container: str = RUNS_CONTAINER, create: bool = True):
    """The catalog of runs at a directory (embedded server) or an http(s) URI (standalone tiled).

    ``create=False`` (for read-only commands) refuses a directory that holds no catalog
    instead of making an empty one.
    """
    from tiled.client import from_uri

    target = default_catalog_dir() if path_or_uri is None else path_or_uri
    if _is_uri(target):
        _check_reachable(str(target))
        try:
            client = from_uri(str(target))
        except Exception as exc:
            raise CatalogError(f"cannot reach the tiled server at {target}: {exc}") from None
    else:
        directory = Path(target).expanduser().resolve()
        if directory.exists() and not directory.is_dir():
            raise CatalogError(f"catalog path {directory} is a file, not a directory")
        client = from_uri(_embedded_server_uri(directory, create))
    return _runs_node(client, container)


def close_catalogs() -> None:
    """Stop every embedded server this process started (also done at exit)."""
    with _servers_lock:
        for directory, server in _servers.items():
            try:
                (directory / "server.json").unlink(missing_ok=True)
                server.close()
            except Exception:  # already stopped by the interpreter tearing down
                pass
        _servers.clear()


def at_exit(fn) -> None:
    """Run ``fn`` at exit while the embedded catalog servers still answer (they stop right after,
    before the interpreter joins non-daemon threads: plain atexit runs too late for them)."""
    try:
        threading._register_atexit(fn)  # called last-registered first
    except (AttributeError, RuntimeError):  # pragma: no cover - other interpreters
        atexit.register(fn)


at_exit(close_catalogs)


def make_tiled_writer(cat, *, batch_size: int = 25):
    """TiledWriter into ``cat``.

    Events and frame references are posted ``batch_size`` at a time (and all at the stop
    document): one HTTP round trip per event caps a scan near 15 frames/s. Live consumers
    read the ZeroMQ stream, not the catalog, so the catalog may lag a few seconds behind
    the scan; :func:`writer_batch` sizes the batch for a scan's frame rate.
    """
    from bluesky_tiled_plugins import TiledWriter

    return TiledWriter(cat, batch_size=batch_size)


def writer_batch(rate_hz: float, seconds: float = 2.5) -> int:
    """Events per catalog request for frames at ``rate_hz`` (0: as fast as they come): about
    ``seconds`` of frames, 25 to 250.

    Each request costs the embedded tiled server about 28 ms of CPU (an append of 25 rows,
    measured on the 2-core development machine), which at 100 frames/s in batches of 25
    is a sixth of a core taken from the frames. On a 30 x 30 scan at ``--rate 0``, 250 per
    request gave 70 frames/s against 53.5 with 25, side by side; at 10 frames/s the
    catalog stays within 2.5 s of the scan.
    """
    if rate_hz <= 0:
        return 250
    return int(min(250, max(25, round(rate_hz * seconds))))


def _parse_time(value: str | float | datetime) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        raise CatalogError(f"cannot read time {value!r}; use ISO 8601 such as 2026-11-25 or 2026-11-25T14:00") from None


def search_runs(
    cat,
    *,
    scan_id: int | None = None,
    uid: str | None = None,
    sample: str | None = None,
    plan_name: str | None = None,
    since: str | float | datetime | None = None,
    until: str | float | datetime | None = None,
    text: str | None = None,
):
    """The queries users ask for, combined with AND; returns a catalog node of the matching runs."""
    from bluesky_tiled_plugins.queries import FullText, PartialUID, ScanID, TimeRange
    from tiled.queries import Key

    results = cat
    if scan_id is not None:
        results = results.search(ScanID(int(scan_id)))
    if uid is not None:
        results = results.search(PartialUID(uid))
    if sample is not None:
        results = results.search(Key("sample_name") == sample)
    if plan_name is not None:
        results = results.search(Key("plan_name") == plan_name)
    if since is not None or until is not None:
        kwargs = {}
        if since is not None:
            kwargs["since"] = _parse_time(since)
        if until is not None:
            kwargs["until"] = _parse_time(until)
        results = results.search(TimeRange(**kwargs))
    if text is not None:
        results = results.search(FullText(text))
    return results


def get_run(cat, key: str | int):
    """A run by scan_id (an integer or digits), uid or uid prefix, with an error that says which."""
    try:
        if isinstance(key, int) or (isinstance(key, str) and key.lstrip("-").isdigit()):
            return cat[int(key)]
        return cat[key]
    except (KeyError, IndexError, ValueError):
        raise CatalogError(f"no run {key!r} in the catalog (give a scan_id, a uid or a uid prefix)") from None


def last_scan_id(cat) -> int:
    """The scan_id of the most recent scan, so a new RunEngine continues the numbering
    (derived runs, which have none, do not reset it)."""
    from tiled.queries import Key

    try:
        return int(cat.search(Key("scan_id") >= 0)[-1].metadata["start"]["scan_id"])
    except (IndexError, KeyError, ValueError, TypeError):
        return 0
