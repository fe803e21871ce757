"""Base: the RunEngine, the catalog (written off the RunEngine's thread), a progress bar and a live table.

The catalog is ``$NS_BLUESKY_CATALOG`` (else ``~/.local/share/ns-bluesky/catalog``): an
embedded tiled server on SQLite + files, or ``http(s)://...`` for a tiled server.
``cat`` holds the raw runs (``cat[-1]`` is the last scan or dark); ``processed`` the
pipeline's derived runs beside them: ``derived(uid)`` lists those of one scan.
"""

import time as _time

_t0 = _time.monotonic()

from bluesky import RunEngine
from bluesky.callbacks import LiveTable
from ns_bluesky.callbacks import ProgressBar
from ns_bluesky.callbacks.spool import catalog_writer as _spooled_writer

from ns_bluesky.io.catalog import default_catalog_dir, last_scan_id, open_catalog
from ns_bluesky.io.catalog_layout import derived_runs, parent_run, processed_of

CATALOG_DIR = default_catalog_dir()
cat = open_catalog(CATALOG_DIR)  # the raw runs
processed = processed_of(cat)  # the derived runs


def derived(raw) -> list:
    """The derived runs of a raw run (or its uid), oldest first: ``derived(uid)[-1]`` is the latest."""
    return derived_runs(cat, raw)


def parent(run):
    """The raw run a derived run (or its uid) was processed from."""
    return parent_run(cat, run)

RE = RunEngine({"scan_id": last_scan_id(cat)}, call_returns_result=False)
# every document on disk first (CATALOG_DIR/spool): a catalog server that dies mid-scan is started again and
# loses nothing; one line says when it stops answering and one when it is back
catalog_writer = _spooled_writer(CATALOG_DIR, say=print)
RE.subscribe(catalog_writer)
RE.subscribe(ProgressBar())
RE.subscribe(LiveTable(["stage_y", "stage_x", "fccd_frame_counter"], default_prec=9))
print(f"[00-base] RE, cat (raw runs), processed (derived runs), derived(uid), parent(run) ({CATALOG_DIR}, "
      f"last scan id {RE.md['scan_id']})")
