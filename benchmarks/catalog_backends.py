"""The catalog's two back ends side by side: the embedded one (SQLite + DuckDB, its own
process) and ``ns-bluesky catalog serve`` on PostgreSQL (started here, as the tests do).
Prints figures from one run; passes or fails nothing.

    .venv/bin/python benchmarks/catalog_backends.py [--events 500] [--rounds 3]

Per back end: events/s a RunEngine writes through the TiledWriter (``count`` of two
scalar detectors, batches of 25 as the demo sends at 10 frames/s, and one request per
event), until the stop document is in; and the time of the queries users ask (by
sample, scan id, time range, full text) over the runs written, median of ``--rounds``.
The two back ends take turns, so that load from elsewhere on the machine slows both alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support.postgres starts the server

from bluesky import RunEngine  # noqa: E402
from bluesky.plans import count  # noqa: E402
from ophyd.sim import det1, det2  # noqa: E402

from ns_bluesky.io.catalog import close_catalogs, last_scan_id, make_tiled_writer, open_catalog, search_runs  # noqa: E402
from tests.support.postgres import serve_catalog, start_postgres, stop_catalog, stop_postgres  # noqa: E402


def events_per_s(cat, n: int, batch: int, sample: str) -> float:
    RE = RunEngine({"scan_id": last_scan_id(cat)}, call_returns_result=False)
    RE.subscribe(make_tiled_writer(cat, batch_size=batch))
    t0 = time.perf_counter()
    RE(count([det1, det2], num=n), sample_name=sample)  # returns once the writer has sent the stop document
    return n / (time.perf_counter() - t0)


def _queries(cat) -> dict:
    t_now = time.time()
    return {
        "sample": lambda: len(search_runs(cat, sample="bench-25")),
        "scan id": lambda: cat[last_scan_id(cat)].metadata["start"]["uid"],
        "time range": lambda: len(search_runs(cat, since=t_now - 3600, until=t_now + 60)),
        "full text": lambda: len(search_runs(cat, text="bench")),
    }


def _timed_ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


def measure(cats: dict, events: int, rounds: int) -> dict[str, dict[str, float]]:
    """Every figure for every back end, the back ends taking turns (first one, then the other first), so
    that a busy machine slows both alike; medians."""
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in cats}
    names = list(cats)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            for batch in (25, 1):
                n = events if batch > 1 else max(50, events // 5)
                rate = events_per_s(cats[name], n, batch, f"bench-{batch}")
                samples[name].setdefault(f"events/s, batches of {batch}", []).append(rate)
    for r in range(max(5, rounds)):
        for name in names if r % 2 == 0 else names[::-1]:
            for q, fn in _queries(cats[name]).items():
                if r == 0:
                    fn()  # warm
                samples[name].setdefault(f"query {q} (ms)", []).append(_timed_ms(fn))
    return {name: {k: statistics.median(v) for k, v in figs.items()} for name, figs in samples.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=500, help="events per run in batches of 25 (default 500)")
    ap.add_argument("--rounds", type=int, default=3, help="runs per figure; the median is shown (default 3)")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ns-bluesky-bench-catalog-"))
    pg = served = None
    load = os.getloadavg()[0]
    try:
        print("starting PostgreSQL (initdb, pg_ctl) and ns-bluesky catalog serve ...", flush=True)
        pg = start_postgres()
        served = serve_catalog(pg, root)
        os.environ["NS_BLUESKY_API_KEY_FILE"] = str(served.key_file)
        cats = {"embedded SQLite": open_catalog(root / "embedded"), "PostgreSQL served": open_catalog(served.url)}
        print(f"measuring, {args.rounds} rounds taking turns ...", flush=True)
        results = measure(cats, args.events, args.rounds)
    finally:
        if served is not None:
            stop_catalog(served)
        if pg is not None:
            stop_postgres(pg)
        close_catalogs()
        shutil.rmtree(root, ignore_errors=True)

    names = list(results)
    rows = list(results[names[0]])
    width = max(map(len, rows))
    print(f"\n{'':{width}}  " + "  ".join(f"{n:>17}" for n in names) + "   ratio PG/embedded")
    for row in rows:
        a, b = results[names[0]][row], results[names[1]][row]
        print(f"{row:{width}}  {a:17.1f}  {b:17.1f}   {b / a:6.2f}")
    print(f"\n({args.events}-event runs in batches of 25, {max(50, args.events // 5)}-event runs one request each; "
          f"medians of {args.rounds} runs, queries of {max(5, args.rounds)}; {os.cpu_count()} CPUs, "
          f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
