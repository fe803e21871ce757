"""The run catalog: an embedded tiled server (SQLite + files) by default, any tiled server by URI.

``open_catalog(directory)`` starts tiled's ``SimpleTiledServer`` on 127.0.0.1 in a
process of its own (:mod:`ns_bluesky.io.catalog_server`) and returns the ``CatalogOfBlueskyRuns`` node of
the raw runs, so ``cat[scan_id]``, ``cat[uid]``, ``cat[uid[:8]]``, ``cat[-1]``
and ``cat.search(...)`` find scans; the pipeline's derived runs live beside them in
``processed`` (``open_catalog(..., container="processed")`` or ``processed_of(cat)``; see
:mod:`ns_bluesky.io.catalog_layout`). ``open_catalog("http://host:8000")`` gives the same
nodes of a standalone server (``ns-bluesky catalog serve``, on PostgreSQL) with the same code,
its api key read from ``$NS_BLUESKY_API_KEY`` or a 0600 file (never from the URL).
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import platformdirs

from ..errors import CatalogError
from .catalog_layout import CONTAINERS, RAW_CONTAINER, node_of, processed_of

DETECTOR_SUBDIR = "detector"
CATALOG_ENV = "NS_BLUESKY_CATALOG"
DETECTOR_DIR_ENV = "NS_BLUESKY_DETECTOR_DIR"

_servers: dict[Path, tuple[subprocess.Popen, str]] = {}  # directory -> (its server process, address)
_servers_lock = threading.Lock()


def default_catalog_dir() -> Path:
    """``$NS_BLUESKY_CATALOG``, else the user's data directory (``~/.local/share/ns-bluesky/catalog``)."""
    env = os.environ.get(CATALOG_ENV)
    return Path(env) if env else platformdirs.user_data_path("ns-bluesky") / "catalog"


def default_catalog() -> str | Path:
    """``$NS_BLUESKY_CATALOG`` as given when it is an http(s) URL (a served catalog), else :func:`default_catalog_dir`."""
    env = os.environ.get(CATALOG_ENV, "")
    return env if _is_uri(env) else default_catalog_dir()


def detector_dir(catalog_dir: str | os.PathLike) -> Path:
    """Where detectors write their HDF5 files for an embedded catalog (tiled may read them)."""
    return Path(catalog_dir).resolve() / DETECTOR_SUBDIR


def _is_uri(path_or_uri: str | os.PathLike) -> bool:
    return str(path_or_uri).startswith(("http://", "https://"))


def _client_for_uri(uri: str):
    """A tiled client of the server at ``uri`` with the api key from the environment or a 0600 file."""
    from urllib.parse import parse_qs, urlsplit

    from .catalog_config import API_KEY_ENV, API_KEY_FILE_ENV, client_api_key, default_key_file

    parts = urlsplit(uri)
    if "api_key" in parse_qs(parts.query) or parts.password:
        raise CatalogError(f"do not put the api key in the catalog URL; set ${API_KEY_ENV}, "
                           f"or ${API_KEY_FILE_ENV} to a 0600 file holding it")
    _check_reachable(uri)
    from tiled.client import from_uri

    key = client_api_key()
    try:
        return from_uri(uri, api_key=key)
    except Exception as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401 or "requires API key" in str(exc):  # a wrong key, or none (tiled says so before asking)
            said = "was refused" if key else "is needed and none is set"
            raise CatalogError(f"the tiled server at {uri} wants an api key: it {said}; set ${API_KEY_ENV}, "
                               f"${API_KEY_FILE_ENV} (a 0600 file) or write it to {default_key_file()}") from None
        raise CatalogError(f"cannot reach the tiled server at {uri}: {exc}") from None


def data_dir(path_or_uri: str | os.PathLike | None, cat) -> Path:
    """Where this process writes detector files that the catalog's server must read.

    An embedded catalog: ``DIR/detector``. A served one: ``$NS_BLUESKY_DETECTOR_DIR``
    (where the server's directory is mounted on this host), else the ``detector_dir``
    the server publishes from its ``catalog.yml``.
    """
    target = default_catalog() if path_or_uri is None else path_or_uri
    if not _is_uri(target):
        return detector_dir(Path(target).expanduser())
    if os.environ.get(DETECTOR_DIR_ENV):
        return Path(os.environ[DETECTOR_DIR_ENV]).expanduser().resolve()
    published = (cat.metadata.get("ns_bluesky") or {}).get("detector_dir")
    if not published:
        raise CatalogError(f"the catalog at {target} names no detector directory; set ${DETECTOR_DIR_ENV} "
                           "to a directory its server reads")
    return Path(published)


