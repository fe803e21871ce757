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
