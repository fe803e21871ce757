"""``ns-bluesky catalog``: start a facility's catalog server on PostgreSQL.

``catalog example-config`` prints a commented ``catalog.yml``; ``catalog new-key FILE``
writes a random api key with mode 0600 (for the server's ``api_key_file`` and the
clients' ``$NS_BLUESKY_API_KEY_FILE``); ``catalog check --config`` validates the file
and reads the key without starting anything; ``catalog serve --config`` runs the
tiled server (:mod:`ns_bluesky.io.catalog_service`).
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    """The ``catalog`` subcommand of ``ns-bluesky``."""
    p = sub.add_parser(
        "catalog", help="a facility's catalog server (tiled on PostgreSQL)",
        description="Serve the run catalog from PostgreSQL with tiled, for every command's --catalog http://HOST:PORT. "
        "Clients read the api key from $NS_BLUESKY_API_KEY, the 0600 file $NS_BLUESKY_API_KEY_FILE names, "
        "or ~/.config/ns-bluesky/catalog.key.",
    )
    actions = p.add_subparsers(dest="catalog_action", metavar="ACTION", required=True)
    serve = actions.add_parser("serve", help="run the tiled server a catalog.yml describes",
                               description="Serve until Ctrl-C or SIGTERM; bound to the config's host (127.0.0.1 by default).")
    serve.add_argument("--config", required=True, metavar="catalog.yml", help="the server's settings (see example-config)")
    serve.set_defaults(func=_serve)
    check = actions.add_parser("check", help="validate a catalog.yml and its api key without serving")
    check.add_argument("--config", required=True, metavar="catalog.yml")
    check.set_defaults(func=_check)
    example = actions.add_parser("example-config", help="print a commented catalog.yml to start from")
    example.set_defaults(func=_example)
    key = actions.add_parser("new-key", help="write a new random api key to a file with mode 0600")
    key.add_argument("file", help="where to write it (refuses an existing file)")
    key.set_defaults(func=_new_key)
    flush = actions.add_parser("flush", help="write the runs a crashed or cut-off session left in the catalog's spool",
                               description="Documents wait in a spool on disk until the catalog holds them; a session "
                               "that ended while the catalog was down leaves them there. This writes each such run "
                               "(what the catalog holds of it is replaced, so every document lands once; a run "
                               "without its stop document gets one saying it was cut short). Runs a live session "
                               "is still writing are left alone.")
    flush.add_argument("--catalog", metavar="DIR|URI", help="the catalog (default: $NS_BLUESKY_CATALOG or the user data directory)")
    flush.set_defaults(func=_flush)


def _serve(args: argparse.Namespace) -> int:
    from ..io.catalog_config import load_config
    from ..io.catalog_service import serve

    return serve(load_config(args.config), ready=lambda line: print(line, flush=True))


def _check(args: argparse.Namespace) -> int:
    from ..io.catalog_config import load_config, server_api_key

    cfg = load_config(args.config)
    server_api_key(cfg)
    print(f"{args.config}: ok (catalog database {cfg.redacted_database()}, serves on {cfg.host}:{cfg.port}, "
          f"api key from {cfg.api_key_file or '$NS_BLUESKY_API_KEY'})")
    return 0


def _example(args: argparse.Namespace) -> int:
    from ..io.catalog_config import EXAMPLE_CONFIG

    sys.stdout.write(EXAMPLE_CONFIG)
    return 0


def _new_key(args: argparse.Namespace) -> int:
    from ..io.catalog_config import write_key_file

    print(f"wrote a new api key to {write_key_file(args.file)} (mode 0600)")
    return 0


def _flush(args: argparse.Namespace) -> int:
    from ..callbacks.spool import flush_spool
    from ..io.catalog import make_tiled_writer, open_catalog, spool_dir

    where = spool_dir(args.catalog)
    waiting = sorted(where.glob("*.jsonl")) if where.is_dir() else []
    if not waiting:
        print(f"nothing to write: no spooled runs in {where}")
        return 0
    done = flush_spool(open_catalog(args.catalog, create=False), make_tiled_writer, where)
    for run, n in done:
        print(f"wrote run {run[:8]}: {n} documents")
    left = len(waiting) - len(done)
    if left:
        print(f"{left} run(s) left: a live session is writing them")
    return 0