def _start_server(directory: Path, timeout_s: float = 120.0) -> tuple[subprocess.Popen, str] | None:
    """Start :mod:`ns_bluesky.io.catalog_server` for ``directory``; None if another process serves it."""
    log_path = directory / "server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ns_bluesky.io.catalog_server", str(directory)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            start_new_session=True,  # no Ctrl-C from the terminal: the scan's stop document must still land
        )
    import tiled.client  # noqa: F401  the caller's next import, done while the server starts (a second each)

    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = proc.stdout.readline()
            if not line:  # it exited before saying where it serves
                break
            try:
                said = json.loads(line)
            except ValueError:
                continue  # something else on its stdout
            if said.get("busy"):
                proc.wait(10)
                return None
            if "uri" in said:
                return proc, said["uri"]
    proc.kill()
    proc.wait(10)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
    raise CatalogError(f"the catalog server for {directory} did not start; {log_path} ends:\n" + "\n".join(tail))


def server_pids() -> list[int]:
    """The embedded catalog servers this process started and that still run (the demo lowers their priority
    when the acquisition shares the host: the spool lets the catalog lag, never the scan)."""
    with _servers_lock:
        return [proc.pid for proc, _ in _servers.values() if proc.poll() is None]


def _embedded_server_uri(directory: Path, create: bool = True) -> str:
    """URI of the one server for ``directory``: ours, or the one another process runs.

    tiled's embedded storage (SQLite + DuckDB) admits one server per directory, so the
    first process to open it starts :mod:`ns_bluesky.io.catalog_server`, which takes
    ``server.lock``, serves it on 127.0.0.1 and writes its address to ``server.json``;
    later processes (a second terminal, ``nsraw2cxi`` during a scan) connect there
    instead of starting a second server.
    """
    with _servers_lock:
        if directory in _servers and _servers[directory][0].poll() is None:
            return _servers[directory][1]
        if not (directory / "catalog.db").exists():
            if not create:
                raise CatalogError(f"no catalog at {directory} (check --catalog; 'ns-bluesky demo' creates one)")
            directory.mkdir(parents=True, exist_ok=True)
        started = _start_server(directory)
        if started is not None:
            _servers[directory] = started
            return started[1]
        info = directory / "server.json"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                uri = json.loads(info.read_text())["uri"]
                _check_reachable(uri)
                return uri
            except (OSError, ValueError, KeyError, CatalogError):
                time.sleep(0.2)
        raise CatalogError(f"another process holds the catalog at {directory} but does not answer; see {info}")


