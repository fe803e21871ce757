"""Base: the RunEngine, the catalog (written off the RunEngine's thread), a progress bar and a live table.

The catalog is ``$NS_BLUESKY_CATALOG`` (else ``~/.local/share/ns-bluesky/catalog``): an
embedded tiled server on SQLite + files, or ``http(s)://...`` for a tiled server.
"""

import time as _time

_t0 = _time.monotonic()

from bluesky import RunEngine
from bluesky.callbacks import LiveTable
from ns_bluesky.callbacks import ProgressBar, ThreadedCallback

from ns_bluesky.io.catalog import default_catalog_dir, last_scan_id, make_tiled_writer, open_catalog

CATALOG_DIR = default_catalog_dir()
cat = open_catalog(CATALOG_DIR)
RE = RunEngine({"scan_id": last_scan_id(cat)}, call_returns_result=False)
catalog_writer = ThreadedCallback(make_tiled_writer(cat), name="catalog")
RE.subscribe(catalog_writer)
RE.subscribe(ProgressBar())
RE.subscribe(LiveTable(["stage_y", "stage_x", "fccd_frame_counter"], default_prec=9))
print(f"[00-base] RE, cat ({CATALOG_DIR}, last scan id {RE.md['scan_id']})")
