"""``ns-bluesky catalog serve``: a facility's tiled server on PostgreSQL.

Reads a :class:`~ns_bluesky.io.catalog_config.CatalogServerConfig`, builds tiled's
catalog (the metadata in one PostgreSQL database, the event tables in another, array
files in ``data_dir``, detector files readable from ``detector_dir``), and serves it
with uvicorn until SIGTERM or Ctrl-C. Once ready it makes sure the ``raw`` and ``processed``
nodes exist as ``CatalogOfBlueskyRuns`` (a database of the old one-node layout keeps its
``runs``) and records ``detector_dir`` in the raw runs' metadata, so a
client that writes a scan (``ns-bluesky demo --catalog URL``) learns where its
detector files must go for the server to read them.

The api key is passed to tiled in memory: it is never on a command line, in a URL
or in a log line (clients send it in a header).
"""

from __future__ import annotations

import logging
import threading
import time

from ..errors import CatalogError
from .catalog_config import CatalogServerConfig, server_api_key

log = logging.getLogger(__name__)

#: metadata key of the runs node under which the server publishes what clients need
SERVER_METADATA_KEY = "ns_bluesky"
READY_TIMEOUT_S = 120.0


def _seq_ordered_sql_adapter():
    """tiled's SQLAdapter, reading an event table's rows in ``seq_num`` order on PostgreSQL.

    tiled 0.2.20 orders a table's rows by ``rowid`` on SQLite and DuckDB, and by nothing
    on PostgreSQL, where rows come back in the heap's order: with two RunEngines
    writing, a run's ``seq_num`` read back as 1..13, 15, 14, so positions would no
    longer line up with their frames. Tables with a ``seq_num`` column (every event
    stream) are read ordered by it unless the data source names an order of its own.
    """
    from tiled.adapters.sql import SQLAdapter

    class SeqOrderedSQLAdapter(SQLAdapter):
        def __init__(self, *args, order_by_args=None, **kwargs):
            super().__init__(*args, order_by_args=order_by_args, **kwargs)
            if not self.order_by_args and "seq_num" in self.structure().columns:
                self.order_by_args = [{"column": "seq_num", "direction": "asc"}]

    return SeqOrderedSQLAdapter


def build_app(cfg: CatalogServerConfig, api_key: str):
    """tiled's ASGI app for ``cfg`` (creates the catalog schema on first start)."""
    from tiled.catalog import from_uri as catalog_from_uri
    from tiled.config import Authentication
    from tiled.mimetypes import TILED_SQL_TABLE_MIMETYPE
    from tiled.server.app import build_app as tiled_build_app

    from .catalog_server import _register_document_export

    for d in (cfg.data_dir, cfg.detector_dir):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CatalogError(f"cannot create {d}: {exc.strerror or exc}") from None
    _register_document_export()
    try:
        tree = catalog_from_uri(
            cfg.catalog_uri,
            writable_storage=[str(cfg.data_dir), cfg.storage_uri],
            readable_storage=[str(cfg.detector_dir), *map(str, cfg.readable_dirs)],
            init_if_not_exists=True,
            adapters_by_mimetype={TILED_SQL_TABLE_MIMETYPE: _seq_ordered_sql_adapter()},
        )
    except Exception as exc:  # tiled's DatabaseInitializationError holds psql's stderr
        last = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
        raise CatalogError(f"cannot open the catalog database {cfg.redacted_database()}: {last[0]}") from None
    return tiled_build_app(tree, authentication=Authentication(single_user_api_key=api_key, allow_anonymous_access=False))


def _publish(cfg: CatalogServerConfig, uri: str, api_key: str) -> None:
    """Create the raw and processed nodes if needed and record the detector directory in the raw one's metadata."""
    from tiled.client import from_uri

    from .catalog_layout import publish_node

    runs = publish_node(from_uri(uri, api_key=api_key))
    info = {"detector_dir": str(cfg.detector_dir)}
    if runs.metadata.get(SERVER_METADATA_KEY) != info:
        runs.update_metadata({**runs.metadata, SERVER_METADATA_KEY: info})


def _wait_ready(server, uri: str, stopped: threading.Event) -> None:
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and not stopped.is_set():
        if server.started:
            try:
                if httpx.get(f"{uri}/healthz", timeout=2, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    raise CatalogError(f"the tiled server at {uri} was not ready within {READY_TIMEOUT_S:.0f} s")


def serve(cfg: CatalogServerConfig, *, ready=print) -> int:
    """Serve ``cfg`` until SIGTERM/SIGINT; ``ready(line)`` is told the address once it answers."""
    import uvicorn
    from tiled.server.logging_config import LOGGING_CONFIG

    api_key = server_api_key(cfg)
    if not cfg.loopback:
        log.warning("serving on %s: put a TLS proxy in front, the api key travels in each request's header", cfg.host)
    app = build_app(cfg, api_key)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, loop="asyncio", log_config=LOGGING_CONFIG,
                                           timeout_graceful_shutdown=10))
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    uri = f"http://{host}:{cfg.port}"
    failed: list[BaseException] = []
    stopped, published = threading.Event(), threading.Event()

    def publish_when_ready():
        try:
            _wait_ready(server, uri, stopped)
            if stopped.is_set():
                return
            _publish(cfg, uri, api_key)
            published.set()
            ready(f"catalog server ready at {uri} (catalog database {cfg.redacted_database()}, "
                  f"detector files in {cfg.detector_dir})")
        except Exception as exc:  # noqa: BLE001 - reported, and the server is stopped
            failed.append(exc)
            server.should_exit = True

    watcher = threading.Thread(target=publish_when_ready, name="catalog-ready", daemon=True)
    watcher.start()
    try:
        server.run()  # handles SIGTERM and SIGINT: finishes open requests, then returns
    except SystemExit:  # uvicorn exits when it cannot bind
        raise CatalogError(f"cannot serve on {cfg.host}:{cfg.port} (in use, or not an address of this host)") from None
    finally:
        stopped.set()
        watcher.join(5)
    if failed:
        exc = failed[0]
        raise exc if isinstance(exc, CatalogError) else CatalogError(f"the catalog server failed to start: {exc}")
    if not published.is_set():
        raise CatalogError("the catalog server stopped before it was ready (its log above says why)")
    return 0