def _check_reachable(uri: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, not after the client's long retry schedule, when nothing answers at ``uri``."""
    from urllib.parse import urlsplit

    import httpx

    parts = urlsplit(uri)
    try:
        httpx.get(f"{parts.scheme}://{parts.netloc}/healthz", timeout=timeout_s, trust_env=False)
    except httpx.HTTPError as exc:
        raise CatalogError(f"cannot reach the tiled server at {uri}: {exc}") from None


def check_catalog(node, timeout_s: float = 1.0) -> None:
    """``CatalogError`` unless the server of catalog ``node`` answers within ``timeout_s``."""
    _check_reachable(node.uri, timeout_s)


def spool_dir(path_or_uri: str | os.PathLike | None) -> Path:
    """Where documents for the catalog wait on disk before it holds them: beside an embedded catalog, or
    per server in the user's data directory (0700 either way: documents name the user's files)."""
    target = default_catalog() if path_or_uri is None else path_or_uri
    if _is_uri(target):
        from urllib.parse import urlsplit

        import platformdirs

        where = urlsplit(str(target)).netloc.replace(":", "_") or "server"
        return platformdirs.user_data_path("ns-bluesky") / "spool" / where
    return Path(target).expanduser().resolve() / "spool"


def open_catalog(path_or_uri: str | os.PathLike | None = None, *, container: str = RAW_CONTAINER, create: bool = True):
    """The raw runs (``container="processed"``: the derived runs) of the catalog at a directory (embedded
    server) or an http(s) URI (``ns-bluesky catalog serve``).

    ``create=False`` (for read-only commands) refuses a directory that holds no catalog
    instead of making an empty one. A catalog of the old one-node layout is read and
    written in place (:mod:`.catalog_layout`).
    """
    if container not in CONTAINERS:
        raise CatalogError(f"no container {container!r}: a catalog holds {' and '.join(map(repr, CONTAINERS))}")
    target = default_catalog() if path_or_uri is None else path_or_uri
    if _is_uri(target):
        client = _client_for_uri(str(target))
    else:
        directory = Path(target).expanduser().resolve()
        if directory.exists() and not directory.is_dir():
            raise CatalogError(f"catalog path {directory} is a file, not a directory")
        uri = _embedded_server_uri(directory, create)
        from tiled.client import from_uri

        client = from_uri(uri)
    return node_of(client, container)


def close_catalogs(directory: str | os.PathLike | None = None) -> None:
    """Stop the embedded server of ``directory``, or every one this process started (also done at exit).

    One directory's, so that a caller done with its own catalog leaves the others (a session's shared
    catalog, say) answering their clients.
    """
    with _servers_lock:
        if directory is None:
            stopping = list(_servers.values())
            _servers.clear()
        else:
            found = _servers.pop(Path(directory).resolve(), None)
            stopping = [found] if found else []
    for proc, _ in stopping:
        try:
            proc.stdin.close()  # the server's signal to stop
            proc.wait(15)
        except (OSError, ValueError):
            pass
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def started_catalogs() -> list[Path]:
    """The directories whose embedded servers this process started and still runs."""
    with _servers_lock:
        return [directory for directory, (proc, _) in _servers.items() if proc.poll() is None]


def at_exit(fn) -> None:
    """Run ``fn`` at exit while the embedded catalog servers still answer (they stop right after,
    before the interpreter joins non-daemon threads: plain atexit runs too late for them).

    Also in a ``multiprocessing`` child, such as the queue server's worker that runs the beamline
    profile: it ends through ``os._exit``, which runs neither atexit nor threading's exit hooks,
    only multiprocessing's finalizers (in the same last-registered-first order). ``fn`` runs once."""
    import multiprocessing
    from multiprocessing import util

    done = threading.Event()

    def once() -> None:
        if not done.is_set():
            done.set()
            fn()

    try:
        threading._register_atexit(once)  # called last-registered first
    except (AttributeError, RuntimeError):  # pragma: no cover - other interpreters
        atexit.register(once)
    if multiprocessing.parent_process() is not None:
        util.Finalize(None, once, exitpriority=100)


def _close_catalogs_at_exit() -> None:
    """Stop the servers as the command ends; a command on the terminal says so when that takes a while (a
    server finishing its last requests), rather than sitting silent after its last line."""
    from .terminal import Ticker, watching

    ticker = None
    if watching() and server_pids():
        try:
            ticker = Ticker(lambda line: print(line, file=sys.stderr, flush=True), "closing the catalog server").start()
        except RuntimeError:  # no new thread this late in the interpreter's shutdown: close in silence
            pass
    try:
        close_catalogs()
    finally:
        if ticker is not None:
            ticker.stop()


at_exit(_close_catalogs_at_exit)


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
    derived: bool = False,
):
    """The queries users ask for, combined with AND; returns a catalog node of the matching runs.

    ``derived``: ``cat`` holds derived runs, whose scan id and sample are their raw run's
    (``parent_scan_id``, ``parent_sample_name``): ``scan_id=5`` finds the processing of scan 5.
    """
    from bluesky_tiled_plugins.queries import FullText, PartialUID, ScanID, TimeRange
    from tiled.queries import Key

    results = cat
    if scan_id is not None:
        results = results.search(Key("parent_scan_id") == int(scan_id) if derived else ScanID(int(scan_id)))
    if uid is not None:
        results = results.search(PartialUID(uid))
    if sample is not None:
        results = results.search(Key("parent_sample_name" if derived else "sample_name") == sample)
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
    """A run by scan_id (an integer or digits: a raw run), uid or uid prefix (of ``cat``, else of the
    derived runs beside it), with an error that says which."""
    try:
        if isinstance(key, int) or (isinstance(key, str) and key.lstrip("-").isdigit()):
            return cat[int(key)]
        return cat[key]
    except (KeyError, IndexError, ValueError):
        pass
    if isinstance(key, str) and not key.lstrip("-").isdigit():
        try:
            return processed_of(cat)[key]
        except (KeyError, IndexError, ValueError):
            pass
    raise CatalogError(f"no run {key!r} in the catalog (give a scan_id, a uid or a uid prefix)") from None


def last_scan_id(cat) -> int:
    """The scan_id of the most recent scan, so a new RunEngine continues the numbering
    (derived runs, which have none, do not reset it)."""
    from tiled.queries import Key

    try:
        return int(cat.search(Key("scan_id") >= 0)[-1].metadata["start"]["scan_id"])
    except (IndexError, KeyError, ValueError, TypeError):
        return 0
