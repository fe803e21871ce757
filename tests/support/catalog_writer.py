"""A RunEngine in a process of its own writing runs into a catalog: ``python -m tests.support.catalog_writer URL``.

The tests run two at once (two writers), or one while PostgreSQL restarts under the
server. Prints one JSON line per run, ``{"uid": ..., "exit_status": ...}``, as the
run ends. The api key comes from the environment, as for every client.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("catalog")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--events", type=int, default=10)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds between events")
    ap.add_argument("--batch", type=int, default=1, help="events per catalog request")
    ap.add_argument("--sample", default="writer", help="sample names, comma-separated: --runs runs of each")
    args = ap.parse_args(argv)

    from bluesky import RunEngine
    from bluesky.plans import count
    from ophyd.sim import det1, det2

    from ns_bluesky.io.catalog import last_scan_id, make_tiled_writer, open_catalog

    cat = open_catalog(args.catalog)
    RE = RunEngine({"scan_id": last_scan_id(cat)}, call_returns_result=False)  # continue the numbering
    RE.subscribe(make_tiled_writer(cat, batch_size=args.batch))
    RE.subscribe(lambda name, doc: print(json.dumps({"uid": doc["run_start"], "exit_status": doc["exit_status"]}),
                                         flush=True) if name == "stop" else None)
    for sample in args.sample.split(","):
        for _ in range(args.runs):
            RE(count([det1, det2], num=args.events, delay=args.delay), sample_name=sample)
    return 0


if __name__ == "__main__":
    sys.exit(main())
